//! Where backups are kept: a local folder, or S3-compatible object storage. An archive travels as a
//! local file (written, then uploaded; downloaded, then read), so no target ever holds a backup in
//! memory.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

/// One object a target holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub name: String,
    pub size: u64,
}

/// A place backups are written to and read from. Errors are words for the operator: they name the
/// object and the cause, never a credential.
#[async_trait]
pub trait BackupTarget: Send + Sync + fmt::Debug {
    /// Where, for messages (`folder /var/lib/portcullis/backups`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Every object, in no particular order.
    async fn list(&self) -> Result<Vec<StoredObject>, String>;

    /// Stores the file `from` as `name`, replacing any object of that name only once it is whole.
    async fn put(&self, name: &str, from: &Path) -> Result<(), String>;

    /// Stores small content (a sidecar) as `name`.
    async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), String>;

    /// Copies the object `name` into the file `to`.
    async fn get(&self, name: &str, to: &Path) -> Result<(), String>;

    /// Reads a small object, at most `max + 1` bytes of it (more than `max` bytes back means the
    /// object is larger: a crafted object never makes the reader hold more); `None` when there is none.
    async fn get_bytes(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>, String>;

    /// Removes the object (no error if it is already gone).
    async fn delete(&self, name: &str) -> Result<(), String>;
}

/// Backups as files in a folder (owner-only), each written under a temporary name, synced, then
/// renamed, so a crash never leaves a half-written file under a backup's name.
#[derive(Debug, Clone)]
pub struct FolderTarget {
    root: PathBuf,
}

impl FolderTarget {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, name: &str) -> Result<PathBuf, String> {
        // Names are ours, but a name that could leave the folder is refused all the same.
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(format!("{name:?} is not a backup object name"));
        }
        Ok(self.root.join(name))
    }

    fn ensure_root(&self) -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| format!("create the backup folder {}: {e}", self.root.display()))
    }

    /// Writes through a temporary name: fsync the file, rename, fsync the folder (the rename is only
    /// durable once the directory entry is). The temporary name has a random part and is created
    /// new (`O_CREAT | O_EXCL`, which also refuses a symbolic link in its place, POSIX `open`), so
    /// whoever else can write to the folder cannot plant a file or a link there for us to write
    /// through, and a crash's leftover never blocks a later write.
    fn write_atomically(
        &self,
        name: &str,
        write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        self.ensure_root()?;
        let path = self.path(name)?;
        let mut tail = [0u8; 8];
        getrandom::fill(&mut tail).map_err(|e| format!("a temporary name for {name}: {e}"))?;
        let temp = self.root.join(format!(".{name}.{}.partial", super::hex(&tail)));
        let mut created = false;
        let result = (|| {
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
            created = true;
            write(&mut file)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            std::fs::File::open(&self.root)?.sync_all()
        })();
        // Only our own file is removed, never what someone else put under that name.
        if result.is_err() && created {
            let _ = std::fs::remove_file(&temp);
        }
        result.map_err(|e| format!("write {} in {}: {e}", name, self.root.display()))
    }
}

#[async_trait]
impl BackupTarget for FolderTarget {
    fn describe(&self) -> String {
        format!("folder {}", self.root.display())
    }

    async fn list(&self) -> Result<Vec<StoredObject>, String> {
        let this = self.clone();
        blocking(move || {
            let entries = match std::fs::read_dir(&this.root) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(format!("list {}: {e}", this.root.display())),
            };
            let mut objects = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| format!("list {}: {e}", this.root.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let meta = entry.metadata().map_err(|e| format!("stat {name}: {e}"))?;
                if meta.is_file() && !name.starts_with('.') {
                    objects.push(StoredObject { name, size: meta.len() });
                }
            }
            Ok(objects)
        })
        .await
    }

    async fn put(&self, name: &str, from: &Path) -> Result<(), String> {
        let (this, name, from) = (self.clone(), name.to_owned(), from.to_owned());
        blocking(move || {
            this.write_atomically(&name, |file| {
                let mut source = std::fs::File::open(&from)?;
                std::io::copy(&mut source, file).map(|_| ())
            })
        })
        .await
    }

    async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), String> {
        let (this, name) = (self.clone(), name.to_owned());
        blocking(move || this.write_atomically(&name, |file| std::io::Write::write_all(file, &bytes))).await
    }

    async fn get(&self, name: &str, to: &Path) -> Result<(), String> {
        let path = self.path(name)?;
        let to = to.to_owned();
        blocking(move || {
            let mut source = match open_regular(&path)? {
                Opened::File(file) => file,
                Opened::Missing => return Err(format!("read {}: no such file", path.display())),
                Opened::Irregular => return Err(format!("read {}: not a regular file", path.display())),
            };
            let mut staged =
                std::fs::File::create(&to).map_err(|e| format!("write {}: {e}", to.display()))?;
            std::io::copy(&mut source, &mut staged)
                .map(drop)
                .map_err(|e| format!("read {}: {e}", path.display()))
        })
        .await
    }

    async fn get_bytes(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>, String> {
        use std::io::Read;
        let path = self.path(name)?;
        blocking(move || {
            // A sidecar that is not a regular file is as good as none (the archive is what counts).
            let Opened::File(file) = open_regular(&path)? else { return Ok(None) };
            let mut bytes = Vec::new();
            file.take(max as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("read {}: {e}", path.display()))?;
            Ok(Some(bytes))
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<(), String> {
        let path = self.path(name)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("delete {}: {e}", path.display())),
        })
        .await
    }
}

/// What opening a file of the target found.
enum Opened {
    File(std::fs::File),
    Missing,
    /// A FIFO, device, directory or symbolic link: never read.
    Irregular,
}

/// Opens a file of the target for reading, without blocking and without following a symbolic link,
/// and only if it is a regular file: a FIFO planted under a backup's name would otherwise block
/// `open` forever, and with it list, prune and the scheduler.
fn open_regular(path: &Path) -> Result<Opened, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW;
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Opened::Missing),
        // O_NOFOLLOW on a symbolic link.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok(Opened::Irregular);
        }
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok(Opened::File(file)),
        Ok(_) => Ok(Opened::Irregular),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

/// File work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|e| format!("a file task failed: {e}"))?
}
