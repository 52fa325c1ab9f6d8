//! Behaviour of the retry layer on paused time.

#![cfg(feature = "http")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
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
    http::Request::builder()
        .method("POST")
        .uri("/analyze")
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
            assert_eq!(request.method(), "POST");
            assert_eq!(request.uri(), "/analyze");
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
    let response = service.oneshot(request()).await.expect("response");
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
    let script = Script::always(500);
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
            "notReplayable": 0
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
        .oneshot(request())
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
        Ok(response(500, None)),
        Ok(response(200, None)),
        Ok(response(500, None)),
        Ok(response(500, None)),
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
    let script = Script::new(vec![Ok(response(502, None)), Ok(response(200, None))]);
    let layer = RetryLayer::new();
    let service = tower::retry::Retry::new(layer.policy(), script.service());
    let response = service.oneshot(request()).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(script.calls().len(), 2);
    assert_eq!(layer.handle().snapshot().retried, 1);
}
