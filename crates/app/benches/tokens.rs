//! What a bearer-authenticated request costs inside `app`, without HTTP: checking the access token
//! (`App::authenticate_bearer`) from the verified-token cache and the first time a token is seen,
//! and the caller's profile (`App::profile`, behind `GET /v1/me`) from the per-node profile cache and
//! from SQLite once the cached copy is older than `PROFILE_CACHE_MILLIS`.
//!
//! The `fields` group measures the field-level encryption of personal data on its own; the `authz`
//! group the authorization decision and the check API's path inside `app`.
//!
//! The app runs on in-memory SQLite, like the use-case tests, with a clock the benchmark moves. Run with
//! `cargo bench -p portcullis-app --bench tokens`; `scripts/bench/me.sh` measures the same request
//! through the whole server.

#![allow(clippy::expect_used, reason = "a benchmark whose setup fails has nothing to measure")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis_app::mail::FileOutbox;
use portcullis_app::{
    App, AppSettings, ClientContext, FixedClock, HashAlgorithm, HashPoolSize, IssuedCredentials, KekSet,
    LoginMode, LoginOutcome, PROFILE_CACHE_MILLIS,
};
use portcullis_domain::{BuiltinRole, Timestamp};
use portcullis_store::Store as _;
use portcullis_store_sqlite::SqliteStore;
use secrecy::{SecretSlice, SecretString};

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "correct horse battery staple 42";

/// An app with one account logged in once: the access token and the refresh token that renews it.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    app: App,
    /// Starts at the real time; only the profile benchmarks (run last) move it.
    clock: Arc<FixedClock>,
    access_token: String,
    refresh_token: String,
    /// Holds the outbox directory for as long as the app may write to it.
    _outbox: tempfile::TempDir,
}

fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let outbox = tempfile::tempdir()?;
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let clock =
        Arc::new(FixedClock::new(Timestamp::from_unix_millis(i64::try_from(since_epoch.as_millis())?)));
    let (app, credentials) = runtime.block_on(async {
        let store = SqliteStore::open_in_memory().await?;
        store.migrate().await?;
        let keks = KekSet::parse(&KekSet::generate_entry("bench")?)?;
        let mut settings =
            AppSettings::new(SecretSlice::from(vec![7u8; 32]), keks, "bench", "https://id.example.com");
        // Hashing is not measured here; cheap parameters keep the setup short.
        settings.password_hash = HashAlgorithm::Argon2id { memory_kib: 64, iterations: 1, parallelism: 1 };
        settings.hash_pool = HashPoolSize { workers: 1, queue: 1 };
        let mailer =
            Arc::new(FileOutbox::new(outbox.path().join("outbox"), "Portcullis <no-reply@example.com>")?);
        let app = App::new(Arc::new(store), clock.clone(), settings, mailer)?;
        app.load_keys().await?;
        app.create_user_as_operator(EMAIL, Some("Bench"), SecretString::from(PASSWORD), BuiltinRole::Member)
            .await?;
        let outcome = app
            .login(EMAIL, SecretString::from(PASSWORD), LoginMode::Bearer, &ClientContext::default())
            .await?;
        let LoginOutcome::Authenticated { credentials, .. } = outcome else {
            return Err("the bench account has no second factor".into());
        };
        Ok::<_, Box<dyn std::error::Error>>((app, credentials))
    })?;
    let IssuedCredentials::Bearer { access_token, refresh_token, .. } = credentials else {
        return Err("a bearer login returned cookie credentials".into());
    };
    Ok(Fixture {
        runtime,
        app,
        clock,
        access_token,
        refresh_token: refresh_token.expose().to_owned(),
        _outbox: outbox,
    })
}

