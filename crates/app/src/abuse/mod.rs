//! Abuse protection: rate limits, IP rules, login throttling, detection rules and alerts.

pub mod alerts;

use std::collections::BTreeMap;

use portcullis_domain::{MAX_SECURITY_EVENT_DETAILS_BYTES, SecurityEvent};

use crate::App;

/// Keeps a security event's details within the size the domain allows: entries are kept in key
/// order until the next would not fit, and a `truncated` marker says that some were dropped.
pub(crate) fn fit_details(details: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut size = 0;
    let mut kept = BTreeMap::new();
    let mut dropped = false;
    for (key, value) in details {
        size += key.len() + value.len();
        if size > MAX_SECURITY_EVENT_DETAILS_BYTES - 16 {
            dropped = true;
            break;
        }
        kept.insert(key, value);
    }
    if dropped {
        kept.insert("truncated".into(), "true".into());
    }
    kept
}

impl App {
    /// Hands a recorded security event to the alert sinks (which decide by severity and cooldown).
    pub(crate) fn raise_alert(&self, event: &SecurityEvent) {
        self.inner.alerts.raise(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_beyond_the_limit_are_cut_and_marked() {
        let big: BTreeMap<String, String> =
            (0..100).map(|i| (format!("key{i:03}"), "x".repeat(100))).collect();
        let fitted = fit_details(big);
        let size: usize = fitted.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size <= MAX_SECURITY_EVENT_DETAILS_BYTES);
        assert_eq!(fitted.get("truncated").map(String::as_str), Some("true"));
        let small: BTreeMap<String, String> = [("policy".into(), "login_ip".into())].into_iter().collect();
        assert_eq!(fit_details(small.clone()), small);
    }
}
