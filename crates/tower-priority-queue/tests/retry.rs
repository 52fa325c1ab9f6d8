//! Behaviour of the retry layer on paused time.

#![cfg(feature = "http")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_priority_queue::{
    Classify, HttpClassifier, HttpReplay, Priority, QueueError, RetryDecision, RetryLayer,
    classify_fn,
};

type Request = http::Request<Full<Bytes>>;
type Response = http::Response<Full<Bytes>>;

fn request() -> Request {
    request_with("POST", &[])
}

fn request_with(method: &str, headers: &[(&str, &str)]) -> Request {
    let mut builder = http::Request::builder().method(method).uri("/analyze");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from_static(b"{\"id\":7}")))
        .expect("valid request")
}

fn response(status: u16, retry_after: Option<&str>) -> Response {
    let mut builder = http::Response::builder().status(status);
    if let Some(value) = retry_after {
        builder = builder.header(http::header::RETRY_AFTER, value);
    }
    builder
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}

/// An upstream that answers from a script, records when each call started, and checks
/// that every replayed request is complete.
#[derive(Clone)]
struct Script {
    outcomes: Arc<Mutex<Vec<Result<Response, BoxError>>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    fn new(outcomes: Vec<Result<Response, BoxError>>) -> Self {
        Script {
            outcomes: Arc::new(Mutex::new(outcomes.into_iter().rev().collect())),
            calls: Arc::default(),
        }
    }

    fn always(status: u16) -> Self {
        Self::new((0..100).map(|_| Ok(response(status, None))).collect())
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().expect("calls").clone()
    }

    fn service(
        &self,
    ) -> impl Service<Request, Response = Response, Error = BoxError, Future: Send> + Clone + use<>
    {
        let script = self.clone();
        service_fn(move |request: Request| {
            assert_eq!(request.uri(), "/analyze");
            assert_eq!(request.body().size_hint().exact(), Some(8));
            script.calls.lock().expect("calls").push(Instant::now());
            let outcome = script
                .outcomes
                .lock()
                .expect("outcomes")
                .pop()
                .unwrap_or_else(|| Ok(response(200, None)));
            async move { outcome }
        })
    }
}

