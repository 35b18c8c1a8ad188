//! Detection rules and their automatic responses: credential stuffing (many accounts failing from one
//! address), privilege probing (bursts of 403 answers) and scanning (bursts of 404 answers) per
//! principal or address, and administrators logging in from an address not seen before for them.
//!
//! Counting is in memory on each node, in fixed windows, with a bound on how many keys are held (an
//! attacker who forges addresses fills the table, which then stops taking new keys until windows
//! expire rather than growing). Each rule fires at most once per key and window; every firing is a
//! security event, and so is every automatic response (an `ip_blocked` rule, which an administrator
//! deletes to reverse it; an account hold, which the unlock ends; a revoked session).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use ipnet::IpNet;
use portcullis_domain::{RevokeReason, SecurityEventKind, SessionId, Timestamp, UserId, UserStatus};
use sha2::Sha256;

use crate::audit::AuditEntry;
use crate::{App, AppError, Principal};

/// What to do, besides recording the event, when probing is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeResponse {
    /// Only the event (and its alert).
    #[default]
    None,
    /// End the session the requests came with (nothing for an API key).
    RevokeSession,
    /// Put the account on hold (`locked`; an administrator's unlock ends it) and end its sessions.
    LockAccount,
    /// Block the client address for `block_for`.
    BlockIp,
}

/// Thresholds, windows and responses of the detection rules.
#[derive(Debug, Clone)]
pub struct DetectionSettings {
    /// Distinct account identifiers failing to log in from one address within `stuffing_window`
    /// that count as credential stuffing.
    pub stuffing_accounts: u32,
    pub stuffing_window: Duration,
    /// How long a stuffing address is blocked; zero records the event only.
    pub stuffing_block: Duration,
    /// 403 answers to one principal (or, unauthenticated, one address) within `probing_window`.
    pub probing_forbidden: u32,
    pub probing_window: Duration,
    pub probing_response: ProbeResponse,
    /// 404 answers to one address within `scanning_window`.
    pub scanning_not_found: u32,
    pub scanning_window: Duration,
    /// How long a scanning address is blocked; zero records the event only.
    pub scanning_block: Duration,
    /// Blocks from probing (when its response is `BlockIp`).
    pub block_for: Duration,
    /// Whether an owner's or admin's login from an address not seen for them raises an event.
    pub admin_new_ip: bool,
}

impl Default for DetectionSettings {
    fn default() -> Self {
        Self {
            stuffing_accounts: 10,
            stuffing_window: Duration::from_secs(600),
            stuffing_block: Duration::from_secs(3600),
            probing_forbidden: 20,
            probing_window: Duration::from_secs(60),
            probing_response: ProbeResponse::None,
            scanning_not_found: 50,
            scanning_window: Duration::from_secs(60),
            scanning_block: Duration::ZERO,
            block_for: Duration::from_secs(3600),
            admin_new_ip: true,
        }
    }
}

/// Most keys each rule holds at once.
const MAX_KEYS: usize = 50_000;

/// Hits per key in fixed windows; says once per window when the threshold is reached.
#[derive(Debug)]
struct BurstCounter<K> {
    windows: Mutex<HashMap<K, (i64, u32)>>,
}

impl<K> Default for BurstCounter<K> {
    fn default() -> Self {
        Self { windows: Mutex::new(HashMap::new()) }
    }
}

impl<K: std::hash::Hash + Eq + Copy> BurstCounter<K> {
    /// Counts one hit; true exactly when this hit reaches `threshold` in the current window.
    fn hit(&self, key: K, now: Timestamp, window: Duration, threshold: u32) -> bool {
        let Ok(mut windows) = self.windows.lock() else { return false };
        let now = now.as_unix_millis();
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        if windows.len() >= MAX_KEYS && !windows.contains_key(&key) {
            windows.retain(|_, (start, _)| now.saturating_sub(*start) < window);
            if windows.len() >= MAX_KEYS {
                return false;
            }
        }
        let entry = windows.entry(key).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 == threshold.max(1)
    }
}

/// The start of an address's window and the identifiers (8 bytes of their blind index) seen in it.
type DistinctWindow = (i64, HashSet<[u8; 8]>);

/// Distinct identifiers failing per address in fixed windows.
#[derive(Debug, Default)]
struct DistinctCounter {
    windows: Mutex<HashMap<IpAddr, DistinctWindow>>,
}

