//! Account email delivery: the message the use cases hand over, the [`Mailer`] that delivers it, and
//! its two implementations, a development [`FileOutbox`] and an [`SmtpMailer`] for a real relay.
//!
//! Messages are plain text only: they carry single-use links (verification, password reset), and a
//! text body is what every client renders the same way. Bodies are never logged, for the same reason.

mod outbox;
mod smtp;

use std::fmt;

use async_trait::async_trait;
use lettre::message::{Mailbox, SinglePart};
use lettre::{Address, Message};
use portcullis_domain::Email;

pub use outbox::FileOutbox;
pub use smtp::{SmtpMailer, SmtpSecurity, SmtpSettings};

/// One account email, addressed to one recipient.
#[derive(Clone)]
pub struct OutgoingEmail {
    /// The recipient: user data, re-validated by lettre's address parser before it reaches a header.
    pub to: Email,
    /// The subject, written by our code; line breaks and other control characters are refused.
    pub subject: String,
    /// The plain-text body. It usually holds a single-use link, so it is never logged.
    pub text: String,
}

impl fmt::Debug for OutgoingEmail {
    // A derived Debug would print the body, and with it a working reset or verification link.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingEmail")
            .field("to", &self.to.as_str())
            .field("subject", &self.subject)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .finish()
    }
}

/// Delivers account emails. `send` returns once the message is handed over (written to the outbox,
/// or accepted by the relay); it says nothing about final delivery.
#[async_trait]
pub trait Mailer: Send + Sync + fmt::Debug {
    async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError>;
}

