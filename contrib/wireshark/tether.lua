-- Wireshark dissector for tether: PCI Express TLPs over Ethernet.
--
-- Decodes the tether header (EtherType 0x88B5, normally behind an 802.1Q tag whose
-- VLAN ID is the Group ID), verifies the frame check, decodes every TLP field, INFO
-- and CTRL frames, and matches each completion to its request by
-- (GID, requester ID, tag), showing the request's frame and the latency.
--
-- Frames with the AUTH flag carry an authentication trailer right after the payload
-- (anything after it is padding); the tag is checked when the "keys" preference holds
-- the group's secret. Both tags derive from the group key
-- K = HMAC-SHA-256(secret, "tether 2026-12-07 frame authentication tag v1") and cover
-- AAD = dst MAC (6) .. src MAC (6) .. VID (2, big-endian, GID & 0x0fff) and the
-- covered bytes = the tether header and payload as on the wire.
--   INFO, CTRL:            tag (16) = HMAC-SHA-256(K, AAD .. covered), first 16 bytes.
--   DATA, ACK, NAK:        nonce (12), then tag (16) = the AES-128-GCM tag of plaintext
--     (session frames)     covered, additional data AAD and IV nonce under
--                          Ks = first 16 bytes of HMAC-SHA-256(K,
--                          "tether 2026-12-07 session frame key v1" .. src MAC);
--                          the GCM ciphertext is not sent, the payload stays in clear.
--
-- Use:  wireshark -X lua_script:contrib/wireshark/tether.lua capture.pcap
--       tshark -r capture.pcap -X lua_script:contrib/wireshark/tether.lua -2 -V
--       tshark ... -o "tether.keys:10=<64 hex digits>,20=<64 hex digits>"
-- or copy it into ~/.local/lib/wireshark/plugins/.
--
-- docs/wire-format.md is the normative description of the format.

local bit = bit32 or bit

local tether = Proto("tether", "tether PCIe over Ethernet")

local ETHERTYPE = 0x88b5
local HEADER_LEN = 36

local kinds = { [1] = "DATA", [2] = "ACK", [3] = "NAK", [4] = "INFO", [5] = "CTRL" }
local roles = { [1] = "host", [2] = "iobox", [3] = "manager" }
local ctrl_ops = { [1] = "SET_GROUP", [2] = "RESET", [3] = "RESULT" }
local ctrl_status = { [0] = "OK", [1] = "NO_SUCH_DEVICE", [2] = "BAD_GROUP", [3] = "REFUSED" }
local record_types = { [1] = "TLP" }
local fmts = {
    [0] = "3DW, no data", [1] = "4DW, no data", [2] = "3DW, with data",
    [3] = "4DW, with data", [4] = "TLP prefix",
}
local cpl_status = { [0] = "SC", [1] = "UR", [2] = "CRS", [4] = "CA" }
local routings = {
    [0] = "to Root Complex", [1] = "by address", [2] = "by ID",
    [3] = "broadcast from Root Complex", [4] = "local", [5] = "gathered to Root Complex",
}
local msg_codes = {
    [0x00] = "Unlock", [0x10] = "LTR", [0x14] = "PM_Active_State_Nak", [0x18] = "PM_PME",
    [0x19] = "PME_Turn_Off", [0x1b] = "PME_TO_Ack",
    [0x20] = "Assert_INTA", [0x21] = "Assert_INTB", [0x22] = "Assert_INTC", [0x23] = "Assert_INTD",
    [0x24] = "Deassert_INTA", [0x25] = "Deassert_INTB", [0x26] = "Deassert_INTC", [0x27] = "Deassert_INTD",
    [0x30] = "ERR_COR", [0x31] = "ERR_NONFATAL", [0x33] = "ERR_FATAL",
    [0x50] = "Set_Slot_Power_Limit", [0x7e] = "Vendor_Defined_Type0", [0x7f] = "Vendor_Defined_Type1",
}

