//! tonic's standard gRPC health service behind a per-client rate limit and RED metrics,
//! with refusals answered as gRPC statuses (`RESOURCE_EXHAUSTED`, with `Retry-After`).
//! The RED metrics are served as Prometheus text on a port of their own, beside the gRPC
//! port.
//!
//! ```sh
//! cargo run --example tonic_health
//! grpcurl -plaintext localhost:50051 grpc.health.v1.Health/Check
//! curl localhost:9090/metrics   # http_requests_total{method="POST",route="unmatched",status="OK"} 1
//! ```

use std::net::SocketAddr;

use tonic::body::Body;
use tonic::transport::Server;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tower::{BoxError, ServiceBuilder};
use tower_health_ai::Refusal;
use tower_health_ai::install_prometheus;
use tower_health_ai::red_metrics::{
    PrometheusMetrics, RedMetricsHandle, RedMetricsLayer, metrics_route,
};
use tower_health_ai::token_bucket::{KeyError, Quota, RateLimitError, RateLimitLayer, key_fn};

/// Serves the health service on `incoming` until `shutdown`; `burst` calls a second per
/// client IP.
pub(crate) async fn serve(
    incoming: TcpIncoming,
    burst: u32,
    shutdown: impl Future<Output = ()>,
) -> Result<RedMetricsHandle, BoxError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    // The client's IP, from tonic's connection info.
    let per_client = key_fn(|request: &http::Request<Body>| {
        request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map(|addr| addr.ip())
            .ok_or(KeyError::invalid("no peer address"))
    });
    let limiter = RateLimitLayer::builder(Quota::per_second(burst))
        .name("grpc-clients")
        .key(per_client)
        .build();
    let red = RedMetricsLayer::builder().build();
    let metrics = red.handle();

    let layers = ServiceBuilder::new()
        .layer(red)
        // The limiter's refusal becomes a trailers-only gRPC answer.
        .map_result(
            |result: Result<http::Response<Body>, BoxError>| match result {
                Err(error) => match error.downcast_ref::<RateLimitError>() {
                    Some(refused) => Ok(refused.to_grpc_response::<Body>()),
                    None => Err(error),
                },
                ok => ok,
            },
        )
        .layer(limiter)
        .into_inner();

    Server::builder()
        .layer(layers)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(metrics)
}

/// The Prometheus endpoint: `GET /metrics`, on a port of its own (a gRPC port does not
/// speak plain HTTP/1.1 to Prometheus).
pub(crate) fn metrics_router(prometheus: PrometheusMetrics) -> axum::Router {
    axum::Router::new().route("/metrics", metrics_route(prometheus))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The recorder first: layers resolve their metric handles when they are built.
    let prometheus = install_prometheus()?;
    let metrics_addr: SocketAddr = "127.0.0.1:9090".parse()?;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    println!("metrics on http://{metrics_addr}/metrics");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(metrics_listener, metrics_router(prometheus)).await {
            eprintln!("metrics server: {error}");
        }
    });

    let addr: SocketAddr = "127.0.0.1:50051".parse()?;
    let incoming = TcpIncoming::bind(addr)?;
    println!("listening on grpc://{addr}");
    serve(incoming, 5, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
