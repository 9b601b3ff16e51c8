//! What every worker of this proxy shares: the core (store, tokens, broker), the settings, the
//! token cache, the providers' rate limits, and whether the database just failed.

use shared::core::Core;
use std::sync::Arc;

use crate::cache::TokenCache;
use crate::provider_limits::ProviderLimits;
use crate::settings::Settings;

pub struct ProxyState {
    pub core: Core,
    pub settings: Settings,
    pub cache: TokenCache,
    /// The providers' rate limits, shared with the other replicas.
    pub provider_limits: Arc<ProviderLimits>,
    /// Until when calls do not try the database again after it failed (so a call that needs it
    /// fails at once instead of waiting for a connection, and memory serves the rest).
    pub(crate) database_down_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ProxyState {
    /// Whether the database failed within the last second.
    pub fn database_down(&self) -> bool {
        self.database_down_until.lock().unwrap().is_some_and(|t| std::time::Instant::now() < t)
    }

    /// Notes that the database could not be reached.
    pub fn database_failed(&self) {
        *self.database_down_until.lock().unwrap() = Some(std::time::Instant::now() + std::time::Duration::from_secs(1));
    }
}
