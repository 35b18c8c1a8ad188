//! The `portcullis` binary's library half: configuration, startup, listeners and shutdown, so that
//! integration tests start exactly what `portcullis serve` starts.

pub mod cli;
pub mod config;
pub mod data_dir;
pub mod error_tracking;
pub mod listener;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_app::{App, AppSettings, KekSet, SystemClock};
use portcullis_store::{Store, StoreError};
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_store_sqlite::{SqliteOptions, SqliteStore};
use secrecy::SecretSlice;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError, DatabaseTarget, Mode};
use crate::listener::ConnectionLimits;
use crate::tls::{TlsError, TlsReloader};

/// The version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("database")]
    Store(#[from] StoreError),
    #[error("startup")]
    App(#[from] portcullis_app::AppError),
    #[error("cannot install signal handlers: {source}")]
    Signals { source: std::io::Error },
    #[error("cannot read the password: {source}")]
    Input { source: std::io::Error },
    /// `audit verify` found the chain broken (exit code 1, with where and why).
    #[error("the audit chain is broken at seq {seq}: {reason}")]
    AuditBroken { seq: i64, reason: String },
    #[error("cannot write the export: {source}")]
    Output { source: std::io::Error },
    /// The Sentry client could not be built (its HTTP client, in practice).
    #[error("cannot start error tracking: {source}")]
    ErrorTracking { source: reqwest::Error },
}

impl StartError {
    /// The error with every cause, by `Display`, for the operator: "database: database error:
    /// password authentication failed for user ...". Causes never include connection strings.
    pub fn describe(&self) -> String {
        portcullis_domain::error_chain(self)
    }

    /// The process exit code: 2 for configuration mistakes, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Tls(_) => 2,
            _ => 1,
        }
    }
}

/// Options of `serve` that are not configuration keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Serve https with a generated self-signed certificate.
    pub dev_tls: bool,
}

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    redirect_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    tls: Option<Arc<TlsReloader>>,
    app: App,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Released when the server is dropped (after shutdown closes the database).
    _data_dir_lock: data_dir::DataDirLock,
}

impl RunningServer {
    /// Where the main listener is bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the http→https redirect listener is bound, if configured.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_addr
    }

    /// Where the metrics listener of its own (`metrics.listen`) is bound, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The use-case façade the server runs on.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Re-reads the TLS certificate and key (what SIGHUP does). Existing connections are kept.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, closes the database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // Closing waits for every pooled connection to come back; a stuck one must not hang the exit.
        if tokio::time::timeout(Duration::from_secs(10), self.app.shutdown()).await.is_err() {
            tracing::warn!("database did not close within 10 s; exiting anyway");
        }
    }
}

/// The instance secret: configured, or in development generated once into the data dir.
fn instance_secret(config: &Config) -> Result<config::Secret, StartError> {
    let data_dir_error = |source| StartError::DataDir { path: config.data_dir.display().to_string(), source };
    match (&config.secrets.instance_secret, config.mode) {
        (Some(secret), _) => Ok(secret.clone()),
        (None, Mode::Development) => {
            Ok(data_dir::development_instance_secret(&config.data_dir).map_err(data_dir_error)?.0)
        }
        // `production_problems` has already refused this; the arm keeps the match total.
        (None, Mode::Production) => {
            Err(ConfigError { problems: vec!["secrets.instance_secret: missing".into()] }.into())
        }
    }
}

/// The key-encryption keys: configured, or in development generated once into the data dir.
fn keks(config: &Config) -> Result<KekSet, StartError> {
    let data_dir_error = |source| StartError::DataDir { path: config.data_dir.display().to_string(), source };
    let text = match (&config.keys.kek, config.mode) {
        (Some(kek), _) => kek.clone(),
        (None, Mode::Development) => data_dir::development_kek(&config.data_dir).map_err(data_dir_error)?.0,
        // `production_problems` has already refused this; the arm keeps the match total.
        (None, Mode::Production) => {
            return Err(ConfigError { problems: vec!["keys.kek: missing".into()] }.into());
        }
    };
    KekSet::parse(text.expose()).map_err(|e| ConfigError { problems: vec![format!("keys.kek: {e}")] }.into())
}

