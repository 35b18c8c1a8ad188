//! SQLite implementation of second factors: TOTP authenticators, recovery codes, passkeys, their
//! challenges, the organizations that require one, and what a session proved.

use async_trait::async_trait;
use portcullis_domain::{MfaDeviceId, OrganizationId, SessionId, Timestamp, TokenHash, UserId};
use portcullis_store::{MfaStore, Sealed, StoreError, StoredMfaChallenge, StoredPasskey, StoredTotpDevice};

use crate::{SqliteTx, corrupt};

const TOTP_COLUMNS: &str =
    "id, user_id, name, secret, pii_key, created_at, confirmed_at, last_used_at, last_step";
const PASSKEY_COLUMNS: &str = "id, user_id, name, credential_id, credential, created_at, last_used_at";
const CHALLENGE_COLUMNS: &str =
    "hash, user_id, purpose, session_id, amr, ceremony, created_at, expires_at, failures";

fn device_id(text: &str, what: &str) -> Result<MfaDeviceId, StoreError> {
    MfaDeviceId::parse(text).map_err(|_| corrupt(what))
}

fn user_id(text: &str, what: &str) -> Result<UserId, StoreError> {
    UserId::parse(text).map_err(|_| corrupt(what))
}

/// A `mfa_totp_devices` row as stored.
#[derive(sqlx::FromRow)]
struct TotpRow {
    id: String,
    user_id: String,
    name: String,
    secret: Vec<u8>,
    pii_key: String,
    created_at: i64,
    confirmed_at: Option<i64>,
    last_used_at: Option<i64>,
    last_step: Option<i64>,
}

impl TotpRow {
    fn into_device(self) -> Result<StoredTotpDevice, StoreError> {
        Ok(StoredTotpDevice {
            id: device_id(&self.id, "mfa_totp_devices.id is not a uuid")?,
            user_id: user_id(&self.user_id, "mfa_totp_devices.user_id is not a uuid")?,
            name: self.name,
            secret: Sealed(self.secret),
            pii_key: self.pii_key,
            created_at: Timestamp::from_unix_millis(self.created_at),
            confirmed_at: self.confirmed_at.map(Timestamp::from_unix_millis),
            last_used_at: self.last_used_at.map(Timestamp::from_unix_millis),
            last_step: self.last_step,
        })
    }
}

