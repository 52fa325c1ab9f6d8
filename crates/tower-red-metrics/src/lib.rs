//! RED metrics (rate, errors, duration) for any [tower] service, through [metrics].
//!
//! [`RedMetricsLayer`] records every request exactly once, with bounded labels:
//!
//! - `http_requests_total{method,route,status}` (counter),
//! - `http_request_duration_seconds{method,route}` (histogram),
//! - `http_requests_in_flight{method,route}` (gauge): requests waiting on the inner
//!   service or on the end of a streamed response ([`HTTP_REQUESTS_IN_FLIGHT`]).
//!
//! `route` is the matched route template (axum's `MatchedPath`, with the `axum` feature),
//! else [`UNMATCHED_ROUTE`]; never the raw path. Methods outside the standard nine are
//! `OTHER`. gRPC responses are recorded by their `grpc-status`, from the trailers when
//! the status is not in the headers ([`HttpClassify`], [`RedBody`]). A request whose
//! future or body is dropped first is recorded once, as `cancelled`.
//!
//! The same requests feed an in-process [`RedSnapshot`] (through a [`RedMetricsHandle`]):
//! totals by class, error rate, and duration avg/p50/p95/p99 in milliseconds over a
//! sliding window (5 minutes by default), within [`DURATION_RELATIVE_ERROR`] (0.39 %).
//!
//! [`PrometheusConfig`] installs a Prometheus recorder without panicking when one exists,
//! with histogram buckets from 1 ms to 10 minutes; [`PrometheusMetrics`] renders the text,
//! and with the `axum` feature [`metrics_route`] serves it at `/metrics`.
//!
//! ```
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_red_metrics::{PrometheusConfig, RedMetricsLayer};
//!
//! # #[cfg(all(feature = "http", feature = "prometheus"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // In an application: `PrometheusConfig::new().install()?` once, before building layers.
//! // Here, a recorder of our own, so that nothing global is touched.
//! let (recorder, prometheus) = PrometheusConfig::new().build()?;
//! let layer = RedMetricsLayer::builder().recorder(recorder).build();
//! let handle = layer.handle();
//!
//! let service = layer.layer(service_fn(|_req: Request<Full<bytes::Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("ok"))))
//! }));
//!
//! let response = service.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "ok");
//!
//! let snapshot = handle.snapshot();
//! assert_eq!(snapshot.requests.total, 1);
//! assert_eq!(snapshot.requests.success, 1);
//! let json = serde_json::to_string(&snapshot)?;
//! assert!(json.starts_with(r#"{"requests":{"total":1,"success":1,"errors":0,"errorRate":0.0"#));
//!
//! let text = prometheus.render();
//! assert!(text.contains(r#"http_requests_total{method="GET",route="unmatched",status="200"} 1"#));
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "http", feature = "prometheus")))]
//! # fn main() {}
//! ```
//!
//! ## With axum
//!
//! Apply the layer inside the router (`Router::layer`), where axum has set `MatchedPath`.
//! The layer passes its inner service's error type through unchanged (an error reaching
//! it is recorded as `error`), so it goes straight onto an axum router.
//!
//! ```
//! # #[cfg(all(feature = "axum", feature = "prometheus"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use tower_red_metrics::{PrometheusConfig, RedMetricsLayer, metrics_route};
//!
//! // `install()` in an application; a local recorder here.
//! let (recorder, prometheus) = PrometheusConfig::new().build()?;
//! let red = RedMetricsLayer::builder().recorder(recorder).build();
//! let handle = red.handle(); // serve `handle.snapshot()` as JSON
//!
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "user" }))
//!     .route("/metrics", metrics_route(prometheus))
//!     .layer(red);
//! # let _ = (app, handle);
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "axum", feature = "prometheus")))]
//! # fn main() {}
//! ```
//!
//! ## When a request is recorded
//!
//! Plain HTTP responses and trailers-only gRPC responses are recorded when the response
//! head comes back from the inner service; streaming gRPC responses when their trailers
//! go by (so drive or drop the body). A request whose future is dropped first is recorded
//! as `cancelled`, and so is a gRPC body dropped before its trailers: every request is
//! recorded once, whatever happens, and `http_requests_in_flight` returns to zero.
//!
//! Nested layers count a request once: the outermost RED layer records it and marks it
//! ([`RedRecorded`], with [`HttpLabels`]), and the layers inside pass it through. A RED
//! layer on the whole router and another inside a preset on one route count each
//! request on that route once, under the outer layer's labels.
//!
//! Durations are read from the CPU's time-stamp counter ([`Clock::Monotonic`], about
//! 10 ns a read), which does not follow tokio's paused test clock; a test that pauses
//! time and checks durations builds its layer with [`Clock::Tokio`]
//! ([`RedMetricsLayerBuilder::clock`]).
//!
//! [tower]: https://docs.rs/tower
//! [metrics]: https://docs.rs/metrics
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(all(feature = "axum", feature = "prometheus"))]
mod axum;
#[cfg(feature = "http")]
mod body;
mod classify;
mod clock;
mod error;
mod future;
#[cfg(feature = "http")]
mod http;
mod labels;
mod layer;
mod metrics;
#[cfg(feature = "prometheus")]
mod prometheus;
mod service;
mod sketch;
mod snapshot;
mod state;

#[cfg(all(feature = "axum", feature = "prometheus"))]
pub use crate::axum::{metrics_handler, metrics_route};
#[cfg(feature = "http")]
pub use crate::body::RedBody;
pub use crate::classify::{Class, Classify, ClassifyFn, Status, classify_fn};
pub use crate::clock::Clock;
pub use crate::error::BoxError;
#[cfg(feature = "prometheus")]
pub use crate::error::InstallError;
pub use crate::future::ResponseFuture;
#[cfg(feature = "http")]
pub use crate::http::{HttpClassify, HttpLabels, RedRecorded};
pub use crate::labels::{ExtractLabels, MethodLabel, RequestLabels};
#[allow(deprecated)]
pub use crate::layer::RedMetricsBuilder;
pub use crate::layer::{
    DEFAULT_MAX_ROUTES, DEFAULT_WINDOW, DEFAULT_WINDOW_STEPS, RedMetricsLayer,
    RedMetricsLayerBuilder,
};
pub use crate::metrics::{
    HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_IN_FLIGHT, HTTP_REQUESTS_TOTAL, OVERFLOW_ROUTE,
    UNMATCHED_ROUTE,
};
#[cfg(feature = "prometheus")]
pub use crate::prometheus::{
    DEFAULT_DURATION_BUCKETS, PROMETHEUS_CONTENT_TYPE, PrometheusConfig, PrometheusMetrics,
};
pub use crate::service::RedMetrics;
pub use crate::sketch::RELATIVE_ERROR as DURATION_RELATIVE_ERROR;
pub use crate::snapshot::{DurationStats, RedMetricsHandle, RedSnapshot, RequestStats};
pub use crate::state::Recording;
