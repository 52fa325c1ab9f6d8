//! tonic's standard gRPC health service behind a per-client rate limit and RED metrics,
//! with refusals answered as gRPC statuses (`RESOURCE_EXHAUSTED`, with `Retry-After`).
//!
//! ```sh
//! cargo run --example tonic_health
//! grpcurl -plaintext localhost:50051 grpc.health.v1.Health/Check
//! ```

use std::net::SocketAddr;

use tonic::body::Body;
use tonic::transport::Server;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tower::{BoxError, ServiceBuilder};
use tower_health_ai::Refusal;
use tower_health_ai::red_metrics::{RedMetricsHandle, RedMetricsLayer};
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

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr: SocketAddr = "127.0.0.1:50051".parse()?;
    let incoming = TcpIncoming::bind(addr)?;
    println!("listening on grpc://{addr}");
    serve(incoming, 5, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
