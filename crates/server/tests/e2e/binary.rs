//! The real `portcullis` binary: first start, signals, exit codes and configuration errors.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::support::test_certificates;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A command with a clean environment, so nothing from the developer's shell leaks in.
fn portcullis(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.env_clear().env("RUST_BACKTRACE", "1").current_dir(cwd);
    command
}

struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines, seen: Vec::new() }
    }

    /// Waits (bounded) for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no log line containing {needle:?}; saw {:#?}", self.seen));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
    }

    fn wait_exit(mut self) -> (i32, Vec<String>) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.try_iter());
        (status.code().unwrap_or(-1), self.seen)
    }
}

/// The port from the startup line, e.g. "... listening on http://127.0.0.1:41234 using ...".
fn port_of(line: &str) -> u16 {
    let after = line.split("://127.0.0.1:").nth(1).unwrap();
    after.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn version_prints_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path()).arg("version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for word in
        ["serve", "migrate", "config", "version", "--data-dir", "--listen", "--database-url", "--config"]
    {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[test]
fn a_first_start_creates_a_private_data_dir_logs_one_line_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = portcullis(dir.path());
    command.args(["serve", "--listen", "127.0.0.1:0"]);
    let mut server = Running::start(command);
    let line = server.wait_for("listening on");
    // One line, plus the one-time setup token of an installation with no accounts.
    let others: Vec<_> = server.seen.iter().filter(|l| !l.contains("setup token")).collect();
    assert_eq!(others.len(), 1, "startup logged more than one line: {:#?}", server.seen);
    assert_eq!(server.seen.len(), 2, "no setup token was logged: {:#?}", server.seen);
    assert!(
        line.contains("SQLite ./portcullis-data/portcullis.db") && line.contains("development mode"),
        "{line}"
    );
    assert!(!line.contains('\u{1b}'), "no terminal colour codes when stderr is not a terminal: {line:?}");

    let data = dir.path().join("portcullis-data");
    assert_eq!(mode(&data), 0o700);
    let files: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.iter().any(|f| f.ends_with("instance-secret")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("kek")), "the development KEK: {files:?}");
    assert!(files.iter().any(|f| f.ends_with("portcullis.db")), "{files:?}");
    for file in &files {
        let expected = if file.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(file), expected, "{} is not owner-only", file.display());
    }

    // It serves while running.
    let port = port_of(&line);
    let health = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(health.is_ok());
    drop(health);

    server.signal(Signal::TERM);
    let (code, lines) = server.wait_exit();
    assert_eq!(code, 0, "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:#?}");
    // A clean close checkpoints SQLite's write-ahead log into the database file.
    let wal_len = std::fs::metadata(data.join("portcullis.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the WAL still holds data: the database was not closed cleanly");
}

#[test]
fn sighup_reloads_the_tls_certificate_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = test_certificates("sighup-1");
    let (ca2, cert2, key2) = test_certificates("sighup-2");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &cert1).unwrap();
    std::fs::write(&key, &key1).unwrap();
    let mut command = portcullis(dir.path());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"])
        .env("PORTCULLIS_TLS__CERT_FILE", &cert)
        .env("PORTCULLIS_TLS__KEY_FILE", &key);
    let mut server = Running::start(command);
    let port = port_of(&server.wait_for("listening on https://"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fetch_cert = |ca: &str| {
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .use_rustls_tls()
                .tls_info(true)
                .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
                .resolve("localhost", ([127, 0, 0, 1], port).into())
                .build()
                .unwrap();
            let response = client.get(format!("https://localhost:{port}/healthz")).send().await;
            response.ok().map(|r| {
                r.extensions().get::<reqwest::tls::TlsInfo>().unwrap().peer_certificate().unwrap().to_vec()
            })
        })
    };
    assert!(fetch_cert(&ca1).is_some());
    assert!(fetch_cert(&ca2).is_none(), "the second certificate is not served yet");

    std::fs::write(&cert, &cert2).unwrap();
    std::fs::write(&key, &key2).unwrap();
    server.signal(Signal::HUP);
    server.wait_for("reloaded the TLS certificate");
    assert!(fetch_cert(&ca2).is_some(), "the reloaded certificate is served");

    server.signal(Signal::INT);
    assert_eq!(server.wait_exit().0, 0);
}

