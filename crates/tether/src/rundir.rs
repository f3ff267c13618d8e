//! A private directory for the sockets of one run (`tether vm`'s QMP and vfio-user
//! sockets): made with mode 0700 under the runtime directory, with a name nobody can
//! take first (a random part, and created, never reused: if it exists, another name
//! is drawn), and removed with what is in it when dropped.
//!
//! The runtime directory is systemd's `$RUNTIME_DIRECTORY` when set, else
//! `$XDG_RUNTIME_DIR`, else `/run/tether` for root (made with mode 0700), else the
//! temporary directory. A QEMU run from another root (`--qemu-root`) sees only the
//! host's /tmp and /var/tmp: its run directory is made in the temporary directory.

use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct RunDir {
    path: PathBuf,
}

/// Where the run directories go.
fn base() -> Result<PathBuf> {
    for var in ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"] {
        if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            // systemd may list several directories, separated by colons.
            let first = d
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            if !first.is_empty() {
                return Ok(first.into());
            }
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let d = PathBuf::from("/run/tether");
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
        return Ok(d);
    }
    Ok(std::env::temp_dir())
}

impl RunDir {
    /// A new directory `PREFIX-PID-RANDOM` under the runtime directory, or under the
    /// temporary directory when `in_tmp`.
    pub fn new(prefix: &str, in_tmp: bool) -> Result<RunDir> {
        let base = if in_tmp {
            std::env::temp_dir()
        } else {
            base()?
        };
        RunDir::new_in(&base, prefix)
    }

    /// The same under `base`.
    pub fn new_in(base: &Path, prefix: &str) -> Result<RunDir> {
        let mut urandom = std::fs::File::open("/dev/urandom").context("/dev/urandom")?;
        for _ in 0..16 {
            let mut r = [0u8; 6];
            urandom.read_exact(&mut r).context("/dev/urandom")?;
            let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
            let path = base.join(format!("{prefix}-{}-{hex}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(RunDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("no free name for a run directory in {}", base.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_run_directory_is_private_new_and_removed() {
        let base = tempfile::tempdir().unwrap();
        let a = RunDir::new_in(base.path(), "tether-vm").unwrap();
        let b = RunDir::new_in(base.path(), "tether-vm").unwrap();
        assert_ne!(a.path(), b.path());
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let name = a.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with(&format!("tether-vm-{}-", std::process::id())),
            "{name}"
        );
        std::fs::write(a.path().join("x.sock"), b"").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }
}
