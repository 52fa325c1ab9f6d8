//! The preset's order, shown by behaviour: each test would fail if the layers were
//! stacked differently or the defaults were not the seed's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_health_ai::breaker::State;
use tower_health_ai::{HealthAiStack, HealthStatus, UpstreamRequest};

/// An upstream whose health can be switched, counting its calls, answering after
/// `latency`.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    latency: Duration,
}

impl Upstream {
    fn new(latency: Duration) -> Self {
        Self {
            calls: Arc::new(AtomicU64::new(0)),
            healthy: Arc::new(AtomicBool::new(true)),
            latency,
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    fn service(
        &self,
    ) -> impl Service<
        UpstreamRequest,
        Response = Response<Body>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let this = self.clone();
        service_fn(move |request: UpstreamRequest| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(this.latency).await;
                if !this.healthy.load(Ordering::SeqCst) {
                    return Err::<Response<Body>, BoxError>("upstream down".into());
                }
                let body = request.into_body().collect().await?.to_bytes();
                Ok(Response::new(Body::from(format!(
                    "ai:{}",
                    String::from_utf8_lossy(&body)
                ))))
            }
        })
    }
}

fn ask(user: &str, body: &'static str) -> Request<Body> {
    Request::post("/analyze")
        .header("x-user-id", user)
        .body(Body::from(body))
        .unwrap()
}

async fn text<B>(response: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

fn stack() -> HealthAiStack {
    HealthAiStack::builder()
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_stops_retries_and_the_fallback_answers_fast() {
    let upstream = Upstream::new(Duration::from_secs(1));
    upstream.set_healthy(false);
    let stack = stack();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());

    // One request: three attempts (the seed's), three failures: the circuit opens, and
    // the fallback answers, marked degraded.
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(text(response).await, "fallback");
    assert_eq!(upstream.calls(), 3);
    assert_eq!(handle.circuit_state(), State::Open);
    assert_eq!(handle.health().status, HealthStatus::Degraded);

    // While open: no upstream call, no retry, no wait.
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "r2")).await.unwrap();
    assert_eq!(text(response).await, "fallback");
    assert_eq!(upstream.calls(), 3);
    assert!(start.elapsed() < Duration::from_millis(10));

    // After the seed's 60 s, a good probe closes the circuit.
    tokio::time::sleep(Duration::from_secs(60)).await;
    upstream.set_healthy(true);
    let response = svc.clone().oneshot(ask("ada", "r3")).await.unwrap();
    assert_eq!(text(response).await, "ai:r3");
    assert_eq!(handle.circuit_state(), State::Closed);
    assert_eq!(handle.health().status, HealthStatus::Healthy);
}

#[tokio::test(start_paused = true)]
async fn fallback_answers_are_never_cached() {
    let upstream = Upstream::new(Duration::from_millis(10));
    upstream.set_healthy(false);
    let stack = HealthAiStack::builder()
        .retry_attempts(1)
        .breaker_failures(100)
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let svc = stack.layer(upstream.service());

    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(text(response).await, "fallback");
    upstream.set_healthy(true);
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert_eq!(text(response).await, "ai:r1");
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stale_real_answer_beats_the_fallback() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let stack = HealthAiStack::builder()
        .retry_attempts(1)
        .cache_ttl(Duration::from_secs(60))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let svc = stack.layer(upstream.service());

    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(text(response).await, "ai:r1");
    tokio::time::sleep(Duration::from_secs(61)).await;
    upstream.set_healthy(false);
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "STALE");
    assert_eq!(text(response).await, "ai:r1");
}

#[tokio::test(start_paused = true)]
async fn local_refusals_are_not_upstream_failures() {
    // One slot, a waiting room of one: a burst of distinct requests is mostly shed.
    let upstream = Upstream::new(Duration::from_secs(5));
    let stack = HealthAiStack::builder()
        .max_in_flight(1)
        .queue_capacity(1)
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());

    let bodies = ["a", "b", "c", "d", "e", "f"];
    let calls: Vec<_> = bodies
        .iter()
        .map(|body| tokio::spawn(svc.clone().oneshot(ask("ada", body))))
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        let response = call.await.unwrap().unwrap();
        statuses.push(response.status());
    }
    let shed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(shed, 4, "{statuses:?}");
    // Shed requests are 503 refusals, not fallbacks, and the circuit stays closed.
    assert_eq!(handle.circuit_state(), State::Closed);
    assert_eq!(upstream.calls(), 2);
    let metrics = handle.metrics();
    assert_eq!(metrics.requests.total, 6);
    assert_eq!(metrics.requests.errors, 4);
}

