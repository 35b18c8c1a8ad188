//! Alerts: security events a human should see, delivered to webhooks and email.

use portcullis_domain::SecurityEvent;

/// Delivers alerts to the configured sinks. (Being built: no sink is wired yet.)
#[derive(Debug, Default)]
pub struct Alerter {}

impl Alerter {
    /// Queues an alert for `event` when its severity and cooldown call for one; never blocks.
    pub fn raise(&self, _event: &SecurityEvent) {}
}
