//! Ready-made axum routes for the operator: `/api/health`, `/api/metrics` and
//! `/metrics`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{MethodRouter, get};

use crate::handle::{Health, HealthAiHandle, MetricsReport};

impl HealthAiHandle {
    /// The operator routes, to merge into an application's router:
    ///
    /// - `GET /api/health`: [`health`](Self::health) as JSON (always `200`: a degraded
    ///   instance still answers, from its cache and fallback);
    /// - `GET /api/metrics`: [`metrics`](Self::metrics) as JSON;
    /// - `GET /metrics`: the Prometheus text, when the builder was given a
    ///   [`PrometheusMetrics`](tower_red_metrics::PrometheusMetrics).
    ///
    /// Mount them outside the stack: they must answer while the stack refuses.
    ///
    /// These paths are fixed; an application that has one of them already (say its own
    /// `/metrics`) mounts them under a prefix with [`router_at`](Self::router_at), or
    /// picks them one by one with [`health_route`](Self::health_route),
    /// [`metrics_route`](Self::metrics_route) and
    /// [`prometheus_route`](Self::prometheus_route).
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let mut router = Router::new()
            .route("/api/health", self.health_route())
            .route("/api/metrics", self.metrics_route());
        if let Some(prometheus) = self.prometheus_route() {
            router = router.route("/metrics", prometheus);
        }
        router
    }

    /// The [operator routes](Self::router) under `prefix`: `{prefix}/api/health`,
    /// `{prefix}/api/metrics` and `{prefix}/metrics`. An empty prefix or `/` is
    /// [`router`](Self::router) itself.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use tower_health_ai::HealthAiStack;
    /// use tower_health_ai::red_metrics::PrometheusConfig;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (_recorder, prometheus) = PrometheusConfig::new().build()?;
    /// let stack = HealthAiStack::builder().prometheus(prometheus).build();
    /// // The application serves its own `/metrics`; the stack's go under `/ops`.
    /// let app: Router = Router::new()
    ///     .route("/metrics", get(|| async { "the application's" }))
    ///     .merge(stack.handle().router_at("/ops"));
    /// # let _ = app;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// As axum's [`Router::nest`]: when `prefix` does not start with `/` or has a
    /// wildcard.
    pub fn router_at<S>(&self, prefix: &str) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return self.router();
        }
        Router::new().nest(prefix, self.router())
    }

    /// `GET`: [`health`](Self::health) as JSON, to mount at a path of the application's
    /// choice.
    ///
    /// ```
    /// use axum::Router;
    /// use tower_health_ai::HealthAiStack;
    ///
    /// let handle = HealthAiStack::new().handle();
    /// let app: Router = Router::new()
    ///     .route("/healthz", handle.health_route())
    ///     .route("/stats", handle.metrics_route());
    /// # let _ = app;
    /// ```
    pub fn health_route<S>(&self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        get(health_handler).with_state(self.clone())
    }

    /// `GET`: [`metrics`](Self::metrics) as JSON, to mount at a path of the application's
    /// choice.
    pub fn metrics_route<S>(&self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        get(metrics_handler).with_state(self.clone())
    }

    /// `GET`: the Prometheus text, when the builder was given a
    /// [`PrometheusMetrics`](tower_red_metrics::PrometheusMetrics); `None` otherwise.
    pub fn prometheus_route<S>(&self) -> Option<MethodRouter<S>>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.prometheus()
            .map(|prometheus| tower_red_metrics::metrics_route(prometheus.clone()))
    }
}

/// `GET /api/health`: the seed's health JSON.
pub async fn health_handler(State(handle): State<HealthAiHandle>) -> Json<Health> {
    Json(handle.health())
}

/// `GET /api/metrics`: the seed's metrics JSON.
pub async fn metrics_handler(State(handle): State<HealthAiHandle>) -> Json<MetricsReport> {
    Json(handle.metrics())
}
