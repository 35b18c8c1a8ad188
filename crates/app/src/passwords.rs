//! Password hashing (ASVS V6.4, NIST SP 800-63B section 3.1.1.2): argon2id by default, bcrypt on
//! request, every imported PHC argon2 or `$2a$/$2b$/$2y$` bcrypt hash verifiable, and all of it on a
//! bounded pool so a burst of logins is shed with 503 instead of queueing without limit.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::AppError;

/// Which algorithm new hashes use, with its cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// argon2id (RFC 9106) with memory in KiB, iterations and lanes.
    Argon2id { memory_kib: u32, iterations: u32, parallelism: u32 },
    /// bcrypt at a cost of at least 10 (ASVS 6.4.2 via OWASP's password storage cheat sheet).
    Bcrypt { cost: u32 },
}

impl Default for HashAlgorithm {
    /// OWASP's argon2id baseline: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        HashAlgorithm::Argon2id { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

/// bcrypt only reads the first 72 bytes of its input; longer passwords are refused, never truncated.
pub const BCRYPT_MAX_BYTES: usize = 72;

/// Sizing of the hashing pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPoolSize {
    /// Hashes computed at once: one per core, since each is pure CPU.
    pub workers: usize,
    /// Hash requests that may wait for a worker; beyond this, callers are told to come back later.
    pub queue: usize,
}

impl HashPoolSize {
    /// One worker per available core and a queue four times that.
    pub fn for_this_machine() -> Self {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self { workers, queue: workers * 4 }
    }
}

/// The result of checking a password against a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// No match (or the stored hash is unusable).
    No,
    /// A match; `rehash` holds a new hash when the stored one uses an older algorithm or weaker
    /// parameters than configured (ASVS 6.4.x: upgrade on successful login).
    Yes { rehash: Option<String> },
}

/// Hashes and verifies passwords off the async runtime, on a bounded pool.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    algorithm: HashAlgorithm,
    /// Bounds waiting plus running hashes; a failed `try_acquire` is the load-shedding signal.
    admission: Arc<Semaphore>,
    /// Bounds running hashes to the number of cores.
    workers: Arc<Semaphore>,
    /// A hash of a random password in the configured algorithm, verified for unknown accounts so a
    /// failed login costs the same whether or not the account exists (ASVS 6.3.x, zero2prod).
    dummy: Arc<str>,
    /// Places `admission` holds in all, to tell how many are taken.
    capacity: usize,
    /// Hashes refused because the queue was full, since the start (a metric).
    shed: Arc<std::sync::atomic::AtomicU64>,
}

impl PasswordHasher {
    /// A hasher for `algorithm`; computes the dummy hash once (one hash's worth of CPU).
    pub fn new(algorithm: HashAlgorithm, size: HashPoolSize) -> Result<Self, AppError> {
        if let HashAlgorithm::Bcrypt { cost } = algorithm
            && cost < 10
        {
            return Err(AppError::Internal("bcrypt cost below 10 is refused".into()));
        }
        let workers = size.workers.max(1);
        let mut random = zeroize::Zeroizing::new([0u8; 24]);
        getrandom::fill(random.as_mut()).map_err(|e| AppError::Internal(Box::new(e)))?;
        let dummy_password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dummy = hash_with(algorithm, &SecretString::from(dummy_password))?;
        Ok(Self {
            algorithm,
            admission: Arc::new(Semaphore::new(workers + size.queue)),
            workers: Arc::new(Semaphore::new(workers)),
            dummy: dummy.into(),
            capacity: workers + size.queue,
            shed: Arc::default(),
        })
    }

    /// Takes a place in the hashing queue now, or answers [`AppError::Overloaded`] at once. A caller
    /// that must do other work before hashing (a login reads the account first) reserves first, so a
    /// request that will be shed costs no database round trip.
    pub fn reserve(&self) -> Result<HashSlot, AppError> {
        let admitted = self.admission.clone().try_acquire_owned().map_err(|_| {
            self.shed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            AppError::Overloaded { retry_after_secs: 1 }
        })?;
        Ok(HashSlot { hasher: self.clone(), admitted })
    }