#[tokio::test(start_paused = true)]
async fn the_per_user_limit_counts_cached_answers_and_spares_other_users() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let stack = stack();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());

    for _ in 0..5 {
        let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let other = svc.clone().oneshot(ask("grace", "same")).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    // Two users never share an entry: grace's answer was a miss.
    assert_eq!(other.headers()["x-cache"], "MISS");
    assert_eq!(upstream.calls(), 2);
    let metrics = handle.metrics();
    assert_eq!(metrics.requests.total, 7);
    assert_eq!(metrics.requests.rate_limited, 1);
    assert_eq!(metrics.cache.hits, 4);
    assert!((metrics.cost.saved_usd - 0.04).abs() < 1e-9);
    assert!((metrics.cost.spent_usd - 0.02).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn oversized_bodies_and_refused_checks_are_client_errors() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let stack = HealthAiStack::builder()
        .max_body_bytes(8)
        .request_check(|parts, _body| {
            if parts.headers.contains_key("x-bad") {
                Err(tower_health_ai::RequestRejected::bad_request("bad request"))
            } else {
                Ok(())
            }
        })
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());

    let response = svc.clone().oneshot(ask("ada", "123456789")).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let mut bad = ask("ada", "1");
    bad.headers_mut().insert("x-bad", "1".parse().unwrap());
    let response = svc.clone().oneshot(bad).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(text(response).await, r#"{"error":"bad request"}"#);
    assert_eq!(upstream.calls(), 0);
    assert_eq!(handle.metrics().requests.client_errors, 2);
}

#[tokio::test(start_paused = true)]
async fn refusals_speak_grpc_to_grpc_clients() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let stack = HealthAiStack::builder()
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(1))
        .build();
    let svc = stack.layer(upstream.service());
    let grpc = || {
        Request::post("/analyze")
            .header("x-user-id", "ada")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap()
    };
    let _ = svc.clone().oneshot(grpc()).await.unwrap();
    let refused = svc.clone().oneshot(grpc()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::OK);
    assert_eq!(refused.headers()["grpc-status"], "8");
}

#[tokio::test(start_paused = true)]
async fn every_layer_call_shares_one_state() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let stack = stack();
    let handle = stack.handle();
    // Two services from one stack (as on two axum routes): one cache, one limit, one
    // set of figures.
    let first = stack.layer(upstream.service());
    let second = stack.clone().layer(upstream.service());
    let response = first.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    let response = second.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "HIT");
    for _ in 0..3 {
        first.clone().oneshot(ask("ada", "same")).await.unwrap();
    }
    let refused = second.oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.calls(), 1);
    assert_eq!(handle.metrics().requests.total, 6);
}

#[tokio::test(start_paused = true)]
async fn waiters_behind_a_refused_request_get_the_refusal_too() {
    let upstream = Upstream::new(Duration::from_secs(5));
    let stack = HealthAiStack::builder()
        .max_in_flight(1)
        .max_queue_wait(Duration::from_secs(1))
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let svc = stack.layer(upstream.service());
    // One call holds the only slot for 5 s.
    let busy = [tokio::spawn(svc.clone().oneshot(ask("ada", "x")))];
    tokio::task::yield_now().await;
    // Three identical requests: one leads, two wait behind it in the cache. The leader
    // times out in the queue after 1 s; each waiter then gets the queue's own 503, not a
    // shared 502.
    let same: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(ask("ada", "y"))))
        .collect();
    for call in same {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
    }
    for call in busy {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn settings_out_of_range_are_clamped_not_panics() {
    let upstream = Upstream::new(Duration::from_millis(10));
    upstream.set_healthy(false);
    // Zero failures to open means one; zero attempts means one call.
    let stack = HealthAiStack::builder()
        .breaker_failures(0)
        .retry_attempts(0)
        .breaker_half_open_probes(0)
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let response = svc.oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(upstream.calls(), 1);
    assert_eq!(handle.circuit_state(), State::Open);
}
