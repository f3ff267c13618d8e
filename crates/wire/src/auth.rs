//! Frame authentication (docs/wire-format.md, "Authentication"): every frame of a
//! group that has a key carries the header's AUTH flag and a trailer after its payload.
//!
//! - INFO and CTRL (sent to anyone in the group, by bridges and managers alike, rarely):
//!   a 16-byte tag, HMAC-SHA-256 truncated to 16 bytes (HMAC-SHA-256-128, as IPsec uses
//!   it) under the group's [`AuthKey`]. A PRF-based MAC needs no nonce, so any number
//!   of senders share the key without coordinating anything.
//! - DATA, ACK and NAK (a session's frames, the data path): a 12-byte nonce and a
//!   16-byte tag, the AES-128-GCM tag under the sender's [`SessionKey`] (derived from
//!   the group key and the sender's MAC address) with the payload in clear: the
//!   Ethernet addresses and Group ID as associated data, the tether header and payload
//!   as the message, and the ciphertext thrown away. On CPUs with AES and carry-less
//!   multiplication instructions this costs a third of the HMAC; it needs a nonce that
//!   never repeats under a key, which each sender draws from its own [`NonceSeq`].
//!
//! Both cover the destination and source MAC addresses, the Group ID (its 12 bits as
//! two big-endian bytes, as in the frame check; switches may rewrite the PCP), and the
//! tether header and payload exactly as sent (the header's frame check included). The
//! choice was made by `cargo bench -p wire --bench auth` on the project's machine;
//! docs/wire-format.md gives the numbers.
//!
//! ```
//! use wire::auth::{AuthKey, NonceSeq};
//! use wire::MacAddr;
//! let key = AuthKey::from_secret(&[0x42; 32]);
//! let other = AuthKey::from_secret(&[0x43; 32]);
//! let t = wire::auth::tag_bytes(&key, b"frame");
//! assert!(key.verify(&t, &[b"frame".as_slice()]));
//! assert!(!other.verify(&t, &[b"frame".as_slice()]));
//!
//! // A session frame's tag: the sender's key, a fresh nonce.
//! let sender = MacAddr([2, 0, 0, 0, 0, 1]);
//! let mut nonces = NonceSeq::new(7, 1000);
//! let nonce = nonces.next();
//! let aad = [0u8; 14];
//! let t = key.session_key(sender).tag(&nonce, &aad, b"header and payload");
//! assert!(key.session_key(sender).verify(&t, &nonce, &aad, b"header and payload"));
//! assert!(!key.session_key(MacAddr([2, 0, 0, 0, 0, 2])).verify(&t, &nonce, &aad, b"header and payload"));
//! assert_ne!(nonces.next(), nonce);
//! ```

use std::fmt;

use std::cell::RefCell;

use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, UnboundKey, AES_128_GCM};
use sha2::Sha256;

use crate::ethernet::MacAddr;

/// Bytes of the tag after a frame's payload.
pub const TAG_LEN: usize = 16;
/// Bytes of a session frame's nonce (before its tag).
pub const NONCE_LEN: usize = 12;
/// Bytes after a sealed session frame's payload: the nonce and the tag.
pub const SEAL_LEN: usize = NONCE_LEN + TAG_LEN;
/// Bytes of the associated data of a session frame's tag: destination and source
/// MAC addresses, the Group ID's 12 bits as two big-endian bytes.
pub const AAD_LEN: usize = 14;
/// Bytes of a group's secret (a key file holds them as 64 hexadecimal digits).
pub const SECRET_LEN: usize = 32;

/// The label the frame-tag key is derived with from the group's secret (HMAC of the
/// label under the secret), so the same secret used for anything else gives unrelated
/// keys.
const LABEL: &[u8] = b"tether 2026-12-07 frame authentication tag v1";

/// The label a sender's session key is derived with from the group's key.
const SESSION_LABEL: &[u8] = b"tether 2026-12-07 session frame key v1";

/// A group's frame-tag key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct AuthKey {
    /// HMAC with the key absorbed: each tag clones it and hashes only the frame.
    mac: Hmac<Sha256>,
    /// A short public fingerprint (the first bytes of a hash of the key), for logs and
    /// `ctl` output: two bridges print the same one when they hold the same key.
    id: u32,
}

