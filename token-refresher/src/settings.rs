//! The refresher's settings, read from the environment.

use shared::config::{CommonSettings, ConfigErrors, Env, Reader};
use std::time::Duration;

/// Address of the health server. Default: `0.0.0.0:8082`.
pub const BIND: &str = "AUTHBRIDGE_REFRESHER_BIND";
/// Expiry events processed at once (AMQP prefetch). Default: 16.
pub const PREFETCH: &str = "AUTHBRIDGE_REFRESHER_PREFETCH";
/// How often the sweep looks for overdue connections (seconds). Default: 60.
pub const SWEEP_INTERVAL: &str = "AUTHBRIDGE_SWEEP_INTERVAL_SECONDS";
/// How long past due a connection must be before the sweep reschedules it (seconds). Default: 60.
pub const SWEEP_GRACE: &str = "AUTHBRIDGE_SWEEP_GRACE_SECONDS";
/// Webhook deliveries sent at once (AMQP prefetch of the webhook lane). Default: 64.
pub const WEBHOOK_PREFETCH: &str = "AUTHBRIDGE_WEBHOOK_PREFETCH";
/// Sends to one endpoint at once; more wait a few seconds. Default: 4.
pub const WEBHOOK_PER_ENDPOINT: &str = "AUTHBRIDGE_WEBHOOK_CONCURRENCY_PER_ENDPOINT";

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub bind: String,
    pub prefetch: u16,
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    pub webhook_prefetch: u16,
    pub webhook_per_endpoint: usize,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let common = CommonSettings::read(&mut r);
        let bind = r.bind(BIND, "0.0.0.0:8082");
        let prefetch = r.parse(PREFETCH, 16u16).max(1);
        let sweep_interval = r.seconds(SWEEP_INTERVAL, 60).max(Duration::from_millis(100));
        let sweep_grace = r.seconds(SWEEP_GRACE, 60);
        let webhook_prefetch = r.parse(WEBHOOK_PREFETCH, 64u16).max(1);
        let webhook_per_endpoint = r.parse(WEBHOOK_PER_ENDPOINT, 4usize).max(1);
        r.finish()?;
        Ok(Self {
            common: common.expect("checked"),
            bind,
            prefetch,
            sweep_interval,
            sweep_grace,
            webhook_prefetch,
            webhook_per_endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: (&str, &str) = (shared::config::ENCRYPTION_KEY, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");

    #[test]
    fn defaults_are_as_documented() {
        let s = Settings::from_env(&Env::from_pairs([KEY])).unwrap();
        assert_eq!(s.bind, "0.0.0.0:8082");
        assert_eq!(s.prefetch, 16);
        assert_eq!(s.sweep_interval, Duration::from_secs(60));
        assert_eq!(s.sweep_grace, Duration::from_secs(60));
        assert_eq!((s.webhook_prefetch, s.webhook_per_endpoint), (64, 4));
    }

    #[test]
    fn every_bad_value_is_reported_at_once_by_its_variable() {
        let err = Settings::from_env(&Env::from_pairs([(PREFETCH, "many"), (SWEEP_INTERVAL, "-1")])).unwrap_err();
        let text = err.to_string();
        for name in [PREFETCH, SWEEP_INTERVAL, shared::config::ENCRYPTION_KEY] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
    }

    #[test]
    fn a_zero_prefetch_or_sweep_interval_is_raised_to_a_working_minimum() {
        let s = Settings::from_env(&Env::from_pairs([KEY, (PREFETCH, "0"), (SWEEP_INTERVAL, "0")])).unwrap();
        assert_eq!(s.prefetch, 1);
        assert_eq!(s.sweep_interval, Duration::from_millis(100));
    }
}