local f = tether.fields
-- tether header
f.version = ProtoField.uint8("tether.version", "Version", base.DEC, nil, 0xf0)
f.kind = ProtoField.uint8("tether.kind", "Kind", base.DEC, kinds, 0x0f)
f.flags = ProtoField.uint8("tether.flags", "Flags", base.HEX)
f.flag_ack = ProtoField.bool("tether.flags.ack", "ACK valid", 8, nil, 0x01)
f.flag_syn = ProtoField.bool("tether.flags.syn", "SYN (session start)", 8, nil, 0x02)
f.flag_probe = ProtoField.bool("tether.flags.probe", "Rate probe", 8, nil, 0x04)
f.flag_auth = ProtoField.bool("tether.flags.auth", "Authenticated", 8, nil, 0x08)
f.flag_gap_end = ProtoField.bool("tether.flags.gap_end", "Gap end (NAK: the sequence number is the first frame held after the gap)", 8, nil, 0x10)
f.flag_reserved = ProtoField.uint8("tether.flags.reserved", "Reserved", base.HEX, nil, 0xe0)
f.payload_len = ProtoField.uint16("tether.payload_len", "Payload length", base.DEC)
f.epoch = ProtoField.uint32("tether.epoch", "Epoch", base.HEX)
f.peer_epoch = ProtoField.uint32("tether.peer_epoch", "Peer epoch", base.HEX)
f.seq = ProtoField.uint32("tether.seq", "Sequence number", base.DEC)
f.ack = ProtoField.uint32("tether.ack", "Acknowledgement", base.DEC)
f.gap_end = ProtoField.uint32("tether.nak.gap_end", "Gap end (resend from the acknowledgement up to this)", base.DEC)
f.tsval = ProtoField.uint32("tether.tsval", "Timestamp value (us)", base.DEC)
f.tsecr = ProtoField.uint32("tether.tsecr", "Timestamp echo (us)", base.DEC)
f.window = ProtoField.uint16("tether.window", "Receive window (frames)", base.DEC)
f.hlen = ProtoField.uint8("tether.hlen", "Header length (32-bit words)", base.DEC)
f.echo_wait = ProtoField.uint8("tether.echo_wait", "Echo wait (8 us units)", base.DEC)
f.check = ProtoField.uint32("tether.check", "Frame check (CRC-32C)", base.HEX)
f.check_status = ProtoField.string("tether.check.status", "Frame check status")
f.check_computed = ProtoField.uint32("tether.check.computed", "Computed frame check", base.HEX)
f.gid = ProtoField.uint16("tether.gid", "Group ID", base.DEC)
-- records
f.record = ProtoField.bytes("tether.record", "Record")
f.record_len = ProtoField.uint16("tether.record.len", "Record length", base.DEC)
f.record_type = ProtoField.uint8("tether.record.type", "Record type", base.DEC, record_types)
-- TLP
f.tlp = ProtoField.string("tether.tlp", "TLP")
f.tlp_name = ProtoField.string("tether.tlp.name", "TLP type")
f.tlp_fmt = ProtoField.uint8("tether.tlp.fmt", "Fmt", base.DEC, fmts, 0xe0)
f.tlp_type = ProtoField.uint8("tether.tlp.type", "Type", base.HEX, nil, 0x1f)
f.tlp_t9 = ProtoField.uint8("tether.tlp.t9", "T9", base.DEC, nil, 0x80)
f.tlp_tc = ProtoField.uint8("tether.tlp.tc", "Traffic class", base.DEC, nil, 0x70)
f.tlp_t8 = ProtoField.uint8("tether.tlp.t8", "T8", base.DEC, nil, 0x08)
f.tlp_ido = ProtoField.bool("tether.tlp.attr.ido", "ID-based ordering (Attr[2])", 8, nil, 0x04)
f.tlp_ln = ProtoField.bool("tether.tlp.ln", "Lightweight notification", 8, nil, 0x02)
f.tlp_th = ProtoField.bool("tether.tlp.th", "TLP processing hints", 8, nil, 0x01)
f.tlp_td = ProtoField.bool("tether.tlp.td", "TLP digest", 8, nil, 0x80)
f.tlp_ep = ProtoField.bool("tether.tlp.ep", "Poisoned", 8, nil, 0x40)
f.tlp_ro = ProtoField.bool("tether.tlp.attr.ro", "Relaxed ordering (Attr[1])", 8, nil, 0x20)
f.tlp_ns = ProtoField.bool("tether.tlp.attr.ns", "No snoop (Attr[0])", 8, nil, 0x10)
f.tlp_at = ProtoField.uint8("tether.tlp.at", "Address type", base.DEC, nil, 0x0c)
f.tlp_length = ProtoField.uint16("tether.tlp.length", "Length (DW)", base.DEC)
f.tlp_requester = ProtoField.string("tether.tlp.requester", "Requester ID")
f.tlp_completer = ProtoField.string("tether.tlp.completer", "Completer ID")
f.tlp_tag = ProtoField.uint16("tether.tlp.tag", "Tag", base.DEC)
f.tlp_last_be = ProtoField.uint8("tether.tlp.last_be", "Last DW BE", base.HEX, nil, 0xf0)
f.tlp_first_be = ProtoField.uint8("tether.tlp.first_be", "First DW BE", base.HEX, nil, 0x0f)
f.tlp_st = ProtoField.uint8("tether.tlp.st", "Steering tag", base.HEX)
f.tlp_address = ProtoField.uint64("tether.tlp.address", "Address", base.HEX)
f.tlp_ph = ProtoField.uint8("tether.tlp.ph", "Processing hint", base.DEC, nil, 0x03)
f.cfg_target = ProtoField.string("tether.tlp.cfg.target", "Target (bus:dev.fn)")
f.cfg_register = ProtoField.uint16("tether.tlp.cfg.register", "Register offset", base.HEX)
f.cpl_status = ProtoField.uint8("tether.tlp.cpl.status", "Completion status", base.DEC, cpl_status, 0xe0)
f.cpl_bcm = ProtoField.bool("tether.tlp.cpl.bcm", "Byte count modified", 8, nil, 0x10)
f.cpl_byte_count = ProtoField.uint16("tether.tlp.cpl.byte_count", "Byte count", base.DEC)
f.cpl_requester = ProtoField.string("tether.tlp.cpl.requester", "Requester ID")
f.cpl_tag = ProtoField.uint16("tether.tlp.cpl.tag", "Tag", base.DEC)
f.cpl_lower_address = ProtoField.uint8("tether.tlp.cpl.lower_address", "Lower address", base.HEX, nil, 0x7f)
f.msg_code = ProtoField.uint8("tether.tlp.msg.code", "Message code", base.HEX, msg_codes)
f.msg_routing = ProtoField.uint8("tether.tlp.msg.routing", "Routing", base.DEC, routings, 0x07)
f.msg_dest = ProtoField.string("tether.tlp.msg.destination", "Destination ID")
f.msg_vendor = ProtoField.uint16("tether.tlp.msg.vendor_id", "Vendor ID", base.HEX)
f.msg_vendor_data = ProtoField.uint32("tether.tlp.msg.vendor_data", "Vendor data", base.HEX)
f.msg_body = ProtoField.bytes("tether.tlp.msg.body", "Message header bytes 8-15")
f.tlp_data = ProtoField.bytes("tether.tlp.data", "Data")
f.tlp_digest = ProtoField.uint32("tether.tlp.digest", "TLP digest (ECRC)", base.HEX)
f.request_in = ProtoField.framenum("tether.tlp.request_in", "Request in frame", base.NONE, frametype.REQUEST)
f.response_in = ProtoField.framenum("tether.tlp.response_in", "Completion in frame", base.NONE, frametype.RESPONSE)
f.latency = ProtoField.double("tether.tlp.latency_us", "Completion latency (us)")
-- INFO
f.info_role = ProtoField.uint8("tether.info.role", "Bridge role", base.DEC, roles)
f.info_count = ProtoField.uint8("tether.info.device_count", "Devices", base.DEC)
f.info_flags = ProtoField.uint16("tether.info.flags", "Flags", base.HEX)
f.info_bridge = ProtoField.uint64("tether.info.bridge_id", "Bridge ID", base.HEX)
f.info_mtu = ProtoField.uint16("tether.info.mtu", "MTU", base.DEC)
f.info_max_tlps = ProtoField.uint16("tether.info.max_tlps", "Max TLPs per frame", base.DEC)
f.info_interval = ProtoField.uint16("tether.info.interval_ms", "Announce interval (ms)", base.DEC)
f.info_mps = ProtoField.uint16("tether.info.max_payload", "Max payload size", base.DEC)
f.info_mrrs = ProtoField.uint16("tether.info.max_read_request", "Max read request size", base.DEC)
f.dev = ProtoField.bytes("tether.info.device", "Device")
f.dev_slot = ProtoField.uint8("tether.info.device.slot", "Slot", base.DEC)
f.dev_flags = ProtoField.uint8("tether.info.device.flags", "Flags", base.HEX)
f.dev_gid = ProtoField.uint16("tether.info.device.gid", "Group ID", base.DEC)
f.dev_vendor = ProtoField.uint16("tether.info.device.vendor_id", "Vendor ID", base.HEX)
f.dev_device = ProtoField.uint16("tether.info.device.device_id", "Device ID", base.HEX)
f.dev_class = ProtoField.uint24("tether.info.device.class", "Class code", base.HEX)
f.dev_rev = ProtoField.uint8("tether.info.device.revision", "Revision", base.HEX)
f.dev_ssvid = ProtoField.uint16("tether.info.device.subsystem_vendor_id", "Subsystem vendor ID", base.HEX)
f.dev_ssid = ProtoField.uint16("tether.info.device.subsystem_id", "Subsystem ID", base.HEX)
-- CTRL
f.ctrl_op = ProtoField.uint8("tether.ctrl.op", "Operation", base.DEC, ctrl_ops)
f.ctrl_status = ProtoField.uint8("tether.ctrl.status", "Status", base.DEC, ctrl_status)
f.ctrl_gid = ProtoField.uint16("tether.ctrl.gid", "Group ID", base.DEC)
f.ctrl_request = ProtoField.uint32("tether.ctrl.request_id", "Request ID", base.DEC)
f.ctrl_target = ProtoField.uint64("tether.ctrl.target", "Target bridge ID", base.HEX)
f.ctrl_slot = ProtoField.uint8("tether.ctrl.slot", "Slot", base.DEC)
-- authentication tag (AUTH flag) and what follows the frame
f.auth_nonce = ProtoField.bytes("tether.auth.nonce", "Nonce")
f.auth_tag = ProtoField.bytes("tether.auth.tag", "Authentication tag")
f.auth_status = ProtoField.string("tether.auth.status", "Authentication status")
f.auth_computed = ProtoField.bytes("tether.auth.computed", "Computed authentication tag")
f.auth_key = ProtoField.string("tether.auth.key", "Key fingerprint")
f.padding = ProtoField.bytes("tether.padding", "Padding")

