//! Personal data between the use cases and the store: every email address, display name, client ip
//! and user agent is sealed here on its way in and opened on its way out, so the use cases work with
//! plain domain types and the database never holds them in clear.

use portcullis_domain::{
    DisplayName, Email, OneTimePurpose, OneTimeToken, SecurityEvent, Session, Timestamp, TokenHash, User,
    UserId,
};
use portcullis_store::{
    PiiTable, StoreError, StoreTx, StoredOneTimeToken, StoredSecurityEvent, StoredSession, StoredUser,
};

use crate::keys::Place;
use crate::{App, AppError};

/// A session with its client details opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenedSession {
    pub session: Session,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl App {
    /// The account with this id.
    pub(crate) async fn load_user(&self, tx: &mut dyn StoreTx, id: UserId) -> Result<Option<User>, AppError> {
        match tx.user_by_id(id).await? {
            Some(stored) => Ok(Some(self.open_user(tx, stored).await?)),
            None => Ok(None),
        }
    }

    /// The account with this address (in any case). While the blind index is being rebuilt under a
    /// new key, a row may still carry the index of the previous key, so each loaded key is tried,
    /// the active one first.
    pub(crate) async fn find_user_by_email(
        &self,
        tx: &mut dyn StoreTx,
        email: &Email,
    ) -> Result<Option<User>, AppError> {
        let indexes = self.loaded_keys().fields.email_indexes(email);
        for index in &indexes {
            if let Some(stored) = tx.user_by_email_index(index).await? {
                return Ok(Some(self.open_user(tx, stored).await?));
            }
        }
        Ok(None)
    }

    /// An account as stored: its address and name sealed under the active key (the row names one key
    /// for both) and its address indexed under the active blind-index key.
    fn seal_user(&self, user: &User) -> Result<StoredUser, AppError> {
        let keys = self.loaded_keys();
        let row = user.id.to_string();
        let (index_key, email_index) = keys.fields.email_index(&user.email)?;
        Ok(StoredUser {
            id: user.id,
            email: keys.fields.seal(user.email.as_str().as_bytes(), users(&row, "email"))?,
            email_index,
            index_key,
            display_name: user
                .display_name
                .as_ref()
                .map(|name| keys.fields.seal(name.as_str().as_bytes(), users(&row, "display_name")))
                .transpose()?,
            pii_key: keys.fields.active_pii_id()?.to_owned(),
            email_verified_at: user.email_verified_at,
            status: user.status,
            role: user.role,
            created_at: user.created_at,
            updated_at: user.updated_at,
            last_login_at: user.last_login_at,
        })
    }

    /// Stores a new account, its address and name sealed. A taken address is
    /// [`StoreError::Conflict`].
    pub(crate) async fn store_user(&self, tx: &mut dyn StoreTx, user: &User) -> Result<(), AppError> {
        let stored = self.seal_user(user)?;
        tx.insert_user(&stored).await.map_err(|e| match e {
            StoreError::Conflict { .. } => {
                AppError::invalid("/email", "an account with this address already exists")
            }
            other => other.into(),
        })
    }

    /// Replaces a stored account's address and name, sealed (both under the active key, as the row
    /// names one key) with a fresh blind index. A taken address is a `Validation` error on `/email`.
    pub(crate) async fn update_user_details(
        &self,
        tx: &mut dyn StoreTx,
        user: &User,
    ) -> Result<bool, AppError> {
        let stored = self.seal_user(user)?;
        tx.update_user_details(&stored).await.map_err(|e| match e {
            StoreError::Conflict { .. } => {
                AppError::invalid("/email", "an account with this address already exists")
            }
            other => other.into(),
        })
    }

    pub(crate) async fn open_user(&self, tx: &mut dyn StoreTx, stored: StoredUser) -> Result<User, AppError> {
        let keys = self.keys_holding(tx, Some(&stored.pii_key)).await?;
        let row = stored.id.to_string();
        let email = keys.fields.open_text(&stored.email, users(&row, "email"))?;
        let display_name = stored
            .display_name
            .as_ref()
            .map(|name| keys.fields.open_text(name, users(&row, "display_name")))
            .transpose()?;
        Ok(User {
            id: stored.id,
            email: Email::parse(&email).map_err(|_| corrupt("users.email"))?,
            email_verified_at: stored.email_verified_at,
            display_name: display_name
                .map(|name| DisplayName::parse(&name))
                .transpose()
                .map_err(|_| corrupt("users.display_name"))?,
            status: stored.status,
            role: stored.role,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
            last_login_at: stored.last_login_at,
        })
    }

    /// Stores a new session with the client's ip and user agent sealed.
    pub(crate) async fn store_session(
        &self,
        tx: &mut dyn StoreTx,
        session: &Session,
        ip: Option<&str>,
        user_agent: Option<&str>,
        cookie: Option<&TokenHash>,
    ) -> Result<(), AppError> {
        let keys = self.loaded_keys();
        let row = session.id.to_string();
        let place = |column| Place { table: PiiTable::Sessions.name(), column, row: &row };
        let stored = StoredSession {
            session: session.clone(),
            ip: ip.map(|ip| keys.fields.seal(ip.as_bytes(), place("ip"))).transpose()?,
            user_agent: user_agent
                .map(|ua| keys.fields.seal(ua.as_bytes(), place("user_agent")))
                .transpose()?,
            pii_key: (ip.is_some() || user_agent.is_some())
                .then(|| keys.fields.active_pii_id().map(str::to_owned))
                .transpose()?,
        };
        tx.insert_session(&stored, cookie).await?;
        Ok(())
    }

    /// A user's live sessions with their client details opened, newest first.
    pub(crate) async fn load_sessions_of(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        now: Timestamp,
    ) -> Result<Vec<OpenedSession>, AppError> {
        let mut opened = Vec::new();
        for stored in tx.sessions_of(user, now).await? {
            opened.push(self.open_stored_session(tx, stored).await?);
        }
        Ok(opened)
    }

    /// A stored session with its client details opened.
    pub(crate) async fn open_stored_session(
        &self,
        tx: &mut dyn StoreTx,
        stored: StoredSession,
    ) -> Result<OpenedSession, AppError> {
        let keys = self.keys_holding(tx, stored.pii_key.as_deref()).await?;
        let row = stored.session.id.to_string();
        let place = |column| Place { table: PiiTable::Sessions.name(), column, row: &row };
        Ok(OpenedSession {
            ip: stored.ip.as_ref().map(|ip| keys.fields.open_text(ip, place("ip"))).transpose()?,
            user_agent: stored
                .user_agent
                .as_ref()
                .map(|ua| keys.fields.open_text(ua, place("user_agent")))
                .transpose()?,
            session: stored.session,
        })
    }

    /// Records a security event with the client's ip sealed.
    pub(crate) fn seal_security_event(
        &self,
        event: SecurityEvent,
        ip: Option<&str>,
    ) -> Result<StoredSecurityEvent, AppError> {
        let keys = self.loaded_keys();
        let row = event.id.to_string();
        let place = Place { table: PiiTable::SecurityEvents.name(), column: "ip", row: &row };
        Ok(StoredSecurityEvent {
            ip: ip.map(|ip| keys.fields.seal(ip.as_bytes(), place)).transpose()?,
            pii_key: ip.is_some().then(|| keys.fields.active_pii_id().map(str::to_owned)).transpose()?,
            event,
        })
    }

    /// A stored security event with its client ip opened (for the security-event list).
    pub(crate) async fn open_security_event(
        &self,
        tx: &mut dyn StoreTx,
        stored: StoredSecurityEvent,
    ) -> Result<(SecurityEvent, Option<String>), AppError> {
        let keys = self.keys_holding(tx, stored.pii_key.as_deref()).await?;
        let row = stored.event.id.to_string();
        let place = Place { table: PiiTable::SecurityEvents.name(), column: "ip", row: &row };
        let ip = stored.ip.as_ref().map(|ip| keys.fields.open_text(ip, place)).transpose()?;
        Ok((stored.event, ip))
    }

    /// Stores a single-use token's hash, with the address an invite went to sealed.
    pub(crate) async fn store_one_time_token(
        &self,
        tx: &mut dyn StoreTx,
        token: OneTimeToken,
        email: Option<&Email>,
    ) -> Result<(), AppError> {
        let keys = self.loaded_keys();
        let row = token.hash.to_hex();
        let place = Place { table: PiiTable::OneTimeTokens.name(), column: "email", row: &row };
        let stored = StoredOneTimeToken {
            email: email.map(|e| keys.fields.seal(e.as_str().as_bytes(), place)).transpose()?,
            pii_key: email.is_some().then(|| keys.fields.active_pii_id().map(str::to_owned)).transpose()?,
            token,
        };
        tx.insert_one_time_token(&stored).await?;
        Ok(())
    }

    /// Spends a single-use token (see the store's `spend_one_time_token`) and opens the address it
    /// carries.
    pub(crate) async fn spend_one_time_token(
        &self,
        tx: &mut dyn StoreTx,
        hash: &TokenHash,
        purpose: OneTimePurpose,
        now: Timestamp,
    ) -> Result<Option<(OneTimeToken, Option<Email>)>, AppError> {
        let Some(stored) = tx.spend_one_time_token(hash, purpose, now).await? else { return Ok(None) };
        let keys = self.keys_holding(tx, stored.pii_key.as_deref()).await?;
        let row = stored.token.hash.to_hex();
        let place = Place { table: PiiTable::OneTimeTokens.name(), column: "email", row: &row };
        let email = stored
            .email
            .as_ref()
            .map(|sealed| keys.fields.open_text(sealed, place))
            .transpose()?
            .map(|text| Email::parse(&text))
            .transpose()
            .map_err(|_| corrupt("one_time_tokens.email"))?;
        Ok(Some((stored.token, email)))
    }
}

fn users<'a>(row: &'a str, column: &'static str) -> Place<'a> {
    Place { table: PiiTable::Users.name(), column, row }
}

fn corrupt(column: &str) -> AppError {
    AppError::Internal(format!("{column} decrypts to a value that no longer parses").into())
}
