//! The command line: `portcullis serve | migrate | users create | keys … | config check | version`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Portcullis: identity, access and audit server.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command understands; each overrides the configuration file and environment.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// TOML configuration file (see config/example.toml for every key).
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Folder for the embedded database, generated secrets and development certificates
    /// [default: ./portcullis-data].
    #[arg(long, global = true, env = "PORTCULLIS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, global = true, env = "PORTCULLIS_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Database URL: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB` [default: SQLite in the
    /// data dir]. Prefer the environment or PORTCULLIS_DATABASE__URL_FILE for URLs with passwords.
    #[arg(long, global = true, env = "PORTCULLIS_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(MigrateArgs),
    /// Manage accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage the keyring: signing, personal-data and blind-index keys, and the KEK that wraps them.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify and export the tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Apply the retention policies of `[retention]`.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Encrypted backups: create, list, verify, restore, prune (`[backup]`).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Serve https with a self-signed certificate for localhost, generated into the data dir
    /// (development mode only).
    #[arg(long)]
    pub dev_tls: bool,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Only report applied and pending migrations; change nothing.
    #[arg(long)]
    pub status: bool,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create an account (its address counts as verified). The password is read from a prompt, or
    /// from the first line of standard input when it is not a terminal; never from the command line.
    Create(CreateUserArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CreateUserArgs {
    /// The account's email address.
    #[arg(long)]
    pub email: String,
    /// The account's display name.
    #[arg(long)]
    pub display_name: Option<String>,
    /// The built-in role: owner, admin, auditor or member.
    #[arg(long, default_value = "member")]
    pub role: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List every key with its purpose, state, KEK and times (never key material).
    List,
    /// Rotate the keys of one purpose. Signing: publish a next key that signs after the
    /// publish-ahead time. pii / blind-index: a new key now; rows are re-encrypted in the background
    /// by `serve`, or at once with `keys reencrypt`.
    Rotate(RotateArgs),
    /// Re-wrap every key under the first KEK in `keys.kek`, so older KEKs can be removed.
    RotateKek,
    /// Re-encrypt every row still under a retired key now, with a progress bar.
    Reencrypt,
    /// Print a new random KEK entry (`id:key`) for `keys.kek`.
    GenerateKek(GenerateKekArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// Which keys: signing, pii, blind-index or audit (the checkpoint signing key; the old one keeps
    /// verifying the checkpoints it signed).
    #[arg(long)]
    pub purpose: String,
    /// Signing keys only, for a suspected compromise: the new key signs at once, the old one stops
    /// verifying, and every bearer session it issued tokens to is revoked.
    #[arg(long)]
    pub emergency: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateKekArgs {
    /// The new KEK's id (1-32 of A-Z a-z 0-9 - _ .).
    #[arg(long)]
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Delete ended sessions, old security events and never-confirmed accounts past their periods
    /// now (the server also does it every hour); each purge is an audit event.
    Run(RetentionRunArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RetentionRunArgs {
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup now: one consistent snapshot, compressed, encrypted to `backup.recipients`,
    /// stored in the target. Shows progress per table.
    Create,
    /// List the backups in the target, oldest first, with their size and last verification.
    List,
    /// Prove a backup: decrypt it (with `backup.identity_file`), authenticate it (its manifest's
    /// MAC under a KEK of `keys.kek`, its id), check every checksum, restore it into a scratch
    /// database, verify its audit chain and compare row counts. Exit 1 with the precise reason on
    /// any defect.
    Verify(BackupIdArgs),
    /// Restore a backup into a database (an empty one, unless --force), then migrate it. The archive
    /// is authenticated and checked whole before the database is touched.
    Restore(BackupRestoreArgs),
    /// Delete backups past `backup.retention_days`, keeping the newest `backup.keep_min` and the
    /// newest verified-good one.
    Prune,
}

#[derive(Debug, Clone, Args)]
pub struct BackupIdArgs {
    /// The backup's id, as `backup list` shows it.
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct BackupRestoreArgs {
    /// The backup's id, as `backup list` shows it.
    pub id: String,
    /// The database to restore into: `sqlite:PATH` or `postgres://…` (its password is never shown).
    #[arg(long = "to", value_name = "DATABASE_URL")]
    pub to: String,
    /// Delete whatever the database holds first.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and every checkpoint signature; report the first broken sequence
    /// number and exit 1 if there is one. Shows progress on large logs.
    Verify,
    /// Write events in chain order to standard output, one JSON object a line, with bounded memory.
    Export(AuditExportArgs),
    /// Sign a checkpoint of the chain's current end now (the server also does it on its schedule).
    Checkpoint,
    /// Purge events past `audit.retention_days` now, cutting at a signed checkpoint.
    Purge,
}

#[derive(Debug, Clone, Args)]
pub struct AuditExportArgs {
    /// Only events at or after this time (RFC 3339, such as 2026-01-31T00:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// The output format; only jsonl (one JSON object a line) for now.
    #[arg(long, default_value = "jsonl")]
    pub format: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective values, secrets masked.
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Also apply the production checks that `serve --dev-tls` would change.
    #[arg(long)]
    pub dev_tls: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent_and_every_flag_has_help() {
        Cli::command().debug_assert();
        fn check(command: &clap::Command) {
            for arg in command.get_arguments() {
                if arg.get_id() != "help" && arg.get_id() != "version" {
                    assert!(arg.get_help().is_some(), "--{} has no help text", arg.get_id());
                }
            }
            for sub in command.get_subcommands() {
                assert!(sub.get_about().is_some(), "{} has no help text", sub.get_name());
                check(sub);
            }
        }
        check(&Cli::command());
    }
}