impl DistinctCounter {
    /// Adds `subject` to the address's set; true exactly when the set reaches `threshold`. A set
    /// stops growing at the threshold, so memory per address is bounded too.
    fn add(&self, ip: IpAddr, subject: [u8; 8], now: Timestamp, window: Duration, threshold: u32) -> bool {
        let Ok(mut windows) = self.windows.lock() else { return false };
        let now = now.as_unix_millis();
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let threshold = usize::try_from(threshold.max(1)).unwrap_or(usize::MAX);
        if windows.len() >= MAX_KEYS && !windows.contains_key(&ip) {
            windows.retain(|_, (start, _)| now.saturating_sub(*start) < window);
            if windows.len() >= MAX_KEYS {
                return false;
            }
        }
        let entry = windows.entry(ip).or_insert_with(|| (now, HashSet::new()));
        if now.saturating_sub(entry.0) >= window {
            *entry = (now, HashSet::new());
        }
        if entry.1.len() >= threshold {
            return false;
        }
        entry.1.insert(subject) && entry.1.len() == threshold
    }
}

/// Who an answer went to: the principal when the request authenticated, else the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Principal(UserId),
    Address(IpAddr),
}

/// The detection state of one node.
#[derive(Debug, Default)]
pub(crate) struct Detector {
    stuffing: DistinctCounter,
    probing: BurstCounter<Subject>,
    scanning: BurstCounter<IpAddr>,
}

/// A single address as a network (/32 or /128).
fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn secs(duration: Duration) -> String {
    duration.as_secs().to_string()
}

impl App {
    fn detection(&self) -> &DetectionSettings {
        &self.inner.settings.detection
    }

    /// A failed login for `subject` (the identifier's blind index) from `ip`: the address that fails
    /// for many distinct identifiers in a window is stuffing credentials, and is blocked.
    pub(crate) async fn observe_login_failure(
        &self,
        ip: Option<&str>,
        subject: [u8; 32],
    ) -> Result<(), AppError> {
        let Some(ip) = ip.and_then(|text| text.parse::<IpAddr>().ok()) else { return Ok(()) };
        let rules = self.detection();
        let mut short = [0u8; 8];
        short.copy_from_slice(&subject[..8]);
        let fired = self.inner.detector.stuffing.add(
            super::client_prefix(ip),
            short,
            self.now(),
            rules.stuffing_window,
            rules.stuffing_accounts,
        );
        if !fired {
            return Ok(());
        }
        let mut details = BTreeMap::from([
            ("accounts".to_owned(), rules.stuffing_accounts.to_string()),
            ("window_secs".to_owned(), secs(rules.stuffing_window)),
        ]);
        if !rules.stuffing_block.is_zero() {
            details.insert("response".into(), format!("ip blocked for {} s", rules.stuffing_block.as_secs()));
        }
        let ip_text = ip.to_string();
        self.record_security_event_with(
            SecurityEventKind::CredentialStuffing,
            None,
            None,
            Some(&ip_text),
            details,
        )
        .await?;
        if !rules.stuffing_block.is_zero() {
            self.block_ip(host(ip), rules.stuffing_block, "credential stuffing").await?;
        }
        Ok(())
    }

