//! Graceful shutdown: a request in flight when the stop signal comes is answered in full.

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::gateway;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered() {
    // The provider takes 300 ms: the stop signal arrives while the call is upstream.
    let args = GatewayArgs::parse_from([
        "gateway",
        "--sim-latency-ms",
        "300",
        "--sim-failure-rate",
        "0",
    ]);
    let gateway = gateway::from_args(&args, None).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway::serve(listener, gateway.router, async {
        let _ = stopped.await;
    }));

    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::post(format!("{base}/api/health-records/rec-1/analyze"))
        .header("x-user-id", "ada")
        .body(Full::default())
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    // Wait until the gateway has the request (the provider has been called)...
    let simulator = gateway.simulator.expect("the simulated provider runs");
    while simulator.calls() == 0 {
        tokio::task::yield_now().await;
    }
    // ...then stop it.
    stop.send(()).unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["source"], "ai");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once the request is answered")
        .unwrap()
        .unwrap();
}
