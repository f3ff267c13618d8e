//! `tether key`: group key files.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Write a new random group key to FILE (mode 0600; an existing file is never
    /// replaced) and print its fingerprint. Copy it to every bridge of the group
    /// and name it in their `[bridge.keys]`.
    Generate {
        /// The key file to create.
        file: PathBuf,
    },
    /// Print a key file's fingerprint (bridges holding the same key print the same
    /// one; the fingerprint reveals nothing of the key).
    Fingerprint {
        /// The key file.
        file: PathBuf,
    },
}

pub fn run(cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Generate { file } => {
            let k = fabric::keys::generate_key_file(&file)?;
            println!("wrote {} (fingerprint {:08x})", file.display(), k.id());
        }
        KeyCommand::Fingerprint { file } => {
            let k = fabric::keys::read_key_file(&file)?;
            println!("{:08x}", k.id());
        }
    }
    Ok(())
}
