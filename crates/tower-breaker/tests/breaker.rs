//! The circuit breaker as a tower service, on paused tokio time.
#![cfg(feature = "http")]

mod support;

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use support::{BROKEN, HANG, LocalRefusal, REFUSE, TestRecorder, Upstream, poll_once, request};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_breaker::{
    BreakerError, CircuitBreakerLayer, Classify, DefaultClassifier, Refusal, State, TimeoutLayer,
    Transition, Verdict,
};

async fn send<S>(service: &S) -> Result<Response<Bytes>, BoxError>
where
    S: Service<http::Request<Bytes>, Response = Response<Bytes>, Error = BoxError> + Clone,
{
    service.clone().oneshot(request()).await
}

fn refusal(error: &BoxError) -> BreakerError {
    *error
        .downcast_ref::<BreakerError>()
        .unwrap_or_else(|| panic!("not a breaker refusal: {error}"))
}

#[tokio::test(start_paused = true)]
async fn opens_after_three_consecutive_failures_not_after_two_and_a_success() {
    let upstream = Upstream::answering(500);
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());

    send(&service).await.unwrap();
    send(&service).await.unwrap();
    upstream.set(200);
    send(&service).await.unwrap();
    upstream.set(500);
    send(&service).await.unwrap();
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Closed, "2 failures after a success");
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Open, "3 failures in a row");
    assert_eq!(upstream.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn open_circuit_fails_fast_without_touching_the_inner_service() {
    let upstream = Upstream::answering(BROKEN);
    let layer = CircuitBreakerLayer::new();
    let service = layer.layer(upstream.clone());
    for _ in 0..3 {
        let error = send(&service).await.unwrap_err();
        assert!(
            error.is::<support::UpstreamDown>(),
            "inner errors pass unchanged"
        );
    }
    let (polls, calls) = (upstream.polls(), upstream.calls());
    let error = send(&service).await.unwrap_err();
    assert!(refusal(&error).is_circuit_open());
    assert_eq!((upstream.polls(), upstream.calls()), (polls, calls));
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_a_rejection_is_the_time_left_open() {
    let upstream = Upstream::answering(503);
    let service = CircuitBreakerLayer::new().layer(upstream);
    for _ in 0..3 {
        send(&service).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(15)).await;
    let error = refusal(&send(&service).await.unwrap_err());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(45)));
    let answer: Response<Bytes> = error.to_http_response();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["retry-after"], "45");
    assert_eq!(
        answer.body(),
        r#"{"error":"circuit breaker is open","retryAfter":45}"#
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_is_reported_without_traffic_and_the_gauge_returns_to_zero() {
    let recorder = TestRecorder::default();
    let layer = metrics::with_local_recorder(&recorder, || {
        CircuitBreakerLayer::builder().name("ai").build()
    });
    let gauge = || recorder.gauge("circuit_state", &[("breaker", "ai")]);
    let handle = layer.handle();
    let upstream = Upstream::answering(502);
    let service = layer.layer(upstream.clone());
    assert_eq!(gauge(), Some(0.0));

    for _ in 0..3 {
        send(&service).await.unwrap();
    }
    send(&service).await.unwrap_err();
    assert_eq!(gauge(), Some(1.0));
    assert_eq!(handle.time_until_half_open(), Some(Duration::from_secs(60)));

    // No traffic, no handle read: the gauge still turns half-open on time.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(gauge(), Some(2.0));
    assert_eq!(handle.state(), State::HalfOpen);

    upstream.set(200);
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(gauge(), Some(0.0));

    let transitions = |from, to| {
        recorder.counter(
            "circuit_transitions_total",
            &[("breaker", "ai"), ("from", from), ("to", to)],
        )
    };
    assert_eq!(transitions("closed", "open"), 1);
    assert_eq!(transitions("open", "half_open"), 1);
    assert_eq!(transitions("half_open", "closed"), 1);
    let calls = |outcome| {
        recorder.counter(
            "circuit_calls_total",
            &[("breaker", "ai"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        (calls("failure"), calls("rejected"), calls("success")),
        (3, 1, 1)
    );
}

async fn open_then_wait(
    service: &(impl Service<http::Request<Bytes>, Response = Response<Bytes>, Error = BoxError> + Clone),
    upstream: &Upstream,
) {
    let status = upstream.status.load(std::sync::atomic::Ordering::SeqCst);
    upstream.set(500);
    for _ in 0..3 {
        send(service).await.unwrap();
    }
    upstream.set(status);
    tokio::time::advance(Duration::from_secs(60)).await;
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_k_probes_and_a_dropped_probe_returns_its_slot() {
    let upstream = Upstream::answering(HANG);
    let layer = CircuitBreakerLayer::builder().half_open_probes(2).build();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());
    open_then_wait(&service, &upstream).await;

    let mut first = Box::pin(service.clone().oneshot(request()));
    let mut second = Box::pin(service.clone().oneshot(request()));
    assert!(poll_once(&mut first).await.is_pending());
    assert!(poll_once(&mut second).await.is_pending());
    assert_eq!(handle.snapshot().probes_in_flight, 2);
    let error = send(&service).await.unwrap_err();
    assert!(refusal(&error).is_circuit_open(), "a third probe");

    drop(first);
    assert_eq!(handle.snapshot().probes_in_flight, 1);
    let mut third = Box::pin(service.clone().oneshot(request()));
    assert!(
        poll_once(&mut third).await.is_pending(),
        "the slot came back"
    );
    assert_eq!(handle.state(), State::HalfOpen);
    drop((second, third));
    assert_eq!(handle.snapshot().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_service_dropped_after_poll_ready_returns_its_probe_slot() {
    let upstream = Upstream::answering(200);
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());
    open_then_wait(&service, &upstream).await;

    let mut ready = service.clone();
    ready.ready().await.unwrap();
    assert_eq!(handle.snapshot().probes_in_flight, 1);
    drop(ready);
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn into_inner_after_poll_ready_returns_the_probe_slot() {
    let upstream = Upstream::answering(200);
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());
    open_then_wait(&service, &upstream).await;

    let mut ready = service.clone();
    ready.ready().await.unwrap();
    assert_eq!(handle.snapshot().probes_in_flight, 1);
    let inner = ready.into_inner();
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    drop(inner);
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_returns_its_slot_and_a_failed_one_reopens() {
    let upstream = Upstream::answering(REFUSE);
    let classifier = |result: &Result<Response<Bytes>, BoxError>| match result {
        Err(error) if error.is::<LocalRefusal>() => Verdict::Ignored,
        _ => DefaultClassifier::new().classify(result),
    };
    let layer = CircuitBreakerLayer::builder()
        .classifier(classifier)
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());

    // Local refusals never trip it.
    for _ in 0..10 {
        send(&service).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Closed);

    open_then_wait(&service, &upstream).await;
    send(&service).await.unwrap_err();
    assert_eq!(handle.state(), State::HalfOpen, "ignored probe");
    upstream.set(500);
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Open, "failed probe");
}

#[tokio::test(start_paused = true)]
async fn open_duration_grows_on_each_reopen() {
    let upstream = Upstream::answering(500);
    let layer = CircuitBreakerLayer::builder()
        .open_duration_backoff(2.0, Duration::from_secs(150))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());
    for _ in 0..3 {
        send(&service).await.unwrap();
    }
    for expected in [60, 120, 150, 150] {
        let error = refusal(&send(&service).await.unwrap_err());
        assert_eq!(error.retry_after(), Some(Duration::from_secs(expected)));
        tokio::time::advance(Duration::from_secs(expected)).await;
        assert_eq!(handle.state(), State::HalfOpen);
        send(&service).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_counts_as_a_failure() {
    let upstream = Upstream::answering(HANG);
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .layer(TimeoutLayer::new(Duration::from_secs(120)))
        .service(upstream);
    for _ in 0..3 {
        let error = refusal(&send(&service).await.unwrap_err());
        assert_eq!(
            error,
            BreakerError::Timeout {
                after: Duration::from_secs(120)
            }
        );
        assert_eq!(error.status_code(), 504);
        assert_eq!(error.grpc_code(), 4);
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_successes() {
    let upstream = Upstream::answering(404);
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    for _ in 0..10 {
        send(&service).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn upstream_retry_after_holds_the_circuit_open_when_honoured() {
    let upstream = tower::service_fn(|_: http::Request<Bytes>| async {
        let response = Response::builder()
            .status(429)
            .header("retry-after", "120")
            .body(Bytes::new())?;
        Ok::<_, BoxError>(response)
    });
    let layer = CircuitBreakerLayer::builder()
        .classifier(DefaultClassifier::new().honor_retry_after(Duration::from_secs(600)))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Open);
    let error = refusal(&send(&service).await.unwrap_err());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));

    // Not honoured by default: a 429 is the client's answer.
    let service = CircuitBreakerLayer::new().layer(upstream);
    for _ in 0..5 {
        send(&service).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_circuit() {
    let upstream = Upstream::answering(200);
    upstream
        .latency_ms
        .store(1_500, std::sync::atomic::Ordering::SeqCst);
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5, 4, 4)
        .slow_call_rate(1.0, Duration::from_secs(1))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());
    for _ in 0..3 {
        send(&service).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed);
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Open);
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.window_slow_calls, Some(4));
    assert_eq!(snapshot.window_failures, Some(0));
}

#[tokio::test(start_paused = true)]
async fn every_layered_service_and_clone_shares_one_breaker() {
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let a = layer.layer(Upstream::answering(500));
    let b = layer.clone().layer(Upstream::answering(200));
    for _ in 0..3 {
        send(&a.clone()).await.unwrap();
    }
    assert_eq!(handle.state(), State::Open);
    assert!(refusal(&send(&b).await.unwrap_err()).is_circuit_open());
    assert_eq!(b.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn transitions_reach_the_callback_and_the_handle_steers() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let layer = CircuitBreakerLayer::builder()
        .on_transition(move |t: Transition| log.lock().unwrap().push((t.from, t.to)))
        .build();
    let handle = layer.handle();
    let upstream = Upstream::answering(200);
    let service = layer.layer(upstream.clone());

    handle.force_open();
    let error = refusal(&send(&service).await.unwrap_err());
    assert_eq!(error.retry_after(), None);
    tokio::time::advance(Duration::from_secs(3_600)).await;
    assert_eq!(handle.state(), State::Open, "forced open holds");

    handle.force_closed();
    upstream.set(500);
    for _ in 0..5 {
        send(&service).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed, "forced closed holds");
    assert!(handle.snapshot().forced);

    handle.reset();
    for _ in 0..3 {
        send(&service).await.unwrap();
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (State::Closed, State::Open),
            (State::Open, State::Closed),
            (State::Closed, State::Open),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn snapshot_serializes_in_camel_case_with_the_state_in_capitals() {
    let layer = CircuitBreakerLayer::builder().name("aiService").build();
    let handle = layer.handle();
    let service = layer.layer(Upstream::answering(500));
    for _ in 0..3 {
        send(&service).await.unwrap();
    }
    let json = serde_json::to_value(handle.snapshot()).unwrap();
    assert_eq!(json["name"], "aiService");
    assert_eq!(json["state"], "OPEN");
    assert_eq!(json["timeUntilHalfOpenMs"], 60_000);
    assert_eq!(json["consecutiveFailures"], 3);
    assert_eq!(State::HalfOpen.to_string(), "HALF_OPEN");
    assert_eq!(serde_json::to_value(State::Closed).unwrap(), "CLOSED");
}

#[derive(Clone)]
struct NeverReady;

impl Service<http::Request<Bytes>> for NeverReady {
    type Response = Response<Bytes>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Bytes>, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }

    fn call(&mut self, _: http::Request<Bytes>) -> Self::Future {
        unreachable!("never ready, never called")
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_waits_on_the_inner_service_only_when_admitted() {
    let layer = CircuitBreakerLayer::new();
    let mut service = layer.layer(NeverReady);
    let mut closed = service.clone();
    let mut waiting = std::pin::pin!(closed.ready());
    assert!(
        poll_once(&mut waiting).await.is_pending(),
        "closed: waits on the inner"
    );

    // Open: ready at once, and the call fails fast without the inner service.
    layer.handle().force_open();
    let mut ready = std::pin::pin!(service.ready());
    assert!(matches!(poll_once(&mut ready).await, Poll::Ready(Ok(_))));
    let error = service.call(request()).await.unwrap_err();
    assert!(refusal(&error).is_circuit_open());
}

#[tokio::test(start_paused = true)]
async fn a_call_future_dropped_before_its_first_poll_returns_its_probe_slot() {
    let upstream = Upstream::answering(200);
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream.clone());
    open_then_wait(&service, &upstream).await;

    let mut ready = service.clone();
    ready.ready().await.unwrap();
    let future = ready.call(request());
    assert_eq!(handle.snapshot().probes_in_flight, 1);
    drop(future);
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    drop(ready);
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}

/// An upstream whose readiness waits for a shared gate, as a concurrency limit's does.
#[derive(Clone)]
struct Gated {
    upstream: Upstream,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Service<http::Request<Bytes>> for Gated {
    type Response = Response<Bytes>;
    type Error = BoxError;
    type Future = <Upstream as Service<http::Request<Bytes>>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.open.load(std::sync::atomic::Ordering::SeqCst) {
            self.upstream.poll_ready(cx)
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: http::Request<Bytes>) -> Self::Future {
        self.upstream.call(request)
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_admitted_before_the_circuit_opened_does_not_call_through_it() {
    let upstream = Upstream::answering(500);
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build();
    let handle = layer.handle();
    let service = layer.layer(Gated {
        upstream: upstream.clone(),
        open: Arc::clone(&open),
    });
    // Admitted while closed, then waiting for the inner service's readiness.
    let mut waiting = service.clone();
    assert!(
        poll_once(&mut std::pin::pin!(waiting.ready()))
            .await
            .is_pending()
    );
    // Meanwhile another call fails and opens the circuit.
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    send(&service).await.unwrap();
    assert_eq!(handle.state(), State::Open);
    // The waiting caller's turn comes: the circuit is open, so it fails fast.
    waiting.ready().await.unwrap();
    let error = waiting.call(request()).await.unwrap_err();
    assert!(refusal(&error).is_circuit_open());
    assert_eq!(upstream.calls(), 1, "a call went through an open circuit");

    // Half-open, the same holds: a caller admitted before the probe period does not
    // call alongside the probe.
    tokio::time::advance(Duration::from_secs(60)).await;
    upstream.set(200);
    open.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut probe = service.clone();
    assert!(
        poll_once(&mut std::pin::pin!(probe.ready()))
            .await
            .is_pending()
    );
    assert_eq!(handle.snapshot().probes_in_flight, 1);
    let mut late = service.clone();
    assert!(
        poll_once(&mut std::pin::pin!(late.ready()))
            .await
            .is_ready(),
        "the only probe slot is taken: refused at once"
    );
    drop(late);
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    probe.ready().await.unwrap();
    probe.call(request()).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}
