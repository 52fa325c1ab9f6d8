//! The preset's order, shown by behaviour: each test would fail if the layers were
//! stacked differently or the defaults were not the seed's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_health_ai::Clock;
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

/// A stack whose requests have `deadline`, answered by a fallback past it.
fn with_deadline(deadline: Duration) -> HealthAiStack {
    HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(deadline)
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
}

fn stack() -> HealthAiStack {
    HealthAiStack::builder()
        .clock(Clock::Tokio)
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

    // The analysis is safe to repeat: a failed call is retried, three attempts in all
    // (the seed's), and the fallback answers, marked degraded. Three failures are no
    // outage yet: the circuit stays closed.
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(text(response).await, "fallback");
    assert_eq!(upstream.calls(), 3);
    assert_eq!(handle.circuit_state(), State::Closed);

    // Every call keeps failing: the circuit opens at the 20th failed call (the window's
    // minimum, all of them failures), which also ends that request's retries.
    let mut requests = 1;
    while handle.circuit_state() == State::Closed {
        assert!(
            requests < 20,
            "no outage detected after {requests} requests"
        );
        let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
        assert_eq!(text(response).await, "fallback");
        requests += 1;
    }
    assert_eq!(upstream.calls(), 20);
    assert_eq!(handle.health().status, HealthStatus::Degraded);

    // While open: no upstream call, no retry, no wait.
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "r2")).await.unwrap();
    assert_eq!(text(response).await, "fallback");
    assert_eq!(upstream.calls(), 20);
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
        .clock(Clock::Tokio)
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
        .clock(Clock::Tokio)
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
        .clock(Clock::Tokio)
        .degrade_on_overload(false)
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
        .clock(Clock::Tokio)
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
        .clock(Clock::Tokio)
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
        .clock(Clock::Tokio)
        .degrade_on_overload(false)
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
        .clock(Clock::Tokio)
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

/// An upstream that never answers.
fn hanging() -> impl Service<
    UpstreamRequest,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_request: UpstreamRequest| {
        std::future::pending::<Result<Response<Body>, BoxError>>()
    })
}

/// A request with no user header and no peer address.
fn anonymous(body: &'static str) -> Request<Body> {
    Request::post("/analyze").body(Body::from(body)).unwrap()
}

#[tokio::test(start_paused = true)]
async fn callers_that_cannot_be_told_apart_share_one_bucket_instead_of_a_400() {
    // Plain `axum::serve` gives no `ConnectInfo`: no user header, no peer address.
    let upstream = Upstream::new(Duration::from_millis(10));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .global_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());

    for body in ["a", "b", "c", "d", "e"] {
        let response = svc.clone().oneshot(anonymous(body)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, format!("ai:{body}"));
    }
    // One bucket for all of them: the sixth within the burst is rate limited, not malformed.
    let response = svc.clone().oneshot(anonymous("f")).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // Known users and known addresses keep their own buckets.
    let response = svc.clone().oneshot(ask("ada", "g")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut from_peer = anonymous("h");
    from_peer
        .extensions_mut()
        .insert(std::net::SocketAddr::from(([192, 0, 2, 1], 40_000)));
    let response = svc.clone().oneshot(from_peer).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(handle.metrics().requests.client_errors, 0);
}

