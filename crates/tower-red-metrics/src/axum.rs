//! The axum `/metrics` endpoint.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use crate::prometheus::PrometheusMetrics;

/// A `GET` route that serves the Prometheus text:
/// `Router::new().route("/metrics", metrics_route(metrics))`.
pub fn metrics_route<S>(metrics: PrometheusMetrics) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    get(move || {
        let metrics = metrics.clone();
        async move { metrics.render_response::<axum::body::Body>() }
    })
}

/// A handler that serves the Prometheus text from the router's state (or a part of it,
/// through `FromRef`): `.route("/metrics", get(metrics_handler))`.
pub async fn metrics_handler(State(metrics): State<PrometheusMetrics>) -> Response {
    metrics
        .render_response::<axum::body::Body>()
        .into_response()
}