local e_bad_check = ProtoExpert.new("tether.check.bad", "Frame check mismatch", expert.group.CHECKSUM, expert.severity.ERROR)
local e_malformed = ProtoExpert.new("tether.malformed", "Malformed", expert.group.MALFORMED, expert.severity.ERROR)
local e_unmatched = ProtoExpert.new("tether.tlp.unmatched", "Completion without a request in this capture", expert.group.SEQUENCE, expert.severity.NOTE)
local e_bad_auth = ProtoExpert.new("tether.auth.bad", "Authentication tag mismatch", expert.group.SECURITY or expert.group.CHECKSUM, expert.severity.ERROR)
tether.experts = { e_bad_check, e_malformed, e_unmatched, e_bad_auth }

tether.prefs.keys = Pref.string("Group keys", "",
    "Group secrets to check authentication tags with: GID=HEX[,GID=HEX...], each HEX "
    .. "a group's 32-byte secret as 64 hexadecimal digits (a key file's contents). "
    .. "Malformed entries are ignored.")

local vlan_id = Field.new("vlan.id")
local eth_dst = Field.new("eth.dst")
local eth_src = Field.new("eth.src")

-- CRC-32C (Castagnoli), reflected polynomial 0x82F63B78.
local crc_table = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if bit.band(c, 1) == 1 then
            c = bit.bxor(bit.rshift(c, 1), 0x82f63b78)
        else
            c = bit.rshift(c, 1)
        end
    end
    crc_table[i] = c
end

local function crc32c_update(crc, bytes, from, to)
    for i = from, to do
        crc = bit.bxor(crc_table[bit.band(bit.bxor(crc, bytes:get_index(i)), 0xff)], bit.rshift(crc, 8))
    end
    return crc
end

local function frame_check(gid, tvb, total)
    local b = tvb:range(0, total):bytes()
    local crc = 0xffffffff
    local g = ByteArray.new()
    g:set_size(2)
    g:set_index(0, bit.band(bit.rshift(gid, 8), 0x0f))
    g:set_index(1, bit.band(gid, 0xff))
    crc = crc32c_update(crc, g, 0, 1)
    crc = crc32c_update(crc, b, 0, 31)
    local zero = ByteArray.new("00 00 00 00")
    crc = crc32c_update(crc, zero, 0, 3)
    if total > 36 then
        crc = crc32c_update(crc, b, 36, total - 1)
    end
    return bit.bxor(crc, 0xffffffff)
end

-- SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104) on Lua strings. Works with either
-- bit library: Lua 5.2's bit32 returns unsigned results, LuaBitOp signed ones, so every
-- sum is reduced with % 2^32, which maps both to 0 .. 2^32-1; the bit operations
-- themselves take either form.
local TWO32 = 4294967296

local SHA256_K = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
local SHA256_H0 = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
}

local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local lshift, rshift = bit.lshift, bit.rshift

-- Rotate right by n (0 < n < 32).
local function ror(x, n)
    return bor(rshift(x, n), lshift(x, 32 - n))
end

-- Absorbs the 64-byte block of s at 1-based index i into state h (8 words).
local function sha256_block(h, s, i)
    local w = {}
    for j = 0, 15 do
        local b1, b2, b3, b4 = s:byte(i + 4 * j, i + 4 * j + 3)
        w[j] = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    end
    for j = 16, 63 do
        local x, y = w[j - 15], w[j - 2]
        local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
        local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
        w[j] = (w[j - 16] + s0 + w[j - 7] + s1) % TWO32
    end
    local a, b, c, d, e, f_, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
    for j = 0, 63 do
        local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
        local ch = bxor(band(e, f_), band(bnot(e), g))
        local t1 = (hh + S1 + ch + SHA256_K[j + 1] + w[j]) % TWO32
        local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
        local maj = bxor(band(a, b), band(a, c), band(b, c))
        local t2 = (S0 + maj) % TWO32
        hh, g, f_, e, d, c, b, a = g, f_, e, (d + t1) % TWO32, c, b, a, (t1 + t2) % TWO32
    end
    h[1] = (h[1] + a) % TWO32
    h[2] = (h[2] + b) % TWO32
    h[3] = (h[3] + c) % TWO32
    h[4] = (h[4] + d) % TWO32
    h[5] = (h[5] + e) % TWO32
    h[6] = (h[6] + f_) % TWO32
    h[7] = (h[7] + g) % TWO32
    h[8] = (h[8] + hh) % TWO32
end

-- The digest (32-byte string) of msg hashed after `done` bytes already absorbed into
-- state h (a multiple of 64; 0 with the initial state). h is not changed.
local function sha256_finish(h, done, msg)
    local st = { h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8] }
    local n = #msg
    local bits = (done + n) * 8
    local len = {}
    for i = 8, 1, -1 do
        len[i] = string.char(bits % 256)
        bits = math.floor(bits / 256)
    end
    local m = msg .. "\128" .. string.rep("\0", (55 - n) % 64) .. table.concat(len)
    for i = 1, #m, 64 do
        sha256_block(st, m, i)
    end
    local out = {}
    for i = 1, 8 do
        local v = st[i]
        out[i] = string.char(math.floor(v / 16777216) % 256, math.floor(v / 65536) % 256,
            math.floor(v / 256) % 256, v % 256)
    end
    return table.concat(out)
