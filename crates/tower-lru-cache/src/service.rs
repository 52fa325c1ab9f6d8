//! [`CacheService`]: the HTTP cache around an inner service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::{
    body::CacheBody,
    cached::CachedResponse,
    error::BoxError,
    future::ResponseFuture,
    shared::HttpShared,
    stats::CacheHandle,
    store::{CacheStore, MokaStore},
};

/// Caches the responses of an HTTP service. Built by [`CacheLayer`](crate::CacheLayer).
///
/// - **Request:** `http::Request<ReqB>` with `ReqB: http_body::Body + From<Bytes>`. When
///   the key needs the body, it is read (at most the configured limit) and the inner
///   service gets a request of the same body type rebuilt from those bytes, so layers
///   further in can still clone it.
/// - **Response:** `http::Response<CacheBody<ResB>>` for an inner
///   `http::Response<ResB>` with `ResB: http_body::Body<Data = Bytes>`.
/// - **Error:** [`BoxError`]: the inner error unchanged, or a boxed
///   [`CacheError`](crate::CacheError).
///
/// `poll_ready` is always ready: a hit never waits for the inner service's capacity. On
/// a miss or a bypass, the response future drives a clone of the inner service to
/// readiness before calling it (as `tower::util::Oneshot` does), so backpressure from
/// inside is still honoured, by the requests that need the inner service.
pub struct CacheService<S, St = MokaStore<CachedResponse>> {
    inner: S,
    shared: Arc<HttpShared<St>>,
}

impl<S, St> CacheService<S, St> {
    pub(crate) fn new(inner: S, shared: Arc<HttpShared<St>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the cache service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St: CacheStore<CachedResponse>> CacheService<S, St> {
    /// A handle on this service's cache (shared with the layer and every clone).
    #[must_use]
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.shared.clone())
    }
}

impl<S: Clone, St> Clone for CacheService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for CacheService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("cache", &self.shared)
            .finish()
    }
}

impl<S, St, ReqB, ResB> Service<Request<ReqB>> for CacheService<S, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqB: Body + From<Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB, ResB, St>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ResponseFuture::new(&self.shared, &self.inner, req)
    }
}
