//! The service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::Classify;
use crate::future::ResponseFuture;
use crate::labels::ExtractLabels;
use crate::layer::Shared;
use crate::state::{Instance, Recording};

/// Records rate, errors and duration of every request through `S`. Built by
/// [`RedMetricsLayer`](crate::RedMetricsLayer).
///
/// Its error is the inner service's error, unchanged; it never refuses a request itself.
/// A request that an outer RED layer records already (see
/// [`ExtractLabels::is_recorded`]) passes through unrecorded, so nested layers (one on
/// the whole router, one in a preset on a route) count each request once. Cloning costs
/// one reference count.
#[derive(Debug, Clone)]
pub struct RedMetrics<S, L, C> {
    inner: S,
    instance: Arc<Instance>,
    labels: L,
    classify: C,
}

impl<S, L, C> RedMetrics<S, L, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, labels: L, classify: C) -> Self {
        Self {
            inner,
            instance: Arc::new(Instance::new(shared)),
            labels,
            classify,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, L, C, Req> Service<Req> for RedMetrics<S, L, C>
where
    S: Service<Req>,
    L: ExtractLabels<Req>,
    C: Classify<S::Response> + Clone,
{
    type Response = C::Output;
    // Recording never fails: the inner service's errors pass through as they are, so
    // the layer fits where an `Infallible` service is required (axum's `Router::layer`).
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        if self.labels.is_recorded(&request) {
            return ResponseFuture::new(
                self.inner.call(request),
                Recording::disarmed(),
                self.classify.clone(),
            );
        }
        let labels = self.labels.extract(&request);
        let recording = self.instance.start(labels.route, labels.method);
        self.labels.mark_recorded(&mut request);
        ResponseFuture::new(self.inner.call(request), recording, self.classify.clone())
    }
}
