//! How actix-web handlers name the scope they need: the `Authorized<scope::X>` extractor, and
//! the app data it reads (feature `actix`; the proxy checks keys with its own server stack).

use super::*;
use crate::http::bearer;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::{ready, Either, LocalBoxFuture, Ready};
use std::marker::PhantomData;

/// The authenticator and the rate limits a service registers as app data.
pub fn app_data(
    common: &crate::config::CommonSettings,
    keys: &ApiKeys,
    store: &Store,
) -> (web::Data<Authenticator>, web::Data<crate::limits::RateLimits>) {
    (
        web::Data::new(Authenticator::new(
            keys.clone(),
            store.clone(),
            common.api_key_cache,
            common.auth_failures_per_address,
        )),
        web::Data::new(crate::limits::RateLimits::new(common.rate_limit_per_key, common.rate_limit_per_connection)),
    )
}

/// An authenticated caller holding scope `S`. 401 without a valid key, 403 without the scope.
pub struct Authorized<S: scope::Required> {
    pub caller: Caller,
    _scope: PhantomData<S>,
}

impl<S: scope::Required> std::ops::Deref for Authorized<S> {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<S: scope::Required + 'static> FromRequest for Authorized<S> {
    type Error = ApiError;
    type Future = Either<Ready<Result<Self, ApiError>>, LocalBoxFuture<'static, Result<Self, ApiError>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // Borrowed, not cloned: the app data is shared by every worker, and cloning it on each
        // request would bounce its reference count between cores.
        let Some(auth) = req.app_data::<web::Data<Authenticator>>() else {
            return Either::Left(ready(Err(ApiError::internal("no authenticator configured"))));
        };
        let limits = req.app_data::<web::Data<crate::limits::RateLimits>>();
        // Most calls are decided in memory: no future to allocate for them.
        match auth.authenticate_now(bearer(req)) {
            Ok(done) => Either::Left(ready(Self::finish(done, limits.map(|l| &***l)))),
            Err(digest) => {
                let (auth, limits) = (auth.clone(), limits.cloned());
                let client = req.peer_addr().map(|a| a.ip());
                Either::Right(Box::pin(async move {
                    Self::finish(auth.look_up(digest, client).await, limits.as_ref().map(|l| &***l))
                }))
            }
        }
    }
}

impl<S: scope::Required + 'static> Authorized<S> {
    fn finish(caller: Result<Caller, ApiError>, limits: Option<&crate::limits::RateLimits>) -> Result<Self, ApiError> {
        Ok(Self { caller: permit(caller, S::SCOPE, limits)?, _scope: PhantomData })
    }
}