/// The use cases for a one-off command (`portcullis users create`): the same settings as `serve`,
/// against a database whose schema must already be current.
pub async fn open_app(config: &Config) -> Result<App, StartError> {
    let data_dir_error = |source| StartError::DataDir { path: config.data_dir.display().to_string(), source };
    if let Some(warning) = data_dir::prepare(&config.data_dir).map_err(data_dir_error)? {
        tracing::warn!("{warning}");
    }
    let instance_secret = instance_secret(config)?;
    let keks = keks(config)?;
    let store = open_store(config).await?;
    // Like `serve`: a fresh data dir needs no separate `migrate` before its first account.
    if config.database.migrate_on_start {
        store.migrate().await?;
    }
    if !store.migration_status().await?.is_current() {
        store.close().await;
        return Err(ConfigError {
            problems: vec!["database: the schema is not current; run `portcullis migrate` first".into()],
        }
        .into());
    }
    let mut settings = AppSettings::new(
        SecretSlice::from(instance_secret.expose().as_bytes().to_vec()),
        keks,
        VERSION,
        &config.public_url(config.tls.cert_file.is_some(), config.http.listen),
    );
    config.apply_account_settings(&mut settings);
    config.apply_rate_limit_settings(&mut settings);
    config.apply_ip_rule_settings(&mut settings);
    settings.keys = config.key_settings();
    settings.audit = config.audit_settings();
    settings.mfa = config.mfa_settings();
    settings.metrics = config.metrics_access();
    settings.retention = config.retention_settings();
    let mailer = config.mailer().map_err(|e| ConfigError { problems: vec![e] })?;
    let app = App::new(store, Arc::new(SystemClock), settings, mailer)?;
    app.load_keys().await?;
    Ok(app)
}

/// The backups `[backup]` configures, for `app`.
pub fn backups(config: &Config, app: &App) -> Result<portcullis_app::Backups, StartError> {
    let target = config.backup_target().map_err(|e| ConfigError { problems: vec![e] })?;
    Ok(portcullis_app::Backups::new(app.clone(), target, config.backup_settings())?)
}

/// Opens the database a restore writes into: `sqlite:PATH` (created if missing) or `postgres://…`.
/// The URL is never echoed: it may carry a password.
pub async fn open_store_at(url: &str) -> Result<Arc<dyn Store>, StartError> {
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(ConfigError {
                problems: vec![
                    "--to: sqlite: needs a file path (sqlite:/var/lib/portcullis/portcullis.db)".into(),
                ],
            }
            .into());
        }
        return Ok(Arc::new(SqliteStore::open(&SqliteOptions::new(path)).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(&PostgresOptions::new(url)).await?));
    }
    Err(ConfigError {
        problems: vec!["--to: must be sqlite:PATH or postgres://… (the URL is not shown)".into()],
    }
    .into())
}

/// A new, empty SQLite database in a private temporary folder under the data dir's backup staging
/// area, for `verify` to restore into; removed when the returned folder is dropped.
pub async fn scratch_store(config: &Config) -> Result<(tempfile::TempDir, SqliteStore), StartError> {
    let staging = config.backup_settings().staging_dir;
    let io = |source| StartError::DataDir { path: staging.display().to_string(), source };
    // Owner-only, as the backups' own staging is: a backup is read from here twice.
    let mut folder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(folder.recursive(true), 0o700);
    folder.create(&staging).map_err(io)?;
    let dir = tempfile::Builder::new().prefix("scratch-").tempdir_in(&staging).map_err(io)?;
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("scratch.db"))).await?;
    Ok((dir, store))
}

/// Opens the database the configuration selects.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    match config.database_target().map_err(|e| ConfigError { problems: vec![e] })? {
        DatabaseTarget::Sqlite(path) => {
            let mut options = SqliteOptions::new(path);
            options.busy_timeout = Duration::from_millis(config.database.busy_timeout_ms);
            options.acquire_timeout = Duration::from_secs(config.database.acquire_timeout_secs);
            options.read_connections = config.database.max_connections.clamp(1, 8);
            Ok(Arc::new(SqliteStore::open(&options).await?))
        }
        DatabaseTarget::Postgres => {
            let url = config.database.url.as_ref().map(|u| u.expose().to_owned()).unwrap_or_default();
            let mut options = PostgresOptions::new(url);
            options.max_connections = config.database.max_connections;
            options.acquire_timeout = Duration::from_secs(config.database.acquire_timeout_secs);
            Ok(Arc::new(PostgresStore::connect(&options).await?))
        }
    }
}