/// Why an email could not be built or handed over. Messages name the cause for the log; none of them
/// carries a message body, a password or a recipient address.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The configured From address is not a mailbox (`Name <addr>` or `addr`), or holds a control
    /// character; a configuration error.
    #[error("the sender address is not a valid mailbox")]
    InvalidSender(#[source] Option<lettre::address::AddressError>),
    /// The recipient cannot be put in a header as one plain address (control characters, a display
    /// name, a list, or something lettre's RFC 5321 address parser refuses).
    #[error("the recipient address cannot be used in an email header")]
    InvalidRecipient(#[source] Option<lettre::address::AddressError>),
    /// The subject contains a line break or another control character: a bug in the caller, refused
    /// rather than encoded so that it is noticed.
    #[error("the subject contains a line break or another control character")]
    InvalidSubject,
    /// lettre refused to assemble the message.
    #[error("the email could not be built")]
    Build(#[source] lettre::error::Error),
    /// `SmtpSecurity::None` with a host that is not loopback: credentials and links would cross the
    /// network in clear text.
    #[error("SMTP without TLS is allowed only to a loopback host (localhost, 127.0.0.1, ::1), not {host}")]
    PlaintextToRemoteHost { host: String },
    /// A username without a password, or a password without a username.
    #[error("SMTP credentials need both a username and a password")]
    IncompleteCredentials,
    /// The TLS settings for the relay could not be built.
    #[error("TLS for the SMTP relay {host} could not be set up")]
    TlsSetup {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    /// The relay could not be reached, refused the message, or timed out.
    #[error("the SMTP relay did not accept the email")]
    Smtp(#[source] lettre::transport::smtp::Error),
    /// The outbox directory could not be created, or a message file could not be written.
    #[error("the mail outbox at {} could not be written", path.display())]
    Outbox {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random number generator failed (file names, Message-IDs).
    #[error("the operating system's random number generator failed")]
    Randomness(#[source] getrandom::Error),
}

/// Parses the configured From mailbox once, at construction, so a typo fails at startup rather than
/// on the first password reset.
fn parse_sender(from: &str) -> Result<Mailbox, MailError> {
    // The display name is free text; lettre would encode a line break in it (RFC 2047), but a From
    // setting with one is a configuration mistake worth reporting rather than sending.
    if from.chars().any(char::is_control) {
        return Err(MailError::InvalidSender(None));
    }
    from.parse::<Mailbox>().map_err(|e| MailError::InvalidSender(Some(e)))
}

/// Builds the RFC 5322 message. `to` is taken as text so the checks can be tested with inputs that
/// `Email` itself may one day refuse.
fn build_message(from: &Mailbox, to: &str, subject: &str, text: &str) -> Result<Message, MailError> {
    // Parsed as a bare `Address`, not a `Mailbox`: a mailbox would accept a display name or a quoted
    // phrase chosen by the user. lettre's parser refuses CR and LF too; the explicit check keeps that
    // guarantee from depending on a dependency's internals.
    if to.chars().any(char::is_control) {
        return Err(MailError::InvalidRecipient(None));
    }
    let to = to.parse::<Address>().map_err(|e| MailError::InvalidRecipient(Some(e)))?;
    // lettre would RFC 2047-encode a line break in a subject, so it could not start a new header; a
    // subject with one is still a bug on our side, and refusing it makes the bug visible.
    if subject.chars().any(char::is_control) {
        return Err(MailError::InvalidSubject);
    }
    // Our own Message-ID (RFC 5322 section 3.6.4) in the sender's domain: lettre's default puts this
    // machine's hostname into every message and draws its id from a non-cryptographic generator.
    let message_id = format!("<{}@{}>", random_hex(16)?, from.email.domain());
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(subject)
        .message_id(Some(message_id))
        .singlepart(SinglePart::plain(text.to_owned()))
        .map_err(MailError::Build)
}

/// `bytes` random bytes from the OS, as lowercase hex.
fn random_hex(bytes: usize) -> Result<String, MailError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(MailError::Randomness)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Mailbox {
        parse_sender("Portcullis <no-reply@example.com>").unwrap()
    }

    #[test]
    fn a_recipient_with_a_line_break_cannot_add_a_header() {
        for to in [
            "victim@example.com\r\nBcc: attacker@evil.example",
            "victim@example.com\nBcc: attacker@evil.example",
            "victim@example.com\rBcc: attacker@evil.example",
            "victim\r\n@example.com",
        ] {
            let result = build_message(&sender(), to, "Verify your email address", "body");
            assert!(matches!(result, Err(MailError::InvalidRecipient(_))), "{to:?} was accepted");
        }
    }

    #[test]
    fn lettre_itself_neutralizes_line_breaks() {
        // Our explicit control-character checks are a second line; lettre must hold on its own too.
        assert!("victim@example.com\r\nBcc: attacker@evil.example".parse::<Address>().is_err());
        assert!("victim\r\nBcc: x@example.com".parse::<Address>().is_err());
        assert!("Name\r\nBcc: x@evil.example <a@example.com>".parse::<Mailbox>().is_err());
        let message = Message::builder()
            .from(sender())
            .to(Mailbox::new(None, "user@example.com".parse().unwrap()))
            .subject("Hi\r\nBcc: attacker@evil.example")
            .body(String::from("body"))
            .unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(!text.lines().any(|line| line.starts_with("Bcc")), "{text}");
    }

    #[test]
    fn a_recipient_is_one_bare_address_not_a_mailbox_or_a_list() {
        for to in [
            "Attacker <attacker@evil.example>",
            "\"Support\" <victim@example.com>",
            "victim@example.com, attacker@evil.example",
            "victim@example.com attacker@evil.example",
            "not-an-address",
        ] {
            let result = build_message(&sender(), to, "Verify your email address", "body");
            assert!(matches!(result, Err(MailError::InvalidRecipient(_))), "{to:?} was accepted");
        }
    }

    #[test]
    fn a_subject_with_a_line_break_is_refused() {
        for subject in ["Reset\r\nBcc: attacker@evil.example", "Reset\nX: y", "Reset\rX: y", "Tab\there"] {
            let result = build_message(&sender(), "user@example.com", subject, "body");
            assert!(matches!(result, Err(MailError::InvalidSubject)), "{subject:?} was accepted");
        }
    }

    #[test]
    fn the_message_has_exactly_one_recipient_and_our_message_id() {
        let message =
            build_message(&sender(), "user@example.com", "Your password was changed", "body").unwrap();
        let to: Vec<String> = message.envelope().to().iter().map(ToString::to_string).collect();
        assert_eq!(to, ["user@example.com"]);
        let text = String::from_utf8(message.formatted()).unwrap();
        let id = text.lines().find_map(|l| l.strip_prefix("Message-ID: ")).unwrap();
        assert!(id.starts_with('<') && id.ends_with("@example.com>"), "{id}");
        assert_eq!(id.len(), "<@example.com>".len() + 32);
    }

    #[test]
    fn a_sender_that_is_not_a_mailbox_is_refused() {
        assert!(matches!(parse_sender("no-reply"), Err(MailError::InvalidSender(_))));
        assert!(matches!(parse_sender("a@b.example\r\nBcc: c@d.example"), Err(MailError::InvalidSender(_))));
        let crlf_in_display_name = "Portcullis\r\nBcc: attacker@evil.example <no-reply@example.com>";
        assert!(matches!(parse_sender(crlf_in_display_name), Err(MailError::InvalidSender(_))));
        assert!(parse_sender("no-reply@example.com").is_ok());
    }

    #[test]
    fn debug_output_does_not_show_the_body() {
        let email = OutgoingEmail {
            to: Email::parse("user@example.com").unwrap(),
            subject: "Reset your password".into(),
            text: "https://id.example.com/reset#secret-token".into(),
        };
        let debug = format!("{email:?}");
        assert!(!debug.contains("secret-token"), "{debug}");
        assert!(debug.contains("user@example.com"));
    }
}
