//! Instance bootstrap: giving a fresh installation its identity, exactly once.

use portcullis_domain::{InstanceId, InstanceMeta};
use portcullis_store::StoreError;

use crate::audit::AuditEntry;
use crate::{App, AppError};

impl App {
    /// Returns the installation's metadata, creating it on first start.
    ///
    /// Safe when several nodes start at once against one PostgreSQL database: the insert of the
    /// single row conflicts for all but one, and the losers read the winner's row.
    pub async fn bootstrap_instance(&self) -> Result<InstanceMeta, AppError> {
        if let Some(meta) = self.instance().await? {
            return Ok(meta);
        }
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| AppError::Internal(Box::new(e)))?;
        let meta = InstanceMeta {
            id: InstanceId::from_random_bytes(random),
            created_at: self.now(),
            created_by_version: self.inner.settings.version.to_owned(),
        };
        let mut tx = self.inner.store.begin().await?;
        match tx.insert_instance(&meta).await {
            Ok(()) => {
                // The installation's first event: where its audit trail begins.
                let created = AuditEntry::system("instance.created")
                    .detail("instance_id", meta.id.to_string())
                    .detail("version", meta.created_by_version.as_str());
                self.commit_audited(tx, [created]).await?;
                Ok(meta)
            }
            Err(StoreError::Conflict { .. }) => {
                drop(tx);
                self.instance().await?.ok_or_else(|| {
                    AppError::Internal("instance row vanished after a conflicting insert".into())
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// The installation's metadata, if it has been bootstrapped.
    pub async fn instance(&self) -> Result<Option<InstanceMeta>, AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let meta = tx.instance().await?;
        tx.rollback().await?;
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use portcullis_domain::Timestamp;

    use crate::testing;

    #[tokio::test]
    async fn the_first_bootstrap_creates_the_identity_and_later_ones_keep_it() {
        let app = testing::app().await.app;
        assert_eq!(app.instance().await.unwrap(), None);
        let first = app.bootstrap_instance().await.unwrap();
        assert_eq!(first.created_at, Timestamp::from_unix_millis(testing::START));
        assert_eq!(first.created_by_version, "test");
        let second = app.bootstrap_instance().await.unwrap();
        assert_eq!(first, second);
    }
}