/// Starts everything `portcullis serve` runs: data dir, secrets, database and migrations, listeners.
pub async fn start(config: &Config, options: StartOptions) -> Result<RunningServer, StartError> {
    let problems = config.production_problems(options.dev_tls);
    if !problems.is_empty() {
        return Err(ConfigError { problems }.into());
    }
    let data_dir_error = |source| StartError::DataDir { path: config.data_dir.display().to_string(), source };
    if let Some(warning) = data_dir::prepare(&config.data_dir).map_err(data_dir_error)? {
        tracing::warn!("{warning}");
    }
    let data_dir_lock = data_dir::lock(&config.data_dir).map_err(data_dir_error)?;
    let instance_secret = instance_secret(config)?;
    let keks = keks(config)?;

    let tls = match (&config.tls.cert_file, &config.tls.key_file, options.dev_tls) {
        (Some(cert), Some(key), _) => Some(Arc::new(TlsReloader::load(cert, key)?)),
        (_, _, true) => {
            let (cert, key) = tls::dev_certificate(&config.data_dir)?;
            Some(Arc::new(TlsReloader::load(&cert, &key)?))
        }
        _ => None,
    };

    let store = open_store(config).await?;
    if config.database.migrate_on_start {
        let applied = store.migrate().await?;
        if !applied.is_empty() {
            tracing::debug!(?applied, "applied database migrations");
        }
    }
    // Bound before the app is built: in development the public URL (token issuer, links in emails)
    // is the address actually bound, which port 0 only reveals now.
    let listener = bind(config.http.listen).await?;
    let local_addr =
        listener.local_addr().map_err(|source| StartError::Bind { addr: config.http.listen, source })?;
    let mut settings = AppSettings::new(
        SecretSlice::from(instance_secret.expose().as_bytes().to_vec()),
        keks,
        VERSION,
        &config.public_url(tls.is_some(), local_addr),
    );
    config.apply_account_settings(&mut settings);
    config.apply_rate_limit_settings(&mut settings);
    config.apply_ip_rule_settings(&mut settings);
    settings.keys = config.key_settings();
    settings.audit = config.audit_settings();
    settings.mfa = config.mfa_settings();
    settings.metrics = config.metrics_access();
    settings.retention = config.retention_settings();
    settings.alerts = config.alert_settings()?;
    let mailer = config.mailer().map_err(|e| ConfigError { problems: vec![e] })?;
    let app = App::new(store.clone(), Arc::new(SystemClock), settings, mailer)?;
    let (shutdown, receiver) = watch::channel(false);
    let mut tasks = vec![
        // Runs from the start; it waits for the keys when the schema is not current yet.
        tokio::spawn(sync_revocations(app.clone(), receiver.clone())),
        tokio::spawn(sync_keys(app.clone(), receiver.clone())),
        tokio::spawn(reencrypt(app.clone(), receiver.clone())),
        tokio::spawn(rate_limit_upkeep(app.clone(), receiver.clone())),
        tokio::spawn(app.clone().deliver_alerts(receiver.clone())),
        tokio::spawn(ip_rule_upkeep(app.clone(), receiver.clone())),
        tokio::spawn(audit_upkeep(app.clone(), receiver.clone())),
        tokio::spawn(retention_upkeep(app.clone(), receiver.clone())),
    ];
    if config.backup.enabled {
        if !config.backup.can_encrypt() {
            // Production refuses this at start; in development it is the usual case, so not a warning
            // (`config check` shows the recipients).
            tracing::debug!("backup.enabled but no backup.recipients: no scheduled backups until one is set");
        } else {
            let backups = backups(config, &app)?.with_node(node_name());
            tasks.push(tokio::spawn(backup_upkeep(backups, config.clone(), receiver.clone())));
        }
    }
    if store.migration_status().await?.is_current() {
        app.finish_bootstrap().await?;
        app.sync_revocations().await?;
        // The stored IP rules are in force before the first request is served.
        app.reload_ip_rules().await?;
        if let Some(token) = app.issue_setup_token().await? {
            // The one secret ever logged, on purpose: it is how the operator of a fresh installation
            // with no accounts creates the first owner. Single use, valid one hour, useless once any
            // account exists.
            tracing::warn!(
                setup_token = token.expose(),
                "no accounts exist yet: create the first owner with POST /v1/auth/setup and this setup \
                 token (valid 1 hour, single use), or run `portcullis users create --role owner`"
            );
        }
    } else {
        tracing::warn!(
            "database schema is not current; /readyz reports not ready until `portcullis migrate` runs"
        );
    }

    let web = config.web();
    let router = portcullis_web::router(portcullis_web::AppState::new(app.clone()), &web)
        .map_err(|e| ConfigError { problems: vec![e.to_string()] })?;
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(config.http.header_read_timeout_secs),
        max_buf_size: config.http.max_header_bytes.saturating_mul(4),
        max_connections: config.http.max_connections,
        shutdown_grace: Duration::from_secs(config.http.shutdown_grace_secs),
    };
    let endpoint = tls.clone().map(|reloader| listener::TlsEndpoint::new(reloader, app.metrics().clone()));
    tasks.push(tokio::spawn(listener::serve(listener, router, endpoint, limits, receiver.clone())));

    let mut redirect_addr = None;
    if let (Some(addr), Some(_)) = (config.tls.redirect_listen, &tls) {
        let redirect =
            portcullis_web::https_redirect_router(local_addr.port(), config.http.public_host.clone(), &web)
                .map_err(|e| ConfigError { problems: vec![e.to_string()] })?;
        let listener = bind(addr).await?;
        redirect_addr = listener.local_addr().ok();
        tasks.push(tokio::spawn(listener::serve(listener, redirect, None, limits, receiver.clone())));
    }

    let mut metrics_addr = None;
    if let config::MetricsExposure::OwnListener(addr) = config.metrics_exposure() {
        let router = portcullis_web::metrics_router(portcullis_web::AppState::new(app.clone()), &web)
            .map_err(|e| ConfigError { problems: vec![e.to_string()] })?;
        let listener = bind(addr).await?;
        metrics_addr = listener.local_addr().ok();
        tasks.push(tokio::spawn(listener::serve(listener, router, None, limits, receiver)));
    }

    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        listen = %local_addr,
        database = %config.database_description(),
        mode = %config.mode,
        tls = tls.is_some(),
        "Portcullis {VERSION} listening on {scheme}://{local_addr} using {} in {} mode",
        config.database_description(),
        config.mode,
    );
    Ok(RunningServer {
        local_addr,
        redirect_addr,
        metrics_addr,
        tls,
        app,
        shutdown,
        tasks,
        _data_dir_lock: data_dir_lock,
    })
}

