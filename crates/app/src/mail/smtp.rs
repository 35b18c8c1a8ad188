//! Delivery through an SMTP relay (RFC 5321) with lettre: implicit TLS (RFC 8314), STARTTLS
//! (RFC 3207), or clear text to a loopback relay in development and tests.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::{MailError, Mailer, OutgoingEmail, build_message, parse_sender};

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS before anything else is sent; a relay that does not offer
    /// it is refused, so a stripped STARTTLS cannot downgrade the session (usually port 587).
    StartTls,
    /// TLS from the first byte, "submissions" (RFC 8314, usually port 465). Preferred where offered.
    ImplicitTls,
    /// No TLS at all. Only for a relay on this machine (a development sink, a test server, a local
    /// MTA); refused for any other host.
    None,
}

/// Settings of the SMTP relay, already read from configuration by the server.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// The relay's host name; with TLS, the name its certificate must carry.
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    /// Both or neither: SMTP AUTH (RFC 4954) with PLAIN or LOGIN, sent only after TLS is up unless
    /// the relay is loopback.
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// The From mailbox: `Portcullis <no-reply@example.com>` or a bare address.
    pub from: String,
    /// Limit for each SMTP command, so a stalled relay cannot hold a request forever.
    pub timeout: Duration,
}

/// Sends through one relay, one connection per message (account email is rare; lettre's connection
/// pool is not enabled, so the transport spawns no task and can be built and dropped anywhere).
pub struct SmtpMailer {
    /// Fully configured at construction (TLS parameters, credentials), so every error that
    /// configuration can cause surfaces there.
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
    port: u16,
    security: SmtpSecurity,
}

impl SmtpMailer {
    /// Validates the settings and prepares the transport; nothing is sent and no connection is opened.
    pub fn new(settings: SmtpSettings) -> Result<Self, MailError> {
        let from = parse_sender(&settings.from)?;
        let host = settings.host;
        let builder = match settings.security {
            SmtpSecurity::ImplicitTls => AsyncSmtpTransport::<Tokio1Executor>::relay(&host),
            SmtpSecurity::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host),
            SmtpSecurity::None if is_loopback(&host) => {
                Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host))
            }
            // Account emails carry password-reset links and the relay password: never in clear text
            // over a network.
            SmtpSecurity::None => return Err(MailError::PlaintextToRemoteHost { host }),
        }
        .map_err(|source| MailError::TlsSetup { host: host.clone(), source })?;
        let builder = builder.port(settings.port).timeout(Some(settings.timeout));
        let builder = match (settings.username, settings.password) {
            (None, None) => builder,
            // The password leaves its SecretString only here, into lettre's credentials (whose Debug
            // prints nothing).
            (Some(username), Some(password)) => {
                builder.credentials(Credentials::new(username, password.expose_secret().to_owned()))
            }
            _ => return Err(MailError::IncompleteCredentials),
        };
        Ok(Self { transport: builder.build(), from, host, port: settings.port, security: settings.security })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        let message = build_message(&self.from, email.to.as_str(), &email.subject, &email.text)?;
        self.transport.send(message).await.map_err(MailError::Smtp)?;
        tracing::info!(relay = %self.host, "email handed to the SMTP relay");
        Ok(())
    }
}

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