end

local function sha256(msg)
    return sha256_finish(SHA256_H0, 0, msg)
end

-- HMAC-SHA-256 with the key absorbed: the states after the inner and outer pads.
local function hmac_sha256_key(key)
    if #key > 64 then
        key = sha256(key)
    end
    key = key .. string.rep("\0", 64 - #key)
    local ipad, opad = {}, {}
    for i = 1, 64 do
        local k = key:byte(i)
        ipad[i] = string.char(bxor(k, 0x36) % 256)
        opad[i] = string.char(bxor(k, 0x5c) % 256)
    end
    local inner, outer = {}, {}
    for i = 1, 8 do
        inner[i], outer[i] = SHA256_H0[i], SHA256_H0[i]
    end
    sha256_block(inner, table.concat(ipad), 1)
    sha256_block(outer, table.concat(opad), 1)
    return { inner = inner, outer = outer }
end

local function hmac_sha256_with(k, msg)
    return sha256_finish(k.outer, 64, sha256_finish(k.inner, 64, msg))
end

local function hmac_sha256(key, msg)
    return hmac_sha256_with(hmac_sha256_key(key), msg)
end

local function tohex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function fromhex(h)
    return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end
-- end of SHA-256

-- AES-128 (FIPS 197), encryption of single blocks only; decryption is never needed.
-- Byte-oriented: a block is a table of 16 bytes (1-based, in wire order, so byte
-- (row r, column c) of the state is at 4c + r + 1), a key schedule a table of the 176
-- bytes of the 11 round keys. The S-box is built at load from inverses in GF(2^8)
-- (via powers of the generator 3) and the affine map; MUL2 and MUL3 are the products
-- MixColumns needs.
local AES_SBOX, AES_MUL2, AES_MUL3, AES_SHIFT = {}, {}, {}, {}
do
    local exp, log = {}, {}
    local x = 1
    for i = 0, 254 do
        exp[i], log[x] = x, i
        local x2 = x * 2
        if x2 >= 256 then
            x2 = bxor(x2, 0x11b)
        end
        x = bxor(x2, x)                 -- x * 3
    end
    local function rotl8(b, n)
        return band(bor(lshift(b, n), rshift(b, 8 - n)), 0xff)
    end
    for b = 0, 255 do
        local inv = b == 0 and 0 or exp[(255 - log[b]) % 255]
        AES_SBOX[b] = bxor(inv, rotl8(inv, 1), rotl8(inv, 2), rotl8(inv, 3), rotl8(inv, 4), 0x63)
        local d = b * 2
        if d >= 256 then
            d = bxor(d, 0x11b)
        end
        AES_MUL2[b], AES_MUL3[b] = d, bxor(d, b)
    end
    -- ShiftRows: row r moves r columns to the left.
    for c = 0, 3 do
        for r = 0, 3 do
            AES_SHIFT[4 * c + r + 1] = 4 * ((c + r) % 4) + r + 1
        end
    end
end
local AES_RCON = { 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36 }

-- The key schedule of a 16-byte key (a string).
local function aes128_schedule(key)
    local rk = { key:byte(1, 16) }
    for i = 17, 176, 4 do
        local t1, t2, t3, t4 = rk[i - 4], rk[i - 3], rk[i - 2], rk[i - 1]
        if i % 16 == 1 then
            -- first word of a round key: RotWord, SubWord, Rcon
            t1, t2, t3, t4 = bxor(AES_SBOX[t2], AES_RCON[(i - 1) / 16]), AES_SBOX[t3], AES_SBOX[t4], AES_SBOX[t1]
        end
        rk[i], rk[i + 1] = bxor(rk[i - 16], t1), bxor(rk[i - 15], t2)
        rk[i + 2], rk[i + 3] = bxor(rk[i - 14], t3), bxor(rk[i - 13], t4)
    end
    return rk
end

-- The encryption of block `input` under key schedule rk (a new 16-byte table).
local function aes128_encrypt(rk, input)
    local sbox, mul2, mul3, shift = AES_SBOX, AES_MUL2, AES_MUL3, AES_SHIFT
    local s = {}
    for i = 1, 16 do
        s[i] = bxor(input[i], rk[i])
    end
    for round = 1, 10 do
        local t = {}
        for i = 1, 16 do
            t[i] = sbox[s[shift[i]]]     -- SubBytes and ShiftRows
        end
        local k = 16 * round
        if round < 10 then
            -- MixColumns and AddRoundKey
            for c = 0, 12, 4 do
                local a0, a1, a2, a3 = t[c + 1], t[c + 2], t[c + 3], t[c + 4]
                s[c + 1] = bxor(mul2[a0], mul3[a1], a2, a3, rk[k + c + 1])
                s[c + 2] = bxor(a0, mul2[a1], mul3[a2], a3, rk[k + c + 2])
                s[c + 3] = bxor(a0, a1, mul2[a2], mul3[a3], rk[k + c + 3])
                s[c + 4] = bxor(mul3[a0], a1, a2, mul2[a3], rk[k + c + 4])
            end
        else
            for i = 1, 16 do
                s[i] = bxor(t[i], rk[k + i])
            end
        end
    end
    return s
end

-- GHASH (NIST SP 800-38D) on 128-bit values held as four 32-bit words, the first word
-- holding bytes 0-3 big-endian. GCM numbers the bits from the most significant bit of
-- byte 0 (the coefficient of x^0) to the least significant bit of byte 15 (x^127), so
-- multiplying by x shifts right by one bit, and the reduction by x^128 + x^7 + x^2 +
-- x + 1 folds the bit shifted out back in as 0xe1 at the top of byte 0.

-- h * x^i for i = 0 .. 127, at 4i + 1 .. 4i + 4 of a flat table.
local function ghash_table(h0, h1, h2, h3)
    local t = {}
    for i = 0, 127 do
        t[4 * i + 1], t[4 * i + 2], t[4 * i + 3], t[4 * i + 4] = h0, h1, h2, h3
        local out = band(h3, 1)
        h3 = bor(rshift(h3, 1), lshift(band(h2, 1), 31))
        h2 = bor(rshift(h2, 1), lshift(band(h1, 1), 31))
        h1 = bor(rshift(h1, 1), lshift(band(h0, 1), 31))
        h0 = rshift(h0, 1)
        if out ~= 0 then
            h0 = bxor(h0, 0xe1000000)
        end
    end
    return t
end

-- y * h in GF(2^128), ht = ghash_table(h): the xor of h * x^i over the bits i set in y.
local function gf128_mul(ht, y0, y1, y2, y3)
    local z0, z1, z2, z3 = 0, 0, 0, 0
    local y = { y0 % TWO32, y1 % TWO32, y2 % TWO32, y3 % TWO32 }
    for w = 1, 4 do
        local v = y[w]
        local i = (w - 1) * 128 + 1
        while v ~= 0 do
            if v >= 0x80000000 then
                z0, z1 = bxor(z0, ht[i]), bxor(z1, ht[i + 1])
                z2, z3 = bxor(z2, ht[i + 2]), bxor(z3, ht[i + 3])
                v = v - 0x80000000
            end
            v = v * 2
            i = i + 4
        end
    end
    return z0, z1, z2, z3
end

-- Big-endian word of bytes at .. at + 3 of string s, zeros past its end.
local function be_word(s, at)
    local b1, b2, b3, b4 = s:byte(at, at + 3)
    return (((b1 or 0) * 256 + (b2 or 0)) * 256 + (b3 or 0)) * 256 + (b4 or 0)
end

-- 16-byte GCM counter block: the 12-byte iv (a string) and a 32-bit block counter.
local function gcm_counter(iv, n)
    local b = { iv:byte(1, 12) }
    b[13], b[14] = math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256
    b[15], b[16] = math.floor(n / 256) % 256, n % 256
    return b
end

-- The AES-128-GCM tag (16-byte string) of plaintext p with additional data aad under a
-- 12-byte iv (all strings); s = { rk = key schedule, h = ghash_table(AES(0^128)) }.
-- The ciphertext is only hashed, never kept.
local function gcm_tag(s, iv, aad, p)
    local rk, ht = s.rk, s.h
    local y0, y1, y2, y3 = 0, 0, 0, 0
    for i = 1, #aad, 16 do
        y0, y1, y2, y3 = gf128_mul(ht, bxor(y0, be_word(aad, i)), bxor(y1, be_word(aad, i + 4)),
            bxor(y2, be_word(aad, i + 8)), bxor(y3, be_word(aad, i + 12)))
    end
    -- C = P xor the keystream from counter 2 on (inc32(J0)), zero-padded to whole blocks.
    local n = #p
    for i = 1, n, 16 do
        local ks = aes128_encrypt(rk, gcm_counter(iv, 2 + (i - 1) / 16))
        local pb = { p:byte(i, i + 15) }
        local c = {}
        for j = 1, 16 do
            c[j] = pb[j] and bxor(pb[j], ks[j]) or 0
        end
        y0, y1, y2, y3 = gf128_mul(ht,
            bxor(y0, ((c[1] * 256 + c[2]) * 256 + c[3]) * 256 + c[4]),
            bxor(y1, ((c[5] * 256 + c[6]) * 256 + c[7]) * 256 + c[8]),
            bxor(y2, ((c[9] * 256 + c[10]) * 256 + c[11]) * 256 + c[12]),
            bxor(y3, ((c[13] * 256 + c[14]) * 256 + c[15]) * 256 + c[16]))
    end
    -- the lengths in bits, 64-bit big-endian each (both fit the low word)
    y0, y1, y2, y3 = gf128_mul(ht, y0, bxor(y1, #aad * 8), y2, bxor(y3, n * 8))
    -- tag = S xor AES(J0), J0 = iv .. 00000001
    local e = aes128_encrypt(rk, gcm_counter(iv, 1))
    local out = {}
    for w, v in ipairs({ y0 % TWO32, y1 % TWO32, y2 % TWO32, y3 % TWO32 }) do
        local at = 4 * w - 3
        out[w] = string.char(bxor(math.floor(v / 16777216), e[at]), bxor(math.floor(v / 65536) % 256, e[at + 1]),
            bxor(math.floor(v / 256) % 256, e[at + 2]), bxor(v % 256, e[at + 3]))
    end
    return table.concat(out)
end
-- end of AES-128-GCM

-- Frame-tag keys: K = HMAC-SHA-256(secret, AUTH_LABEL), each derived once per secret.
-- Session frames are tagged under a key per sender, derived from K (session_for).
local AUTH_LABEL = "tether 2026-12-07 frame authentication tag v1"
local SESSION_LABEL = "tether 2026-12-07 session frame key v1"
local TAG_LEN = 16
local NONCE_LEN = 12
local derived = {}        -- secret (hex, lower case) -> { mac = HMAC state, id = fingerprint,
                          --   sessions = source MAC (raw) -> session key (session_for) }
local group_keys = {}     -- GID -> derived key
local keys_pref = nil     -- the preference text group_keys was parsed from
local auth_results = {}   -- "frame:offset:fingerprint" -> computed tag (raw)

local function derive(secret_hex)
    local d = derived[secret_hex]
    if d == nil then
        local k = hmac_sha256(fromhex(secret_hex), AUTH_LABEL)
        d = { mac = hmac_sha256_key(k), id = tohex(hmac_sha256(k, "fingerprint"):sub(1, 4)), sessions = {} }
        derived[secret_hex] = d
    end
    return d
end

-- The AES-128-GCM key of session frames from src (6 raw bytes) under derived key d:
-- Ks = the first 16 bytes of HMAC-SHA-256(K, SESSION_LABEL .. src), with its key
-- schedule and GHASH table, each derived once per (key, source).
local function session_for(d, src)
    local s = d.sessions[src]
    if s == nil then
        local rk = aes128_schedule(hmac_sha256_with(d.mac, SESSION_LABEL .. src):sub(1, 16))
        local h = aes128_encrypt(rk, { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 })
        local w = {}
        for i = 1, 4 do
            w[i] = ((h[4 * i - 3] * 256 + h[4 * i - 2]) * 256 + h[4 * i - 1]) * 256 + h[4 * i]
        end
        s = { rk = rk, h = ghash_table(w[1], w[2], w[3], w[4]) }
        d.sessions[src] = s
    end
    return s
end

-- Parses "GID=HEX64[,GID=HEX64...]"; entries that are not that are skipped.
local function parse_keys(text)
    local keys = {}
    for entry in string.gmatch(text or "", "[^,;%s]+") do
        local g, h = entry:match("^(%d+)=(%x+)$")
        local gid = tonumber(g)
        if gid ~= nil and gid <= 0x0fff and #h == 64 then
            local ok, d = pcall(derive, h:lower())
            if ok then
                keys[gid] = d
            end
        end
    end
    return keys
end

local function key_for(gid)
    local text = tether.prefs.keys or ""
    if text ~= keys_pref then
        local ok, keys = pcall(parse_keys, text)
        group_keys = ok and keys or {}
        keys_pref = text
    end
    return group_keys[gid]
end

local function mac_bytes(field)
    local all = { field() }
    local fi = all[#all]
    if fi == nil or fi.range == nil or fi.len ~= 6 then
        return nil
    end
    return fi.range:raw()
end

local function bdf(v)
    return string.format("%02x:%02x.%d", bit.rshift(v, 8), bit.band(bit.rshift(v, 3), 0x1f), bit.band(v, 7))
end

-- TLP mnemonic from Fmt and Type.
local function tlp_name(fmt, typ)
    local data = fmt == 2 or fmt == 3
    local four = fmt == 1 or fmt == 3
    if fmt == 4 then return "Prefix" end
    if typ == 0x00 then
        if data then return four and "MWr64" or "MWr32" end
        return four and "MRd64" or "MRd32"
    elseif typ == 0x01 and not data then return four and "MRdLk64" or "MRdLk32"
    elseif typ == 0x02 and not four then return data and "IOWr" or "IORd"
    elseif typ == 0x04 and not four then return data and "CfgWr0" or "CfgRd0"
    elseif typ == 0x05 and not four then return data and "CfgWr1" or "CfgRd1"
    elseif typ == 0x0a and not four then return data and "CplD" or "Cpl"
    elseif typ == 0x0b and not four then return data and "CplDLk" or "CplLk"
    elseif typ == 0x0c and data then return "FetchAdd"
    elseif typ == 0x0d and data then return "Swap"
    elseif typ == 0x0e and data then return "CAS"
    elseif bit.band(typ, 0x18) == 0x10 and four then return data and "MsgD" or "Msg"
    end
    return nil
end

-- Request/completion matching state, rebuilt on every (re)load of the capture.
local outstanding = {}   -- key -> { frame, time, record }
local matches = {}       -- "frame:record" -> { request_frame, latency_us }
local responses = {}     -- "frame:record" of a request -> completion frame

function tether.init()
    outstanding = {}
    matches = {}
    responses = {}
    auth_results = {}
end

local function dissect_tlp(tvb, pinfo, tree, gid, rec_no)
    local len = tvb:len()
    if len < 4 then
        tree:add_proto_expert_info(e_malformed, "TLP shorter than one DW")
        return "?"
    end
    local b0 = tvb(0, 1):uint()
    local fmt = bit.rshift(b0, 5)
    local typ = bit.band(b0, 0x1f)
    local name = tlp_name(fmt, typ)
    if name == nil then
        tree:add_proto_expert_info(e_malformed, string.format("Reserved Fmt %d / Type 0x%02x", fmt, typ))
        return "reserved"
    end
    local four = fmt == 1 or fmt == 3
    local data = fmt == 2 or fmt == 3
    local hdr = four and 16 or 12
    local t = tree:add(f.tlp, tvb(), name)
    t:set_text("TLP: " .. name)
    t:add(f.tlp_name, tvb(0, 1), name)
    t:add(f.tlp_fmt, tvb(0, 1))
    t:add(f.tlp_type, tvb(0, 1))
    if len < hdr then
        t:add_proto_expert_info(e_malformed, "Truncated TLP header")
        return name
    end
    local b1 = tvb(1, 1)
    local b2 = tvb(2, 1)
    t:add(f.tlp_t9, b1)
    t:add(f.tlp_tc, b1)
    t:add(f.tlp_t8, b1)
    t:add(f.tlp_ido, b1)
    t:add(f.tlp_ln, b1)
    t:add(f.tlp_th, b1)
    t:add(f.tlp_td, b2)
    t:add(f.tlp_ep, b2)
    t:add(f.tlp_ro, b2)
    t:add(f.tlp_ns, b2)
    t:add(f.tlp_at, b2)
    local raw_len = bit.band(tvb(2, 2):uint(), 0x3ff)
    local length = raw_len == 0 and 1024 or raw_len
    t:add(f.tlp_length, tvb(2, 2), length)
    local tag_hi = bit.bor(bit.band(bit.rshift(b1:uint(), 7), 1) * 512, bit.band(bit.rshift(b1:uint(), 3), 1) * 256)
    local th = bit.band(b1:uint(), 1) == 1
    local td = bit.band(b2:uint(), 0x80) ~= 0
    local key = nil
    local summary = name
    local is_cpl = typ == 0x0a or typ == 0x0b
    local is_msg = bit.band(typ, 0x18) == 0x10
    local id = tvb(4, 2):uint()
    if is_cpl then
        t:add(f.tlp_completer, tvb(4, 2), bdf(id))
        t:add(f.cpl_status, tvb(6, 1))
        t:add(f.cpl_bcm, tvb(6, 1))
        local bc = bit.band(tvb(6, 2):uint(), 0xfff)
        if bc == 0 then bc = 4096 end
        t:add(f.cpl_byte_count, tvb(6, 2), bc)
        local req = tvb(8, 2):uint()
        local tag = tag_hi + tvb(10, 1):uint()
        t:add(f.cpl_requester, tvb(8, 2), bdf(req))
        t:add(f.cpl_tag, tvb(10, 1), tag)
        t:add(f.cpl_lower_address, tvb(11, 1))
        local st = cpl_status[bit.rshift(tvb(6, 1):uint(), 5)] or "reserved"
        summary = string.format("%s %s tag %d %s", name, bdf(req), tag, st)
        key = gid .. "/" .. req .. "/" .. tag
        local here = pinfo.number .. ":" .. rec_no
        if not pinfo.visited then
            local r = outstanding[key]
            if r ~= nil then
                local lat = (pinfo.rel_ts - r.time) * 1e6
                matches[here] = { frame = r.frame, latency = lat }
                if responses[r.frame .. ":" .. r.record] == nil then
                    responses[r.frame .. ":" .. r.record] = pinfo.number
                end
                local la = bit.band(tvb(11, 1):uint(), 3)
                local payload = data and (length * 4) or 0
                if not data or payload - la >= bc then
                    outstanding[key] = nil
                end
            end
        end
        local m = matches[here]
        if m ~= nil then
            t:add(f.request_in, m.frame):set_generated()
            t:add(f.latency, math.floor(m.latency * 1000 + 0.5) / 1000):set_generated()
        else
            t:add_proto_expert_info(e_unmatched)
        end
    else
        t:add(f.tlp_requester, tvb(4, 2), bdf(id))
        local tag = tag_hi + tvb(6, 1):uint()
        local st_in_tag = th and data and typ == 0x00
        if st_in_tag then
            t:add(f.tlp_st, tvb(6, 1))
        else
            t:add(f.tlp_tag, tvb(6, 1), tag)
        end
        if is_msg then
            t:add(f.msg_code, tvb(7, 1))
            t:add(f.msg_routing, tvb(0, 1))
            local code = tvb(7, 1):uint()
            local routing = bit.band(typ, 7)
            if routing == 1 then
                t:add(f.tlp_address, tvb(8, 8))
            elseif routing == 2 then
                t:add(f.msg_dest, tvb(8, 2), bdf(tvb(8, 2):uint()))
            end
            if code == 0x7e or code == 0x7f then
                t:add(f.msg_vendor, tvb(10, 2))
                t:add(f.msg_vendor_data, tvb(12, 4))
            elseif routing ~= 1 then
                t:add(f.msg_body, tvb(8, 8))
            end
            summary = string.format("%s %s", name, msg_codes[code] or string.format("code 0x%02x", code))
        else
            if th and (typ == 0x00 or typ == 0x01 or typ >= 0x0c) and not st_in_tag then
                t:add(f.tlp_st, tvb(7, 1))
            else
                t:add(f.tlp_last_be, tvb(7, 1))
                t:add(f.tlp_first_be, tvb(7, 1))
            end
            if typ == 0x04 or typ == 0x05 then
                local target = tvb(8, 2):uint()
                local reg = bit.bor(bit.lshift(bit.band(tvb(10, 1):uint(), 0x0f), 8), bit.band(tvb(11, 1):uint(), 0xfc))
                t:add(f.cfg_target, tvb(8, 2), bdf(target))
                t:add(f.cfg_register, tvb(10, 2), reg)
                summary = string.format("%s %s reg 0x%03x", name, bdf(target), reg)
            else
                local addr
                if four then
                    addr = UInt64.new(bit.band(tvb(12, 4):uint(), 0xfffffffc), tvb(8, 4):uint())
                    t:add(f.tlp_address, tvb(8, 8), addr)
                    t:add(f.tlp_ph, tvb(15, 1))
                else
                    addr = UInt64.new(bit.band(tvb(8, 4):uint(), 0xfffffffc), 0)
                    t:add(f.tlp_address, tvb(8, 4), addr)
                    t:add(f.tlp_ph, tvb(11, 1))
                end
                summary = string.format("%s 0x%s", name, addr:tohex():gsub("^0+(.)", "%1"))
            end
            -- Non-posted requests expect completions.
            local non_posted = not (typ == 0x00 and data)
            if non_posted then
                key = gid .. "/" .. id .. "/" .. tag
                local here = pinfo.number .. ":" .. rec_no
                if not pinfo.visited then
                    outstanding[key] = { frame = pinfo.number, time = pinfo.rel_ts, record = rec_no }
                end
                local resp = responses[here]
                if resp ~= nil then
                    t:add(f.response_in, resp):set_generated()
                end
                summary = summary .. string.format(" tag %d", tag)
            end
        end
    end
    local payload_len = data and length * 4 or 0
    local expected = hdr + payload_len + (td and 4 or 0)
    if len ~= expected then
        t:add_proto_expert_info(e_malformed, string.format("TLP is %d bytes, its header implies %d", len, expected))
        return summary
    end
    if data then
        t:add(f.tlp_data, tvb(hdr, payload_len))
    end
    if td then
        t:add(f.tlp_digest, tvb(hdr + payload_len, 4))
    end
    t:set_text("TLP: " .. summary)
    return summary
end

-- The authentication trailer at tvb(total), total = the length of the covered bytes
-- (header and payload): for session frames (session true) the nonce and the
-- AES-128-GCM tag, otherwise the HMAC tag at tvb(total, TAG_LEN). The tag is checked
-- with the group's key if the "keys" preference has one.
local function dissect_auth(tvb, pinfo, tree, gid, total, session)
    local nonce = nil
    local tag_at = total
    if session then
        nonce = tvb(total, NONCE_LEN)
        tree:add(f.auth_nonce, nonce)
        tag_at = total + NONCE_LEN
    end
    local range = tvb(tag_at, TAG_LEN)
    local t = tree:add(f.auth_tag, range)
    local key = key_for(gid)
    if key == nil then
        t:add(f.auth_status, string.format("not checked (no key for group %d)", gid)):set_generated()
        return
    end
    t:add(f.auth_key, key.id):set_generated()
    local cache = pinfo.number .. ":" .. tvb:offset() .. ":" .. key.id
    local computed = auth_results[cache]
    if computed == nil then
        local dst, src = mac_bytes(eth_dst), mac_bytes(eth_src)
        if dst == nil or src == nil then
            t:add(f.auth_status, "not checked (no Ethernet addresses)"):set_generated()
            return
        end
        local g = band(gid, 0x0fff)
        local aad = dst .. src .. string.char(math.floor(g / 256), g % 256)
        local covered = tvb:range(0, total):raw()
        if session then
            computed = gcm_tag(session_for(key, src), nonce:raw(), aad, covered)
        else
            computed = hmac_sha256_with(key.mac, aad .. covered):sub(1, TAG_LEN)
        end
        auth_results[cache] = computed
    end
    if computed == range:raw() then
        t:add(f.auth_status, "good"):set_generated()
    else
        t:add(f.auth_status, "bad"):set_generated()
        t:add(f.auth_computed, range, computed):set_generated()
        t:add_proto_expert_info(e_bad_auth)
    end
end

local function dissect_info(tvb, tree)
    if tvb:len() < 24 then
        tree:add_proto_expert_info(e_malformed, "INFO payload shorter than 24 bytes")
        return "INFO"
    end
    tree:add(f.info_role, tvb(0, 1))
    tree:add(f.info_count, tvb(1, 1))
    tree:add(f.info_flags, tvb(2, 2))
    tree:add(f.info_bridge, tvb(4, 8))
    tree:add(f.info_mtu, tvb(12, 2))
    tree:add(f.info_max_tlps, tvb(14, 2))
    tree:add(f.info_interval, tvb(16, 2))
    tree:add(f.info_mps, tvb(18, 2))
    tree:add(f.info_mrrs, tvb(20, 2))
    local n = tvb(1, 1):uint()
    for i = 0, n - 1 do
        local at = 24 + i * 16
        if at + 16 > tvb:len() then
            tree:add_proto_expert_info(e_malformed, "INFO device entries truncated")
            break
        end
        local d = tree:add(f.dev, tvb(at, 16))
        d:set_text(string.format("Device slot %d [%04x:%04x] GID %d", tvb(at, 1):uint(), tvb(at + 4, 2):uint(), tvb(at + 6, 2):uint(), tvb(at + 2, 2):uint()))
        d:add(f.dev_slot, tvb(at, 1))
        d:add(f.dev_flags, tvb(at + 1, 1))
        d:add(f.dev_gid, tvb(at + 2, 2))
        d:add(f.dev_vendor, tvb(at + 4, 2))
        d:add(f.dev_device, tvb(at + 6, 2))
        d:add(f.dev_class, tvb(at + 8, 3))
        d:add(f.dev_rev, tvb(at + 11, 1))
        d:add(f.dev_ssvid, tvb(at + 12, 2))
        d:add(f.dev_ssid, tvb(at + 14, 2))
    end
    return string.format("INFO %s, %d device(s)", roles[tvb(0, 1):uint()] or "?", n)
end

local function dissect_ctrl(tvb, tree)
    if tvb:len() < 20 then
        tree:add_proto_expert_info(e_malformed, "CTRL payload shorter than 20 bytes")
        return "CTRL"
    end
    tree:add(f.ctrl_op, tvb(0, 1))
    tree:add(f.ctrl_status, tvb(1, 1))
    tree:add(f.ctrl_gid, tvb(2, 2))
    tree:add(f.ctrl_request, tvb(4, 4))
    tree:add(f.ctrl_target, tvb(8, 8))
    tree:add(f.ctrl_slot, tvb(16, 1))
    return string.format("CTRL %s slot %d GID %d", ctrl_ops[tvb(0, 1):uint()] or "?", tvb(16, 1):uint(), tvb(2, 2):uint())
end

function tether.dissector(tvb, pinfo, tree)
    if tvb:len() < HEADER_LEN then
        return 0
    end
    pinfo.cols.protocol = "tether"
    local root = tree:add(tether, tvb())
    local gid_field = vlan_id()
    local gid = gid_field and gid_field.value or 0
    root:add(f.gid, gid):set_generated()
    local kind = bit.band(tvb(0, 1):uint(), 0x0f)
    root:add(f.version, tvb(0, 1))
    root:add(f.kind, tvb(0, 1))
    local fl = root:add(f.flags, tvb(1, 1))
    fl:add(f.flag_ack, tvb(1, 1))
    fl:add(f.flag_syn, tvb(1, 1))
    fl:add(f.flag_probe, tvb(1, 1))
    fl:add(f.flag_auth, tvb(1, 1))
    fl:add(f.flag_gap_end, tvb(1, 1))
    fl:add(f.flag_reserved, tvb(1, 1))
    root:add(f.payload_len, tvb(2, 2))
    root:add(f.epoch, tvb(4, 4))
    root:add(f.peer_epoch, tvb(8, 4))
    root:add(f.seq, tvb(12, 4))
    root:add(f.ack, tvb(16, 4))
    -- A NAK with the GAP_END flag: the sequence number field is where the gap ends.
    local gap_end = kind == 3 and bit.band(tvb(1, 1):uint(), 0x10) ~= 0
    if gap_end then
        root:add(f.gap_end, tvb(12, 4))
    end
    root:add(f.tsval, tvb(20, 4))
    root:add(f.tsecr, tvb(24, 4))
    root:add(f.window, tvb(28, 2))
    root:add(f.hlen, tvb(30, 1))
    root:add(f.echo_wait, tvb(31, 1))
    local hlen = tvb(30, 1):uint() * 4
    local plen = tvb(2, 2):uint()
    local total = hlen + plen
    local ck = root:add(f.check, tvb(32, 4))
    if hlen < HEADER_LEN or total > tvb:len() then
        root:add_proto_expert_info(e_malformed, "Header or payload length runs past the frame")
        return tvb:len()
    end
    -- A frame with the AUTH flag carries 0: its tag covers what the check would.
    local authenticated = bit.band(tvb(1, 1):uint(), 0x08) ~= 0
    local computed = authenticated and 0 or frame_check(gid, tvb, total)
    if authenticated and computed == tvb(32, 4):uint() then
        ck:add(f.check_status, "not used (the authentication tag covers the frame)"):set_generated()
    elseif computed == tvb(32, 4):uint() then
        ck:add(f.check_status, "good"):set_generated()
    else
        ck:add(f.check_status, "bad"):set_generated()
        ck:add(f.check_computed, computed):set_generated()
        ck:add_proto_expert_info(e_bad_check)
    end
    -- After the payload: the authentication trailer (AUTH flag), then padding. Session
    -- frames (DATA, ACK, NAK) carry a nonce before the tag.
    local after = total
    if bit.band(tvb(1, 1):uint(), 0x08) ~= 0 then
        local session = kind == 1 or kind == 2 or kind == 3
        local trailer = session and NONCE_LEN + TAG_LEN or TAG_LEN
        if total + trailer > tvb:len() then
            root:add_proto_expert_info(e_malformed, session and "Authentication nonce and tag run past the frame"
                or "Authentication tag runs past the frame")
            after = tvb:len()
        else
            dissect_auth(tvb, pinfo, root, gid, total, session)
            after = total + trailer
        end
    end
    if after < tvb:len() then
        root:add(f.padding, tvb(after))
    end
    local name = kinds[kind] or string.format("kind %d", kind)
    root:set_text(string.format("tether %s, GID %d, Seq %d, Ack %d", name, gid, tvb(12, 4):uint(), tvb(16, 4):uint()))
    local payload = plen > 0 and tvb(hlen, plen) or nil
    local info = name .. string.format(" seq=%d ack=%d", tvb(12, 4):uint(), tvb(16, 4):uint())
    if gap_end then
        info = info .. string.format(" resend %d..%d", tvb(16, 4):uint(), tvb(12, 4):uint())
    end
    if payload == nil then
        -- ACK, NAK, or an empty DATA frame.
    elseif kind == 1 then
        local at = 0
        local rec_no = 0
        local parts = {}
        while at + 4 <= plen do
            local rlen = payload(at, 2):uint()
            local r = root:add(f.record, payload(at, math.min(4 + rlen, plen - at)))
            r:set_text(string.format("Record %d (%d bytes)", rec_no, rlen))
            r:add(f.record_len, payload(at, 2))
            r:add(f.record_type, payload(at + 2, 1))
            if at + 4 + rlen > plen then
                r:add_proto_expert_info(e_malformed, "Record runs past the payload")
                break
            end
            if payload(at + 2, 1):uint() == 1 and rlen > 0 then
                parts[#parts + 1] = dissect_tlp(payload(at + 4, rlen):tvb(), pinfo, r, gid, rec_no)
            end
            at = at + 4 + rlen
            rec_no = rec_no + 1
        end
        if #parts > 0 then
            info = info .. ": " .. table.concat(parts, ", ")
        end
    elseif kind == 4 then
        info = dissect_info(payload:tvb(), root)
    elseif kind == 5 then
        info = dissect_ctrl(payload:tvb(), root)
    end
    pinfo.cols.info = info
    return tvb:len()
end

DissectorTable.get("ethertype"):add(ETHERTYPE, tether)
