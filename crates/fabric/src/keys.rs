//! Group key files: the secret a group's bridges authenticate their frames with
//! (docs/wire-format.md, "Authentication"; docs/cli.md, `[bridge.keys]`).
//!
//! A key file holds 32 random bytes as 64 hexadecimal digits. It must be a regular
//! file that only its owner may read or write: a file the group or others can read is
//! refused, as ssh refuses such a private key, since whoever reads it can forge the
//! group's frames.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use wire::auth::{KeyTextError, SECRET_LEN};
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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.into(),
        source,
    }
}

/// Reads a group key file, refusing one that the group or others may read.
pub fn read_key_file(path: &Path) -> Result<AuthKey, KeyFileError> {
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
    AuthKey::parse_hex(&text).map_err(|source| KeyFileError::Text {
        path: path.into(),
        source,
    })
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
pub fn generate_key_file(path: &Path) -> Result<AuthKey, KeyFileError> {
    let mut secret = [0u8; SECRET_LEN];
    File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut secret))
        .map_err(io(Path::new("/dev/urandom")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists { path: path.into() }
            } else {
                io(path)(e)
            }
        })?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    f.write_all(format!("{hex}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(path))?;
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