fn bench_tokens(c: &mut Criterion) {
    let mut fixture = fixture().expect("benchmark fixture");
    let app = fixture.app.clone();
    let principal = app.authenticate_bearer(&fixture.access_token).expect("the login's token verifies");

    let mut group = c.benchmark_group("bearer");
    // The same token every time: after the first call, a lookup in the verified-token cache plus the
    // revocation check. This is what every request of a client with a live token pays.
    group.bench_function("authenticate_bearer_cached", |b| {
        b.iter(|| app.authenticate_bearer(black_box(&fixture.access_token)))
    });
    // A token this node has never seen: JWT parse, Ed25519 signature check, claims, cache insert.
    // Each one is minted beforehand by a refresh (not timed), the public way to get a fresh token.
    group.bench_function("authenticate_bearer_uncached", |b| {
        b.iter_batched(
            || {
                let client = ClientContext::default();
                let issued = fixture
                    .runtime
                    .block_on(app.refresh(&fixture.refresh_token, &client))
                    .expect("refresh mints a new access token");
                let IssuedCredentials::Bearer { access_token, refresh_token, .. } = issued else {
                    unreachable!("a refresh returns bearer credentials")
                };
                fixture.refresh_token = refresh_token.expose().to_owned();
                access_token
            },
            |token| app.authenticate_bearer(black_box(&token)),
            BatchSize::SmallInput,
        )
    });
    // GET /v1/me within PROFILE_CACHE_MILLIS of the last read: a lookup in the profile cache.
    group.bench_function("profile_cached", |b| {
        b.iter(|| fixture.runtime.block_on(app.profile(black_box(&principal))))
    });
    // GET /v1/me once the cached copy is stale (the clock is moved past it, untimed): a read
    // transaction and one user row through sqlx's SQLite worker thread, then a cache insert.
    group.bench_function("profile_read", |b| {
        b.iter_batched(
            || fixture.clock.advance_millis(PROFILE_CACHE_MILLIS),
            |()| fixture.runtime.block_on(app.profile(black_box(&principal))),
            // One clock move per read: a batch of moves first would leave all but one read cached.
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Authorization (issue 5): the pure decision alone, and `App::check` for the caller's own resource
/// (grants from the profile cache, the permission parsed, the decision), what `POST /v1/authz/check`
/// pays inside `app` and what every `require` in a use case pays.
fn bench_authz(c: &mut Criterion) {
    let fixture = fixture().expect("benchmark fixture");
    let app = fixture.app.clone();
    let principal = app.authenticate_bearer(&fixture.access_token).expect("the login's token verifies");
    let grants = BuiltinRole::Admin.grants();
    let wanted = portcullis_domain::Permission::parse_concrete("sessions:delete").expect("a permission");
    let resource = portcullis_domain::Resource { owner: Some(principal.user_id), organization: None };
    let request = portcullis_app::CheckRequest {
        permission: "sessions:delete".into(),
        owner: Some(principal.user_id),
        organization: None,
        subject: None,
    };
    let mut group = c.benchmark_group("authz");
    group.bench_function("decide_admin", |b| {
        b.iter(|| portcullis_domain::decide(black_box(&grants), principal.user_id, &wanted, &resource))
    });
    group.bench_function("check_own_cached", |b| {
        b.iter(|| fixture.runtime.block_on(app.check(black_box(&principal), black_box(&request))))
    });
    group.finish();
}

/// The personal-data encryption a request pays (issue 4): the blind index and two decryptions of a
/// login, the two decryptions of an uncached profile read, and the sealing of a signup. Compare with
/// the server CPU per request that `scripts/bench/login.sh` and `scripts/bench/me.sh` report.
fn bench_fields(c: &mut Criterion) {
    let work = portcullis_app::benchmarking::FieldWork::new(EMAIL, "Bench User").expect("field keys");
    let mut group = c.benchmark_group("fields");
    group.bench_function("login_index_and_open", |b| b.iter(|| black_box(work.login())));
    group.bench_function("profile_open", |b| b.iter(|| black_box(work.open_row())));
    group.bench_function("signup_seal_and_index", |b| b.iter(|| black_box(work.seal_row())));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_tokens, bench_fields, bench_authz
}
criterion_main!(benches);
