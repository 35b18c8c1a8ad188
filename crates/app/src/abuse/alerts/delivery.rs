//! Delivering one alert to one sink: the webhook request and the email text, tries and backoff.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_domain::Email;
use serde::Serialize;

use super::signature::{SIGNATURE_HEADER, signature_header};
use super::{Alert, EmailSink, WebhookSink, shareable_details};
use crate::clock::Clock;
use crate::mail::{Mailer, OutgoingEmail};

/// A delivery that failed its last try.
#[derive(Debug)]
pub(super) struct Failure {
    pub attempts: u32,
    /// Short and free of URLs and secrets: `http 503`, `timeout`, `connection failed`, or the
    /// mailer's top-level message.
    pub last_error: String,
}

/// The one HTTP client of the delivery task. Redirects are not followed (a signed alert goes where
/// it was configured to go, or nowhere), and proxies from the environment are not used.
pub(super) fn http_client(user_agent: &str) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
}

/// The webhook's JSON body.
#[derive(Debug, Serialize)]
struct WebhookBody {
    id: String,
    kind: &'static str,
    severity: &'static str,
    /// RFC 3339, UTC.
    at: String,
    user_id: Option<String>,
    session_id: Option<String>,
    details: BTreeMap<String, String>,
    coalesced_count: u64,
}

pub(super) fn webhook_body(alert: &Alert) -> Vec<u8> {
    let event = &alert.event;
    let body = WebhookBody {
        id: event.id.to_string(),
        kind: event.kind.as_str(),
        severity: alert.severity.as_str(),
        at: event.at.to_rfc3339(),
        user_id: event.user_id.map(|id| id.to_string()),
        session_id: event.session_id.map(|id| id.to_string()),
        details: shareable_details(&event.details),
        coalesced_count: alert.coalesced_count,
    };
    // A struct of strings and integers always serializes.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// What one try's outcome means for the next.
enum Outcome {
    Delivered,
    /// Worth another try (after at least `retry_after`, when the receiver asked for it).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Final: another try would get the same answer.
    GiveUp {
        error: String,
    },
}

#[tracing::instrument(skip_all, fields(sink = %sink.name, alert.kind = alert.event.kind.as_str(), alert.event = %alert.event.id))]
pub(super) async fn deliver_webhook(
    client: Option<&reqwest::Client>,
    sink: &WebhookSink,
    alert: &Alert,
    clock: &dyn Clock,
) -> Result<u32, Failure> {
    let Some(client) = client else {
        return Err(Failure { attempts: 0, last_error: "the HTTP client could not be built".into() });
    };
    let body = webhook_body(alert);
    let max_attempts = sink.retry.max_attempts.max(1);
    let mut last_error = String::new();
    for attempt in 1..=max_attempts {
        // Signed per try, so a retry carries a fresh timestamp that passes the receiver's tolerance.
        let unix_secs = clock.now().as_unix_millis().div_euclid(1000);
        let request = client
            .post(sink.url.clone())
            .timeout(sink.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature_header(&sink.secret, unix_secs, &body))
            .body(body.clone());
        let (error, retry_after) = match classify(request.send().await) {
            Outcome::Delivered => return Ok(attempt),
            Outcome::GiveUp { error } => {
                tracing::warn!(attempt, error = %error, "alert refused by the webhook; not retried");
                return Err(Failure { attempts: attempt, last_error: error });
            }
            Outcome::Retry { error, retry_after } => (error, retry_after),
        };
        tracing::warn!(attempt, max_attempts, error = %error, "alert delivery try failed");
        last_error = error;
        if attempt < max_attempts {
            let backoff = sink.retry.delay_after(attempt);
            let wait = retry_after.map_or(backoff, |asked| asked.min(sink.retry.backoff_max).max(backoff));
            tokio::time::sleep(wait).await;
        }
    }
    Err(Failure { attempts: max_attempts, last_error })
}

/// Timeouts, connection errors, 5xx and 429 are worth another try; other answers are final. The
/// error text is ours: reqwest's would carry the URL, whose path may be a credential.
fn classify(result: Result<reqwest::Response, reqwest::Error>) -> Outcome {
    match result {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                Outcome::Delivered
            } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Outcome::Retry { error: format!("http {}", status.as_u16()), retry_after }
            } else if status.is_redirection() {
                Outcome::GiveUp { error: format!("http {} (redirects are not followed)", status.as_u16()) }
            } else {
                Outcome::GiveUp { error: format!("http {}", status.as_u16()) }
            }
        }
        Err(error) => {
            let error = if error.is_timeout() {
                "timeout"
            } else if error.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            Outcome::Retry { error: error.into(), retry_after: None }
        }
    }
}

/// The subject and plain text of an alert email: what happened, when, and which ids; the details
/// without anything personal (the same filter as the webhook body).
pub(super) fn email_text(alert: &Alert) -> (String, String) {
    let event = &alert.event;
    let subject = format!("Portcullis alert: {} ({})", event.kind.as_str(), alert.severity.as_str());
    let none = || "-".to_owned();
    let mut text = format!(
        "Portcullis raised a security alert.\n\n\
         Kind:       {}\n\
         Severity:   {}\n\
         Time:       {}\n\
         Event id:   {}\n\
         User id:    {}\n\
         Session id: {}\n",
        event.kind.as_str(),
        alert.severity.as_str(),
        event.at.to_rfc3339(),
        event.id,
        event.user_id.map_or_else(none, |id| id.to_string()),
        event.session_id.map_or_else(none, |id| id.to_string()),
    );
    if alert.coalesced_count > 0 {
        text.push_str(&format!(
            "Repeats:    {} more since the last alert for this cause\n",
            alert.coalesced_count
        ));
    }
    let details = shareable_details(&event.details);
    if !details.is_empty() {
        text.push_str("\nDetails:\n");
        for (key, value) in details {
            // Values are short by the domain's limit; control characters would only garble the text.
            let value: String = value.chars().filter(|c| !c.is_control()).collect();
            text.push_str(&format!("  {key} = {value}\n"));
        }
    }
    text.push_str("\nThe security events of this installation hold the full record.\n");
    (subject, text)
}

#[tracing::instrument(skip_all, fields(sink = %sink.name, alert.kind = alert.event.kind.as_str(), alert.event = %alert.event.id))]
pub(super) async fn deliver_email(
    mailer: &dyn Mailer,
    sink: &EmailSink,
    alert: &Alert,
) -> Result<u32, Failure> {
    let (subject, text) = email_text(alert);
    let max_attempts = sink.retry.max_attempts.max(1);
    let mut pending: Vec<&Email> = sink.recipients.iter().collect();
    let mut last_error = String::new();
    for attempt in 1..=max_attempts {
        let mut failed = Vec::new();
        for to in pending {
            let email = OutgoingEmail { to: to.clone(), subject: subject.clone(), text: text.clone() };
            if let Err(error) = mailer.send(&email).await {
                // The top-level message only: mail errors name no recipient and no body.
                last_error = error.to_string();
                failed.push(to);
            }
        }
        if failed.is_empty() {
            return Ok(attempt);
        }
        tracing::warn!(attempt, max_attempts, error = %last_error, "alert email try failed");
        pending = failed;
        if attempt < max_attempts {
            tokio::time::sleep(sink.retry.delay_after(attempt)).await;
        }
    }
    Err(Failure { attempts: max_attempts, last_error })
}
