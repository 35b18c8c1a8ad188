//! `portcullis`: the command-line entry point. Parses arguments, loads configuration, runs a command,
//! and turns every failure into a message and an exit code (2 for configuration errors), never a
//! panic or a backtrace.

#![allow(clippy::print_stdout, reason = "commands print their output to stdout; logs go to stderr")]

use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{
    AuditCommand, BackupCommand, Cli, Command, ConfigCommand, CreateUserArgs, KeysCommand, MigrateArgs,
    RetentionCommand, RotateArgs, ServeArgs, UsersCommand,
};
use portcullis::config::{self, Config};
use portcullis::error_tracking::ErrorTracking;
use portcullis::{StartError, StartOptions, VERSION, telemetry};
use portcullis_store::Store as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

fn main() -> ExitCode {
    // Files this process creates (database, WAL, generated secrets) are private to its user even
    // where code does not set a mode explicitly.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    if let Command::Version = cli.command {
        println!("portcullis {VERSION}");
        return ExitCode::SUCCESS;
    }
    let config = match config::load(&cli.global) {
        Ok(config) => config,
        Err(error) => {
            eprint!("portcullis: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config(ConfigCommand::Check(args)) => config_check(&config, args.dev_tls),
        Command::Serve(args) => serve_with_error_tracking(config, args),
        Command::Migrate(args) => run_async(migrate(config, args)),
        Command::Users(UsersCommand::Create(args)) => run_async(create_user(config, args)),
        Command::Keys(KeysCommand::GenerateKek(args)) => generate_kek(&args.id),
        Command::Keys(command) => run_async(keys(config, command)),
        Command::Audit(command) => run_async(audit(config, command)),
        Command::Retention(RetentionCommand::Run(args)) => run_async(retention(config, args.dry_run)),
        Command::Backup(command) => run_async(backup(config, command)),
        Command::Version => ExitCode::SUCCESS,
    }
}

fn run_async(future: impl Future<Output = Result<(), StartError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let text = error.describe();
            tracing::error!(error = %text, "portcullis stopped with an error");
            eprint!("portcullis: {text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// `config check`: validate, print the effective configuration (secrets masked) and any production
/// problems.
fn config_check(config: &Config, dev_tls: bool) -> ExitCode {
    print!("{}", config.to_masked_toml());
    let problems = config.production_problems(dev_tls);
    if problems.is_empty() {
        eprintln!("configuration is valid ({} mode)", config.mode);
        ExitCode::SUCCESS
    } else {
        eprint!("portcullis: {}", config::ConfigError { problems });
        ExitCode::from(2)
    }
}

/// `serve`, with the Sentry client (when configured) held for the whole process: it is dropped only
/// after the runtime has stopped, so the errors of a failed start and of shutdown are sent too.
fn serve_with_error_tracking(config: Config, args: ServeArgs) -> ExitCode {
    let error_tracking = match ErrorTracking::start(&config) {
        Ok(tracking) => tracking,
        Err(error) => {
            eprintln!("portcullis: {}", error.describe());
            return ExitCode::from(error.exit_code());
        }
    };
    telemetry::init(&config.log, config.mode, error_tracking.as_ref());
    let code = run_async(serve(config, args));
    // Sends what is queued, waiting at most sentry.shutdown_timeout_secs.
    drop(error_tracking);
    code
}

async fn serve(config: Config, args: ServeArgs) -> Result<(), StartError> {
    // Handlers go in before the server announces itself, so a signal sent as soon as the
    // "listening" line appears is handled, not fatal.
    let mut signals = Signals::install().map_err(|source| StartError::Signals { source })?;
    let server = portcullis::start(&config, StartOptions { dev_tls: args.dev_tls }).await?;
    signals.wait_for_stop(&server).await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT stop the server; SIGHUP reloads the TLS certificate.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn wait_for_stop(&mut self, server: &portcullis::RunningServer) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => match server.reload_tls() {
                    Ok(true) => tracing::info!("SIGHUP: reloaded the TLS certificate"),
                    Ok(false) => tracing::info!("SIGHUP: no TLS configured; nothing to reload"),
                    Err(error) => {
                        tracing::error!(%error, "SIGHUP: TLS reload failed; keeping the current certificate");
                    }
                },
            }
        }
    }
}