impl AuthKey {
    /// The key for a group secret (the key file's 32 bytes).
    pub fn from_secret(secret: &[u8; SECRET_LEN]) -> AuthKey {
        let hmac = |key: &[u8], msg: &[u8]| {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
            m.update(msg);
            m.finalize().into_bytes()
        };
        let key = hmac(secret, LABEL);
        let fp = hmac(&key, b"fingerprint");
        let id = u32::from_be_bytes([fp[0], fp[1], fp[2], fp[3]]);
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key");
        AuthKey { mac, id }
    }

    /// Parses a key file's text: 64 hexadecimal digits, surrounding white space
    /// ignored.
    pub fn parse_hex(text: &str) -> Result<AuthKey, KeyTextError> {
        Ok(AuthKey::from_secret(&parse_hex32(text)?))
    }

    /// The key's public fingerprint.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The tag over the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p);
        }
        let full = m.finalize().into_bytes();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&full[..TAG_LEN]);
        t
    }

    /// Whether `tag` is the tag over the concatenation of `parts`, compared in time
    /// independent of where they differ.
    pub fn verify(&self, tag: &[u8; TAG_LEN], parts: &[&[u8]]) -> bool {
        same_tag(&self.tag(parts), tag)
    }

    /// The key `sender`'s session frames in this group are sealed with: the first 16
    /// bytes of HMAC(group key, label, sender's MAC address). Each sender has its own,
    /// so its nonces need only be unique among its own frames.
    pub fn session_key(&self, sender: MacAddr) -> SessionKey {
        let mut m = self.mac.clone();
        m.update(SESSION_LABEL);
        m.update(&sender.0);
        let full = m.finalize().into_bytes();
        let key = UnboundKey::new(&AES_128_GCM, &full[..16]).expect("16 bytes make an AES-128 key");
        SessionKey {
            aead: LessSafeKey::new(key),
            sender,
        }
    }
}

/// Compares two tags in time independent of where they differ.
fn same_tag(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A sender's key for its session frames (DATA, ACK, NAK) in one group
/// ([`AuthKey::session_key`]). Its `Debug` output never shows the key.
pub struct SessionKey {
    aead: LessSafeKey,
    sender: MacAddr,
}

thread_local! {
    /// The message is encrypted here to get its tag, the ciphertext thrown away (the
    /// frame keeps its payload in clear). Grows to the largest frame seen (at most a
    /// header and a 64 KiB payload).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl SessionKey {
    /// The sender whose key this is.
    pub fn sender(&self) -> MacAddr {
        self.sender
    }

    /// The AES-128-GCM tag of `message` with associated data `aad` under `nonce`.
    pub fn tag(&self, nonce: &Nonce, aad: &[u8; AAD_LEN], message: &[u8]) -> [u8; TAG_LEN] {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            s.extend_from_slice(message);
            let tag = self
                .aead
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce.0),
                    Aad::from(aad),
                    &mut s[..],
                )
                // ring refuses only messages beyond GCM's 64 GiB limit.
                .expect("a frame is far below GCM's message limit");
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag.as_ref());
            t
        })
    }

    /// Whether `tag` is the tag of `message` with `aad` under `nonce`, compared in
    /// time independent of where they differ.
    pub fn verify(
        &self,
        tag: &[u8; TAG_LEN],
        nonce: &Nonce,
        aad: &[u8; AAD_LEN],
        message: &[u8],
    ) -> bool {
        same_tag(&self.tag(nonce, aad, message), tag)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", self.sender)
    }
}

/// A session frame's nonce: the sender's salt (4 bytes) and counter (8 bytes), both
/// big-endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Nonce(pub [u8; NONCE_LEN]);

/// The nonces of one run of a sender: 96 bits drawn at random at start (a 32-bit salt
/// and the start of a 64-bit counter), then the counter goes up by one per frame. No
/// nonce repeats within a run; two runs of one sender share one only if their salts
/// are equal and their counter ranges overlap: odds of (frames of both runs) / 2^96,
/// with no clock involved (2^-56 for two runs of 2^40 frames each). Not `Clone`: a
/// copy would give the same nonces again.
#[derive(Debug)]
pub struct NonceSeq {
    salt: u32,
    next: u64,
}

impl NonceSeq {
    /// Nonces from `salt` and a counter from `start` (both random, for a real run).
    pub fn new(salt: u32, start: u64) -> NonceSeq {
        NonceSeq { salt, next: start }
    }

    /// The next nonce, never one given before.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Nonce {
        let c = self.next;
        // A run would need 2^64 frames to come back to its start.
        self.next = c.wrapping_add(1);
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&self.salt.to_be_bytes());
        n[4..].copy_from_slice(&c.to_be_bytes());
        Nonce(n)
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey({:08x})", self.id)
    }
}

