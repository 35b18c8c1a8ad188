//! Readiness: whether this node should receive traffic (database answers, schema current, a token
//! signing key loaded and the keyring followed).

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
    pub keys: CheckState,
}

impl Readiness {
    /// True when every check passed.
    pub fn is_ready(&self) -> bool {
        self.database == CheckState::Ok && self.migrations == CheckState::Ok && self.keys == CheckState::Ok
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
                keys: self.keys_state(),
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
        if migrations == CheckState::Ok && !self.can_sign_tokens() {
            // The server started before `portcullis migrate` ran: finish what start-up skipped.
            if let Err(error) = self.finish_bootstrap().await {
                tracing::warn!(error = %portcullis_domain::error_chain(&error), "readiness: loading keys failed");
            }
        }
        Readiness { database: CheckState::Ok, migrations, keys: self.keys_state() }
    }

    fn keys_state(&self) -> CheckState {
        match self.keys_problem() {
            None => CheckState::Ok,
            Some(problem) => CheckState::Failed(problem),
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_store::Store;
    use portcullis_store_sqlite::SqliteStore;

    use super::*;
    use crate::testing;

    #[tokio::test]
    async fn an_unmigrated_database_is_not_ready_and_says_why() {
        let app = testing::app_on(SqliteStore::open_in_memory().await.unwrap()).app;
        let readiness = app.readiness().await;
        assert!(!readiness.is_ready());
        assert_eq!(readiness.database, CheckState::Ok);
        assert_eq!(readiness.migrations, CheckState::Failed("10 migration(s) pending".into()));
        assert_eq!(readiness.keys, CheckState::Failed("no token signing key is loaded".into()));
    }

    #[tokio::test]
    async fn a_migrated_database_is_ready_once_readiness_has_loaded_the_keys() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store.migrate().await.unwrap();
        let app = testing::app_on(store).app;
        assert!(!app.can_sign_tokens(), "no signing key yet");
        // Readiness finishes the bootstrap that a start ahead of `migrate` skipped.
        assert!(app.readiness().await.is_ready());
        assert!(app.can_sign_tokens());
    }

    #[tokio::test]
    async fn a_closed_database_is_not_ready() {
        let app = testing::app().await.app;
        app.shutdown().await;
        let readiness = app.readiness().await;
        assert_eq!(readiness.database, CheckState::Failed("database unavailable".into()));
    }
}
