//! Group key files: the secret a group's bridges authenticate their frames with
//! (docs/wire-format.md, "Authentication"; docs/cli.md, `[bridge.keys]`).
//!
//! A key file holds 32 random bytes as 64 hexadecimal digits. It must be a regular
//! file that only its owner may read or write: a file the group or others can read is
//! refused, as ssh refuses such a private key, since whoever reads it can forge the
//! group's frames.
//!
//! A manager key is an Ed25519 key pair (docs/wire-format.md, "Signed management"):
//! the secret file (its 32-byte seed, as 64 hexadecimal digits, private like a group
//! key) signs CTRL requests (`tether ctl --sign`), and the public file (`FILE.pub`,
//! its 32-byte public key as 64 digits) is what boxes trust (`[bridge] managers`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;
use wire::auth::{parse_hex32, KeyTextError, SECRET_LEN};
use wire::AuthKey;

use crate::node::GroupKeys;

/// Why a key file cannot be used.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "{path}: mode {mode:04o} lets others read the group key; \
         make it readable by its owner only (chmod 600)"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Text { path: PathBuf, source: KeyTextError },
    #[error("group {0} is not a valid GID (1..=4094)")]
    BadGroup(u16),
    #[error("{path}: exists already (a key file is never overwritten)")]
    Exists { path: PathBuf },
    #[error("{path}: not an Ed25519 public key")]
    BadPublicKey { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.into(),
        source,
    }
}

/// Reads a group key file, refusing one that the group or others may read.
pub fn read_key_file(path: &Path) -> Result<AuthKey, KeyFileError> {
    let secret = read_secret(path)?;
    Ok(AuthKey::from_secret(&secret))
}

/// The bearer token of a file made like a group key (`tether key generate`): its 64
/// hexadecimal digits, from a file only its owner may read, as for a key.
pub fn read_token_file(path: &Path) -> Result<String, KeyFileError> {
    Ok(hex(&read_secret(path)?))
}

/// The 32 secret bytes of a private key file (group key or manager seed).
fn read_secret(path: &Path) -> Result<[u8; SECRET_LEN], KeyFileError> {
    let mut f = File::open(path).map_err(io(path))?;
    // Checked on the open descriptor: the file read is the file checked.
    let meta = f.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile { path: path.into() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Readable {
            path: path.into(),
            mode,
        });
    }
    // A key is 64 digits; read a little more, so that a longer file is refused as
    // such rather than cut, and never a large one whole.
    let mut text = String::new();
    Read::by_ref(&mut f)
        .take(256)
        .read_to_string(&mut text)
        .map_err(io(path))?;
    parse_hex32(&text).map_err(|source| KeyFileError::Text {
        path: path.into(),
        source,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from the operating system's random numbers.
fn random32() -> Result<[u8; 32], KeyFileError> {
    let mut secret = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut secret))
        .map_err(io(Path::new("/dev/urandom")))?;
    Ok(secret)
}

/// Writes `text` to a new file at `path` with `mode`; an existing file is never
/// replaced.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyFileError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists { path: path.into() }
            } else {
                io(path)(e)
            }
        })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(path))
}

/// A manager's signing key (from its secret file).
pub struct ManagerSigner {
    key: SigningKey,
    id: [u8; 8],
}

/// The id of a manager's public key: the first 8 bytes of its SHA-256.
pub fn manager_key_id(public: &[u8; 32]) -> [u8; 8] {
    let h = Sha256::digest(public);
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[..8]);
    id
}

impl ManagerSigner {
    pub fn from_seed(seed: &[u8; 32]) -> ManagerSigner {
        let key = SigningKey::from_bytes(seed);
        let id = manager_key_id(key.verifying_key().as_bytes());
        ManagerSigner { key, id }
    }

    /// Reads a manager's secret key file (private, as a group key file).
    pub fn read(path: &Path) -> Result<ManagerSigner, KeyFileError> {
        Ok(ManagerSigner::from_seed(&read_secret(path)?))
    }

    pub fn key_id(&self) -> [u8; 8] {
        self.id
    }

    /// The signature block for `message`: key id and signature.
    pub fn sign(&self, message: &[u8]) -> [u8; wire::ctrl::SIGNATURE_BLOCK_LEN] {
        let mut block = [0u8; wire::ctrl::SIGNATURE_BLOCK_LEN];
        block[..8].copy_from_slice(&self.id);
        block[8..].copy_from_slice(&self.key.sign(message).to_bytes());
        block
    }
}

impl std::fmt::Debug for ManagerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagerSigner({})", hex(&self.id))
    }
}

