//! The development mailer: every message becomes one `.eml` file in a private directory, where a
//! developer (or a test) opens the verification or reset link without an SMTP server.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lettre::message::Mailbox;
use tokio::io::AsyncWriteExt;

use super::{MailError, Mailer, OutgoingEmail, build_message, parse_sender, random_hex};

/// Writes each message as an RFC 5322 file `<unix-millis>-<random hex>.eml` into one directory.
///
/// The directory is created 0700 and each file 0600: the messages hold single-use links, which must not
/// be readable by other users of the machine.
#[derive(Debug)]
pub struct FileOutbox {
    dir: PathBuf,
    from: Mailbox,
}

impl FileOutbox {
    /// Creates the directory (and its parents, 0700) if it is missing, and parses the From mailbox
    /// (`Portcullis <no-reply@example.com>` or a bare address).
    pub fn new(dir: impl Into<PathBuf>, from: &str) -> Result<Self, MailError> {
        let from = parse_sender(from)?;
        let dir = dir.into();
        let outbox_error = |source| MailError::Outbox { path: dir.clone(), source };
        DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(outbox_error)?;
        let mode = std::fs::metadata(&dir).map_err(outbox_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            // An existing directory is left as the operator made it, but they should know.
            tracing::warn!(
                path = %dir.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "the mail outbox is readable by other users, and its messages hold single-use links \
                 (chmod 700)"
            );
        }
        Ok(Self { dir, from })
    }

    /// The directory the messages are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl Mailer for FileOutbox {
    async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        let message = build_message(&self.from, email.to.as_str(), &email.subject, &email.text)?;
        // Wall-clock time only orders the file names for a reader; no rule depends on it, so it does
        // not go through the app's Clock. The random part keeps names unique within a millisecond.
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let name = format!("{millis}-{}.eml", random_hex(8)?);
        let path = self.dir.join(&name);
        // Written under a hidden temporary name and renamed (atomic within one directory), so a reader
        // watching for `*.eml` never sees half a message.
        let partial = self.dir.join(format!(".{name}.partial"));
        if let Err(source) = write_private(&partial, &message.formatted()).await {
            // Best effort: the write already failed, and that error is the one worth reporting.
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(MailError::Outbox { path: partial, source });
        }
        if let Err(source) = tokio::fs::rename(&partial, &path).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(MailError::Outbox { path, source });
        }
        // The path only: the body holds a working single-use link.
        tracing::info!(path = %path.display(), "email written to outbox");
        Ok(())
    }
}

/// Creates a new file readable by the owner only, refusing to follow or replace an existing one, and
/// flushes it to disk so the rename never publishes an empty file after a crash.
async fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).await?;
    file.write_all(contents).await?;
    file.sync_all().await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use portcullis_domain::Email;

    use super::*;

    fn email(to: &str, subject: &str, text: &str) -> OutgoingEmail {
        OutgoingEmail { to: Email::parse(to).unwrap(), subject: subject.into(), text: text.into() }
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
        entries.sort();
        entries
    }

    /// Splits a message into its unfolded headers and its body (RFC 5322 section 2.2.3).
    fn parse(message: &str) -> (Vec<(String, String)>, String) {
        let (head, body) = message.split_once("\r\n\r\n").expect("a blank line ends the header");
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                headers.last_mut().expect("a continuation follows a header").1.push_str(line);
            } else {
                let (name, value) = line.split_once(':').expect("a header line has a colon");
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
        }
        (headers, body.to_owned())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    #[tokio::test]
    async fn the_outbox_writes_one_private_parseable_eml_file_per_message() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let outbox = FileOutbox::new(&dir, "Portcullis <no-reply@id.example.com>").unwrap();
        let text =
            "Confirm your address:\nhttps://id.example.com/verify#token-1234\n\nIgnore this otherwise.\n";

        outbox.send(&email("alice@example.com", "Verify your email address", text)).await.unwrap();

        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "directory mode {dir_mode:o}");
        let files = entries(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let file = &files[0];
        let name = file.file_name().unwrap().to_str().unwrap();
        let (millis, rest) = name.split_once('-').unwrap();
        assert!(millis.parse::<u128>().is_ok(), "{name}");
        let hex = rest.strip_suffix(".eml").unwrap();
        assert!(hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        let file_mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(file_mode, 0o600, "file mode {file_mode:o}");

        let (headers, body) = parse(&std::fs::read_to_string(file).unwrap());
        assert_eq!(header(&headers, "From"), ["Portcullis <no-reply@id.example.com>"]);
        assert_eq!(header(&headers, "To"), ["alice@example.com"]);
        assert_eq!(header(&headers, "Subject"), ["Verify your email address"]);
        assert_eq!(header(&headers, "Date").len(), 1);
        let ids = header(&headers, "Message-ID");
        assert!(ids.len() == 1 && ids[0].starts_with('<') && ids[0].ends_with("@id.example.com>"), "{ids:?}");
        assert_eq!(header(&headers, "Content-Type"), ["text/plain; charset=utf-8"]);
        // lettre ends the single part with a CRLF of its own.
        assert_eq!(body.replace("\r\n", "\n").trim_end(), text.trim_end());
    }

    #[tokio::test]
    async fn every_message_gets_its_own_file() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = FileOutbox::new(tmp.path(), "no-reply@example.com").unwrap();
        for _ in 0..3 {
            outbox.send(&email("bob@example.com", "Your password was changed", "Hello")).await.unwrap();
        }
        let files = entries(tmp.path());
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(files.iter().all(|f| f.extension().is_some_and(|e| e == "eml")), "{files:?}");
    }

    #[tokio::test]
    async fn a_refused_message_leaves_no_file_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = FileOutbox::new(tmp.path(), "no-reply@example.com").unwrap();
        let result = outbox.send(&email("bob@example.com", "Hi\r\nBcc: attacker@evil.example", "x")).await;
        assert!(matches!(result, Err(MailError::InvalidSubject)), "{result:?}");
        assert!(entries(tmp.path()).is_empty());
    }

    #[test]
    fn an_invalid_from_address_is_refused_at_construction() {
        let tmp = tempfile::tempdir().unwrap();
        let result = FileOutbox::new(tmp.path(), "not a mailbox");
        assert!(matches!(result, Err(MailError::InvalidSender(_))), "{result:?}");
    }
}