/// `migrate`: apply pending migrations (or report them with `--status`).
async fn migrate(config: Config, args: MigrateArgs) -> Result<(), StartError> {
    telemetry::init(&config.log, config.mode, None);
    if let Some(warning) = portcullis::data_dir::prepare(&config.data_dir)
        .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?
    {
        tracing::warn!("{warning}");
    }
    let store = portcullis::open_store(&config).await?;
    let status = store.migration_status().await?;
    if args.status {
        println!("database: {}", config.database_description());
        println!("schema version: {}", status.schema_version());
        println!("applied: {:?}", status.applied);
        println!("pending: {:?}", status.pending);
        if !status.unknown.is_empty() {
            println!("unknown (newer than this binary): {:?}", status.unknown);
        }
    } else {
        let applied = store.migrate().await?;
        let after = store.migration_status().await?;
        println!(
            "{}: applied {} migration(s) {:?}; schema version {}",
            config.database_description(),
            applied.len(),
            applied,
            after.schema_version()
        );
    }
    store.close().await;
    Ok(())
}

/// `users create`: make an account from the command line, reading its password without echo.
async fn create_user(config: Config, args: CreateUserArgs) -> Result<(), StartError> {
    telemetry::init(&config.log, config.mode, None);
    let role = portcullis_domain::BuiltinRole::parse(&args.role).ok_or_else(|| {
        StartError::Config(config::ConfigError {
            problems: vec!["--role: must be one of owner, admin, auditor, member".into()],
        })
    })?;
    let password = read_password().map_err(|source| StartError::Input { source })?;
    let app = portcullis::open_app(&config).await?;
    let result = app.create_user_as_operator(&args.email, args.display_name.as_deref(), password, role).await;
    app.shutdown().await;
    let profile = result.map_err(as_flag_error)?;
    println!("created {} ({}) with role {}", profile.email, profile.id, profile.role.as_str());
    Ok(())
}

/// A use case's error, with validation issues named as the flags the operator typed.
fn as_flag_error(error: portcullis_app::AppError) -> StartError {
    match error {
        portcullis_app::AppError::Validation(issues) => StartError::Config(config::ConfigError {
            problems: issues
                .into_iter()
                .map(|i| format!("{}: {}", i.field.trim_start_matches('/').replace('_', "-"), i.message))
                .collect(),
        }),
        other => StartError::from(other),
    }
}