/// Runs `serve` in production mode with extra environment and expects a refusal naming `expected`.
fn refused(extra: &[(&str, &str)], args: &[&str], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = portcullis(dir.path());
    command
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"));
    command.env("PORTCULLIS_MODE", "production");
    for (k, v) in extra {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for needle in expected {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

const STRONG: &str = "a-strong-production-secret-0123456789abcdef";
/// A production KEK entry (32 bytes of 0x2a, base64url).
const KEK: (&str, &str) = ("PORTCULLIS_KEYS__KEK", "prod1:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio");
const PROXY: (&str, &str) = ("PORTCULLIS_HTTP__TRUSTED_PROXIES", "[\"10.0.0.1/32\"]");

#[test]
fn production_refuses_to_start_without_tls_or_a_trusted_proxy() {
    refused(
        &[("PORTCULLIS_SECRETS__INSTANCE_SECRET", STRONG)],
        &[],
        &["tls.cert_file", "http.trusted_proxies"],
    );
}

#[test]
fn production_refuses_a_missing_short_or_example_secret() {
    refused(&[PROXY], &[], &["secrets.instance_secret", "missing"]);
    refused(&[PROXY, ("PORTCULLIS_SECRETS__INSTANCE_SECRET", "too-short")], &[], &["at least 32"]);
    refused(
        &[PROXY, ("PORTCULLIS_SECRETS__INSTANCE_SECRET", "change-me-to-32-or-more-random-bytes-0000")],
        &[],
        &["example value"],
    );
}

#[test]
fn production_refuses_to_start_without_a_configured_kek() {
    refused(&[PROXY, ("PORTCULLIS_SECRETS__INSTANCE_SECRET", STRONG)], &[], &["keys.kek", "missing"]);
    refused(
        &[PROXY, ("PORTCULLIS_SECRETS__INSTANCE_SECRET", STRONG), ("PORTCULLIS_KEYS__KEK", "prod1:c2hvcnQ")],
        &[],
        &["keys.kek: KEK `prod1` is 5 bytes"],
    );
}

#[test]
fn production_refuses_cors_wildcard_with_credentials() {
    refused(
        &[
            PROXY,
            ("PORTCULLIS_SECRETS__INSTANCE_SECRET", STRONG),
            ("PORTCULLIS_CORS__ALLOWED_ORIGINS", "[\"*\"]"),
            ("PORTCULLIS_CORS__ALLOW_CREDENTIALS", "true"),
        ],
        &[],
        &["cors.allowed_origins"],
    );
}

#[test]
fn production_refuses_the_development_certificate() {
    refused(&[PROXY, ("PORTCULLIS_SECRETS__INSTANCE_SECRET", STRONG)], &["--dev-tls"], &["--dev-tls"]);
}

#[test]
fn production_refuses_files_other_users_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, STRONG).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &[PROXY, ("PORTCULLIS_SECRETS__INSTANCE_SECRET_FILE", secret.to_str().unwrap())],
        &[],
        &["chmod 600"],
    );

    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = portcullis(open_dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "."])
        .env("PORTCULLIS_MODE", "production")
        .env("PORTCULLIS_SECRETS__INSTANCE_SECRET", STRONG)
        .env(PROXY.0, PROXY.1)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("chmod 700"));
}

#[test]
fn an_invalid_value_exits_2_naming_the_key_and_the_allowed_values_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path()).args(["serve"]).env("PORTCULLIS_MODE", "prod").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("mode") && stderr.contains("development") && stderr.contains("production"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");

    std::fs::write(dir.path().join("bad.toml"), "[http]\nbody_limit_bytes = \"lots\"\n").unwrap();
    let output = portcullis(dir.path()).args(["config", "check", "--config", "bad.toml"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("http.body_limit_bytes"));
}

#[test]
fn config_check_prints_the_effective_values_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(dir.path())
        .args(["config", "check", "--listen", "127.0.0.1:9999"])
        .env("PORTCULLIS_SECRETS__INSTANCE_SECRET", "canary-instance-secret-0123456789abcdef")
        .env("PORTCULLIS_DATABASE_URL", "postgres://app:canary-db-password@db.internal/portcullis")
        .env("PORTCULLIS_HTTP__BODY_LIMIT_BYTES", "4096")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("listen = \"127.0.0.1:9999\""), "{stdout}");
    assert!(stdout.contains("body_limit_bytes = 4096"), "{stdout}");
    assert!(stdout.contains("instance_secret = \"********\""), "{stdout}");
    assert!(
        !stdout.contains("canary") && !String::from_utf8_lossy(&output.stderr).contains("canary"),
        "{stdout}"
    );
}

#[test]
fn production_mode_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = portcullis(dir.path());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"])
        .env("PORTCULLIS_MODE", "production")
        .env("PORTCULLIS_SECRETS__INSTANCE_SECRET", STRONG)
        .env(KEK.0, KEK.1)
        .env("PORTCULLIS_HTTP__PUBLIC_URL", "https://id.example.com")
        .env("PORTCULLIS_EMAIL__SMTP_HOST", "smtp.example.com")
        // Production refuses scheduled backups without a recipient; this test is about the logs.
        .env("PORTCULLIS_BACKUP__ENABLED", "false")
        .env(PROXY.0, PROXY.1);
    let mut server = Running::start(command);
    let line = server.wait_for("listening on");
    let json: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(json["level"], "INFO");
    assert_eq!(json["mode"], "production");
    assert!(json["database"].as_str().unwrap().starts_with("SQLite "));
    assert!(json["timestamp"].as_str().unwrap().ends_with('Z'), "timestamps are UTC: {line}");
    server.signal(Signal::TERM);
    let (code, lines) = server.wait_exit();
    assert_eq!(code, 0);
    assert!(lines.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{lines:#?}");
    assert!(!lines.concat().contains(STRONG), "the secret reached the logs");
}
