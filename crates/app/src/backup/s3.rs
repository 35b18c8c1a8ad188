//! The S3-compatible target (AWS S3, MinIO, any provider speaking the S3 API), through the
//! `object_store` crate. Archives stream up as a multipart upload and down as a byte stream, a chunk at
//! a time; an object only appears once its upload completes, so a crash never leaves half a backup.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncReadExt;

use super::target::{BackupTarget, StoredObject};

/// Parts of a multipart upload (S3's minimum part is 5 MiB).
const PART: usize = 8 << 20;
/// Parts uploading at once: the bound on memory (PART × this).
const PARTS_IN_FLIGHT: usize = 2;

/// Where and how to reach the bucket. The secret key is a secret type and never printed.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Prepended to every object name (`portcullis/`).
    pub prefix: String,
    /// Unset: AWS for the region. Plain `http://` is allowed only here, for a local emulator or a
    /// private endpoint the operator chose.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &self.access_key_id.as_ref().map(|_| "set"))
            .finish()
    }
}

/// Backups as objects in a bucket.
#[derive(Clone)]
pub struct S3Target {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

impl fmt::Debug for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl S3Target {
    /// Builds the client; nothing is contacted yet.
    pub fn new(settings: S3Settings) -> Result<Self, String> {
        let mut builder =
            AmazonS3Builder::new().with_bucket_name(&settings.bucket).with_region(&settings.region);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(id) = &settings.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        // The builder's error may quote configuration; keep only its kind.
        let store = builder
            .build()
            .map_err(|_| "backup.s3_*: the S3 client cannot be built from this configuration".to_owned())?;
        let prefix = settings.prefix.trim_matches('/').to_owned();
        Ok(Self { store: Arc::new(store), bucket: settings.bucket, prefix })
    }

    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn failed(&self, what: &str, name: &str, error: &object_store::Error) -> String {
        format!("{what} {name} in {}: {}", self.describe(), portcullis_domain::error_chain(error))
    }
}

#[async_trait]
impl BackupTarget for S3Target {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The objects directly under the prefix: S3 lists every key below it, and one in a nested
    /// "folder" (`prefix/old/ID.age`) must not pass for the backup of the same file name.
    async fn list(&self) -> Result<Vec<StoredObject>, String> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut listing = self.store.list(prefix.as_ref());
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.failed("list", "objects", &e))?;
            let Some(name) = meta.location.filename() else { continue };
            if meta.location == self.path(name) {
                objects.push(StoredObject { name: name.to_owned(), size: meta.size });
            }
        }
        Ok(objects)
    }

    async fn put(&self, name: &str, from: &Path) -> Result<(), String> {
        let path = self.path(name);
        let upload = self.store.put_multipart(&path).await.map_err(|e| self.failed("upload", name, &e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file =
            tokio::fs::File::open(from).await.map_err(|e| format!("open {}: {e}", from.display()))?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer).await.map_err(|e| format!("read {}: {e}", from.display()))?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| self.failed("upload", name, &e))?;
            writer.write(&buffer[..n]);
        }
        // An upload that fails here is aborted by object_store, so no part lingers as an object.
        writer.finish().await.map_err(|e| self.failed("upload", name, &e))?;
        Ok(())
    }

    async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.store
            .put(&self.path(name), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("write", name, &e))
    }

    async fn get(&self, name: &str, to: &Path) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let result = self.store.get(&self.path(name)).await.map_err(|e| self.failed("read", name, &e))?;
        let mut stream = result.into_stream();
        let file = tokio::fs::File::create(to).await.map_err(|e| format!("create {}: {e}", to.display()))?;
        let mut file = tokio::io::BufWriter::new(file);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.failed("read", name, &e))?;
            file.write_all(&chunk).await.map_err(|e| format!("write {}: {e}", to.display()))?;
        }
        file.flush().await.map_err(|e| format!("write {}: {e}", to.display()))
    }

    async fn get_bytes(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>, String> {
        let result = match self.store.get(&self.path(name)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed("read", name, &e)),
        };
        // Streamed and cut at `max + 1` bytes: an object larger than it says is never held whole.
        let mut stream = result.into_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.failed("read", name, &e))?;
            let room = (max + 1).saturating_sub(bytes.len());
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if bytes.len() > max {
                break;
            }
        }
        Ok(Some(bytes))
    }

    async fn delete(&self, name: &str) -> Result<(), String> {
        match self.store.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", name, &e)),
        }
    }
}
