//! The service.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tower_service::Service;

use crate::BoxError;
use crate::classify::Classify;
use crate::future::ResponseFuture;
use crate::labels::ExtractLabels;
use crate::layer::Shared;
use crate::metrics::RouteSeries;
use crate::state::Recording;

/// What one [`Layer::layer`](tower_layer::Layer::layer) call built: the shared state, and
/// the route this service saw first (under axum's `Router::layer` each route gets its own
/// service, so after the first request the route's handles are found without a lock).
#[derive(Debug)]
struct Instance {
    shared: Arc<Shared>,
    route: OnceLock<Arc<RouteSeries>>,
}

impl Instance {
    fn series(&self, route: Option<Cow<'_, str>>) -> Arc<RouteSeries> {
        let Some(route) = route else {
            return Arc::clone(self.shared.registry.unmatched());
        };
        if let Some(cached) = self.route.get() {
            if cached.route() == route {
                return Arc::clone(cached);
            }
            return self.shared.registry.route(route);
        }
        let series = self.shared.registry.route(route);
        Arc::clone(self.route.get_or_init(|| series))
    }
}

/// Records rate, errors and duration of every request through `S`. Built by
/// [`RedMetricsLayer`](crate::RedMetricsLayer).
///
/// Its error is the inner service's error, boxed and otherwise unchanged; it never
/// refuses a request itself. Cloning costs one reference count.
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
            instance: Arc::new(Instance {
                shared,
                route: OnceLock::new(),
            }),
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
    S::Error: Into<BoxError>,
    L: ExtractLabels<Req>,
    C: Classify<S::Response> + Clone,
{
    type Response = C::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let labels = self.labels.extract(&request);
        let method = labels.method;
        let series = self.instance.series(labels.route);
        let recording = Recording::start(series, method);
        ResponseFuture::new(self.inner.call(request), recording, self.classify.clone())
    }
}
