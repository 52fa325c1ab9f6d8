//! The suite added to an axum application that already exists: its own state, its own
//! routes, its own `/metrics`. Every layer attaches with plain `.layer(...)`:
//!
//! - `POST /orders`: a per-client-IP rate limit. `answer_refusals()` makes the limiter
//!   answer its refusals itself (429 with `Retry-After` and the `RateLimit` headers), so
//!   the route's error type stays axum's `Infallible`: no `HandleErrorLayer`.
//! - `GET /report`: a response cache, attached the same way; a hit never reaches the
//!   handler.
//! - `POST /summarize`: the [`HealthAiStack`] preset around an ordinary handler.
//! - RED metrics on the whole router. The preset is told about that layer
//!   (`outer_red_metrics`), so it does not record the requests again: each request is
//!   counted once in `http_requests_total`, and the preset's `/api/metrics` JSON reports
//!   the router's figures.
//! - The application serves its own `GET /metrics` (Prometheus text); the preset's
//!   operator routes go under `/ops` (`/ops/api/health`, `/ops/api/metrics`,
//!   `/ops/metrics`), where they do not collide with it.
//!
//! ```sh
//! cargo run --example axum_existing_app
//! curl -i -X POST localhost:3003/orders
//! curl -i localhost:3003/report
//! curl -s -X POST localhost:3003/summarize -H 'x-user-id: ada' -d 'some text'
//! curl -s localhost:3003/metrics | grep http_requests_total
//! curl -s localhost:3003/ops/api/health
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower::BoxError;
use tower_health_ai::lru_cache::CacheLayer;
use tower_health_ai::red_metrics::{PrometheusMetrics, RedMetricsLayer};
use tower_health_ai::token_bucket::http::PeerIp;
use tower_health_ai::token_bucket::{Quota, RateLimitLayer};
use tower_health_ai::{HealthAiHandle, HealthAiStack};

/// The application's own state, as it was before the suite was added.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) prometheus: PrometheusMetrics,
    /// Orders placed.
    pub(crate) orders: Arc<AtomicU64>,
    /// How many times the report was rendered (a cache hit does not render it).
    pub(crate) reports_rendered: Arc<AtomicU64>,
}

async fn place_order(State(app): State<AppState>) -> (StatusCode, String) {
    let number = app.orders.fetch_add(1, Ordering::Relaxed) + 1;
    (StatusCode::CREATED, format!("order {number} placed"))
}

async fn report(State(app): State<AppState>) -> String {
    let number = app.reports_rendered.fetch_add(1, Ordering::Relaxed) + 1;
    format!("report, rendered {number} time(s)")
}

/// The expensive call the preset protects (an AI SDK, say).
async fn summarize(body: String) -> String {
    format!("{} bytes, summarized", body.len())
}

async fn metrics(State(app): State<AppState>) -> String {
    app.prometheus.render()
}

/// The application, with the suite's layers added; `prometheus` renders the installed
/// recorder (see [`tower_health_ai::install_prometheus`]).
pub(crate) fn app(prometheus: PrometheusMetrics) -> (Router, AppState, HealthAiHandle) {
    let state = AppState {
        prometheus: prometheus.clone(),
        orders: Arc::default(),
        reports_rendered: Arc::default(),
    };

    // Outermost, on the whole router: every route is counted here, refusals included.
    let red = RedMetricsLayer::new();
    let per_ip = RateLimitLayer::builder(Quota::per_minute(3))
        .name("orders")
        .key(PeerIp)
        .build()
        .answer_refusals();
    let cache = CacheLayer::builder()
        .name("report")
        .build()
        .answer_refusals();
    let preset = HealthAiStack::builder()
        // The router's RED layer records the preset's route: the preset must not.
        .outer_red_metrics(red.handle())
        .prometheus(prometheus)
        .build();
    let ops = preset.handle();

    let router = Router::new()
        .route("/orders", post(place_order).layer(per_ip))
        .route("/report", get(report).layer(cache))
        .route("/summarize", post(summarize).layer(preset))
        .route("/metrics", get(metrics))
        .merge(ops.router_at("/ops"))
        .layer(red)
        .with_state(state.clone());
    (router, state, ops)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Before building the layers, so that they record into this recorder.
    let prometheus = tower_health_ai::install_prometheus()?;
    let (router, _state, _ops) = app(prometheus);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3003").await?;
    println!("listening on http://{}", listener.local_addr()?);
    // The per-IP limit and the preset read the peer address from `ConnectInfo`.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