/// Whether clear-text SMTP to `host` stays on this machine: `localhost` or a loopback address
/// (127.0.0.0/8, ::1, or 127.x mapped into IPv6). Other names are refused even if they resolve to
/// loopback today, since DNS can change that.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use portcullis_domain::Email;

    use super::*;

    fn settings(host: &str, security: SmtpSecurity) -> SmtpSettings {
        SmtpSettings {
            host: host.into(),
            port: 2525,
            security,
            username: None,
            password: None,
            from: "Portcullis <no-reply@example.com>".into(),
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn clear_text_smtp_to_a_remote_host_is_refused() {
        for host in ["mail.example.com", "10.0.0.5", "::2", "localhost.example.com", "127.0.0.1.nip.io", ""] {
            let result = SmtpMailer::new(settings(host, SmtpSecurity::None));
            assert!(matches!(result, Err(MailError::PlaintextToRemoteHost { .. })), "{host:?}: {result:?}");
        }
    }

    #[test]
    fn clear_text_smtp_to_loopback_is_allowed() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            let result = SmtpMailer::new(settings(host, SmtpSecurity::None));
            assert!(result.is_ok(), "{host:?}: {result:?}");
        }
    }

    #[test]
    fn tls_settings_for_a_remote_relay_are_accepted_without_connecting() {
        for security in [SmtpSecurity::StartTls, SmtpSecurity::ImplicitTls] {
            let result = SmtpMailer::new(settings("smtp.example.com", security));
            assert!(result.is_ok(), "{security:?}: {result:?}");
        }
    }

    /// A relay (or someone between us and it) that answers in clear text: one that leaves STARTTLS out
    /// of its EHLO reply, or one that speaks plain SMTP on the implicit-TLS port. Returns the port and
    /// every line the client sent.
    async fn clear_text_relay() -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serve = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            let mut heard = Vec::new();
            write.write_all(b"220 relay.example.com ESMTP\r\n").await.unwrap();
            loop {
                let mut line = Vec::new();
                match tokio::time::timeout(Duration::from_secs(5), read.read_until(b'\n', &mut line)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => break,
                }
                // Lossy: a TLS ClientHello sent to the clear-text port is bytes, not a command.
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                let reply: &[u8] = if line.starts_with("EHLO") {
                    b"250-relay.example.com\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 10000000\r\n"
                } else if line == "QUIT" {
                    b"221 bye\r\n"
                } else {
                    b"250 ok\r\n"
                };
                heard.push(line);
                if write.write_all(reply).await.is_err() {
                    break;
                }
            }
            heard
        });
        (port, serve)
    }

    /// ASVS V16.3.4 and V12.3.x: a backend TLS failure is an error naming the relay (logged by the
    /// caller as "email was not sent"), and nothing, not even the sender, goes out in clear text.
    #[tokio::test]
    async fn a_relay_that_drops_starttls_or_speaks_clear_text_gets_no_message_and_the_send_fails() {
        for security in [SmtpSecurity::StartTls, SmtpSecurity::ImplicitTls] {
            let (port, relay) = clear_text_relay().await;
            let mut remote = settings("127.0.0.1", security);
            remote.port = port;
            remote.username = Some("portcullis".into());
            remote.password = Some(SecretString::from("relay-password-canary"));
            remote.timeout = Duration::from_secs(5);
            let email = OutgoingEmail {
                to: Email::parse("dave@example.com").unwrap(),
                subject: "Reset your password".into(),
                text: "https://id.example.com/reset#token-1234\n".into(),
            };
            let error = SmtpMailer::new(remote).unwrap().send(&email).await.unwrap_err();
            assert!(matches!(error, MailError::Smtp(_)), "{security:?}: {error:?}");
            let heard = relay.await.unwrap();
            let said = heard.join("\n");
            for secret in ["MAIL FROM", "RCPT TO", "AUTH", "DATA", "dave@example.com", "token-1234"] {
                assert!(!said.contains(secret), "{security:?}: sent {secret:?} in clear text: {heard:?}");
            }
        }
    }

    #[test]
    fn credentials_need_both_a_username_and_a_password() {
        let mut only_user = settings("smtp.example.com", SmtpSecurity::StartTls);
        only_user.username = Some("portcullis".into());
        let result = SmtpMailer::new(only_user);
        assert!(matches!(result, Err(MailError::IncompleteCredentials)), "{result:?}");

        let mut only_password = settings("smtp.example.com", SmtpSecurity::StartTls);
        only_password.password = Some(SecretString::from("hunter2"));
        let result = SmtpMailer::new(only_password);
        assert!(matches!(result, Err(MailError::IncompleteCredentials)), "{result:?}");
    }

    #[test]
    fn the_mailer_debug_output_shows_no_password() {
        let mut with_auth = settings("smtp.example.com", SmtpSecurity::ImplicitTls);
        with_auth.username = Some("portcullis".into());
        with_auth.password = Some(SecretString::from("hunter2-relay-password"));
        let mailer = SmtpMailer::new(with_auth.clone()).unwrap();
        assert!(!format!("{mailer:?}").contains("hunter2"), "{mailer:?}");
        assert!(!format!("{with_auth:?}").contains("hunter2"), "{with_auth:?}");
    }

    #[test]
    fn an_invalid_from_address_is_refused_at_construction() {
        let mut bad_from = settings("localhost", SmtpSecurity::None);
        bad_from.from = "no-reply at example.com".into();
        let result = SmtpMailer::new(bad_from);
        assert!(matches!(result, Err(MailError::InvalidSender(_))), "{result:?}");
    }

    #[test]
    fn a_mailer_built_and_dropped_outside_a_runtime_does_not_panic() {
        // Configuration checks build the mailer before any runtime exists.
        let mailer = SmtpMailer::new(settings("127.0.0.1", SmtpSecurity::None)).unwrap();
        drop(mailer);
    }

    /// The Python interpreter that runs the sink: `PORTCULLIS_SMTP_SINK_PYTHON` (a venv's python3)
    /// or `python3` from PATH.
    fn sink_python() -> String {
        std::env::var("PORTCULLIS_SMTP_SINK_PYTHON").unwrap_or_else(|_| "python3".into())
    }

    fn aiosmtpd_available(python: &str) -> bool {
        Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Kills the sink when the test ends, whether it passed or panicked.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        // Bound and released: a small race with other processes, acceptable for a test.
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Starts aiosmtpd's Mailbox handler, which stores each message in the maildir `dir`, and waits
    /// until it accepts connections.
    fn start_sink(python: &str, port: u16, dir: &Path) -> ChildGuard {
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut guard = ChildGuard(child);
        // Polling an external process's startup, not timing our code: at most 20 s.
        for _ in 0..200 {
            if let Some(status) = guard.0.try_wait().unwrap() {
                panic!("aiosmtpd exited before accepting connections: {status}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return guard;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("aiosmtpd did not accept connections on 127.0.0.1:{port} within 20 s");
    }

    #[tokio::test]
    async fn a_message_sent_over_smtp_arrives_with_its_recipient_and_subject() {
        let python = sink_python();
        if !aiosmtpd_available(&python) {
            let message = format!("aiosmtpd is not importable by {python} (pip install aiosmtpd)");
            if std::env::var("PORTCULLIS_REQUIRE_SMTP_SINK").is_ok_and(|v| v == "1") {
                panic!("PORTCULLIS_REQUIRE_SMTP_SINK=1 but {message}");
            }
            eprintln!("skipped: aiosmtpd not installed (pip install aiosmtpd): {message}");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        // A path that does not exist yet: Python's Maildir creates new/, cur/ and tmp/ only when it
        // creates the directory itself.
        let maildir = tmp.path().join("maildir");
        let port = free_port();
        let _sink = start_sink(&python, port, &maildir);
        let mut local = settings("127.0.0.1", SmtpSecurity::None);
        local.port = port;
        let mailer = SmtpMailer::new(local).unwrap();
        let email = OutgoingEmail {
            to: Email::parse("carol@example.com").unwrap(),
            subject: "Reset your password".into(),
            text: "Open https://id.example.com/reset#token-5678 within 30 minutes.\n".into(),
        };

        mailer.send(&email).await.unwrap();

        // The Mailbox handler delivers synchronously before answering DATA, so the file is there now.
        let new = maildir.join("new");
        let files: Vec<_> = std::fs::read_dir(&new).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let stored = std::fs::read_to_string(&files[0]).unwrap();
        let header = |name: &str| {
            stored
                .lines()
                .take_while(|line| !line.is_empty())
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": ").map(str::trim_end))
        };
        assert_eq!(header("To"), Some("carol@example.com"), "{stored}");
        assert_eq!(header("Subject"), Some("Reset your password"), "{stored}");
        assert_eq!(header("From"), Some("Portcullis <no-reply@example.com>"), "{stored}");
        assert_eq!(header("X-RcptTo"), Some("carol@example.com"), "{stored}");
        assert!(stored.contains("https://id.example.com/reset#token-5678"), "{stored}");
    }
}