/// Until shutdown: every few seconds forgets rate limit budgets that are full again (bounding memory
/// under a flood of distinct addresses) and folds the latency samples into their histogram, and each minute records what was refused as security events
/// and drops login failure records and second-factor challenges that have run out.
async fn rate_limit_upkeep(app: App, mut shutdown: watch::Receiver<bool>) {
    const SWEEP_SECS: u64 = 5;
    let mut interval = tokio::time::interval(Duration::from_secs(SWEEP_SECS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                app.sweep_rate_limits();
                app.flush_alerts();
                app.metrics_upkeep();
                ticks += 1;
                if ticks.is_multiple_of(60 / SWEEP_SECS) && app.can_sign_tokens() {
                    if let Err(error) = app.record_rate_limit_trips().await {
                        tracing::warn!(error = %portcullis_domain::error_chain(&error), "recording rate limit trips failed");
                    }
                    if let Err(error) = app.purge_login_throttles().await {
                        tracing::warn!(error = %portcullis_domain::error_chain(&error), "purging login failure records failed");
                    }
                    if let Err(error) = app.purge_mfa_challenges().await {
                        tracing::warn!(error = %portcullis_domain::error_chain(&error), "purging second-factor challenges failed");
                    }
                }
            }
            _ = shutdown.changed() => {
                // What was refused in the last minute is not lost on a clean shutdown.
                if app.can_sign_tokens() {
                    let _ = app.record_rate_limit_trips().await;
                }
                return;
            }
        }
    }
}