#[tokio::test(start_paused = true)]
async fn anonymous_callers_never_share_cached_answers() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let svc = stack().layer(upstream.service());
    for _ in 0..2 {
        let response = svc.clone().oneshot(anonymous("same")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_empty_user_header_names_no_user_and_shares_no_cached_answer() {
    // An empty user header is no user to the per-user limit (it falls back to the peer
    // address, else the one shared key), so it must be none to the cache either: callers
    // with an empty id and no address cannot be told apart, and must not read each
    // other's answers.
    let upstream = Upstream::new(Duration::from_millis(10));
    let svc = stack().layer(upstream.service());
    for _ in 0..2 {
        let request = Request::post("/analyze")
            .header("x-user-id", "")
            .body(Body::from("same"))
            .unwrap();
        let response = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_ne!(
            response.headers().get("x-cache").map(HeaderValue::as_bytes),
            Some(&b"HIT"[..])
        );
    }
    assert_eq!(upstream.calls(), 2);
    // With a peer address, the empty id is that address, as for the limit.
    for _ in 0..2 {
        let mut request = Request::post("/analyze")
            .header("x-user-id", "")
            .body(Body::from("same"))
            .unwrap();
        request
            .extensions_mut()
            .insert(std::net::SocketAddr::from(([192, 0, 2, 1], 40_000)));
        svc.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(
        upstream.calls(),
        3,
        "the second request from the peer is a hit"
    );
}

/// One slot, a fast pace and a generous per-user limit: the queue alone orders requests.
fn one_slot() -> tower_health_ai::HealthAiStackBuilder {
    HealthAiStack::builder()
        .clock(Clock::Tokio)
        .max_in_flight(1)
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .global_quota(tower_health_ai::token_bucket::Quota::per_second(100))
}

/// Sends the requests in turn, 10 ms apart (the first holds the only slot for 1 s), and
/// returns the order in which they were answered.
async fn answer_order<S, B>(
    svc: S,
    requests: Vec<(&'static str, Request<Body>)>,
) -> Vec<&'static str>
where
    S: Service<Request<Body>, Response = Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, request) in requests {
        let svc = svc.clone();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let response = svc.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            order.lock().unwrap().push(name);
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    order.lock().unwrap().clone()
}

fn with_priority(user: &str, body: &'static str, priority: &str) -> Request<Body> {
    let mut request = ask(user, body);
    request
        .headers_mut()
        .insert("x-priority", priority.parse().unwrap());
    request
}

#[tokio::test(start_paused = true)]
async fn a_client_claiming_urgent_does_not_overtake_other_users_by_default() {
    let upstream = Upstream::new(Duration::from_secs(1));
    let svc = one_slot().build().layer(upstream.service());
    let order = answer_order(
        svc,
        vec![
            ("busy", ask("ada", "busy")),
            ("grace", ask("grace", "grace")),
            ("mallory", with_priority("mallory", "mallory", "urgent")),
        ],
    )
    .await;
    assert_eq!(order, ["busy", "grace", "mallory"]);
}

#[tokio::test(start_paused = true)]
async fn a_client_may_lower_its_own_priority() {
    let upstream = Upstream::new(Duration::from_secs(1));
    let svc = one_slot().build().layer(upstream.service());
    let order = answer_order(
        svc,
        vec![
            ("busy", ask("ada", "busy")),
            ("batch", with_priority("ada", "batch", "low")),
            ("grace", ask("grace", "grace")),
        ],
    )
    .await;
    assert_eq!(order, ["busy", "grace", "batch"]);
}

#[tokio::test(start_paused = true)]
async fn the_queues_aging_can_be_set() {
    // With an aging of 1 ms a level, a low request that arrived 10 ms before a normal
    // one has waited long enough to go first (with the default 10 s, it does not: above).
    let upstream = Upstream::new(Duration::from_secs(1));
    let svc = one_slot()
        .queue_aging(Duration::from_millis(1))
        .build()
        .layer(upstream.service());
    let order = answer_order(
        svc,
        vec![
            ("busy", ask("ada", "busy")),
            ("batch", with_priority("ada", "batch", "low")),
            ("grace", ask("grace", "grace")),
        ],
    )
    .await;
    assert_eq!(order, ["busy", "batch", "grace"]);
}

#[tokio::test(start_paused = true)]
async fn the_application_sets_a_trusted_priority_through_an_extension() {
    let upstream = Upstream::new(Duration::from_secs(1));
    // The application decides (here from a header its authentication vouches for, in a
    // real deployment from the user's plan) and inserts a `Priority` extension.
    let svc = one_slot()
        .request_check(|parts, _body| {
            if parts.headers.contains_key("x-verified-plan") {
                parts
                    .extensions
                    .insert(tower_health_ai::priority_queue::Priority::Urgent);
            }
            Ok(())
        })
        .build()
        .layer(upstream.service());
    let mut paying = ask("carol", "paying");
    paying
        .headers_mut()
        .insert("x-verified-plan", "pro".parse().unwrap());
    let order = answer_order(
        svc,
        vec![
            ("busy", ask("ada", "busy")),
            ("grace", ask("grace", "grace")),
            ("paying", paying),
        ],
    )
    .await;
    assert_eq!(order, ["busy", "paying", "grace"]);
}

#[tokio::test(start_paused = true)]
async fn no_answer_comes_later_than_the_deadline_from_a_hanging_upstream() {
    // The seed's settings (120 s call timeout, 3 attempts with backoff, a 150 s
    // deadline), with timeouts retried: the second attempt is cut by the deadline.
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .retry_timeouts(true)
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(hanging());
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(150) && elapsed <= Duration::from_millis(150_010),
        "{elapsed:?}"
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-degraded"], "true");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(text(response).await, "fallback");
    assert_eq!(handle.metrics().requests.total, 1);
}

#[tokio::test(start_paused = true)]
async fn past_the_deadline_without_a_fallback_is_a_504() {
    let svc = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .build()
        .layer(hanging());
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert!(
        start.elapsed() <= Duration::from_millis(150_010),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);

    let grpc = Request::post("/analyze")
        .header("x-user-id", "ada")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "5S")
        .body(Body::empty())
        .unwrap();
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(grpc).await.unwrap();
    assert!(
        start.elapsed() <= Duration::from_millis(5_010),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(response.headers()["grpc-status"], "4");
}

/// The preset with a fallback and a call timeout longer than any deadline: only the
/// deadline ends a call to a hanging upstream.
fn deadline_only() -> HealthAiStack {
    HealthAiStack::builder()
        .clock(Clock::Tokio)
        .call_timeout(Duration::from_secs(3600))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_client_may_shorten_its_deadline_never_lengthen_it() {
    for (value, expected) in [
        ("10", Duration::from_secs(10)),
        ("2.5", Duration::from_millis(2_500)),
        ("1000", Duration::from_secs(150)),
        ("99999999999999999999999999", Duration::from_secs(150)),
        ("1e400", Duration::from_secs(150)),
        ("-3", Duration::from_secs(150)),
        ("NaN", Duration::from_secs(150)),
        ("soon", Duration::from_secs(150)),
    ] {
        // A fresh stack each time: no breaker state or rate limit carried over.
        let svc = deadline_only().layer(hanging());
        let mut request = ask("ada", "r1");
        request
            .headers_mut()
            .insert("x-request-timeout", value.parse().unwrap());
        let start = tokio::time::Instant::now();
        let response = svc.clone().oneshot(request).await.unwrap();
        let elapsed = start.elapsed();
        assert!(
            elapsed >= expected && elapsed <= expected + Duration::from_millis(10),
            "{value}: {elapsed:?}"
        );
        assert_eq!(response.headers()["x-degraded"], "true", "{value}");
    }
    for (value, expected) in [
        ("3S", Duration::from_secs(3)),
        ("1500m", Duration::from_millis(1_500)),
        ("1H", Duration::from_secs(150)),
        ("123456789S", Duration::from_secs(150)),
        ("5X", Duration::from_secs(150)),
        ("S", Duration::from_secs(150)),
    ] {
        let svc = deadline_only().layer(hanging());
        let mut request = ask("ada", "r1");
        request
            .headers_mut()
            .insert("grpc-timeout", value.parse().unwrap());
        let start = tokio::time::Instant::now();
        let _ = svc.clone().oneshot(request).await.unwrap();
        let elapsed = start.elapsed();
        assert!(
            elapsed >= expected && elapsed <= expected + Duration::from_millis(10),
            "{value}: {elapsed:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_waiting_room_degrades_to_the_fallback_at_once() {
    // One slot, a waiting room of one: a burst of distinct requests.
    let upstream = Upstream::new(Duration::from_secs(5));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .max_in_flight(1)
        .queue_capacity(1)
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let calls: Vec<_> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|body| tokio::spawn(svc.clone().oneshot(ask("ada", body))))
        .collect();
    let start = tokio::time::Instant::now();
    let mut degraded = 0;
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        if response.headers().get("x-degraded").is_some() {
            degraded += 1;
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(text(response).await, "fallback");
        }
    }
    assert_eq!(degraded, 4);
    assert!(start.elapsed() <= Duration::from_secs(11));
    assert_eq!(handle.circuit_state(), State::Closed);
    assert_eq!(upstream.calls(), 2);
    let metrics = handle.metrics();
    assert_eq!(metrics.requests.errors, 0);
    assert_eq!(metrics.degraded.queue_full, 4);
    assert_eq!(metrics.degraded.total, 4);
}

#[tokio::test(start_paused = true)]
async fn a_queue_wait_past_its_maximum_degrades_to_the_fallback() {
    let upstream = Upstream::new(Duration::from_secs(5));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .max_in_flight(1)
        .max_queue_wait(Duration::from_secs(1))
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let busy = tokio::spawn(svc.clone().oneshot(ask("ada", "x")));
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "y")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-degraded"], "true");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(busy.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(handle.degraded().queue_timeout, 1);
}

#[tokio::test(start_paused = true)]
async fn a_pace_wait_past_its_maximum_degrades_to_the_fallback() {
    // A pace of one call a minute; a call may wait for it 1 s at most.
    let upstream = Upstream::new(Duration::from_millis(10));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .global_quota(tower_health_ai::token_bucket::Quota::per_minute(1))
        .global_max_wait(Duration::from_secs(1))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let response = svc.clone().oneshot(ask("ada", "x")).await.unwrap();
    assert_eq!(text(response).await, "ai:x");
    let response = svc.clone().oneshot(ask("ada", "y")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-degraded"], "true");
    // About a minute until the pace lets a call through.
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(upstream.calls(), 1);
    assert_eq!(handle.degraded().pace_wait, 1);
}

#[tokio::test(start_paused = true)]
async fn the_per_user_limit_stays_a_429_with_a_fallback() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let svc = stack().layer(upstream.service());
    for _ in 0..5 {
        let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("x-degraded").is_none());
}

#[tokio::test(start_paused = true)]
async fn degradation_can_be_turned_off() {
    let upstream = Upstream::new(Duration::from_secs(5));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .degrade_on_overload(false)
        .max_in_flight(1)
        .max_queue_wait(Duration::from_secs(1))
        .request_deadline(Duration::from_secs(3))
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let busy = tokio::spawn(svc.clone().oneshot(ask("ada", "x")));
    tokio::task::yield_now().await;
    let response = svc.clone().oneshot(ask("ada", "y")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The busy call runs past the 3 s deadline: 504, not the fallback.
    let response = busy.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(handle.degraded().total, 0);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_degrades_and_is_counted_by_reason() {
    let upstream = Upstream::new(Duration::from_secs(5));
    let stack = with_deadline(Duration::from_secs(2));
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "x")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(response.headers()["retry-after"], "5");
    let metrics = handle.metrics();
    assert_eq!(metrics.degraded.deadline, 1);
    assert_eq!(metrics.degraded.total, 1);
    let json = serde_json::to_value(&metrics).unwrap();
    assert_eq!(json["degraded"]["deadline"], 1);
    // A deadline is not the upstream's failure.
    assert_eq!(handle.circuit_state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_with_a_shorter_deadline_is_answered_by_its_own_deadline() {
    // The first request leads the call; an identical one with a 2 s deadline waits
    // behind it in the cache, and must not wait for the leader's 5 s call.
    let upstream = Upstream::new(Duration::from_secs(5));
    // The fallback reads what the request check found, as a real one would.
    #[derive(Clone)]
    struct Checked;
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .request_check(|parts, _body| {
            parts.extensions.insert(Checked);
            Ok(())
        })
        .fallback(|parts, _error| {
            parts.extensions.get::<Checked>()?;
            Some(Response::new(Bytes::from_static(b"fallback")))
        })
        .build();
    let svc = stack.layer(upstream.service());
    let leader = tokio::spawn(svc.clone().oneshot(ask("ada", "same")));
    tokio::task::yield_now().await;
    let mut hurried = ask("ada", "same");
    hurried
        .headers_mut()
        .insert("x-request-timeout", "2".parse().unwrap());
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(hurried).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(text(response).await, "fallback");
    let response = leader.await.unwrap().unwrap();
    assert_eq!(text(response).await, "ai:same");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_not_cut_short_by_the_shorter_deadline_of_the_request_it_waits_on() {
    // A request whose client gave it 1 s leads the call; an identical one with the whole
    // budget waits behind it in the cache. The first gets the fallback at its 1 s; the
    // second has time for a real answer and must get one, not the first one's fallback.
    let upstream = Upstream::new(Duration::from_secs(5));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let start = tokio::time::Instant::now();
    let mut hurried = ask("ada", "same");
    hurried
        .headers_mut()
        .insert("x-request-timeout", "1".parse().unwrap());
    let hurried = tokio::spawn(svc.clone().oneshot(hurried));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let patient = tokio::spawn(svc.clone().oneshot(ask("ada", "same")));
    let response = hurried.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(response.headers()["x-degraded"], "true");
    let response = patient.await.unwrap().unwrap();
    assert!(response.headers().get("x-degraded").is_none());
    assert_eq!(text(response).await, "ai:same");
    assert!(
        start.elapsed() <= Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(handle.degraded().total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_the_request_check_shortens_still_ends_the_call() {
    // The client shortened its deadline to 10 s; the application's check, to 1 s.
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_check(|parts, _body| {
            let soon = tokio::time::Instant::now() + Duration::from_secs(1);
            parts.extensions.insert(tower_health_ai::Deadline::at(soon));
            Ok(())
        })
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let svc = stack.layer(hanging());
    let mut request = ask("ada", "r1");
    request
        .headers_mut()
        .insert("x-request-timeout", "10".parse().unwrap());
    let start = tokio::time::Instant::now();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(response.headers()["x-degraded"], "true");
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_callers_deadline_runs_on_and_its_answer_serves_the_next_request() {
    // A 10 s upstream, a 2 s deadline.
    let upstream = Upstream::new(Duration::from_secs(10));
    let stack = with_deadline(Duration::from_secs(2));
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    // The caller is answered at its deadline, as before.
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(text(response).await, "fallback");
    // Its call runs on, its slot held: the upstream is still working on it.
    assert_eq!(handle.metrics().queue.processing, 1);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(handle.metrics().queue.processing, 0);
    // Its answer, billed anyway, is the next identical request's: no second call.
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "HIT");
    assert_eq!(text(response).await, "ai:same");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_runs_on_starts_no_other_attempt() {
    // Every call fails after 10 s; a 2 s deadline; retries on.
    let upstream = Upstream::new(Duration::from_secs(10));
    upstream.set_healthy(false);
    let stack = with_deadline(Duration::from_secs(2));
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-degraded"], "true");
    // The failed call would be retried, but its request's deadline has passed: no
    // second attempt, and nothing stored.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(upstream.calls(), 1);
    assert_eq!(handle.metrics().queue.processing, 0);
    assert_eq!(handle.metrics().queue.queue_size, 0);
    upstream.set_healthy(true);
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
}

/// Sends `request` through `svc` `after` from now; resolves to how long it took from
/// then, and the answer's body, marked `(degraded)` when it is.
fn send_after<S, B>(
    svc: &S,
    after: Duration,
    request: Request<Body>,
) -> tokio::task::JoinHandle<(Duration, String)>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
    B: http_body::Body + Send,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let svc = svc.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let start = tokio::time::Instant::now();
        let response = svc.oneshot(request).await.unwrap();
        let degraded = response.headers().contains_key("x-degraded");
        let body = text(response).await;
        let body = if degraded {
            format!("{body} (degraded)")
        } else {
            body
        };
        (start.elapsed(), body)
    })
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_a_call_that_runs_on_gets_its_answer_not_its_leaders_fallback() {
    // A 10 s upstream, an 8 s deadline. The first request's call is still running at
    // its deadline; the second, identical, arrived 5 s later and has until 13 s.
    let upstream = Upstream::new(Duration::from_secs(10));
    let svc = with_deadline(Duration::from_secs(8)).layer(upstream.service());
    let first = send_after(&svc, Duration::ZERO, ask("ada", "same"));
    let second = send_after(&svc, Duration::from_secs(5), ask("ada", "same"));
    assert_eq!(
        first.await.unwrap(),
        (Duration::from_secs(8), "fallback (degraded)".to_owned())
    );
    // The call ends at 10 s, within the second request's time: its answer.
    assert_eq!(
        second.await.unwrap(),
        (Duration::from_secs(5), "ai:same".to_owned())
    );
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_arriving_while_a_call_runs_on_waits_for_it_rather_than_calling_again() {
    let upstream = Upstream::new(Duration::from_secs(10));
    let svc = with_deadline(Duration::from_secs(8)).layer(upstream.service());
    let first = send_after(&svc, Duration::ZERO, ask("ada", "same"));
    // Arrives after the first was answered, while its call runs on (until 10 s).
    let later = send_after(&svc, Duration::from_secs(9), ask("ada", "same"));
    assert_eq!(first.await.unwrap().1, "fallback (degraded)");
    assert_eq!(
        later.await.unwrap(),
        (Duration::from_secs(1), "ai:same".to_owned())
    );
    assert_eq!(upstream.calls(), 1, "no second call for the same key");
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_a_call_that_runs_on_is_answered_by_its_own_deadline() {
    // The call takes 30 s: longer than either request may wait.
    let upstream = Upstream::new(Duration::from_secs(30));
    let svc = with_deadline(Duration::from_secs(8)).layer(upstream.service());
    let first = send_after(&svc, Duration::ZERO, ask("ada", "same"));
    let second = send_after(&svc, Duration::from_secs(5), ask("ada", "same"));
    let arriving = send_after(&svc, Duration::from_secs(9), ask("ada", "same"));
    let fallback = |after: u64| (Duration::from_secs(after), "fallback (degraded)".to_owned());
    assert_eq!(first.await.unwrap(), fallback(8));
    // Each at its own deadline, not at the first one's nor past its own.
    assert_eq!(second.await.unwrap(), fallback(8));
    assert_eq!(arriving.await.unwrap(), fallback(8));
    // The call ran on and filled the cache all the same.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "HIT");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_a_call_that_runs_on_waits_for_it_when_the_fallback_may_not_be_shared()
{
    // A fallback answer marked `no-store` is its caller's alone: the request waiting on
    // the call does not share it, and waits for the call rather than calling again.
    let upstream = Upstream::new(Duration::from_secs(10));
    let svc = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::from_secs(8))
        .fallback(|_parts, _error| {
            let mut response = Response::new(Bytes::from_static(b"fallback"));
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            Some(response)
        })
        .build()
        .layer(upstream.service());
    let first = send_after(&svc, Duration::ZERO, ask("ada", "same"));
    let second = send_after(&svc, Duration::from_secs(5), ask("ada", "same"));
    assert_eq!(first.await.unwrap().1, "fallback (degraded)");
    assert_eq!(
        second.await.unwrap(),
        (Duration::from_secs(5), "ai:same".to_owned())
    );
    assert_eq!(upstream.calls(), 1, "no second call for the same key");
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_a_call_that_runs_on_and_fails_gets_the_fallback_when_it_fails() {
    let upstream = Upstream::new(Duration::from_secs(10));
    upstream.set_healthy(false);
    let svc = with_deadline(Duration::from_secs(8)).layer(upstream.service());
    let first = send_after(&svc, Duration::ZERO, ask("ada", "same"));
    let second = send_after(&svc, Duration::from_secs(5), ask("ada", "same"));
    assert_eq!(first.await.unwrap().1, "fallback (degraded)");
    // Told when the call fails (at 10 s: its retry, past the first request's deadline,
    // would only be refused after its backoff), not kept to its own deadline (13 s);
    // and with less time left than a call takes, it starts none of its own.
    assert_eq!(
        second.await.unwrap(),
        (Duration::from_secs(5), "fallback (degraded)".to_owned())
    );
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_running_at_its_callers_deadline_runs_on_and_its_answer_is_stored() {
    // The first attempt fails after 1 s; its retry, started at once, takes 10 s and is
    // running at the first request's 8 s deadline: the attempt that runs on is the
    // retry, counted as running like the first one, and its answer is stored.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = {
        let calls = Arc::clone(&calls);
        service_fn(move |request: UpstreamRequest| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = request.into_body().collect().await?.to_bytes();
                if call == 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return status(500, None).unwrap();
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
                answer(&String::from_utf8_lossy(&body)).unwrap()
            }
        })
    };
    let svc = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::from_secs(8))
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
        .layer(upstream);
    let first = send_after(&svc, Duration::ZERO, ask("ada", "same"));
    let second = send_after(&svc, Duration::from_secs(5), ask("ada", "same"));
    assert_eq!(
        first.await.unwrap(),
        (Duration::from_secs(8), "fallback (degraded)".to_owned())
    );
    // The retry ends by 11.1 s, within the second request's 13 s: its answer.
    let (took, body) = second.await.unwrap();
    assert_eq!(body, "ai:same");
    assert!(took <= Duration::from_millis(6100), "{took:?}");
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_runs_on_ends_at_once_when_the_upstream_says_come_back_later() {
    // At 10 s, past the first request's 8 s deadline, the upstream answers 503 with
    // `Retry-After: 60`. A retry after that minute could only be refused: the call ends
    // at once, and the request waiting on it is told then, not at its own deadline.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(Arc::clone(&calls), Duration::from_secs(10), |_, _| {
        status(503, Some("60"))
    });
    let stack = with_deadline(Duration::from_secs(8));
    let handle = stack.handle();
    let svc = stack.layer(upstream);
    let first = send_after(&svc, Duration::ZERO, ask("ada", "same"));
    let second = send_after(&svc, Duration::from_secs(5), ask("ada", "same"));
    assert_eq!(first.await.unwrap().1, "fallback (degraded)");
    assert_eq!(
        second.await.unwrap(),
        (Duration::from_secs(5), "fallback (degraded)".to_owned())
    );
    // Nothing of the call is left: no slot held, nobody waiting, no other attempt.
    assert_eq!(handle.metrics().queue.processing, 0);
    assert_eq!(handle.metrics().queue.queue_size, 0);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A body that sends `chunks`, each one second after the one before.
struct Slow {
    chunks: std::collections::VecDeque<Bytes>,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Slow {
    fn new(chunks: &[&'static str]) -> Self {
        Self {
            chunks: chunks
                .iter()
                .map(|chunk| Bytes::from_static(chunk.as_bytes()))
                .collect(),
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
        }
    }
}

impl http_body::Body for Slow {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.chunks.is_empty() {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        let next = tokio::time::Instant::now() + Duration::from_secs(1);
        self.sleep.as_mut().reset(next);
        let chunk = self.chunks.pop_front().unwrap_or_default();
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_runs_on_is_stored_once_its_slow_body_has_come() {
    // The head comes at 10 s, past the first request's 8 s deadline; the body, three
    // chunks a second apart, by 13 s. The call runs on through its body, and the
    // request waiting on it (until 15 s) gets the whole answer.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = {
        let calls = Arc::clone(&calls);
        service_fn(move |_request: UpstreamRequest| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, BoxError>(Response::new(Body::new(Slow::new(&["ai", ":", "slow"]))))
            }
        })
    };
    let svc = with_deadline(Duration::from_secs(8)).layer(upstream);
    let first = send_after(&svc, Duration::ZERO, ask("ada", "same"));
    let second = send_after(&svc, Duration::from_secs(7), ask("ada", "same"));
    assert_eq!(first.await.unwrap().1, "fallback (degraded)");
    assert_eq!(
        second.await.unwrap(),
        (Duration::from_secs(6), "ai:slow".to_owned())
    );
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "HIT");
    assert_eq!(text(response).await, "ai:slow");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hung_call_past_its_callers_deadline_holds_its_slot_until_the_call_timeout() {
    // One slot, an upstream that takes far longer than the 2 s deadline and the 60 s
    // call timeout.
    let upstream = Upstream::new(Duration::from_secs(10_000));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .max_in_flight(1)
        .request_deadline(Duration::from_secs(2))
        .call_timeout(Duration::from_secs(60))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    for body in ["a", "b"] {
        let start = tokio::time::Instant::now();
        let response = svc.clone().oneshot(ask("ada", body)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(response.headers()["x-degraded"], "true");
    }
    // The first call still runs, in the only slot: the second request never got it.
    assert_eq!(upstream.calls(), 1);
    assert_eq!(handle.metrics().queue.processing, 1);
    // The call timeout ends it, and gives the slot back.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(handle.metrics().queue.processing, 0);
    let _ = svc.clone().oneshot(ask("ada", "c")).await.unwrap();
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_largest_and_smallest_deadlines_never_panic() {
    let upstream = Upstream::new(Duration::from_millis(10));
    // No deadline at all.
    let svc = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::MAX)
        .build()
        .layer(upstream.service());
    let mut request = ask("ada", "a");
    request
        .headers_mut()
        .insert("grpc-timeout", "99999999H".parse().unwrap());
    let response = svc.clone().oneshot(request).await.unwrap();
    assert_eq!(text(response).await, "ai:a");
    // A zero budget: answered at once, never a call.
    let stack = with_deadline(Duration::ZERO);
    let svc = stack.layer(upstream.service());
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "b")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(upstream.calls(), 1);
    let svc = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::ZERO)
        .build()
        .layer(upstream.service());
    let response = svc.clone().oneshot(ask("ada", "c")).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_request_displaced_by_a_higher_priority_degrades_to_the_fallback() {
    let upstream = Upstream::new(Duration::from_secs(5));
    let stack = one_slot()
        .queue_capacity(1)
        .request_check(|parts, _body| {
            if parts.headers.contains_key("x-verified-plan") {
                parts
                    .extensions
                    .insert(tower_health_ai::priority_queue::Priority::Urgent);
            }
            Ok(())
        })
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let busy = tokio::spawn(svc.clone().oneshot(ask("ada", "busy")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiting = tokio::spawn(svc.clone().oneshot(ask("grace", "waiting")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut paying = ask("carol", "paying");
    paying
        .headers_mut()
        .insert("x-verified-plan", "pro".parse().unwrap());
    let start = tokio::time::Instant::now();
    let paying = tokio::spawn(svc.clone().oneshot(paying));
    // The waiting request is displaced, and answered at once from the fallback.
    let response = waiting.await.unwrap().unwrap();
    assert_eq!(response.headers()["x-degraded"], "true");
    assert!(response.headers().contains_key("retry-after"));
    assert!(start.elapsed() < Duration::from_millis(10));
    assert_eq!(handle.degraded().queue_full, 1);
    assert_eq!(text(busy.await.unwrap().unwrap()).await, "ai:busy");
    assert_eq!(text(paying.await.unwrap().unwrap()).await, "ai:paying");
}

#[tokio::test(start_paused = true)]
async fn identical_requests_at_the_same_instant_all_get_the_fallback_at_the_deadline() {
    let upstream = Upstream::new(Duration::from_secs(10_000));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::from_secs(2))
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let svc = stack.layer(upstream.service());
    let start = tokio::time::Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(ask("ada", "same"))))
        .collect();
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-degraded"], "true");
        assert!(
            start.elapsed() <= Duration::from_millis(2_100),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(upstream.calls(), 1);
}

/// What a [`scripted`] upstream does with one call: answer this, or never answer.
type Script = Option<Result<Response<Body>, BoxError>>;

/// An upstream that answers each call, after `latency`, as `answer` says, given the
/// call's number (from 0) and its body; counts its calls in `calls`.
fn scripted<F>(
    calls: Arc<AtomicU64>,
    latency: Duration,
    answer: F,
) -> impl Service<
    UpstreamRequest,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static
where
    F: Fn(u64, &str) -> Script + Clone + Send + Sync + 'static,
{
    service_fn(move |request: UpstreamRequest| {
        let calls = Arc::clone(&calls);
        let answer = answer.clone();
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let body = request.into_body().collect().await?.to_bytes();
            tokio::time::sleep(latency).await;
            match answer(call, &String::from_utf8_lossy(&body)) {
                Some(result) => result,
                None => std::future::pending().await,
            }
        }
    })
}

fn answer(body: &str) -> Script {
    Some(Ok(Response::new(Body::from(format!("ai:{body}")))))
}

fn status(code: u16, retry_after: Option<&str>) -> Script {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    if let Some(after) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", after.parse().unwrap());
    }
    Some(Ok(response))
}

fn owned_ask(user: &str, body: String) -> Request<Body> {
    Request::post("/analyze")
        .header("x-user-id", user)
        .body(Body::from(body))
        .unwrap()
}

/// A seeded pseudo-random source (SplitMix64): the same failures on every run.
#[derive(Clone)]
struct Seeded(Arc<std::sync::Mutex<u64>>);

impl Seeded {
    fn new(seed: u64) -> Self {
        Self(Arc::new(std::sync::Mutex::new(seed)))
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&self, per_mille: u64) -> bool {
        let mut state = self.0.lock().unwrap();
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % 1000 < per_mille
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_of_the_analysis_is_retried_whatever_the_method() {
    // The first two calls fail with a 500, the third answers: a POST gets the real answer.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(
        Arc::clone(&calls),
        Duration::from_millis(10),
        |call, body| {
            if call < 2 {
                status(500, None)
            } else {
                answer(body)
            }
        },
    );
    let svc = stack().layer(upstream);
    let response = svc.oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(text(response).await, "ai:r1");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // An upstream declared not safe to repeat: a 500 on a POST is not retried, a 503
    // (the upstream did not process it) is, after its Retry-After.
    for (code, expected_calls) in [(500, 1), (503, 2)] {
        let calls = Arc::new(AtomicU64::new(0));
        let upstream = scripted(Arc::clone(&calls), Duration::ZERO, move |call, body| {
            if call == 0 {
                status(code, Some("2"))
            } else {
                answer(body)
            }
        });
        let svc = HealthAiStack::builder()
            .clock(Clock::Tokio)
            .retry_idempotent(false)
            .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
            .build()
            .layer(upstream);
        let start = tokio::time::Instant::now();
        let response = svc.oneshot(ask("ada", "r1")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), expected_calls, "{code}");
        if code == 503 {
            assert!(
                start.elapsed() >= Duration::from_secs(2),
                "{:?}",
                start.elapsed()
            );
            assert_eq!(text(response).await, "ai:r1");
        } else {
            assert_ne!(text(response).await, "ai:r1");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_is_not_retried_unless_the_builder_says_so() {
    for (retry_timeouts, expected_calls) in [(false, 1), (true, 3)] {
        let calls = Arc::new(AtomicU64::new(0));
        let upstream = scripted(Arc::clone(&calls), Duration::ZERO, |_, _| None);
        let svc = HealthAiStack::builder()
            .clock(Clock::Tokio)
            .call_timeout(Duration::from_secs(5))
            .retry_timeouts(retry_timeouts)
            .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
            .build()
            .layer(upstream);
        let start = tokio::time::Instant::now();
        let response = svc.oneshot(ask("ada", "r1")).await.unwrap();
        assert_eq!(text(response).await, "fallback");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            expected_calls,
            "{retry_timeouts}"
        );
        if !retry_timeouts {
            // Answered by the fallback right after the one timeout.
            assert_eq!(start.elapsed(), Duration::from_secs(5));
        }
    }
    // An upstream's own 504 is a timeout too: not retried, and answered by the fallback.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(Arc::clone(&calls), Duration::ZERO, |_, _| status(504, None));
    let response = stack()
        .layer(upstream)
        .oneshot(ask("ada", "r1"))
        .await
        .unwrap();
    assert_eq!(text(response).await, "fallback");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Without a fallback, the upstream's 504 goes through as it came.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(Arc::clone(&calls), Duration::ZERO, |_, _| status(504, None));
    let response = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .build()
        .layer(upstream)
        .oneshot(ask("ada", "r1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_prompt_does_not_open_the_circuit_for_everyone() {
    // One prompt never finishes; the others answer in a second. The seed's 120 s call
    // timeout.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(Arc::clone(&calls), Duration::from_secs(1), |_, body| {
        if body == "slow" { None } else { answer(body) }
    });
    let stack = stack();
    let handle = stack.handle();
    let svc = stack.layer(upstream);

    // Its user asks five times: each time one call, one timeout, the fallback after 120 s.
    for asked in 1..=5 {
        let start = tokio::time::Instant::now();
        let response = svc.clone().oneshot(ask("ada", "slow")).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(120));
        assert_eq!(response.headers()["x-degraded"], "true");
        assert_eq!(calls.load(Ordering::SeqCst), asked);
        assert_eq!(handle.circuit_state(), State::Closed, "after {asked}");
    }
    // Everyone else still gets real answers.
    for user in ["grace", "linus"] {
        let response = svc.clone().oneshot(ask(user, "fine")).await.unwrap();
        assert_eq!(response.headers().get("x-degraded"), None);
        assert_eq!(text(response).await, "ai:fine");
    }
}

/// The preset with a fallback and a generous per-user limit and pace, for many requests.
fn busy_stack() -> HealthAiStack {
    HealthAiStack::builder()
        .clock(Clock::Tokio)
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .global_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
}

/// An upstream that fails (an error, as an HTTP client reports a 5xx) each call
/// independently with probability `failing_per_mille` / 1000 (settable), else answers,
/// after one second.
fn flaky(
    calls: &Arc<AtomicU64>,
    failing_per_mille: &Arc<AtomicU64>,
    seed: u64,
) -> impl Service<
    UpstreamRequest,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let rng = Seeded::new(seed);
    let failing = Arc::clone(failing_per_mille);
    scripted(Arc::clone(calls), Duration::from_secs(1), move |_, body| {
        if rng.chance(failing.load(Ordering::SeqCst)) {
            Some(Err("the analysis failed".into()))
        } else {
            answer(body)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn thirty_percent_independent_failures_never_open_the_circuit() {
    let calls = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicU64::new(300));
    let stack = busy_stack();
    let handle = stack.handle();
    let svc = stack.layer(flaky(&calls, &failing, 42));

    let mut fallbacks = 0;
    for i in 0..500 {
        let response = svc
            .clone()
            .oneshot(owned_ask(&format!("user-{i}"), format!("record-{i}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        if response.headers().contains_key("x-degraded") {
            fallbacks += 1;
        }
        assert_eq!(handle.circuit_state(), State::Closed, "request {i}");
    }
    let calls = calls.load(Ordering::SeqCst);
    // About 0.3 + 0.09 retries a request: the failures were there, and were retried.
    assert!(calls > 600, "{calls} calls");
    // A request falls back only when its three calls all fail (2.7 %), or the retry
    // budget is spent.
    assert!(fallbacks < 25, "{fallbacks} fallbacks");
}

#[tokio::test(start_paused = true)]
async fn an_outage_opens_the_circuit_within_33_calls() {
    let calls = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicU64::new(300));
    let stack = busy_stack();
    let handle = stack.handle();
    let svc = stack.layer(flaky(&calls, &failing, 7));

    // A normal day first: the window is full of 30 % failures.
    for i in 0..100 {
        let request = owned_ask(&format!("user-{i}"), format!("record-{i}"));
        let _ = svc.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(handle.circuit_state(), State::Closed);

    // Then every call fails: 65 % of the last 50 is 33 failures, whatever came before.
    failing.store(1000, Ordering::SeqCst);
    let before = calls.load(Ordering::SeqCst);
    let mut i = 100;
    while handle.circuit_state() == State::Closed {
        assert!(i < 200, "not open after {i} requests");
        let request = owned_ask(&format!("user-{i}"), format!("record-{i}"));
        let _ = svc.clone().oneshot(request).await.unwrap();
        i += 1;
    }
    let outage_calls = calls.load(Ordering::SeqCst) - before;
    assert!((1..=33).contains(&outage_calls), "{outage_calls} calls");

    // Open: the fallback answers without a call.
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(text(response).await, "fallback");
    assert_eq!(calls.load(Ordering::SeqCst) - before, outage_calls);
}

#[tokio::test(start_paused = true)]
async fn the_upstreams_backpressure_is_waited_out_and_never_opens_the_circuit() {
    // Every call is refused with 429 and `Retry-After: 1`: the upstream is busy, not
    // broken.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(Arc::clone(&calls), Duration::ZERO, |_, _| {
        status(429, Some("1"))
    });
    let stack = busy_stack();
    let handle = stack.handle();
    let svc = stack.layer(upstream);
    // Retried (a 429 was not processed), each time after the upstream's second at least.
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Still overloaded after the retries: the fallback answers, counted as such.
    assert_eq!(response.headers()["x-degraded"], "true");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(text(response).await, "fallback");
    assert_eq!(handle.degraded().upstream_overloaded, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Far past the window's minimum (the retry budget decides how many are retries):
    // never a failure, the circuit stays closed.
    for i in 0..30 {
        let request = owned_ask(&format!("user-{i}"), format!("record-{i}"));
        let _ = svc.clone().oneshot(request).await.unwrap();
    }
    assert!(calls.load(Ordering::SeqCst) >= 33);
    assert_eq!(handle.circuit_state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn two_users_at_once_over_a_one_call_at_a_time_upstream_both_complete() {
    // A reservation-style inner service: `ConcurrencyLimit`'s readiness is a permit
    // claimed by the instance that was polled. One long-lived service instance, two
    // calls in flight at once.
    let upstream = Upstream::new(Duration::from_millis(100));
    let mut svc = stack().layer(tower::limit::ConcurrencyLimit::new(upstream.service(), 1));
    let first = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(ask("ada", "r1"));
    let second = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(ask("grace", "r2"));
    let (first, second) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(first, second)
    })
    .await
    .expect("both requests complete");
    assert_eq!(text(first.unwrap()).await, "ai:r1");
    assert_eq!(text(second.unwrap()).await, "ai:r2");
    assert_eq!(upstream.calls(), 2);
    drop(svc);
}

#[tokio::test(start_paused = true)]
async fn breaker_settings_out_of_range_are_clamped_not_panics() {
    for (rate, window, minimum) in [
        (f64::NAN, 0, 0),
        (0.0, 1, 5),
        (-1.0, u32::MAX, u32::MAX),
        (2.0, 3, 0),
        (f64::INFINITY, 1, 1),
    ] {
        let upstream = Upstream::new(Duration::from_millis(10));
        let svc = HealthAiStack::builder()
            .clock(Clock::Tokio)
            .breaker_failure_rate(rate, window.min(1000), minimum)
            .build()
            .layer(upstream.service());
        let response = svc.oneshot(ask("ada", "r1")).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{rate} {window} {minimum}"
        );
    }
}

/// An upstream that takes `capacity` calls at once (each `latency`), answers 429 with
/// `Retry-After: 1` at once above that, and counts both.
fn with_capacity(
    capacity: u64,
    latency: Duration,
    calls: &Arc<AtomicU64>,
    throttled: &Arc<AtomicU64>,
) -> impl Service<
    UpstreamRequest,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let active = Arc::new(AtomicU64::new(0));
    let calls = Arc::clone(calls);
    let throttled = Arc::clone(throttled);
    service_fn(move |_request: UpstreamRequest| {
        let active = Arc::clone(&active);
        let calls = Arc::clone(&calls);
        let throttled = Arc::clone(&throttled);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if active.fetch_add(1, Ordering::SeqCst) >= capacity {
                active.fetch_sub(1, Ordering::SeqCst);
                throttled.fetch_add(1, Ordering::SeqCst);
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return Ok(response);
            }
            tokio::time::sleep(latency).await;
            active.fetch_sub(1, Ordering::SeqCst);
            Ok(Response::new(Body::from("real")))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_default_limit_finds_the_upstreams_capacity_and_429s_are_not_billed() {
    let (calls, throttled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(1000))
        .global_quota(tower_health_ai::token_bucket::Quota::per_second(1000))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    assert_eq!(
        handle.metrics().queue.limit,
        2,
        "the seed's 2 to start with"
    );
    let svc = stack.layer(with_capacity(
        5,
        Duration::from_secs(10),
        &calls,
        &throttled,
    ));
    // Twelve users ask for distinct analyses, one after another, for an hour.
    let end = tokio::time::Instant::now() + Duration::from_secs(3600);
    let real = Arc::new(AtomicU64::new(0));
    let mut users = Vec::new();
    for user in 0..12 {
        let svc = svc.clone();
        let real = Arc::clone(&real);
        users.push(tokio::spawn(async move {
            let mut n = 0;
            while tokio::time::Instant::now() < end {
                let request = owned_ask(&format!("user-{user}"), format!("record-{user}-{n}"));
                let response = svc.clone().oneshot(request).await.unwrap();
                if text(response).await == "real" {
                    real.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1800)).await;
    let limit = handle.metrics().queue.limit;
    assert!((4..=6).contains(&limit), "the limit settled at {limit}");
    for user in users {
        user.await.unwrap();
    }
    let (calls, throttled) = (
        calls.load(Ordering::SeqCst),
        throttled.load(Ordering::SeqCst),
    );
    assert!(
        throttled * 20 < calls,
        "{throttled} of {calls} calls were refused by the upstream"
    );
    // 5 at once for 10 s each, for an hour: close to 1800 real answers.
    assert!(real.load(Ordering::SeqCst) > 1500, "{real:?} real answers");
    assert_eq!(
        handle.upstream_calls(),
        calls - throttled,
        "the upstream's 429s are not billed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fixed_limit_stays_where_it_is_set() {
    let (calls, throttled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(1000))
        .global_quota(tower_health_ai::token_bucket::Quota::per_second(1000))
        .max_in_flight(3)
        .build();
    let handle = stack.handle();
    let svc = stack.layer(with_capacity(
        1,
        Duration::from_secs(10),
        &calls,
        &throttled,
    ));
    let mut users = Vec::new();
    for user in 0..6 {
        let request = owned_ask(&format!("user-{user}"), format!("record-{user}"));
        users.push(tokio::spawn(svc.clone().oneshot(request)));
    }
    for user in users {
        let _ = user.await.unwrap();
    }
    assert!(throttled.load(Ordering::SeqCst) > 0);
    assert_eq!(handle.metrics().queue.limit, 3);
}

#[tokio::test(start_paused = true)]
async fn a_pause_longer_than_the_wait_degrades_at_once() {
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(Arc::clone(&calls), Duration::ZERO, |call, _| {
        if call == 0 {
            status(429, Some("600"))
        } else {
            Some(Ok(Response::new(Body::from("real"))))
        }
    });
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .retry_attempts(1)
        .max_queue_wait(Duration::from_secs(30))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream);
    let first = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(
        text(first).await,
        "fallback",
        "the upstream's 429, answered by the fallback"
    );
    // The pause (capped at 60 s) outlasts the 30 s a request may wait: degraded at once.
    let start = tokio::time::Instant::now();
    let second = svc.clone().oneshot(ask("grace", "r2")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(second.headers()["x-degraded"], "true");
    assert_eq!(second.headers()["retry-after"], "60");
    assert_eq!(text(second).await, "fallback");
    assert_eq!(handle.degraded().cooldown, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_final_grpc_failure_gets_the_fallback() {
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(Arc::clone(&calls), Duration::ZERO, |_, _| {
        let mut response = Response::new(Body::empty());
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("13"));
        Some(Ok(response))
    });
    let response = stack()
        .layer(upstream)
        .oneshot(ask("ada", "r1"))
        .await
        .unwrap();
    assert_eq!(text(response).await, "fallback");
}

#[tokio::test(start_paused = true)]
async fn a_503_with_only_retry_after_ms_is_backpressure_for_the_breaker() {
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = scripted(Arc::clone(&calls), Duration::ZERO, |_, _| {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert("retry-after-ms", HeaderValue::from_static("10"));
        Some(Ok(response))
    });
    let stack = busy_stack();
    let handle = stack.handle();
    let svc = stack.layer(upstream);
    for i in 0..40 {
        let request = owned_ask(&format!("user-{i}"), format!("record-{i}"));
        let _ = svc.clone().oneshot(request).await.unwrap();
    }
    assert!(calls.load(Ordering::SeqCst) >= 40);
    assert_eq!(handle.circuit_state(), State::Closed);
}

/// An upstream that answers with its name.
#[derive(Clone, Debug, PartialEq)]
struct Named(&'static str);

impl Service<UpstreamRequest> for Named {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: UpstreamRequest) -> Self::Future {
        std::future::ready(Ok(Response::new(Body::from(self.0))))
    }
}

#[tokio::test(start_paused = true)]
async fn into_inner_gives_back_the_upstream_through_every_layer() {
    let mut svc = stack().layer(Named("provider-a"));
    assert_eq!(svc.get_ref(), &Named("provider-a"));
    let response = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(ask("ada", "q"))
        .await
        .unwrap();
    assert_eq!(text(response).await, "provider-a");
    assert_eq!(svc.into_inner(), Named("provider-a"));
}

/// Counts how many times the service it wraps is cloned.
#[derive(Debug)]
struct CountClones<S> {
    inner: S,
    clones: Arc<AtomicU64>,
}

impl<S: Clone> Clone for CountClones<S> {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            inner: self.inner.clone(),
            clones: Arc::clone(&self.clones),
        }
    }
}

impl<S: Service<UpstreamRequest>> Service<UpstreamRequest> for CountClones<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: UpstreamRequest) -> Self::Future {
        self.inner.call(request)
    }
}

#[tokio::test(start_paused = true)]
async fn a_cached_answer_clones_nothing_below_the_cache() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let clones = Arc::new(AtomicU64::new(0));
    let svc = stack().layer(CountClones {
        inner: upstream.service(),
        clones: Arc::clone(&clones),
    });
    // As axum serves a route: a clone of the whole stack per request.
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    let after_the_miss = clones.load(Ordering::SeqCst);
    assert!(
        after_the_miss >= 1,
        "the miss drives a copy of the layers below"
    );
    for _ in 0..4 {
        let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
        assert_eq!(response.headers()["x-cache"], "HIT");
    }
    assert_eq!(clones.load(Ordering::SeqCst), after_the_miss);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_body_that_never_ends_is_answered_at_the_deadline_without_a_call() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let svc = stack().layer(upstream.service());
    // The client sends the head and then nothing, ever.
    let stalled = Request::post("/analyze")
        .header("x-user-id", "ada")
        .body(Body::from_stream(futures_util::stream::pending::<
            Result<Bytes, BoxError>,
        >()))
        .unwrap();
    let started = tokio::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(3_600), svc.oneshot(stalled))
        .await
        .expect("answered, not left hanging")
        .unwrap();
    // The whole request never reached the layers that call or fall back: the deadline's
    // own answer, at the deadline and its grace, and nothing billed.
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        started.elapsed(),
        tower_health_ai::DEFAULT_REQUEST_DEADLINE + tower_health_ai::DEADLINE_GRACE
    );
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_answer_whose_body_never_ends_ends_at_the_deadline_and_is_not_stored() {
    // The upstream sends its head and a first chunk at once, then nothing, ever.
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = {
        let calls = Arc::clone(&calls);
        service_fn(move |_request: UpstreamRequest| {
            calls.fetch_add(1, Ordering::SeqCst);
            let chunks = futures_util::StreamExt::chain(
                futures_util::stream::iter([Ok::<_, BoxError>(Bytes::from_static(
                    b"{\"analysis\":",
                ))]),
                futures_util::stream::pending(),
            );
            std::future::ready(Ok::<_, BoxError>(Response::new(Body::from_stream(chunks))))
        })
    };
    let svc = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::from_secs(5))
        .build()
        .layer(upstream);
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Read to the end: an error at the deadline, not a body that never ends.
    let read = tokio::time::timeout(Duration::from_secs(3_600), response.into_body().collect())
        .await
        .expect("the body ends");
    assert!(
        read.is_err(),
        "an incomplete answer must not read as complete"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    // Nothing of it was stored: the next identical request calls again.
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
#[should_panic(expected = "not a valid header name in lowercase")]
fn a_user_header_in_capitals_is_refused_by_the_builder() {
    let _ = HealthAiStack::builder().user_header("X-User-Id");
}

#[test]
fn a_user_header_in_lowercase_is_taken() {
    let svc = HealthAiStack::builder()
        .user_header("x-account")
        .build()
        .layer(Upstream::new(Duration::ZERO).service());
    drop(svc);
}

/// A body that sends its first chunk and then nothing, ever; `dropped` is set when it
/// is dropped.
struct Trickle {
    first: Option<Bytes>,
    dropped: Arc<AtomicBool>,
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.first.take() {
            Some(first) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first)))),
            None => std::task::Poll::Pending,
        }
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_runs_on_ends_when_its_answers_body_never_does() {
    // The head comes after 10 s, past the 2 s deadline and within the 60 s call
    // timeout; then the body stops after its first chunk.
    let dropped = Arc::new(AtomicBool::new(false));
    let upstream = {
        let dropped = Arc::clone(&dropped);
        service_fn(move |_request: UpstreamRequest| {
            let dropped = Arc::clone(&dropped);
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, BoxError>(Response::new(Body::new(Trickle {
                    first: Some(Bytes::from_static(b"ai:")),
                    dropped,
                })))
            }
        })
    };
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::from_secs(2))
        .call_timeout(Duration::from_secs(60))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let svc = stack.layer(upstream);
    let response = svc.clone().oneshot(ask("ada", "same")).await.unwrap();
    assert_eq!(response.headers()["x-degraded"], "true");
    // The call runs on; its answer's body is read for the cache, and never ends. The
    // call timeout bounds the call that runs on, body and all: by the deadline plus the
    // call timeout it is over, and the upstream's body let go.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the body is still being read"
    );
}

// Degraded answers are counted as clients see them: once per degraded answer, whether
// the fallback ran for the request itself or for the identical request whose call it
// waited on, and never for an answer the client did not get.

#[tokio::test(start_paused = true)]
async fn every_degraded_answer_a_waiter_gets_is_counted() {
    // Four identical requests at once: one call, past its deadline; every request gets
    // the fallback's answer, and each of the four answers is counted.
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::from_secs(2))
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(hanging());
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(ask("ada", "same"))))
        .collect();
    let mut degraded = 0;
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        if response.headers().get("x-degraded").is_some() {
            degraded += 1;
        }
    }
    assert_eq!(degraded, 4);
    let stats = handle.degraded();
    assert_eq!(stats.total, 4, "{stats:?}");
    assert_eq!(stats.deadline, 4, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stale_answer_that_replaced_the_fallback_is_not_counted_as_degraded() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .retry_attempts(1)
        .cache_ttl(Duration::from_secs(60))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream.service());
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    tokio::time::sleep(Duration::from_secs(61)).await;
    upstream.set_healthy(false);
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "STALE");
    assert!(response.headers().get("x-degraded").is_none());
    assert_eq!(upstream.calls(), 2);
    // The client got a real (stale) answer: nothing degraded reached it.
    assert_eq!(handle.degraded().total, 0, "{:?}", handle.degraded());
}

#[tokio::test(start_paused = true)]
async fn the_upstreams_own_failure_passed_through_is_not_marked_degraded() {
    // The fallback declines (`None`): the upstream's own 500 goes to the client as it is,
    // neither marked nor counted as a degraded answer.
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .retry_attempts(1)
        .fallback(|_parts, _error| None)
        .build();
    let handle = stack.handle();
    let svc = stack.layer(service_fn(|_request: UpstreamRequest| async {
        let mut response = Response::new(Body::from("upstream broke"));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        Ok::<_, BoxError>(response)
    }));
    let response = svc.oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        response.headers().get("x-degraded").is_none(),
        "{:?}",
        response.headers()
    );
    assert!(
        response
            .extensions()
            .get::<tower_health_ai::breaker::Degraded>()
            .is_none()
    );
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "upstream broke"
    );
    assert_eq!(handle.degraded().total, 0);
}