/// The manager keys a box obeys (`[bridge] managers`), by key id.
#[derive(Clone, Debug, Default)]
pub struct TrustedManagers {
    keys: BTreeMap<[u8; 8], VerifyingKey>,
}

impl TrustedManagers {
    /// From public keys.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> TrustedManagers {
        TrustedManagers {
            keys: keys
                .into_iter()
                .map(|k| (manager_key_id(k.as_bytes()), k))
                .collect(),
        }
    }

    /// Reads public key files (64 hexadecimal digits each; they need not be private).
    pub fn read(paths: &[PathBuf]) -> Result<TrustedManagers, KeyFileError> {
        let mut keys = Vec::new();
        for p in paths {
            let mut text = String::new();
            File::open(p)
                .and_then(|f| f.take(256).read_to_string(&mut text))
                .map_err(io(p))?;
            let bytes = parse_hex32(&text).map_err(|source| KeyFileError::Text {
                path: p.clone(),
                source,
            })?;
            let k = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| KeyFileError::BadPublicKey { path: p.clone() })?;
            keys.push(k);
        }
        Ok(TrustedManagers::new(keys))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `signature` is a trusted manager's (by `key_id`) over `message`.
    pub fn verify(&self, key_id: &[u8; 8], signature: &[u8; 64], message: &[u8]) -> bool {
        let Some(k) = self.keys.get(key_id) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        k.verify_strict(message, &sig).is_ok()
    }
}

/// Writes a new manager key pair: the secret seed to `path` (mode 0600) and the
/// public key to `path.pub` (mode 0644); neither replaces an existing file. Returns
/// the key's id.
pub fn generate_manager_key(path: &Path) -> Result<[u8; 8], KeyFileError> {
    let seed = random32()?;
    let signer = ManagerSigner::from_seed(&seed);
    let public = pub_path(path);
    if public.exists() {
        return Err(KeyFileError::Exists { path: public });
    }
    write_new(path, &format!("{}\n", hex(&seed)), 0o600)?;
    write_new(
        &public,
        &format!("{}\n", hex(signer.key.verifying_key().as_bytes())),
        0o644,
    )?;
    Ok(signer.id)
}

/// `FILE.pub` for `FILE`.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// A key id as 16 hexadecimal digits.
pub fn key_id_hex(id: &[u8; 8]) -> String {
    hex(id)
}

/// Reads the key file of each group in `files` (group → path).
pub fn read_group_keys(files: &BTreeMap<u16, PathBuf>) -> Result<GroupKeys, KeyFileError> {
    let mut keys = BTreeMap::new();
    for (&gid, path) in files {
        if !wire::valid_gid(gid) {
            return Err(KeyFileError::BadGroup(gid));
        }
        keys.insert(gid, read_key_file(path)?);
    }
    Ok(Arc::new(keys))
}

/// Writes a new key file (mode 0600) with a secret from the operating system's random
/// numbers; an existing file is never replaced. Returns the key.
/// A new random group key that lives only in memory (a benchmark's).
pub fn random_key() -> Result<AuthKey, KeyFileError> {
    Ok(AuthKey::from_secret(&random32()?))
}

pub fn generate_key_file(path: &Path) -> Result<AuthKey, KeyFileError> {
    let secret = random32()?;
    write_new(path, &format!("{}\n", hex(&secret)), 0o600)?;
    Ok(AuthKey::from_secret(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tether-keys-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_generated_key_reads_back_and_is_never_overwritten() {
        let d = dir();
        let p = d.join("g10.key");
        let k = generate_key_file(&p).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(read_key_file(&p).unwrap().id(), k.id());
        assert!(matches!(
            generate_key_file(&p),
            Err(KeyFileError::Exists { .. })
        ));
        // Two generated keys differ.
        let k2 = generate_key_file(&d.join("other.key")).unwrap();
        assert_ne!(k.id(), k2.id());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_or_that_is_no_key_is_refused() {
        let d = dir();
        let p = d.join("k");
        std::fs::write(&p, "ab".repeat(32)).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_key_file(&p).unwrap_err();
            assert!(
                matches!(e, KeyFileError::Readable { mode: m, .. } if m == mode),
                "{mode:o}: {e}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        read_key_file(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "ab".repeat(40)).unwrap();
        assert!(matches!(read_key_file(&p), Err(KeyFileError::Text { .. })));
        assert!(matches!(
            read_key_file(&d),
            Err(KeyFileError::NotAFile { .. })
        ));
        assert!(matches!(
            read_key_file(&d.join("absent")),
            Err(KeyFileError::Io { .. })
        ));
        let files = BTreeMap::from([(4095u16, p.clone())]);
        assert!(matches!(
            read_group_keys(&files),
            Err(KeyFileError::BadGroup(4095))
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
