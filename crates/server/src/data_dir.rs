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

/// Name of the generated development key-encryption key inside the data dir.
pub const KEK_FILE: &str = "kek";

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
/// first start. Written to a temporary file and renamed, so a crash can never leave an empty or
/// partial secret behind; one shorter than the production minimum is refused rather than used.
pub fn development_instance_secret(data_dir: &Path) -> std::io::Result<(Secret, PathBuf)> {
    let path = data_dir.join(INSTANCE_SECRET_FILE);
    if !path.exists() {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(std::io::Error::other)?;
        let text = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()));
        let partial = data_dir.join(format!("{INSTANCE_SECRET_FILE}.partial"));
        let _ = std::fs::remove_file(&partial);
        write_private(&partial, text.as_bytes())?;
        std::fs::rename(&partial, &path)?;
        tracing::debug!(path = %path.display(), "generated instance secret");
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path)?);
    let secret = text.trim_end();
    if secret.len() < crate::config::MIN_SECRET_BYTES {
        return Err(std::io::Error::other(format!(
            "{} holds {} bytes; at least {} are required (delete it to generate a new one)",
            path.display(),
            secret.len(),
            crate::config::MIN_SECRET_BYTES
        )));
    }
    Ok((Secret::new(secret.to_owned()), path))
}

/// The development key-encryption key: read from the data dir, or generated there on first start
/// (written whole or not at all, like the instance secret). It sits beside the database only in
/// development; production takes `keys.kek` from configuration and never writes it to disk.
pub fn development_kek(data_dir: &Path) -> std::io::Result<(Secret, PathBuf)> {
    let path = data_dir.join(KEK_FILE);
    if !path.exists() {
        let entry = portcullis_app::KekSet::generate_entry("dev1").map_err(std::io::Error::other)?;
        let partial = data_dir.join(format!("{KEK_FILE}.partial"));
        let _ = std::fs::remove_file(&partial);
        write_private(&partial, entry.as_bytes())?;
        std::fs::rename(&partial, &path)?;
        tracing::debug!(path = %path.display(), "generated development key-encryption key");
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path)?);
    Ok((Secret::new(text.trim_end().to_owned()), path))
}

/// Holds an exclusive lock on `DATA_DIR/portcullis.lock` for as long as it lives, so two servers
/// cannot run on one data dir (SQLite would let them, and they would fight over the database).
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes the data dir's lock, failing at once if another process holds it.
pub fn lock(data_dir: &Path) -> std::io::Result<DataDirLock> {
    use rustix::fs::{FlockOperation, flock};
    let path = data_dir.join("portcullis.lock");
    let file = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&path)?;
    flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        std::io::Error::other(format!(
            "another Portcullis process is using this data dir (it holds {})",
            path.display()
        ))
    })?;
    Ok(DataDirLock { _file: file })
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
    fn a_truncated_secret_file_is_refused_not_used() {
        let root = tempfile::tempdir().unwrap();
        write_private(&root.path().join(INSTANCE_SECRET_FILE), b"").unwrap();
        let error = development_instance_secret(root.path()).unwrap_err();
        assert!(error.to_string().contains("at least 32"), "{error}");
    }

    #[test]
    fn a_second_process_cannot_take_the_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let _held = lock(root.path()).unwrap();
        // flock locks belong to the open file description, so a second open conflicts even in-process.
        let error = lock(root.path()).unwrap_err();
        assert!(error.to_string().contains("another Portcullis process"), "{error}");
    }

    #[test]
    fn an_open_existing_data_dir_gets_a_warning() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare(root.path()).unwrap().is_some_and(|w| w.contains("755")));
    }
}