/// Until shutdown: every [`portcullis_app::IP_RULE_SYNC_SECS`] puts in force the IP rules other nodes
/// changed; each minute records the denials as security events and purges expired rules. A failed
/// reload keeps the rules in force as they were (logged once a minute, not every tick).
async fn ip_rule_upkeep(app: App, mut shutdown: watch::Receiver<bool>) {
    let sync = portcullis_app::IP_RULE_SYNC_SECS;
    let app = &app;
    let interval = tokio::time::interval(Duration::from_secs(sync));
    every(app, interval, &mut shutdown, move |ticks| async move {
        let minute = ticks.is_multiple_of(60 / sync);
        let reloaded = app.reload_ip_rules().await;
        if minute {
            warn_failed(reloaded, "reloading ip rules failed");
            warn_failed(app.record_ip_denials().await, "recording ip denials failed");
            warn_failed(app.purge_expired_ip_rules().await, "purging expired ip rules failed");
        }
    })
    .await;
    if app.can_sign_tokens() {
        let _ = app.record_ip_denials().await;
    }
}

/// Until shutdown: signs audit checkpoints when due (checked every [`AUDIT_TICK_SECS`]), verifies
/// the whole chain every `audit.verify_interval_secs` (a broken chain is a critical security event,
/// so it alerts), and purges events past retention once an hour (a no-op until some are due).
async fn audit_upkeep(app: App, mut shutdown: watch::Receiver<bool>) {
    const AUDIT_TICK_SECS: u64 = 10;
    let verify_every = app.audit_settings().verify_interval_secs.div_ceil(AUDIT_TICK_SECS);
    let app = &app;
    let interval = tokio::time::interval(Duration::from_secs(AUDIT_TICK_SECS));
    every(app, interval, &mut shutdown, move |ticks| async move {
        warn_failed(app.checkpoint_audit_if_due().await, "audit checkpoint failed");
        // The first verification runs a tick after start, then on the interval.
        if verify_every > 0 && (ticks == 1 || ticks.is_multiple_of(verify_every)) {
            warn_failed(app.run_audit_verification().await, "audit verification could not run");
        }
        if ticks.is_multiple_of(3600 / AUDIT_TICK_SECS) {
            warn_failed(app.purge_audit_events().await, "audit retention purge failed");
        }
    })
    .await;
    // Events written since the last checkpoint get one on a clean shutdown.
    if app.can_sign_tokens() {
        let _ = app.checkpoint_audit_now(true).await;
    }
}

/// Until shutdown: applies the retention policies every hour (the first time a minute after start,
/// so a restart loop does not turn into a purge loop). Each purge is in the audit trail.
async fn retention_upkeep(app: App, mut shutdown: watch::Receiver<bool>) {
    let app = &app;
    let start = tokio::time::Instant::now() + Duration::from_secs(60);
    let interval = tokio::time::interval_at(start, Duration::from_secs(3600));
    every(app, interval, &mut shutdown, move |_| async move {
        warn_failed(app.run_retention(false).await, "retention purge failed");
    })
    .await;
}

/// The current UTC time for the cron schedules.
fn utc_now() -> chrono::DateTime<chrono::Utc> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// The next time a schedule fires after `after` (validated at start; a schedule with no next
/// time, which cannot happen for a valid 5-field expression, waits a day).
fn next_run(schedule: &croner::Cron, after: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    schedule.find_next_occurrence(&after, false).unwrap_or(after + chrono::TimeDelta::days(1))
}

/// This node's name in claims on scheduled runs: the host name and the process id (informative
/// only, so an unreadable host name is `unknown`).
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{host}:{}", std::process::id())
}

