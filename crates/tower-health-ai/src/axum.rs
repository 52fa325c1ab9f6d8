//! Ready-made axum routes for the operator: `/api/health`, `/api/metrics` and
//! `/metrics`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

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
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let mut router = Router::new()
            .route("/api/health", get(health_handler))
            .route("/api/metrics", get(metrics_handler));
        if let Some(prometheus) = self.prometheus() {
            router = router.route(
                "/metrics",
                tower_red_metrics::metrics_route(prometheus.clone()),
            );
        }
        router.with_state(self.clone())
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
