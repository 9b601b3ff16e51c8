//! Shared building blocks of the authbridge services: configuration, the provider catalog,
//! storage, messaging, crypto, the OAuth client, token lifecycle, HTTP helpers and telemetry.
//!
//! This crate depends on no service crate; services depend on it.

pub mod auth;
pub mod catalog;
pub mod config;
pub mod core;
pub mod credentials;
pub mod crypto;
pub mod http;
pub mod limits;
pub mod messaging;
pub mod metrics;
pub mod oauth;
pub mod secret;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod tokens;
pub mod webhooks;

/// Installs rustls' process-wide crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