    /// An answer the guard saw: bursts of 403 for one principal (or address) are probing for
    /// privileges, bursts of 404 for one address are scanning. Cheap when nothing fires (a map
    /// update); what fires records its event and runs its response.
    pub async fn observe_answer(
        &self,
        ip: IpAddr,
        principal: Option<Principal>,
        status: u16,
    ) -> Result<(), AppError> {
        let rules = self.detection();
        let now = self.now();
        match status {
            403 => {
                let subject = principal
                    .map_or(Subject::Address(super::client_prefix(ip)), |p| Subject::Principal(p.user_id));
                if self.inner.detector.probing.hit(
                    subject,
                    now,
                    rules.probing_window,
                    rules.probing_forbidden,
                ) {
                    self.respond_to_probing(ip, principal, rules).await?;
                }
            }
            404 => {
                let key = super::client_prefix(ip);
                if self.inner.detector.scanning.hit(key, now, rules.scanning_window, rules.scanning_not_found)
                {
                    let mut details = BTreeMap::from([
                        ("not_found".to_owned(), rules.scanning_not_found.to_string()),
                        ("window_secs".to_owned(), secs(rules.scanning_window)),
                    ]);
                    if !rules.scanning_block.is_zero() {
                        details.insert(
                            "response".into(),
                            format!("ip blocked for {} s", rules.scanning_block.as_secs()),
                        );
                    }
                    let user = principal.map(|p| p.user_id);
                    let ip_text = ip.to_string();
                    self.record_security_event_with(
                        SecurityEventKind::Scanning,
                        user,
                        None,
                        Some(&ip_text),
                        details,
                    )
                    .await?;
                    if !rules.scanning_block.is_zero() {
                        self.block_ip(host(ip), rules.scanning_block, "scanning").await?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn respond_to_probing(
        &self,
        ip: IpAddr,
        principal: Option<Principal>,
        rules: &DetectionSettings,
    ) -> Result<(), AppError> {
        let response = match (rules.probing_response, principal) {
            // Without a principal there is no session or account to act on; the address remains.
            (ProbeResponse::RevokeSession | ProbeResponse::LockAccount, None) => ProbeResponse::None,
            (response, _) => response,
        };
        let mut details = BTreeMap::from([
            ("forbidden".to_owned(), rules.probing_forbidden.to_string()),
            ("window_secs".to_owned(), secs(rules.probing_window)),
        ]);
        let label = match response {
            ProbeResponse::None => None,
            ProbeResponse::RevokeSession => Some("session revoked".to_owned()),
            ProbeResponse::LockAccount => Some("account locked".to_owned()),
            ProbeResponse::BlockIp => Some(format!("ip blocked for {} s", rules.block_for.as_secs())),
        };
        if let Some(label) = label {
            details.insert("response".into(), label);
        }
        let user = principal.map(|p| p.user_id);
        let session = principal.and_then(|p| p.session_id());
        let ip_text = ip.to_string();
        self.record_security_event_with(
            SecurityEventKind::PrivilegeProbing,
            user,
            session,
            Some(&ip_text),
            details,
        )
        .await?;
        match (response, principal) {
            (ProbeResponse::RevokeSession, Some(p)) => {
                if let Some(session) = p.session_id() {
                    self.revoke_session_automatically(p.user_id, session).await?;
                    self.record_automatic_response(p.user_id, Some(session), "session_revoked", &ip_text)
                        .await?;
                }
            }
            (ProbeResponse::LockAccount, Some(p)) => {
                let held = self.hold_account_automatically(p.user_id).await?;
                let what = if held { "account_held" } else { "sessions_revoked" };
                self.record_automatic_response(p.user_id, None, what, &ip_text).await?;
            }
            (ProbeResponse::BlockIp, _) => {
                self.block_ip(host(ip), rules.block_for, "privilege probing").await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Records an automatic response to probing as a security event of its own.
    async fn record_automatic_response(
        &self,
        user: UserId,
        session: Option<SessionId>,
        response: &str,
        ip: &str,
    ) -> Result<(), AppError> {
        let details = BTreeMap::from([
            ("rule".to_owned(), "privilege_probing".to_owned()),
            ("response".to_owned(), response.to_owned()),
        ]);
        self.record_security_event_with(
            SecurityEventKind::AutomaticResponse,
            Some(user),
            session,
            Some(ip),
            details,
        )
        .await
    }

    /// Ends one session as an automatic response.
    async fn revoke_session_automatically(&self, user: UserId, session: SessionId) -> Result<(), AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let revoked = tx.revoke_session(user, session, now, RevokeReason::UserRevoked).await?;
        let entry = revoked.then(|| {
            AuditEntry::system("session.revoked")
                .target("session", session)
                .detail("user_id", user.to_string())
                .detail("reason", "privilege_probing")
        });
        self.commit_audited(tx, entry).await?;
        self.forget_sessions(&[session], now);
        Ok(())
    }

    /// Puts an account on hold (`locked`) and ends its sessions, as an automatic response; an
    /// administrator's unlock ends it. An owner is never held, only signed out: a probe an attacker
    /// can provoke must not leave the installation without anyone who may unlock.
    /// Whether the account was put on hold (an owner's, or one not active, is not).
    async fn hold_account_automatically(&self, user: UserId) -> Result<bool, AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let Some(account) = self.load_user(tx.as_mut(), user).await? else { return Ok(false) };
        if account.status != UserStatus::Active {
            return Ok(false);
        }
        let hold = account.role != portcullis_domain::BuiltinRole::Owner;
        let mut entries = Vec::new();
        if hold {
            tx.set_user_status(user, UserStatus::Locked, now).await?;
            entries.push(
                AuditEntry::system("user.status.changed")
                    .target("user", user)
                    .detail("from", account.status.as_str())
                    .detail("to", UserStatus::Locked.as_str())
                    .detail("reason", "privilege_probing"),
            );
        }
        let revoked =
            crate::sessions::revoke_sessions_in(tx.as_mut(), user, None, RevokeReason::UserRevoked, now)
                .await?;
        entries.push(
            AuditEntry::system("session.revoked_all")
                .target("user", user)
                .detail("reason", "privilege_probing")
                .detail("revoked", revoked.len()),
        );
        self.commit_audited(tx, entries).await?;
        self.forget_sessions(&revoked, now);
        self.inner.profiles.forget(user);
        Ok(hold)
    }

    /// After an owner's or administrator's successful login from `ip`, which the login remembered
    /// (`seen`: it was known; `known`: how many were): an address not seen before for them, when they
    /// have logged in from somewhere before, raises an `admin_login_from_new_ip` event. Addresses are
    /// kept as an HMAC under the blind-index key, never in clear.
    pub(crate) async fn report_admin_login(
        &self,
        user: UserId,
        ip: IpAddr,
        known: u64,
        seen: bool,
    ) -> Result<(), AppError> {
        if !self.detection().admin_new_ip {
            return Ok(());
        }
        if known > 0 && !seen {
            let details = BTreeMap::from([("known_addresses".to_owned(), known.to_string())]);
            let ip_text = ip.to_string();
            self.record_security_event_with(
                SecurityEventKind::AdminLoginFromNewIp,
                Some(user),
                None,
                Some(&ip_text),
                details,
            )
            .await?;
        }
        Ok(())
    }

    /// The keyed digest of an account's login address (the address never stored in clear).
    pub(crate) fn login_ip_digest(&self, user: UserId, ip: IpAddr) -> Result<[u8; 32], AppError> {
        let keys = self.loaded_keys();
        let key = keys.fields.active_index_key()?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|e| AppError::Internal(Box::new(e)))?;
        mac.update(b"portcullis/login-ip/v1\0");
        mac.update(user.to_string().as_bytes());
        mac.update(b"\0");
        mac.update(ip.to_canonical().to_string().as_bytes());
        Ok(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000 + millis)
    }

    #[test]
    fn a_burst_fires_once_per_window_at_the_threshold() {
        let counter = BurstCounter::<u8>::default();
        let window = Duration::from_secs(60);
        let fired: Vec<bool> = (0..5).map(|i| counter.hit(1, at(i), window, 3)).collect();
        assert_eq!(fired, [false, false, true, false, false]);
        // A new window counts again.
        let fired: Vec<bool> = (0..3).map(|i| counter.hit(1, at(60_000 + i), window, 3)).collect();
        assert_eq!(fired, [false, false, true]);
    }

    #[test]
    fn distinct_identifiers_fire_at_the_threshold_and_repeats_do_not_count() {
        let counter = DistinctCounter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let window = Duration::from_secs(600);
        assert!(!counter.add(ip, [1; 8], at(0), window, 3));
        assert!(!counter.add(ip, [1; 8], at(1), window, 3), "the same account again");
        assert!(!counter.add(ip, [2; 8], at(2), window, 3));
        assert!(counter.add(ip, [3; 8], at(3), window, 3));
        assert!(!counter.add(ip, [4; 8], at(4), window, 3), "fired once");
    }

    #[test]
    fn a_full_table_takes_no_new_keys_until_windows_expire() {
        let counter = BurstCounter::<u32>::default();
        let window = Duration::from_secs(60);
        for key in 0..u32::try_from(MAX_KEYS).unwrap() {
            counter.hit(key, at(0), window, 1000);
        }
        assert!(!counter.hit(u32::MAX, at(1), window, 1), "full: the new key is not counted");
        assert!(counter.hit(u32::MAX, at(60_001), window, 1), "after the window the table makes room");
    }
}