/// Until shutdown: a backup on `backup.schedule`, followed by a prune; the restore drill (verify of
/// the newest backup) on `backup.drill_schedule`. Failures are `backup.failed` audit events and
/// `backup_failed` security events (which alert); successes move the backup metrics. Each slot is
/// claimed first, so with several nodes on one database only one of them runs it.
async fn backup_upkeep(backups: portcullis_app::Backups, config: Config, shutdown: watch::Receiver<bool>) {
    let (Ok(schedule), Ok(drill)) = (
        config::parse_schedule(&config.backup.schedule),
        config::parse_schedule(&config.backup.drill_schedule),
    ) else {
        return;
    };
    // Two schedules side by side, not one loop: a drill that hangs (on a crafted archive, a stalled
    // target) must not hold up the nightly backups, and it is given up after DRILL_TIMEOUT.
    let backups = &backups;
    let config = &config;
    let backup_slots = on_schedule(&schedule, shutdown.clone(), |slot| async move {
        run_scheduled_backup_at(backups, slot).await;
    });
    let drill_slots = on_schedule(&drill, shutdown, |slot| async move {
        if tokio::time::timeout(DRILL_TIMEOUT, run_drill_at(backups, config, slot)).await.is_err() {
            let why =
                format!("the restore drill did not finish within {} hours", DRILL_TIMEOUT.as_secs() / 3600);
            if let Err(error) = backups.record_failure("drill", None, &why).await {
                tracing::warn!(error = %portcullis_domain::error_chain(&error), "a drill failure was not recorded");
            }
        }
    });
    tokio::join!(backup_slots, drill_slots);
}

/// How long a restore drill may take before it is given up and reported as failed (a verify of a
/// million audit events takes under a minute here; hours mean something is wrong).
const DRILL_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Until shutdown: waits for each time `schedule` names and runs `work` with it (the slot). A run
/// that outlasts the next time skips that one (the slot after it is the next run).
async fn on_schedule<F, Fut>(schedule: &croner::Cron, mut shutdown: watch::Receiver<bool>, mut work: F)
where
    F: FnMut(portcullis_domain::Timestamp) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut due = next_run(schedule, utc_now());
    loop {
        let wait = (due - utc_now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        work(portcullis_domain::Timestamp::from_unix_millis(due.timestamp_millis())).await;
        due = next_run(schedule, due.max(utc_now()));
    }
}

/// The slot of `backup.schedule` at `slot` (the time the schedule named, the same on every node),
/// if this node claims it first: [`run_scheduled_backup`]. Whether this node ran it. Public for the
/// e2e tests.
pub async fn run_scheduled_backup_at(
    backups: &portcullis_app::Backups,
    slot: portcullis_domain::Timestamp,
) -> bool {
    let claimed = claim(backups, "backup", slot).await;
    if claimed {
        run_scheduled_backup(backups).await;
    }
    claimed
}

/// The slot of `backup.drill_schedule` at `slot`, if this node claims it first: [`run_drill`].
/// Whether this node ran it.
pub async fn run_drill_at(
    backups: &portcullis_app::Backups,
    config: &Config,
    slot: portcullis_domain::Timestamp,
) -> bool {
    let claimed = claim(backups, "drill", slot).await;
    if claimed {
        run_drill(backups, config).await;
    }
    claimed
}

/// Claims a scheduled run for this node. A claim that cannot be made (the database is down) skips
/// the run: a backup or a drill needs the database anyway, and the next slot tries again, while the
/// backup gauges stop moving (which is what alerts on a missed backup).
async fn claim(
    backups: &portcullis_app::Backups,
    task: &'static str,
    slot: portcullis_domain::Timestamp,
) -> bool {
    match backups.claim_scheduled_run(task, slot).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::info!(task, slot = %slot.to_rfc3339(), "another node has claimed this scheduled run; skipped");
            false
        }
        Err(error) => {
            tracing::warn!(
                task,
                slot = %slot.to_rfc3339(),
                error = %portcullis_domain::error_chain(&error),
                "the scheduled run could not be claimed; skipped until the next slot"
            );
            false
        }
    }
}

/// One scheduled backup: create, then prune; a failure is audited and raised as `backup_failed`.
/// Public for the e2e tests, which run the schedule's work without waiting for the clock.
pub async fn run_scheduled_backup(backups: &portcullis_app::Backups) {
    // A failed create is audited and raised by `Backups::create` itself.
    if backups.create(&|_, _| {}).await.is_ok()
        && let Err(error) = backups.prune().await
    {
        tracing::warn!(error = %portcullis_domain::error_chain(&error), "backup prune failed");
    }
}

