//! Two crates of the suite on an existing axum router, without the preset: RED metrics
//! on every route, and a per-client rate limit on the API routes.
//!
//! ```sh
//! cargo run --example axum_a_la_carte
//! curl -i localhost:3001/api/hello
//! curl -s localhost:3001/metrics.json
//! ```
//!
//! axum wants answers, not errors: `answer_refusals()` makes the limiter answer its own
//! refusals (429 with `Retry-After` and the `RateLimit` headers, or gRPC
//! `RESOURCE_EXHAUSTED`), so it attaches with plain `.layer(...)`, no `HandleErrorLayer`.

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use tower::BoxError;
use tower_health_ai::red_metrics::{RedMetricsHandle, RedMetricsLayer};
use tower_health_ai::token_bucket::http::user_or_peer_ip;
use tower_health_ai::token_bucket::{Quota, RateLimitLayer};

/// The application: an existing router, with the two layers added.
pub(crate) fn app() -> (Router, RedMetricsHandle) {
    // Ten requests a second per client (the `x-api-key` header, else the client IP),
    // shared by every route it is applied to.
    let limiter = RateLimitLayer::builder(Quota::per_second(10))
        .name("api")
        .key(user_or_peer_ip("x-api-key"))
        .build()
        // Refusals become answers: the layer fits an axum router as it is.
        .answer_refusals();
    let red = RedMetricsLayer::builder().build();
    let metrics = red.handle();

    // On each route, with plain `.layer(...)` (on a whole `Router` it works the same).
    let api = Router::new()
        .route(
            "/api/hello",
            get(|| async { "hello" }).layer(limiter.clone()),
        )
        .route("/api/time", get(|| async { "it is now" }).layer(limiter));
    let snapshot = metrics.clone();
    let router = Router::new()
        .merge(api)
        .route(
            "/metrics.json",
            get(move || {
                let snapshot = snapshot.clone();
                async move { Json(snapshot.snapshot()) }
            }),
        )
        // Outermost, so it counts the 429s too.
        .layer(red);
    (router, metrics)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (router, _metrics) = app();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
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
