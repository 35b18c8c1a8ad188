//! The data directory: created private (0700), holding the SQLite database, the generated instance
//! secret (development) and development certificates, every file 0600.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::Secret;

/// Name of the generated instance secret inside the data dir.
pub const INSTANCE_SECRET_FILE: &str = "instance-secret";

/// Creates the data dir (and parents) with mode 0700 if it does not exist.
///
/// Returns a warning when an existing directory is accessible by other users; production mode refuses
/// that case earlier, in the configuration checks.
pub fn prepare(path: &Path) -> std::io::Result<Option<String>> {
    if !path.exists() {
        DirBuilder::new().recursive(true).mode(0o700).create(path)?;
        tracing::debug!(path = %path.display(), "created data dir");
    }
    let mode = std::fs::metadata(path)?.permissions().mode();
    Ok((mode & 0o077 != 0).then(|| {
        format!(
            "data dir {} has mode {:o}; other users can read it (chmod 700)",
            path.display(),
            mode & 0o777
        )
    }))
}

/// Writes a new file that only the owner can read, refusing to overwrite an existing one.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The development instance secret: read from the data dir, or generated there (256 random bits) on
/// first start.
pub fn development_instance_secret(data_dir: &Path) -> std::io::Result<(Secret, PathBuf)> {
    let path = data_dir.join(INSTANCE_SECRET_FILE);
    if !path.exists() {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(std::io::Error::other)?;
        let text = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()));
        write_private(&path, text.as_bytes())?;
        tracing::debug!(path = %path.display(), "generated instance secret");
    }
    let text = std::fs::read_to_string(&path)?;
    Ok((Secret::new(text.trim_end().to_owned()), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_data_dir_is_private_and_the_generated_secret_is_owner_only_and_stable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        assert_eq!(prepare(&dir).unwrap(), None);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let (first, path) = development_instance_secret(&dir).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(first.expose().len() >= 43);
        let (second, _) = development_instance_secret(&dir).unwrap();
        assert_eq!(first.expose(), second.expose());
    }

    #[test]
    fn an_open_existing_data_dir_gets_a_warning() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare(root.path()).unwrap().is_some_and(|w| w.contains("755")));
    }
}