/// `keys generate-kek`: a new KEK entry on stdout, for the operator to put in a secret store.
fn generate_kek(id: &str) -> ExitCode {
    let entry = match portcullis_app::KekSet::generate_entry(id) {
        Ok(entry) => entry,
        Err(error) => {
            eprintln!("portcullis: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(problem) = portcullis_app::KekSet::parse(&entry) {
        eprintln!("portcullis: --id: {problem}");
        return ExitCode::from(2);
    }
    println!("{}", entry.as_str());
    ExitCode::SUCCESS
}

/// `keys list | rotate | rotate-kek | reencrypt`.
async fn keys(config: Config, command: KeysCommand) -> Result<(), StartError> {
    telemetry::init(&config.log, config.mode, None);
    let app = portcullis::open_app(&config).await?;
    let result = keys_with(&app, command).await;
    app.shutdown().await;
    result
}

async fn keys_with(app: &portcullis_app::App, command: KeysCommand) -> Result<(), StartError> {
    use portcullis_app::KeyPurpose;
    match command {
        KeysCommand::List => {
            println!(
                "{:<46} {:<12} {:<19} {:<9} {:<10} {:<24} {:<24} RETIRED",
                "ID", "PURPOSE", "ALGORITHM", "STATE", "KEK", "CREATED", "ACTIVATED"
            );
            let time = |t: Option<portcullis_domain::Timestamp>| t.map_or("-".to_owned(), |t| t.to_rfc3339());
            for key in app.list_keys().await? {
                println!(
                    "{:<46} {:<12} {:<19} {:<9} {:<10} {:<24} {:<24} {}",
                    key.id,
                    key.purpose.as_str(),
                    key.algorithm,
                    key.state.as_str(),
                    key.kek_id,
                    key.created_at.to_rfc3339(),
                    time(key.activated_at),
                    time(key.retired_at)
                );
            }
        }
        KeysCommand::Rotate(RotateArgs { purpose, emergency }) => {
            let purpose = KeyPurpose::parse(&purpose)
                .ok_or_else(|| flag_problem("--purpose: must be signing, pii, blind-index or audit"))?;
            let rotation = app.rotate_key(purpose, emergency).await.map_err(as_flag_error)?;
            println!(
                "{} key {} is active from {}; it replaces {}{}",
                purpose.as_str(),
                rotation.new_key,
                rotation.active_from.to_rfc3339(),
                rotation.old_key.as_deref().unwrap_or("nothing"),
                if emergency {
                    format!(" (destroyed; {} session(s) revoked)", rotation.revoked_sessions)
                } else {
                    String::new()
                }
            );
            if purpose == KeyPurpose::BlindIndex {
                println!(
                    "every node looks accounts up under it from its next key sync; from then on new \
                     indexes use it and accounts are re-indexed by a running server or `portcullis keys reencrypt`"
                );
            }
            if purpose == KeyPurpose::Pii {
                println!(
                    "{} row(s) are re-encrypted by a running server, or now with `portcullis keys reencrypt`",
                    app.reencryption_remaining().await?
                );
            }
        }
        KeysCommand::RotateKek => {
            let count = app.rotate_kek().await?;
            println!(
                "re-wrapped {count} key(s) under the first KEK of keys.kek; older KEKs can now be removed"
            );
        }
        KeysCommand::Reencrypt => {
            // Promotes a waiting blind-index key whose time has come, so its re-indexing runs too.
            app.run_key_schedule().await?;
            let total = app.reencryption_remaining().await?;
            let bar = indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} rows re-encrypted ({eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut remaining = total;
            while remaining > 0 {
                let step = app.reencrypt_step().await?;
                if step.resealed + step.reindexed == 0 && step.remaining == remaining {
                    bar.abandon();
                    return Err(StartError::App(portcullis_app::AppError::Keyring(format!(
                        "{remaining} row(s) could not be moved to the active keys ({} do not open; \
                         their ids are in the log)",
                        step.skipped
                    ))));
                }
                remaining = step.remaining;
                bar.set_position(total.saturating_sub(remaining));
            }
            bar.finish();
            let destroyed = app.run_key_schedule().await?;
            println!(
                "{total} row(s) re-encrypted; retired keys are destroyed {}",
                if destroyed { "now" } else { "once their grace period ends (by a running server)" }
            );
        }
        KeysCommand::GenerateKek(_) => {}
    }
    Ok(())
}

/// `retention run [--dry-run]`: one line per policy, with the period and what went (or would go).
async fn retention(config: Config, dry_run: bool) -> Result<(), StartError> {
    telemetry::init(&config.log, config.mode, None);
    let app = portcullis::open_app(&config).await?;
    let result = app.run_retention(dry_run).await;
    app.shutdown().await;
    let report = result?;
    let settings = config.retention_settings();
    let verb = if dry_run { "would delete" } else { "deleted" };
    for (what, days, count) in [
        ("ended sessions", settings.ended_sessions_days, report.ended_sessions),
        ("security events", settings.security_events_days, report.security_events),
        ("unconfirmed accounts", settings.unverified_accounts_days, report.unverified_accounts),
    ] {
        if days == 0 {
            println!("{what}: kept forever (0 days)");
        } else {
            println!("{what} older than {days} day(s): {verb} {count}");
        }
    }
    Ok(())
}

/// `backup create | list | verify ID | restore ID --to URL [--force] | prune`.
async fn backup(config: Config, command: BackupCommand) -> Result<(), StartError> {
    telemetry::init(&config.log, config.mode, None);
    let app = portcullis::open_app(&config).await?;
    let result = match portcullis::backups(&config, &app) {
        Ok(backups) => backup_with(&backups, &config, command).await,
        Err(error) => Err(error),
    };
    app.shutdown().await;
    result
}

/// A spinner naming the table and its rows so far (drawn only on a terminal).
fn rows_progress(verb: &'static str) -> (indicatif::ProgressBar, impl Fn(&str, u64) + Send + Sync) {
    let bar = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_prefix(verb);
    let handle = bar.clone();
    (bar, move |table: &str, rows: u64| handle.set_message(format!("{table}: {rows} rows")))
}

async fn backup_with(
    backups: &portcullis_app::Backups,
    config: &Config,
    command: BackupCommand,
) -> Result<(), StartError> {
    match command {
        BackupCommand::Create => {
            let (bar, progress) = rows_progress("backing up");
            let result = backups.create(&progress).await;
            bar.finish_and_clear();
            let created = result?;
            let rows: u64 = created.manifest.tables.iter().map(|t| t.rows).sum();
            println!(
                "created {} ({} bytes, {rows} rows in {} tables) in {}",
                created.id,
                created.size,
                created.manifest.tables.len(),
                backups.target().describe()
            );
        }
        BackupCommand::List => {
            for backup in backups.list().await? {
                let verified = match backup.sidecar.as_ref().and_then(|s| s.last_verification()) {
                    None => "never verified".to_owned(),
                    Some(v) if v.ok => format!("verified good at {}", millis_rfc3339(v.at_ms)),
                    Some(v) => format!(
                        "FAILED verification at {}: {}",
                        millis_rfc3339(v.at_ms),
                        v.reason.as_deref().unwrap_or("")
                    ),
                };
                println!("{}\t{} bytes\t{verified}", backup.id, backup.size);
            }
        }
        BackupCommand::Verify(args) => {
            let (_dir, scratch) = portcullis::scratch_store(config).await?;
            let (bar, progress) = rows_progress("verifying");
            let result = backups.verify(&args.id, &scratch, &progress).await;
            bar.finish_and_clear();
            scratch.close().await;
            let verified = result?;
            let rows: u64 = verified.manifest.tables.iter().map(|t| t.rows).sum();
            println!(
                "backup {} is good: {} tables, {rows} rows, checksums match, restored, audit chain verified ({} events)",
                verified.id,
                verified.manifest.tables.len(),
                verified.audit_events_verified
            );
        }
        BackupCommand::Restore(args) => {
            let target = portcullis::open_store_at(&args.to).await?;
            let (bar, progress) = rows_progress("restoring");
            let result = backups.restore(&args.id, target.as_ref(), args.force, &progress).await;
            bar.finish_and_clear();
            target.close().await;
            let restored = result?;
            let rows: u64 = restored.manifest.tables.iter().map(|t| t.rows).sum();
            println!(
                "restored {} ({rows} rows, schema {}) and migrated the database to this version",
                restored.id, restored.manifest.header.schema_version
            );
        }
        BackupCommand::Prune => {
            let pruned = backups.prune().await?;
            for id in &pruned.deleted {
                println!("deleted {id}");
            }
            println!("{} deleted, {} kept", pruned.deleted.len(), pruned.kept);
        }
    }
    Ok(())
}

fn millis_rfc3339(millis: i64) -> String {
    portcullis_domain::Timestamp::from_unix_millis(millis).to_rfc3339()
}

async fn audit(config: Config, command: AuditCommand) -> Result<(), StartError> {
    telemetry::init(&config.log, config.mode, None);
    let app = portcullis::open_app(&config).await?;
    let result = audit_with(&app, command).await;
    app.shutdown().await;
    result
}

async fn audit_with(app: &portcullis_app::App, command: AuditCommand) -> Result<(), StartError> {
    match command {
        AuditCommand::Verify => {
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} events verified ({per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = app
                .verify_audit_chain(&|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await?;
            bar.finish_and_clear();
            if let Some(broken) = report.broken {
                return Err(StartError::AuditBroken { seq: broken.seq, reason: broken.reason });
            }
            let start = if report.anchored_at == 0 {
                "from the first event".to_owned()
            } else {
                format!(
                    "from the signed checkpoint at seq {} (earlier events were purged by retention)",
                    report.anchored_at
                )
            };
            println!(
                "audit chain intact: {} event(s) {start} to seq {}, {} signed checkpoint(s) verified",
                report.events, report.last_seq, report.checkpoints
            );
        }
        AuditCommand::Export(args) => {
            if args.format != "jsonl" {
                return Err(flag_problem("--format: only jsonl is supported"));
            }
            let since = args
                .since
                .as_deref()
                .map(|text| {
                    portcullis_app::parse_rfc3339(text).ok_or_else(|| {
                        flag_problem("--since: must be an RFC 3339 date-time, such as 2026-01-31T00:00:00Z")
                    })
                })
                .transpose()?;
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let mut failure = None;
            let written = app
                .export_audit_events(since, &mut |event| {
                    let line = serde_json::to_string(&event)
                        .map_err(|e| portcullis_app::AppError::Internal(Box::new(e)))?;
                    if let Err(error) = writeln!(out, "{line}") {
                        failure.get_or_insert(error);
                        return Err(portcullis_app::AppError::Internal("the output closed".into()));
                    }
                    Ok(())
                })
                .await;
            if let Some(source) = failure {
                return Err(StartError::Output { source });
            }
            let written = written?;
            out.flush().map_err(|source| StartError::Output { source })?;
            eprintln!("{written} event(s) exported");
        }
        AuditCommand::Checkpoint => match app.checkpoint_audit_now(false).await? {
            Some(checkpoint) => println!(
                "checkpoint signed at seq {} (hash {}) with audit key {}",
                checkpoint.seq,
                portcullis_domain::audit::hex(&checkpoint.hash),
                checkpoint.key_id
            ),
            None => println!("nothing to checkpoint: the log is empty or its end is already checkpointed"),
        },
        AuditCommand::Purge => {
            let purge = app.purge_audit_events().await?;
            match purge.through_seq {
                Some(seq) => println!(
                    "{} event(s) purged; the chain now starts after the checkpoint at seq {seq}",
                    purge.deleted
                ),
                None => println!("nothing to purge"),
            }
        }
    }
    Ok(())
}

fn flag_problem(problem: &str) -> StartError {
    StartError::Config(config::ConfigError { problems: vec![problem.to_owned()] })
}

/// The new account's password: prompted twice on a terminal, else the first line of standard input.
fn read_password() -> std::io::Result<secrecy::SecretString> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat it: ")?;
        if first != second {
            return Err(std::io::Error::other("the two passwords differ"));
        }
        return Ok(secrecy::SecretString::from(first));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(secrecy::SecretString::from(password.to_owned()))
}
