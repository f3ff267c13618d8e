#!/usr/bin/env bash
# A capture of a real memdev run, as docs/captures/memdev.pcap holds it: an I/O box and
# a host bridge (tether iobox, tether host with self_test) in network namespaces on a
# Linux bridge, and `tether capture` on the bridge's port to the host, from before the
# box starts until the host's verified copies are done: discovery (INFO), the hot-plug,
# enumeration (configuration reads and writes), BAR setup, DMA both ways with its
# completions, MSI-X, the efe session's acknowledgements. As root.
#
#   bench/capture-memdev.sh [OUT.pcap]      (default docs/captures/memdev.pcap)
#   tether wire decode --pcap OUT.pcap --stats
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/captures/memdev.pcap}
COPIES=${COPIES:-8}
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (namespaces, raw sockets)" >&2; exit 1; }
if [ -n "${TETHER_BIN:-}" ]; then T=$TETHER_BIN; else
    cargo build --release -q -p tether
    T=$PWD/target/release/tether
fi
W=$(mktemp -d /tmp/tether-capture.XXXXXX)
cleanup() {
    pkill -f "$W/" 2>/dev/null || true
    for ns in tcmsw tcmbox tcmhost; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT
for ns in tcmsw tcmbox tcmhost; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n tcmbox link add cmbox type veth peer name swbox netns tcmsw
ip -n tcmhost link add cmhost type veth peer name swhost netns tcmsw
ip -n tcmsw link add br0 type bridge
for p in swbox swhost; do ip -n tcmsw link set "$p" master br0 up; done
ip -n tcmsw link set br0 up
ip -n tcmbox link set cmbox up
ip -n tcmhost link set cmhost up
cat >"$W/box.toml" <<CONF
[port]
interface = "cmbox"
kind = "af-packet"
[bridge]
id = 0xb0c5
[[device]]
slot = 0
model = "memdev"
gid = 10
buffer_size = 16384
CONF
cat >"$W/host.toml" <<CONF
gid = 10
self_test = $COPIES
[port]
interface = "cmhost"
kind = "af-packet"
CONF
ip netns exec tcmsw "$T" capture -i swhost -w "$W/run.pcap" -d 30 2>"$W/capture.log" &
CAP=$!
sleep 0.3
ip netns exec tcmbox "$T" iobox --config "$W/box.toml" 2>"$W/box.log" &
ip netns exec tcmhost "$T" host --config "$W/host.toml" 2>"$W/host.log" &
for _ in $(seq 300); do
    grep -q "self-test: $COPIES DMA copies verified" "$W/host.log" && break
    sleep 0.1
done
grep "self-test" "$W/host.log" || { cat "$W/host.log" >&2; exit 1; }
sleep 0.2
kill -INT $CAP; wait $CAP || true
mkdir -p "$(dirname "$OUT")"
cp "$W/run.pcap" "$OUT"
"$T" wire decode --pcap "$OUT" --stats
ls -l "$OUT"
