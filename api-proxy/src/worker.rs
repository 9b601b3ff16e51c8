//! One HTTP worker's share of the proxy: what all workers share, and what is the worker's own
//! (its pool of upstream connections, its table of call deadlines). A worker is a
//! single-threaded runtime: what is its own needs no lock.

use crate::pool::Pool;
use crate::state::ProxyState;
use shared::auth::Authenticator;
use shared::limits::RateLimits;
use shared::metrics::Registry;
use std::rc::Rc;
use std::sync::Arc;

/// What every worker shares.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<ProxyState>,
    pub metrics: Arc<Registry>,
    pub auth: Arc<Authenticator>,
    pub limits: Arc<RateLimits>,
}

/// One worker: the shared parts and its own upstream connection pool.
pub struct Worker {
    pub state: Arc<ProxyState>,
    pub metrics: Arc<Registry>,
    pub auth: Arc<Authenticator>,
    pub limits: Arc<RateLimits>,
    pub upstream: Pool,
    /// The deadlines of this worker's calls to providers.
    pub deadlines: Rc<crate::deadline::Deadlines>,
}
