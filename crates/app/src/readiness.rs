//! Readiness: whether this node should receive traffic (database answers, schema current).

use crate::App;

/// The outcome of one readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckState {
    /// The check passed.
    Ok,
    /// The check failed, with a reason that is safe to show to a load balancer or operator
    /// (no connection strings, no SQL).
    Failed(String),
}

/// Every readiness check, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub database: CheckState,
    pub migrations: CheckState,
}

impl Readiness {
    /// True when every check passed.
    pub fn is_ready(&self) -> bool {
        self.database == CheckState::Ok && self.migrations == CheckState::Ok
    }
}

impl App {
    /// Runs the readiness checks. Never fails: a failure is a [`CheckState::Failed`].
    pub async fn readiness(&self) -> Readiness {
        let store = &self.inner.store;
        if let Err(error) = store.ping().await {
            tracing::warn!(error = %error, "readiness: database did not answer");
            return Readiness {
                database: CheckState::Failed("database unavailable".into()),
                migrations: CheckState::Failed("not checked".into()),
            };
        }
        let migrations = match store.migration_status().await {
            Ok(status) if status.is_current() => CheckState::Ok,
            Ok(status) if !status.unknown.is_empty() => CheckState::Failed(format!(
                "database has {} migration(s) newer than this binary",
                status.unknown.len()
            )),
            Ok(status) => CheckState::Failed(format!("{} migration(s) pending", status.pending.len())),
            Err(error) => {
                tracing::warn!(error = %error, "readiness: migration status unavailable");
                CheckState::Failed("migration status unavailable".into())
            }
        };
        Readiness { database: CheckState::Ok, migrations }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portcullis_store::Store;
    use portcullis_store_sqlite::SqliteStore;
    use secrecy::SecretSlice;

    use super::*;
    use crate::{AppSettings, SystemClock};

    fn app_on(store: SqliteStore) -> App {
        App::new(
            Arc::new(store),
            Arc::new(SystemClock),
            AppSettings { instance_secret: SecretSlice::from(vec![0u8; 32]), version: "test" },
        )
    }

    #[tokio::test]
    async fn an_unmigrated_database_is_not_ready_and_says_why() {
        let app = app_on(SqliteStore::open_in_memory().await.unwrap());
        let readiness = app.readiness().await;
        assert!(!readiness.is_ready());
        assert_eq!(readiness.database, CheckState::Ok);
        assert_eq!(readiness.migrations, CheckState::Failed("1 migration(s) pending".into()));
    }

    #[tokio::test]
    async fn a_migrated_database_is_ready() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store.migrate().await.unwrap();
        assert!(app_on(store).readiness().await.is_ready());
    }

    #[tokio::test]
    async fn a_closed_database_is_not_ready() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store.migrate().await.unwrap();
        let app = app_on(store);
        app.shutdown().await;
        let readiness = app.readiness().await;
        assert_eq!(readiness.database, CheckState::Failed("database unavailable".into()));
    }
}