    /// Hashes running or waiting for a worker now.
    pub fn occupied(&self) -> usize {
        self.capacity.saturating_sub(self.admission.available_permits())
    }

    /// Hashes refused at once because the queue was full, since the start.
    pub fn shed(&self) -> u64 {
        self.shed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hashes a (policy-checked, normalized) password for storage.
    pub async fn hash(&self, password: SecretString) -> Result<String, AppError> {
        self.reserve()?.hash(password).await
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no account, so
    /// both cases take one hash's time. The answer for `None` is always [`Verified::No`].
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> Result<Verified, AppError> {
        self.reserve()?.verify(password, stored).await
    }

    #[cfg(test)]
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, AppError> {
        self.reserve()?.run(work).await
    }
}

/// A place in the hashing queue, held until the hash it was taken for has finished.
#[derive(Debug)]
pub struct HashSlot {
    hasher: PasswordHasher,
    admitted: tokio::sync::OwnedSemaphorePermit,
}

impl HashSlot {
    /// Hashes a (policy-checked, normalized) password for storage.
    pub async fn hash(self, password: SecretString) -> Result<String, AppError> {
        let algorithm = self.hasher.algorithm;
        self.run(move || hash_with(algorithm, &password)).await?
    }

    /// See [`PasswordHasher::verify`].
    pub async fn verify(self, password: SecretString, stored: Option<String>) -> Result<Verified, AppError> {
        let algorithm = self.hasher.algorithm;
        let dummy = self.hasher.dummy.clone();
        self.run(move || match stored {
            Some(stored) => verify_with(algorithm, &password, &stored, &dummy),
            None => {
                let _ = verify_with(algorithm, &password, &dummy, &dummy);
                Ok(Verified::No)
            }
        })
        .await?
    }

    /// Runs CPU-heavy work on the blocking pool once a worker is free.
    async fn run<T: Send + 'static>(self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, AppError> {
        let HashSlot { hasher, admitted } = self;
        let worker =
            hasher.workers.clone().acquire_owned().await.map_err(|e| AppError::Internal(Box::new(e)))?;
        // The permits travel with the work, not with the caller: a client that hangs up mid-hash drops
        // the future, but the hash runs on, and its slot must stay taken until it is done.
        tokio::task::spawn_blocking(move || {
            let _permits = (admitted, worker);
            work()
        })
        .await
        .map_err(|e| AppError::Internal(Box::new(e)))
    }
}

fn argon2(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Argon2<'static>, AppError> {
    let params = Params::new(memory_kib, iterations, parallelism, None)
        .map_err(|e| AppError::Internal(format!("argon2 parameters: {e}").into()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_with(algorithm: HashAlgorithm, password: &SecretString) -> Result<String, AppError> {
    let password = password.expose_secret().as_bytes();
    match algorithm {
        HashAlgorithm::Argon2id { memory_kib, iterations, parallelism } => {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| AppError::Internal(Box::new(e)))?;
            let salt = SaltString::encode_b64(&salt)
                .map_err(|e| AppError::Internal(format!("argon2 salt: {e}").into()))?;
            argon2(memory_kib, iterations, parallelism)?
                .hash_password(password, &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| AppError::Internal(format!("argon2: {e}").into()))
        }
        HashAlgorithm::Bcrypt { cost } => {
            // The policy refuses longer passwords while bcrypt is configured; this is the backstop.
            // Up to 72 bytes every byte counts (the crate's truncating call then only drops bcrypt's
            // own NUL terminator, which is why its non-truncating variant refuses 72 already).
            if password.len() > BCRYPT_MAX_BYTES {
                return Err(AppError::Internal("a password over 72 bytes reached bcrypt".into()));
            }
            bcrypt::hash(password, cost).map_err(|e| AppError::Internal(Box::new(e)))
        }
    }
}

/// Which family a stored hash belongs to, by its prefix.
fn is_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| stored.starts_with(p))
}

fn bcrypt_cost(stored: &str) -> Option<u32> {
    stored.get(4..6)?.parse().ok()
}

/// Verifies against `stored`. Every path does one hash's work, so the time taken does not tell an
/// attacker which kind of hash an account has, or that it has an unusable one: a bcrypt hash is
/// always computed (its length rule applied to the result), and an unparseable stored value is
/// replaced by a verification of `dummy`.
fn verify_with(
    algorithm: HashAlgorithm,
    password: &SecretString,
    stored: &str,
    dummy: &str,
) -> Result<Verified, AppError> {
    let bytes = password.expose_secret().as_bytes();
    let matched = if is_bcrypt(stored) {
        // A password longer than 72 bytes never matches a bcrypt hash: the truncating comparison
        // would accept any suffix after the 72nd byte. Up to 72, every byte is compared.
        let computed = matches!(bcrypt::verify(bytes, stored), Ok(true));
        computed && bytes.len() <= BCRYPT_MAX_BYTES
    } else {
        match PasswordHash::new(stored) {
            // Argon2::default() takes algorithm, version and parameters from the hash itself, so
            // argon2i/argon2d/argon2id imports with any parameters verify.
            Ok(hash) if hash.algorithm.as_str().starts_with("argon2") => {
                Argon2::default().verify_password(bytes, &hash).is_ok()
            }
            _ => {
                if stored != dummy {
                    let _ = verify_with(algorithm, password, dummy, dummy);
                }
                false
            }
        }
    };
    if !matched {
        return Ok(Verified::No);
    }
    let rehash = if needs_rehash(algorithm, stored) { Some(hash_with(algorithm, password)?) } else { None };
    Ok(Verified::Yes { rehash })
}

/// A stored hash is upgraded when it uses another algorithm than the configured one, or the same
/// algorithm with weaker parameters. Stronger stored parameters are kept: lowering the configuration
/// must not weaken hashes already stored.
fn needs_rehash(algorithm: HashAlgorithm, stored: &str) -> bool {
    match algorithm {
        HashAlgorithm::Bcrypt { cost } => !is_bcrypt(stored) || bcrypt_cost(stored).is_none_or(|c| c < cost),
        HashAlgorithm::Argon2id { memory_kib, iterations, parallelism } => {
            let Ok(hash) = PasswordHash::new(stored) else { return true };
            if hash.algorithm.as_str() != "argon2id" {
                return true;
            }
            match Params::try_from(&hash) {
                Ok(p) => p.m_cost() < memory_kib || p.t_cost() < iterations || p.p_cost() < parallelism,
                Err(_) => true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Small parameters keep the tests fast; the rules do not depend on the cost.
    const FAST_ARGON: HashAlgorithm =
        HashAlgorithm::Argon2id { memory_kib: 64, iterations: 1, parallelism: 1 };
    const SIZE: HashPoolSize = HashPoolSize { workers: 1, queue: 1 };

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn the_default_is_owasps_argon2id_baseline_and_hashes_carry_it() {
        let default = HashAlgorithm::default();
        assert_eq!(default, HashAlgorithm::Argon2id { memory_kib: 19_456, iterations: 2, parallelism: 1 });
        let hash = hash_with(default, &secret("correct horse battery staple")).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_and_nothing_else() {
        let hasher = PasswordHasher::new(FAST_ARGON, SIZE).unwrap();
        let hash = hasher.hash(secret("correct horse battery staple")).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let ok = hasher.verify(secret("correct horse battery staple"), Some(hash.clone())).await.unwrap();
        assert_eq!(ok, Verified::Yes { rehash: None });
        let bad = hasher.verify(secret("correct horse battery stapl"), Some(hash)).await.unwrap();
        assert_eq!(bad, Verified::No);
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies_even_with_the_dummy_password() {
        let hasher = PasswordHasher::new(FAST_ARGON, SIZE).unwrap();
        assert_eq!(hasher.verify(secret(""), None).await.unwrap(), Verified::No);
    }

    #[tokio::test]
    async fn imported_bcrypt_hashes_of_every_prefix_verify_and_are_upgraded_to_argon2id() {
        let hasher = PasswordHasher::new(FAST_ARGON, SIZE).unwrap();
        let made = bcrypt::hash("hunter2 but longer", 10).unwrap();
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let stored = format!("{prefix}{}", &made[4..]);
            match hasher.verify(secret("hunter2 but longer"), Some(stored)).await.unwrap() {
                Verified::Yes { rehash: Some(new) } => assert!(new.starts_with("$argon2id$")),
                other => panic!("{prefix}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn weaker_argon2_parameters_are_upgraded_and_stronger_ones_kept() {
        let hasher = PasswordHasher::new(FAST_ARGON, SIZE).unwrap();
        let weaker = hash_with(
            HashAlgorithm::Argon2id { memory_kib: 32, iterations: 1, parallelism: 1 },
            &secret("pw pw pw pw"),
        )
        .unwrap();
        let stronger = hash_with(
            HashAlgorithm::Argon2id { memory_kib: 128, iterations: 2, parallelism: 1 },
            &secret("pw pw pw pw"),
        )
        .unwrap();
        let upgraded = hasher.verify(secret("pw pw pw pw"), Some(weaker)).await.unwrap();
        assert!(matches!(upgraded, Verified::Yes { rehash: Some(ref h) } if h.contains("m=64,t=1,p=1")));
        let kept = hasher.verify(secret("pw pw pw pw"), Some(stronger)).await.unwrap();
        assert_eq!(kept, Verified::Yes { rehash: None });
    }

    #[tokio::test]
    async fn bcrypt_hashes_at_the_configured_cost_and_refuses_to_truncate() {
        let hasher = PasswordHasher::new(HashAlgorithm::Bcrypt { cost: 10 }, SIZE).unwrap();
        let hash = hasher.hash(secret("a fine password")).await.unwrap();
        assert!(hash.starts_with("$2b$10$"));
        assert!(hasher.hash(secret(&"x".repeat(73))).await.is_err());
        // A 73-byte password must not match a hash of its 72-byte prefix.
        let prefix = bcrypt::hash("y".repeat(72), 10).unwrap();
        assert_eq!(hasher.verify(secret(&"y".repeat(73)), Some(prefix)).await.unwrap(), Verified::No);
        assert!(PasswordHasher::new(HashAlgorithm::Bcrypt { cost: 9 }, SIZE).is_err());
    }

    #[tokio::test]
    async fn garbage_in_the_stored_hash_is_a_mismatch_not_an_error() {
        let hasher = PasswordHasher::new(FAST_ARGON, SIZE).unwrap();
        for stored in ["", "plain", "$2b$xx$", "$argon2id$v=19$m=1", "$scrypt$ln=1,r=8,p=1$aa$bb"] {
            assert_eq!(hasher.verify(secret("pw"), Some(stored.into())).await.unwrap(), Verified::No);
        }
    }

    #[tokio::test]
    async fn a_full_queue_sheds_new_work_at_once() {
        let hasher = PasswordHasher::new(FAST_ARGON, HashPoolSize { workers: 1, queue: 0 }).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = {
            let hasher = hasher.clone();
            tokio::spawn(async move {
                hasher
                    .run(move || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap()).await.unwrap();
        assert_eq!(
            (hasher.occupied(), hasher.shed()),
            (1, 0),
            "the queue's depth and shed count, as metered"
        );
        let shed = hasher.hash(secret("anything at all")).await;
        assert!(matches!(shed, Err(AppError::Overloaded { retry_after_secs: 1 })), "{shed:?}");
        assert_eq!(hasher.shed(), 1);
        release_tx.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(hasher.occupied(), 0);
        assert!(hasher.hash(secret("anything at all")).await.is_ok());
    }
}