/// A `mfa_passkeys` row as stored.
#[derive(sqlx::FromRow)]
struct PasskeyRow {
    id: String,
    user_id: String,
    name: String,
    credential_id: Vec<u8>,
    credential: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl PasskeyRow {
    fn into_passkey(self) -> Result<StoredPasskey, StoreError> {
        Ok(StoredPasskey {
            id: device_id(&self.id, "mfa_passkeys.id is not a uuid")?,
            user_id: user_id(&self.user_id, "mfa_passkeys.user_id is not a uuid")?,
            name: self.name,
            credential_id: self.credential_id,
            credential: self.credential,
            created_at: Timestamp::from_unix_millis(self.created_at),
            last_used_at: self.last_used_at.map(Timestamp::from_unix_millis),
        })
    }
}

/// A `mfa_challenges` row as stored.
#[derive(sqlx::FromRow)]
struct ChallengeRow {
    hash: Vec<u8>,
    user_id: String,
    purpose: String,
    session_id: Option<String>,
    amr: String,
    ceremony: Option<String>,
    created_at: i64,
    expires_at: i64,
    failures: i64,
}

impl ChallengeRow {
    fn into_challenge(self) -> Result<StoredMfaChallenge, StoreError> {
        Ok(StoredMfaChallenge {
            hash: <[u8; 32]>::try_from(self.hash)
                .map(TokenHash)
                .map_err(|_| corrupt("mfa_challenges.hash is not 32 bytes"))?,
            user_id: user_id(&self.user_id, "mfa_challenges.user_id is not a uuid")?,
            purpose: self.purpose,
            session_id: self
                .session_id
                .map(|s| SessionId::parse(&s).map_err(|_| corrupt("mfa_challenges.session_id is not a uuid")))
                .transpose()?,
            amr: self.amr,
            ceremony: self.ceremony,
            created_at: Timestamp::from_unix_millis(self.created_at),
            expires_at: Timestamp::from_unix_millis(self.expires_at),
            failures: u32::try_from(self.failures).map_err(|_| corrupt("mfa_challenges.failures"))?,
        })
    }
}

impl SqliteTx {
    /// Whether a write changed exactly one row.
    fn changed_one(
        &mut self,
        result: Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>,
    ) -> Result<bool, StoreError> {
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// How many rows a write changed.
    fn changed(
        &mut self,
        result: Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>,
    ) -> Result<u64, StoreError> {
        match result {
            Ok(done) => Ok(done.rows_affected()),
            Err(e) => Err(self.fail(e)),
        }
    }
}

#[async_trait]
impl MfaStore for SqliteTx {
    async fn insert_totp_device(&mut self, device: &StoredTotpDevice) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO mfa_totp_devices \
             (id, user_id, name, secret, pii_key, created_at, confirmed_at, last_used_at, last_step) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(device.id.to_string())
        .bind(device.user_id.to_string())
        .bind(device.name.as_str())
        .bind(device.secret.0.as_slice())
        .bind(device.pii_key.as_str())
        .bind(device.created_at.as_unix_millis())
        .bind(device.confirmed_at.map(Timestamp::as_unix_millis))
        .bind(device.last_used_at.map(Timestamp::as_unix_millis))
        .bind(device.last_step)
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_conflict(e, "totp_device")),
        }
    }

    async fn totp_devices_of(&mut self, user: UserId) -> Result<Vec<StoredTotpDevice>, StoreError> {
        let sql =
            format!("SELECT {TOTP_COLUMNS} FROM mfa_totp_devices WHERE user_id = $1 ORDER BY created_at, id");
        let rows: Vec<TotpRow> =
            match sqlx::query_as(&sql).bind(user.to_string()).fetch_all(&mut *self.tx).await {
                Ok(rows) => rows,
                Err(e) => return Err(self.fail(e)),
            };
        rows.into_iter().map(TotpRow::into_device).collect()
    }

    async fn confirm_totp_device(
        &mut self,
        user: UserId,
        id: MfaDeviceId,
        step: i64,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE mfa_totp_devices SET confirmed_at = $4, last_step = $3 \
             WHERE id = $2 AND user_id = $1 AND confirmed_at IS NULL",
        )
        .bind(user.to_string())
        .bind(id.to_string())
        .bind(step)
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        self.changed_one(result)
    }

    async fn accept_totp_step(
        &mut self,
        user: UserId,
        id: MfaDeviceId,
        step: i64,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        // The replay check is the write's own condition, never a read before it (RFC 6238 section 5.2).
        let result = sqlx::query(
            "UPDATE mfa_totp_devices SET last_step = $3, last_used_at = $4 \
             WHERE id = $2 AND user_id = $1 AND confirmed_at IS NOT NULL \
             AND (last_step IS NULL OR last_step < $3)",
        )
        .bind(user.to_string())
        .bind(id.to_string())
        .bind(step)
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        self.changed_one(result)
    }

    async fn delete_totp_device(&mut self, user: UserId, id: MfaDeviceId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM mfa_totp_devices WHERE id = $2 AND user_id = $1")
            .bind(user.to_string())
            .bind(id.to_string())
            .execute(&mut *self.tx)
            .await;
        self.changed_one(result)
    }

    async fn delete_unconfirmed_totp_devices(
        &mut self,
        user: UserId,
        before: Timestamp,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "DELETE FROM mfa_totp_devices WHERE user_id = $1 AND confirmed_at IS NULL AND created_at < $2",
        )
        .bind(user.to_string())
        .bind(before.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        self.changed(result)
    }

    async fn replace_recovery_codes(
        &mut self,
        user: UserId,
        hashes: &[TokenHash],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user.to_string())
            .execute(&mut *self.tx)
            .await;
        self.changed(deleted)?;
        if hashes.is_empty() {
            return Ok(());
        }
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO mfa_recovery_codes (user_id, hash, created_at) ",
        );
        insert.push_values(hashes, |mut row, hash| {
            row.push_bind(user.to_string()).push_bind(hash.0.to_vec()).push_bind(at.as_unix_millis());
        });
        let result = insert.build().execute(&mut *self.tx).await;
        match result {
            Ok(_) => Ok(()),
            // The same hash twice in one set, or an account that does not exist.
            Err(e) => Err(self.write_conflict(e, "recovery_code")),
        }
    }

    async fn spend_recovery_code(
        &mut self,
        user: UserId,
        hash: &TokenHash,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $3 WHERE user_id = $1 AND hash = $2 AND used_at IS NULL",
        )
        .bind(user.to_string())
        .bind(hash.0.as_slice())
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        self.changed_one(result)
    }

    async fn recovery_codes_left(&mut self, user: UserId) -> Result<u64, StoreError> {
        let count: Result<i64, _> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user.to_string())
        .fetch_one(&mut *self.tx)
        .await;
        match count {
            Ok(count) => u64::try_from(count).map_err(|_| corrupt("a row count is negative")),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn insert_passkey(&mut self, passkey: &StoredPasskey) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO mfa_passkeys (id, user_id, name, credential_id, credential, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(passkey.id.to_string())
        .bind(passkey.user_id.to_string())
        .bind(passkey.name.as_str())
        .bind(passkey.credential_id.as_slice())
        .bind(passkey.credential.as_str())
        .bind(passkey.created_at.as_unix_millis())
        .bind(passkey.last_used_at.map(Timestamp::as_unix_millis))
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_conflict(e, "passkey")),
        }
    }

    async fn passkeys_of(&mut self, user: UserId) -> Result<Vec<StoredPasskey>, StoreError> {
        let sql =
            format!("SELECT {PASSKEY_COLUMNS} FROM mfa_passkeys WHERE user_id = $1 ORDER BY created_at, id");
        let rows: Vec<PasskeyRow> =
            match sqlx::query_as(&sql).bind(user.to_string()).fetch_all(&mut *self.tx).await {
                Ok(rows) => rows,
                Err(e) => return Err(self.fail(e)),
            };
        rows.into_iter().map(PasskeyRow::into_passkey).collect()
    }

    async fn update_passkey(
        &mut self,
        user: UserId,
        id: MfaDeviceId,
        credential: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE mfa_passkeys SET credential = $3, last_used_at = $4 WHERE id = $2 AND user_id = $1",
        )
        .bind(user.to_string())
        .bind(id.to_string())
        .bind(credential)
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        self.changed_one(result)
    }

    async fn delete_passkey(&mut self, user: UserId, id: MfaDeviceId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM mfa_passkeys WHERE id = $2 AND user_id = $1")
            .bind(user.to_string())
            .bind(id.to_string())
            .execute(&mut *self.tx)
            .await;
        self.changed_one(result)
    }

    async fn delete_all_factors(&mut self, user: UserId) -> Result<u64, StoreError> {
        let mut devices = 0;
        for (statement, counted) in [
            ("DELETE FROM mfa_totp_devices WHERE user_id = $1", true),
            ("DELETE FROM mfa_passkeys WHERE user_id = $1", true),
            ("DELETE FROM mfa_recovery_codes WHERE user_id = $1", false),
            ("DELETE FROM mfa_challenges WHERE user_id = $1", false),
        ] {
            let result = sqlx::query(statement).bind(user.to_string()).execute(&mut *self.tx).await;
            let deleted = self.changed(result)?;
            if counted {
                devices += deleted;
            }
        }
        Ok(devices)
    }

    async fn insert_mfa_challenge(&mut self, challenge: &StoredMfaChallenge) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO mfa_challenges \
             (hash, user_id, purpose, session_id, amr, ceremony, created_at, expires_at, failures) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(challenge.hash.0.as_slice())
        .bind(challenge.user_id.to_string())
        .bind(challenge.purpose.as_str())
        .bind(challenge.session_id.map(|s| s.to_string()))
        .bind(challenge.amr.as_str())
        .bind(challenge.ceremony.as_deref())
        .bind(challenge.created_at.as_unix_millis())
        .bind(challenge.expires_at.as_unix_millis())
        .bind(i64::from(challenge.failures))
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_conflict(e, "mfa_challenge")),
        }
    }

    async fn mfa_challenge(
        &mut self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<StoredMfaChallenge>, StoreError> {
        let sql = format!(
            "SELECT {CHALLENGE_COLUMNS} FROM mfa_challenges \
             WHERE hash = $1 AND closed_at IS NULL AND expires_at > $2"
        );
        let row: Option<ChallengeRow> = match sqlx::query_as(&sql)
            .bind(hash.0.as_slice())
            .bind(now.as_unix_millis())
            .fetch_optional(&mut *self.tx)
            .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(ChallengeRow::into_challenge).transpose()
    }

    async fn set_mfa_challenge_ceremony(
        &mut self,
        hash: &TokenHash,
        ceremony: &str,
    ) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE mfa_challenges SET ceremony = $2 WHERE hash = $1 AND closed_at IS NULL")
                .bind(hash.0.as_slice())
                .bind(ceremony)
                .execute(&mut *self.tx)
                .await;
        self.changed_one(result)
    }

    async fn fail_mfa_challenge(&mut self, hash: &TokenHash, max_failures: u32) -> Result<u32, StoreError> {
        // One statement counts and closes: two wrong answers racing cannot both see the count below
        // the limit. The contract passes no time, so a challenge closed by failures records its
        // creation as `closed_at`; only whether it is set is ever read.
        let failures: Option<i64> = match sqlx::query_scalar(
            "UPDATE mfa_challenges SET failures = failures + 1, \
             closed_at = CASE WHEN failures + 1 >= $2 THEN created_at ELSE NULL END \
             WHERE hash = $1 AND closed_at IS NULL RETURNING failures",
        )
        .bind(hash.0.as_slice())
        .bind(i64::from(max_failures))
        .fetch_optional(&mut *self.tx)
        .await
        {
            Ok(failures) => failures,
            Err(e) => return Err(self.fail(e)),
        };
        failures.map_or(Ok(0), u32::try_from).map_err(|_| corrupt("mfa_challenges.failures is out of range"))
    }

    async fn spend_mfa_challenge(
        &mut self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<StoredMfaChallenge>, StoreError> {
        let sql = format!(
            "UPDATE mfa_challenges SET closed_at = $2 \
             WHERE hash = $1 AND closed_at IS NULL AND expires_at > $2 RETURNING {CHALLENGE_COLUMNS}"
        );
        let row: Option<ChallengeRow> = match sqlx::query_as(&sql)
            .bind(hash.0.as_slice())
            .bind(now.as_unix_millis())
            .fetch_optional(&mut *self.tx)
            .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(ChallengeRow::into_challenge).transpose()
    }

    async fn purge_mfa_challenges(&mut self, before: Timestamp) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM mfa_challenges WHERE expires_at < $1")
            .bind(before.as_unix_millis())
            .execute(&mut *self.tx)
            .await;
        self.changed(result)
    }

    async fn delete_login_challenges_of(&mut self, user: UserId) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "DELETE FROM mfa_challenges WHERE user_id = $1 AND purpose IN ('login_bearer', 'login_cookie')",
        )
        .bind(user.to_string())
        .execute(&mut *self.tx)
        .await;
        self.changed(result)
    }

    async fn set_organization_requires_mfa(
        &mut self,
        organization: OrganizationId,
        required: bool,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE organizations SET requires_mfa = $2 WHERE id = $1")
            .bind(organization.to_string())
            .bind(required)
            .execute(&mut *self.tx)
            .await;
        self.changed_one(result)
    }

    async fn organization_requires_mfa(
        &mut self,
        organization: OrganizationId,
    ) -> Result<Option<bool>, StoreError> {
        let result: Result<Option<bool>, _> =
            sqlx::query_scalar("SELECT requires_mfa FROM organizations WHERE id = $1")
                .bind(organization.to_string())
                .fetch_optional(&mut *self.tx)
                .await;
        result.map_err(|e| self.fail(e))
    }

    async fn member_of_mfa_organization(&mut self, user: UserId) -> Result<bool, StoreError> {
        let result: Result<bool, _> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM memberships m JOIN organizations o ON o.id = m.organization_id \
             WHERE m.user_id = $1 AND o.requires_mfa)",
        )
        .bind(user.to_string())
        .fetch_one(&mut *self.tx)
        .await;
        result.map_err(|e| self.fail(e))
    }

    async fn set_session_authentication(
        &mut self,
        session: SessionId,
        amr: &str,
        mfa_level: u8,
        authenticated_at: Timestamp,
        enrollment_required: bool,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE sessions SET amr = $2, mfa_level = $3, authenticated_at = $4, \
             mfa_enrollment_required = $5 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(session.to_string())
        .bind(amr)
        .bind(i32::from(mfa_level))
        .bind(authenticated_at.as_unix_millis())
        .bind(enrollment_required)
        .execute(&mut *self.tx)
        .await;
        self.changed_one(result)
    }
}
