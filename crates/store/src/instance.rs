//! The instance aggregate: the single row describing this installation.

use async_trait::async_trait;
use portcullis_domain::InstanceMeta;

use crate::StoreError;

/// Reads and creates the instance metadata row.
#[async_trait]
pub trait InstanceStore {
    /// The installation's metadata, or `None` before first start.
    async fn instance(&mut self) -> Result<Option<InstanceMeta>, StoreError>;

    /// Records the installation's metadata. There is only ever one row: a second insert fails with
    /// [`StoreError::Conflict`], which is how two nodes starting at once agree on one identity.
    async fn insert_instance(&mut self, meta: &InstanceMeta) -> Result<(), StoreError>;
}