fn gaps(calls: &[Instant]) -> Vec<Duration> {
    calls.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn failing_upstream_gets_max_attempts_calls_with_growing_backoff() {
    let script = Script::always(503);
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Duration::from_secs(1), Duration::from_secs(30))
        .build();
    let response = layer
        .layer(script.service())
        .oneshot(request())
        .await
        .expect("last response");
    assert_eq!(response.status(), 503);
    let calls = script.calls();
    assert_eq!(calls.len(), 3);
    let gaps = gaps(&calls);
    // Full jitter: retry n waits less than base · 2^n.
    assert!(gaps[0] < Duration::from_secs(1), "{gaps:?}");
    assert!(gaps[1] < Duration::from_secs(2), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_success_ends_the_retries() {
    let script = Script::new(vec![
        Err("connection reset".into()),
        Ok(response(502, None)),
        Ok(response(200, None)),
    ]);
    let service = RetryLayer::builder()
        .max_attempts(5)
        .build()
        .layer(script.service());
    let response = service
        .oneshot(request_with("GET", &[]))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(script.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_retried() {
    for status in [400, 401, 404, 409, 422] {
        let script = Script::always(status);
        let response = RetryLayer::new()
            .layer(script.service())
            .oneshot(request())
            .await
            .expect("response");
        assert_eq!(response.status(), status);
        assert_eq!(script.calls().len(), 1, "status {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn local_refusals_are_not_retried() {
    #[derive(Debug)]
    struct CircuitOpen;
    impl std::fmt::Display for CircuitOpen {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("circuit open")
        }
    }
    impl std::error::Error for CircuitOpen {}

    let full = QueueError::QueueFull {
        priority: Priority::Low,
        retry_after: Duration::from_secs(1),
    };
    let script = Script::new(vec![Err(Box::new(full.clone()))]);
    let error = RetryLayer::new()
        .layer(script.service())
        .oneshot(request())
        .await
        .expect_err("refusal");
    assert_eq!(error.downcast_ref::<QueueError>(), Some(&full));
    assert_eq!(script.calls().len(), 1);

    // Other layers' refusals: the umbrella's classifier says so.
    let classifier = classify_fn(|result: &Result<Response, BoxError>| match result {
        Err(error) if error.is::<CircuitOpen>() => RetryDecision::Return,
        other => HttpClassifier::new().classify(other),
    });
    let script = Script::new(vec![Err(Box::new(CircuitOpen))]);
    let error = RetryLayer::builder()
        .classifier(classifier)
        .build()
        .layer(script.service())
        .oneshot(request())
        .await
        .expect_err("refusal");
    assert!(error.is::<CircuitOpen>());
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn upstream_retry_after_is_honoured_up_to_the_cap() {
    let script = Script::new(vec![
        Ok(response(429, Some("7"))),
        Ok(response(503, Some("3600"))),
        Ok(response(200, None)),
    ]);
    let service = RetryLayer::builder()
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .retry_after_cap(Duration::from_secs(20))
        .build()
        .layer(script.service());
    let response = service.oneshot(request()).await.expect("response");
    assert_eq!(response.status(), 200);
    let gaps = gaps(&script.calls());
    assert_eq!(gaps, [Duration::from_secs(7), Duration::from_secs(20)]);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_retrying_early() {
    let script = Script::new(vec![
        Ok(response(503, Some("1"))),
        Ok(response(503, Some("5"))),
        Ok(response(200, None)),
    ]);
    let service = RetryLayer::builder()
        .max_attempts(5)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .deadline(Duration::from_secs(4))
        .build()
        .layer(script.service());
    let response = service.oneshot(request()).await.expect("response");
    // The second retry would start at 6 s, past the 4 s deadline.
    assert_eq!(response.status(), 503);
    assert_eq!(script.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_stops_retries_and_is_shared_by_clones() {
    // No share of traffic, a floor of 2 retries over the window.
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .budget(Duration::from_secs(1), 2, 0.0)
        .build();
    let script = Script::always(503);
    let first = layer.layer(script.service());
    let second = layer.layer(script.service());
    first.clone().oneshot(request()).await.expect("response");
    assert_eq!(script.calls().len(), 3);
    second.oneshot(request()).await.expect("response");
    assert_eq!(script.calls().len(), 4, "the budget is spent");
    first.oneshot(request()).await.expect("response");
    assert_eq!(script.calls().len(), 5);
    let snapshot = layer.handle().snapshot();
    assert_eq!((snapshot.retried, snapshot.budget_exhausted), (2, 2));
    assert_eq!(
        serde_json::to_value(snapshot).expect("serializable"),
        serde_json::json!({
            "retried": 2,
            "exhausted": 1,
            "budgetExhausted": 2,
            "deadlineExceeded": 0,
            "notReplayable": 0,
            "unsafeToRepeat": 0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn too_large_bodies_are_sent_once() {
    let script = Script::always(503);
    let service = RetryLayer::builder()
        .replay(HttpReplay::new().max_body_bytes(4))
        .build()
        .layer(script.service());
    let response = service.oneshot(request()).await.expect("response");
    assert_eq!(response.status(), 503);
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_come_back_unchanged_after_the_last_attempt() {
    #[derive(Debug)]
    struct Reset(u32);
    impl std::fmt::Display for Reset {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "reset {}", self.0)
        }
    }
    impl std::error::Error for Reset {}

    let attempt = Arc::new(AtomicUsize::new(0));
    let inner = {
        let attempt = Arc::clone(&attempt);
        service_fn(move |_: Request| {
            let n = attempt.fetch_add(1, Ordering::SeqCst);
            async move { Err::<Response, _>(Reset(u32::try_from(n).unwrap_or(u32::MAX))) }
        })
    };
    let error = RetryLayer::new()
        .layer(inner)
        .oneshot(request_with("PUT", &[]))
        .await
        .expect_err("fails");
    assert_eq!(error.downcast_ref::<Reset>().map(|reset| reset.0), Some(2));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_during_backoff_stops_everything() {
    let script = Script::always(503);
    let service = RetryLayer::builder()
        .backoff(Duration::from_secs(10), Duration::from_secs(10))
        .build()
        .layer(script.service());
    let task = tokio::spawn(service.oneshot(request()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    task.abort();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn decisions_are_counted_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder()
            .max_attempts(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(1))
            .build()
    });
    let script = Script::new(vec![
        Ok(response(503, None)),
        Ok(response(200, None)),
        Ok(response(503, None)),
        Ok(response(503, None)),
    ]);
    let service = layer.layer(script.service());
    service.clone().oneshot(request()).await.expect("response");
    service.clone().oneshot(request()).await.expect("response");
    let recorded = snapshotter.snapshot().into_vec();
    let count = |outcome: &str| {
        recorded
            .iter()
            .find(|(key, _, _, _)| {
                key.key().name() == "retry_attempts_total"
                    && key
                        .key()
                        .labels()
                        .any(|label| label.key() == "outcome" && label.value() == outcome)
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => u64::MAX,
            })
    };
    assert_eq!(count("retried"), Some(2));
    assert_eq!(count("returned"), Some(1));
    assert_eq!(count("exhausted"), Some(1));
    assert_eq!(count("budget_exhausted"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn the_policy_drives_towers_own_retry() {
    let script = Script::new(vec![Ok(response(503, None)), Ok(response(200, None))]);
    let layer = RetryLayer::new();
    let service = tower::retry::Retry::new(layer.policy(), script.service());
    let response = service.oneshot(request()).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(script.calls().len(), 2);
    assert_eq!(layer.handle().snapshot().retried, 1);
}

// Safe to repeat: what is retried depends on whether the upstream may have processed the
// request, and on whether the request is idempotent.

/// A client error shaped like hyper-util's legacy client's: a connect error whose source
/// is the connector's error, whose source is the `io::Error`.
#[derive(Debug)]
struct ClientError(&'static str, BoxError);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.1)
    }
}

fn client_error(kind: std::io::ErrorKind) -> BoxError {
    Box::new(ClientError(
        "client error (Connect)",
        Box::new(ClientError(
            "tcp connect error",
            Box::new(std::io::Error::from(kind)),
        )),
    ))
}

/// Calls made for one request through the default layer (3 attempts).
async fn calls_for(request: Request, outcome: fn() -> Result<Response, BoxError>) -> usize {
    let script = Script::new((0..3).map(|_| outcome()).collect());
    let _ = RetryLayer::builder()
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .build()
        .layer(script.service())
        .oneshot(request)
        .await;
    script.calls().len()
}

#[tokio::test(start_paused = true)]
async fn post_after_a_500_is_not_retried() {
    assert_eq!(calls_for(request(), || Ok(response(500, None))).await, 1);
    assert_eq!(calls_for(request(), || Ok(response(502, None))).await, 1);
    assert_eq!(
        calls_for(request_with("PATCH", &[]), || Ok(response(500, None))).await,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn post_after_a_reset_is_not_retried() {
    let reset = || Err(client_error(std::io::ErrorKind::ConnectionReset));
    assert_eq!(calls_for(request(), reset).await, 1);
    assert_eq!(
        calls_for(request(), || Err("connection closed".into())).await,
        1
    );
}

/// An upstream that never answers, behind a tokio timeout of 1 s.
fn timing_out(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request, Response = Response, Error = BoxError, Future: Send> + Clone {
    service_fn(move |_: Request| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::timeout(Duration::from_secs(1), std::future::pending::<()>()).await?;
            Ok::<_, BoxError>(response(200, None))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn post_after_a_timeout_is_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let error = RetryLayer::new()
        .layer(timing_out(Arc::clone(&calls)))
        .oneshot(request())
        .await
        .expect_err("times out");
    assert!(error.is::<tokio::time::error::Elapsed>());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        calls_for(request(), || Err(client_error(
            std::io::ErrorKind::TimedOut
        )))
        .await,
        1
    );
    assert_eq!(calls_for(request(), || Ok(response(504, None))).await, 1);
}

#[tokio::test(start_paused = true)]
async fn post_after_a_503_or_429_is_retried() {
    assert_eq!(calls_for(request(), || Ok(response(503, None))).await, 3);
    assert_eq!(
        calls_for(request(), || Ok(response(503, Some("1")))).await,
        3
    );
    assert_eq!(calls_for(request(), || Ok(response(429, None))).await, 3);
    assert_eq!(
        calls_for(request(), || Ok(response(429, Some("2")))).await,
        3
    );
}

#[tokio::test(start_paused = true)]
async fn post_after_a_refused_connection_is_retried() {
    let refused = || Err(client_error(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(calls_for(request(), refused).await, 3);
    let bare =
        || Err(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) as BoxError);
    assert_eq!(calls_for(request(), bare).await, 3);
}

#[tokio::test(start_paused = true)]
async fn post_with_an_idempotency_key_is_retried_after_a_500() {
    let keyed = || request_with("POST", &[("idempotency-key", "5f0c2b1e")]);
    assert_eq!(calls_for(keyed(), || Ok(response(500, None))).await, 3);
    let reset = || Err(client_error(std::io::ErrorKind::ConnectionReset));
    assert_eq!(calls_for(keyed(), reset).await, 3);
}

#[tokio::test(start_paused = true)]
async fn idempotent_methods_are_retried_after_a_500_a_reset_or_a_timeout() {
    for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
        let calls = calls_for(request_with(method, &[]), || Ok(response(500, None))).await;
        assert_eq!(calls, 3, "{method}");
    }
    let reset = || Err(client_error(std::io::ErrorKind::ConnectionReset));
    assert_eq!(calls_for(request_with("GET", &[]), reset).await, 3);
    let calls = Arc::new(AtomicUsize::new(0));
    let _ = RetryLayer::new()
        .layer(timing_out(Arc::clone(&calls)))
        .oneshot(request_with("GET", &[]))
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_post_declared_idempotent_is_retried_after_a_500() {
    let script = Script::always(500);
    let response = RetryLayer::builder()
        .idempotent(true)
        .build()
        .layer(script.service())
        .oneshot(request())
        .await
        .expect("response");
    assert_eq!(response.status(), 500);
    assert_eq!(script.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn idempotent_if_declares_some_calls_idempotent() {
    let layer = RetryLayer::builder()
        .idempotent_if(|request: &Request| request.headers().contains_key("x-replay-safe"))
        .build();
    let script = Script::always(500);
    let service = layer.layer(script.service());
    service
        .clone()
        .oneshot(request_with("POST", &[("x-replay-safe", "1")]))
        .await
        .expect("response");
    assert_eq!(script.calls().len(), 3);
    service.clone().oneshot(request()).await.expect("response");
    assert_eq!(script.calls().len(), 4, "other POSTs are sent once");
    service
        .oneshot(request_with("GET", &[]))
        .await
        .expect("response");
    assert_eq!(script.calls().len(), 7, "the method still counts");
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_not_retried_when_the_layer_says_so() {
    let layer = RetryLayer::builder().retry_timeouts(false).build();
    let calls = Arc::new(AtomicUsize::new(0));
    let error = layer
        .layer(timing_out(Arc::clone(&calls)))
        .oneshot(request_with("GET", &[]))
        .await
        .expect_err("times out");
    assert!(error.is::<tokio::time::error::Elapsed>());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A tower timeout, and a gateway's 504, are timeouts too.
    let script = Script::new(vec![
        Err(Box::new(tower::timeout::error::Elapsed::new())),
        Ok(response(504, None)),
    ]);
    let service = layer.layer(script.service());
    let get = || request_with("GET", &[]);
    service.clone().oneshot(get()).await.expect_err("timeout");
    assert_eq!(service.oneshot(get()).await.expect("504").status(), 504);
    assert_eq!(script.calls().len(), 2);
    // Other failures are still retried.
    let script = Script::new(vec![Ok(response(500, None)), Ok(response(503, None))]);
    let response = layer
        .layer(script.service())
        .oneshot(get())
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(script.calls().len(), 3);
    assert_eq!(layer.handle().snapshot().unsafe_to_repeat, 3);
}

#[tokio::test(start_paused = true)]
async fn refusals_to_repeat_are_counted() {
    let layer = RetryLayer::new();
    let script = Script::always(500);
    layer
        .layer(script.service())
        .oneshot(request())
        .await
        .expect("response");
    let snapshot = layer.handle().snapshot();
    assert_eq!((snapshot.unsafe_to_repeat, snapshot.retried), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn generic_requests_are_retried_only_when_not_processed_or_declared_idempotent() {
    use tower_priority_queue::{CloneReplay, RetryErrors};

    let attempts = Arc::new(AtomicUsize::new(0));
    let failing = |kind: std::io::ErrorKind| {
        let attempts = Arc::clone(&attempts);
        service_fn(move |_: u32| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move { Err::<u32, BoxError>(client_error(kind)) }
        })
    };
    let builder = || {
        tower_priority_queue::RetryLayerBuilder::with(RetryErrors, CloneReplay)
            .backoff(Duration::from_millis(1), Duration::from_millis(1))
    };
    let mut cases = Vec::new();
    for (idempotent, kind) in [
        (false, std::io::ErrorKind::ConnectionRefused),
        (false, std::io::ErrorKind::ConnectionReset),
        (true, std::io::ErrorKind::ConnectionReset),
    ] {
        attempts.store(0, Ordering::SeqCst);
        let _ = builder()
            .idempotent(idempotent)
            .build()
            .layer(failing(kind))
            .oneshot(7)
            .await;
        cases.push(attempts.load(Ordering::SeqCst));
    }
    assert_eq!(cases, [3, 1, 3]);
}

// Every duration setting of the builder at its extremes: never a panic on the request
// path, and sane behaviour.

#[tokio::test(start_paused = true)]
async fn backoff_of_zero_retries_at_once() {
    let script = Script::always(503);
    RetryLayer::builder()
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .layer(script.service())
        .oneshot(request())
        .await
        .expect("response");
    assert_eq!(gaps(&script.calls()), [Duration::ZERO, Duration::ZERO]);
}

#[tokio::test(start_paused = true)]
async fn backoff_of_max_waits_without_overflow() {
    for (base, cap) in [
        (Duration::MAX, Duration::MAX),
        (Duration::from_secs(1), Duration::MAX),
        (Duration::MAX, Duration::ZERO),
    ] {
        let script = Script::always(503);
        let layer = RetryLayer::builder()
            .max_attempts(10)
            .backoff(base, cap)
            .build();
        let task = tokio::spawn(layer.layer(script.service()).oneshot(request()));
        tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
        assert!(!script.calls().is_empty());
        if task.is_finished() {
            assert_eq!(task.await.expect("no panic").expect("a 503").status(), 503);
        } else {
            task.abort();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_cap_of_zero_ignores_the_upstreams_wait() {
    let script = Script::new(vec![
        Ok(response(503, Some("3600"))),
        Ok(response(200, None)),
    ]);
    RetryLayer::builder()
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .retry_after_cap(Duration::ZERO)
        .build()
        .layer(script.service())
        .oneshot(request())
        .await
        .expect("response");
    let gaps = gaps(&script.calls());
    // The backoff is below 10 ms; tokio's timer rounds it up to the millisecond.
    assert!(gaps[0] <= Duration::from_millis(10), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_cap_of_max_waits_as_long_as_the_upstream_asks() {
    // An absurd `Retry-After` (taken as Duration::MAX) under an uncapped wait: the retry
    // waits "forever" without overflow, and a deadline gives up at once.
    let absurd = || Ok(response(503, Some("99999999999999999999")));
    let script = Script::new(vec![absurd(), absurd()]);
    let layer = RetryLayer::builder().retry_after_cap(Duration::MAX).build();
    let task = tokio::spawn(layer.layer(script.service()).oneshot(request()));
    tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
    assert!(!task.is_finished());
    task.abort();
    assert_eq!(script.calls().len(), 1);

    let script = Script::new(vec![absurd(), absurd()]);
    let layer = RetryLayer::builder()
        .retry_after_cap(Duration::MAX)
        .deadline(Duration::from_secs(10))
        .build();
    let response = layer
        .layer(script.service())
        .oneshot(request())
        .await
        .expect("response");
    assert_eq!(response.status(), 503);
    assert_eq!(script.calls().len(), 1);
    assert_eq!(layer.handle().snapshot().deadline_exceeded, 1);
}

#[tokio::test(start_paused = true)]
async fn deadline_of_zero_never_retries_and_of_max_is_no_deadline() {
    let script = Script::always(503);
    let layer = RetryLayer::builder().deadline(Duration::ZERO).build();
    layer
        .layer(script.service())
        .oneshot(request())
        .await
        .expect("response");
    assert_eq!(script.calls().len(), 1);
    assert_eq!(layer.handle().snapshot().deadline_exceeded, 1);

    let script = Script::always(503);
    let layer = RetryLayer::builder()
        .deadline(Duration::MAX)
        .backoff(Duration::MAX, Duration::MAX)
        .retry_after_cap(Duration::MAX)
        .build();
    let task = tokio::spawn(layer.layer(script.service()).oneshot(request()));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    task.abort();
    let script = Script::always(503);
    RetryLayer::builder()
        .deadline(Duration::MAX)
        .build()
        .layer(script.service())
        .oneshot(request())
        .await
        .expect("response");
    assert_eq!(script.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn budget_windows_of_zero_and_max_are_clamped() {
    // The floor of 1 retry a second, over a window of 1 s (ZERO is raised to it) or of
    // 60 s (MAX is lowered to it).
    for (ttl, calls) in [(Duration::ZERO, 2), (Duration::MAX, 3)] {
        let script = Script::always(503);
        let layer = RetryLayer::builder()
            .backoff(Duration::ZERO, Duration::ZERO)
            .budget(ttl, 1, 0.0)
            .build();
        layer
            .layer(script.service())
            .oneshot(request())
            .await
            .expect("response");
        assert_eq!(script.calls().len(), calls, "{ttl:?}");
    }
    for (min_per_sec, percent) in [(u32::MAX, f32::MAX), (0, f32::NAN), (0, -1.0)] {
        let script = Script::always(503);
        RetryLayer::builder()
            .budget(Duration::MAX, min_per_sec, percent)
            .build()
            .layer(script.service())
            .oneshot(request())
            .await
            .expect("response");
        assert!(!script.calls().is_empty());
    }
}

/// One attempt's outcome, for the property test below.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Status(u16),
    Error(std::io::ErrorKind),
}

fn outcome_strategy() -> impl proptest::strategy::Strategy<Value = Outcome> {
    use proptest::prelude::*;
    prop_oneof![
        (200u16..600).prop_map(Outcome::Status),
        prop::sample::select(vec![
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::AddrNotAvailable,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::Other,
        ])
        .prop_map(Outcome::Error),
    ]
}

proptest::proptest! {
    /// A request is sent again only where that is safe: the upstream did not process it,
    /// or the request is idempotent (method, `Idempotency-Key`, or declared) and the
    /// failure is not a timeout the layer was told not to retry.
    #[test]
    fn only_what_is_safe_to_repeat_is_repeated(
        outcome in outcome_strategy(),
        method in proptest::sample::select(vec!["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH"]),
        keyed: bool,
        declared: bool,
        retry_timeouts: bool,
    ) {
        use std::io::ErrorKind;
        let result = || match outcome {
            Outcome::Status(status) => Ok(response(status, None)),
            Outcome::Error(kind) => Err(client_error(kind)),
        };
        let script = Script::new((0..3).map(|_| result()).collect());
        let headers: &[(&str, &str)] = if keyed { &[("idempotency-key", "k-1")] } else { &[] };
        let request = request_with(method, headers);
        let layer = RetryLayer::builder()
            .backoff(Duration::from_millis(1), Duration::from_millis(1))
            .idempotent(declared)
            .retry_timeouts(retry_timeouts)
            .build();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let _ = runtime.block_on(layer.layer(script.service()).oneshot(request));

        let (not_processed, maybe_processed, timeout) = match outcome {
            Outcome::Status(status) => (
                status == 429 || status == 503,
                status >= 500 && status != 503,
                status == 504,
            ),
            Outcome::Error(kind) => (
                matches!(kind, ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable),
                !matches!(kind, ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable),
                kind == ErrorKind::TimedOut,
            ),
        };
        let idempotent = http::Method::from_bytes(method.as_bytes())
            .expect("method")
            .is_idempotent()
            || keyed
            || declared;
        let retried = not_processed
            || (maybe_processed && idempotent && (retry_timeouts || !timeout));
        proptest::prop_assert_eq!(script.calls().len(), if retried { 3 } else { 1 });
    }
}
