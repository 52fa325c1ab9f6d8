//! The `HealthAiStack` preset on one route of an axum application, with the operator
//! routes (`/api/health`, `/api/metrics`, `/metrics`) beside it.
//!
//! ```sh
//! cargo run --example axum_preset
//! curl -s -X POST localhost:3002/api/summarize -H 'x-user-id: ada' -d 'some text'
//! curl -s localhost:3002/api/metrics
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use tower::{BoxError, Layer, service_fn};
use tower_health_ai::red_metrics::PrometheusMetrics;
use tower_health_ai::{HealthAiHandle, HealthAiStack, UpstreamRequest};

/// The application: one expensive route behind the preset, one cheap route without it.
pub(crate) fn app(prometheus: Option<PrometheusMetrics>) -> (Router, HealthAiHandle) {
    // The expensive call, e.g. an AI SDK; here it takes two seconds.
    let summarize = service_fn(|request: UpstreamRequest| async move {
        let text = request.into_body().collect().await?.to_bytes();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let summary = format!("{} bytes, summarized", text.len());
        Ok::<_, BoxError>(Response::new(Body::from(summary)))
    });

    let mut stack = HealthAiStack::builder()
        .call_timeout(Duration::from_secs(30))
        .fallback(|_request, _error| {
            Some(Response::new(Bytes::from_static(
                b"the summarizer is unavailable; try again later",
            )))
        });
    if let Some(prometheus) = prometheus {
        stack = stack.prometheus(prometheus);
    }
    let stack = stack.build();
    let handle = stack.handle();

    let router = Router::new()
        .route_service("/api/summarize", stack.layer(summarize))
        .route("/api/ping", get(|| async { "pong" }))
        .merge(handle.router());
    (router, handle)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Before building the stack, so that its layers record into this recorder.
    let prometheus = tower_health_ai::install_prometheus()?;
    let (router, _handle) = app(Some(prometheus));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002").await?;
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