/// The restore drill: verify (restore and prove) the newest backup.
pub async fn run_drill(backups: &portcullis_app::Backups, config: &Config) {
    let record = |why: String| async move {
        if let Err(error) = backups.record_failure("drill", None, &why).await {
            tracing::warn!(error = %portcullis_domain::error_chain(&error), "a drill failure was not recorded");
        }
    };
    let id = match backups.newest().await {
        Ok(Some(id)) => id,
        Ok(None) => return record("the restore drill found no backup to verify".into()).await,
        Err(error) => return record(portcullis_domain::error_chain(&error)).await,
    };
    let (_dir, scratch) = match scratch_store(config).await {
        Ok(scratch) => scratch,
        Err(error) => return record(format!("a scratch database for the drill: {}", error.describe())).await,
    };
    // verify records its own outcome (audit event, sidecar, security event on a defect).
    if let Err(error) = backups.verify(&id, &scratch, &|_, _| {}).await
        && !matches!(error, portcullis_app::AppError::Backup(_))
    {
        tracing::warn!(error = %portcullis_domain::error_chain(&error), "the restore drill could not run");
    }
    scratch.close().await;
}

/// Picks up sessions revoked by other nodes until shutdown, so their access tokens stop working here
/// within [`portcullis_app::REVOCATION_SYNC_SECS`].
async fn sync_revocations(app: App, mut shutdown: watch::Receiver<bool>) {
    let app = &app;
    let interval = tokio::time::interval(Duration::from_secs(portcullis_app::REVOCATION_SYNC_SECS));
    every(app, interval, &mut shutdown, move |_| async move {
        warn_failed(app.sync_revocations().await, "revocation sync failed");
    })
    .await;
}

/// Until shutdown: reloads keys other nodes (or the CLI) changed and runs the rotation schedule, every
/// [`portcullis_app::KEY_SYNC_SECS`]. Kept apart from re-encryption, whose batches must never delay
/// a node learning that a key was destroyed.
async fn sync_keys(app: App, mut shutdown: watch::Receiver<bool>) {
    let app = &app;
    let interval = tokio::time::interval(Duration::from_secs(portcullis_app::KEY_SYNC_SECS));
    every(app, interval, &mut shutdown, move |_| async move {
        let result = async {
            app.reload_keys_if_changed().await?;
            app.run_key_schedule().await
        }
        .await;
        warn_failed(result, "key sync failed");
    })
    .await;
}

/// Until shutdown: moves rows still under a retired personal-data or blind-index key to the active
/// one, a batch per table at a time.
async fn reencrypt(app: App, mut shutdown: watch::Receiver<bool>) {
    let app = &app;
    // A batch in progress stops at shutdown too, not only the wait between batches.
    let stop = &shutdown.clone();
    let interval = tokio::time::interval(Duration::from_secs(portcullis_app::KEY_SYNC_SECS));
    every(app, interval, &mut shutdown, move |_| async move {
        let work = async {
            if app.reencryption_remaining().await? == 0 {
                return Ok(());
            }
            let step = app.reencrypt_step().await?;
            tracing::info!(
                resealed = step.resealed,
                reindexed = step.reindexed,
                skipped = step.skipped,
                remaining = step.remaining,
                "re-encrypting personal data under the active keys"
            );
            Ok::<_, portcullis_app::AppError>(())
        };
        let mut stop = stop.clone();
        tokio::select! {
            result = work => warn_failed(result, "re-encryption failed"),
            _ = stop.changed() => {}
        }
    })
    .await;
}

/// Runs `work` on each tick of `interval` until shutdown, once the schema is current (a server
/// started ahead of `portcullis migrate` has nothing to work on), passing how many ticks did work.
/// A tick's work runs to its end before shutdown is seen.
async fn every<F, Fut>(
    app: &App,
    mut interval: tokio::time::Interval,
    shutdown: &mut watch::Receiver<bool>,
    mut work: F,
) where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if !app.can_sign_tokens() {
                    continue;
                }
                ticks += 1;
                work(ticks).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Logs a background task's failure with its cause chain; the task runs again on its next tick.
fn warn_failed<T>(result: Result<T, portcullis_app::AppError>, what: &'static str) {
    if let Err(error) = result {
        tracing::warn!(error = %portcullis_domain::error_chain(&error), "{what}");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}
