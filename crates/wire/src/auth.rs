//! Frame authentication: the 16-byte tag that follows the payload of every frame of a
//! group that has a key (the header's AUTH flag; docs/wire-format.md, "Authentication").
//!
//! The tag is HMAC-SHA-256 truncated to 16 bytes (HMAC-SHA-256-128, as IPsec uses it),
//! over the destination and source MAC addresses, the Group ID (its 12 bits as two
//! big-endian bytes, as in the frame check; switches may rewrite the PCP) and the
//! tether header and payload exactly as sent (the header's frame check included). A
//! PRF-based MAC needs no nonce, so any number of senders can share a group's key
//! without coordinating anything, and a retransmitted frame may be tagged again freely.
//! The choice among GMAC, Poly1305, keyed BLAKE3 and HMAC-SHA-256 was made by
//! `cargo bench -p wire --bench auth` on the project's machine; docs/wire-format.md
//! gives the numbers.
//!
//! ```
//! use wire::auth::AuthKey;
//! let key = AuthKey::from_secret(&[0x42; 32]);
//! let other = AuthKey::from_secret(&[0x43; 32]);
//! let t = wire::auth::tag_bytes(&key, b"frame");
//! assert!(key.verify(&t, &[b"frame".as_slice()]));
//! assert!(!other.verify(&t, &[b"frame".as_slice()]));
//! ```

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the tag after a frame's payload.
pub const TAG_LEN: usize = 16;
/// Bytes of a group's secret (a key file holds them as 64 hexadecimal digits).
pub const SECRET_LEN: usize = 32;

/// The label the frame-tag key is derived with from the group's secret (HMAC of the
/// label under the secret), so the same secret used for anything else gives unrelated
/// keys.
const LABEL: &[u8] = b"tether 2026-12-07 frame authentication tag v1";

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
        let want = self.tag(parts);
        let diff = want.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        std::hint::black_box(diff) == 0
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
}
