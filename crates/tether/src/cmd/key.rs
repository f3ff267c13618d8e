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
    /// Write a new manager key pair: the secret key to FILE (mode 0600) and the
    /// public key to FILE.pub; print its id. Boxes that list FILE.pub in their
    /// `[bridge] managers` obey only requests signed with it (`tether ctl --sign`).
    GenerateManager {
        /// The secret key file to create (FILE.pub is created next to it).
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
        KeyCommand::GenerateManager { file } => {
            let id = fabric::keys::generate_manager_key(&file)?;
            println!(
                "wrote {} and {} (manager key {})",
                file.display(),
                fabric::keys::pub_path(&file).display(),
                fabric::keys::key_id_hex(&id)
            );
        }
        KeyCommand::Fingerprint { file } => {
            let k = fabric::keys::read_key_file(&file)?;
            println!("{:08x}", k.id());
        }
    }
    Ok(())
}