/// 32 bytes written as 64 hexadecimal digits (a key file's text), surrounding white
/// space ignored.
pub fn parse_hex32(text: &str) -> Result<[u8; SECRET_LEN], KeyTextError> {
    let t = text.trim();
    if t.len() != 2 * SECRET_LEN {
        return Err(KeyTextError::Length(t.len()));
    }
    let mut out = [0u8; SECRET_LEN];
    for (i, pair) in t.as_bytes().chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).ok_or(KeyTextError::NotHex);
        out[i] = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
    }
    Ok(out)
}

/// The tag over one message (the benchmark's entry point).
pub fn tag_bytes(key: &AuthKey, msg: &[u8]) -> [u8; TAG_LEN] {
    key.tag(&[msg])
}

/// Why a key file's text is not a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    #[error("a key is 64 hexadecimal digits; found {0} characters")]
    Length(usize),
    #[error("a key is 64 hexadecimal digits; found another character")]
    NotHex,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_parse_and_bad_text_is_refused() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let k = AuthKey::parse_hex(hex).unwrap();
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = ((i % 16) as u8) * 0x11;
        }
        assert_eq!(k.id(), AuthKey::from_secret(&secret).id());
        assert_eq!(
            AuthKey::parse_hex("abcd").unwrap_err(),
            KeyTextError::Length(4)
        );
        let bad = "g".repeat(64);
        assert_eq!(AuthKey::parse_hex(&bad).unwrap_err(), KeyTextError::NotHex);
        assert!(!format!("{k:?}").contains("0011"));
    }

    #[test]
    fn the_tag_depends_on_every_byte_and_on_the_key() {
        let k = AuthKey::from_secret(&[1; 32]);
        let msg: Vec<u8> = (0..100).collect();
        let t = k.tag(&[&msg]);
        // Split differently, the same bytes give the same tag.
        assert_eq!(t, k.tag(&[&msg[..7], &msg[7..]]));
        for i in 0..msg.len() {
            for bit in 0..8 {
                let mut m = msg.clone();
                m[i] ^= 1 << bit;
                assert!(
                    !k.verify(&t, &[&m]),
                    "flip of byte {i} bit {bit} kept the tag"
                );
            }
        }
        assert!(!AuthKey::from_secret(&[2; 32]).verify(&t, &[&msg]));
        let mut t2 = t;
        t2[15] ^= 0x80;
        assert!(!k.verify(&t2, &[&msg]));
    }

    #[test]
    fn a_session_tag_depends_on_every_byte_the_nonce_the_sender_and_the_key() {
        let k = AuthKey::from_secret(&[1; 32]);
        let sender = MacAddr([2, 0, 0, 0, 0, 9]);
        let sk = k.session_key(sender);
        assert_eq!(sk.sender(), sender);
        let mut seq = NonceSeq::new(0xdead_beef, 5);
        let nonce = seq.next();
        assert_eq!(nonce.0, [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(seq.next().0[11], 6);
        let aad: [u8; AAD_LEN] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..100).collect();
        let t = sk.tag(&nonce, &aad, &msg);
        assert!(sk.verify(&t, &nonce, &aad, &msg));
        for i in 0..AAD_LEN * 8 {
            let mut a = aad;
            a[i / 8] ^= 1 << (i % 8);
            assert!(!sk.verify(&t, &nonce, &a, &msg), "aad bit {i}");
        }
        for i in 0..msg.len() * 8 {
            let mut m = msg.clone();
            m[i / 8] ^= 1 << (i % 8);
            assert!(!sk.verify(&t, &nonce, &aad, &m), "message bit {i}");
        }
        for i in 0..NONCE_LEN * 8 {
            let mut n = nonce;
            n.0[i / 8] ^= 1 << (i % 8);
            assert!(!sk.verify(&t, &n, &aad, &msg), "nonce bit {i}");
        }
        // A byte more or less.
        assert!(!sk.verify(&t, &nonce, &aad, &msg[..99]));
        let mut longer = msg.clone();
        longer.push(0);
        assert!(!sk.verify(&t, &nonce, &aad, &longer));
        // Another sender, another group key.
        assert!(!k
            .session_key(MacAddr([2, 0, 0, 0, 0, 8]))
            .verify(&t, &nonce, &aad, &msg));
        assert!(!AuthKey::from_secret(&[2; 32])
            .session_key(sender)
            .verify(&t, &nonce, &aad, &msg));
        assert!(!format!("{sk:?}").contains("0x"));
    }
}
