//! Behaviour of the priority queue service, driven as users drive it, on paused time.

#![cfg(feature = "http")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_priority_queue::{Priority, PriorityQueueLayer, QueueError, QueueSnapshot};

type Request = http::Request<&'static str>;
type Log = Arc<Mutex<Vec<&'static str>>>;

fn request(name: &'static str, priority: &str) -> Request {
    http::Request::builder()
        .header("x-priority", priority)
        .body(name)
        .expect("valid request")
}

/// An upstream that logs each request's body when it is called and answers after `work`.
fn upstream(
    log: &Log,
    work: Duration,
) -> impl Service<Request, Response = &'static str, Error = Infallible, Future: Send>
+ Clone
+ Send
+ use<> {
    let log = Arc::clone(log);
    service_fn(move |request: Request| {
        let name = *request.body();
        log.lock().expect("log").push(name);
        async move {
            tokio::time::sleep(work).await;
            Ok::<_, Infallible>(name)
        }
    })
}

/// Calls the service once, as users do: clone, ready, call; the future runs on its own task.
async fn send<S>(service: &S, request: Request) -> JoinHandle<Result<&'static str, BoxError>>
where
    S: Service<Request, Response = &'static str, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut service = service.clone();
    service.ready().await.expect("always ready");
    tokio::spawn(service.call(request))
}

fn queue_error(result: Result<&'static str, BoxError>) -> QueueError {
    let error = result.expect_err("a refusal");
    error
        .downcast_ref::<QueueError>()
        .cloned()
        .unwrap_or_else(|| panic!("not a queue error: {error}"))
}

/// The snapshot of a queue with nobody in flight or waiting.
fn idle(handle: &tower_priority_queue::QueueHandle) -> QueueSnapshot {
    let mut snapshot = QueueSnapshot::default();
    snapshot.limit = handle.max_in_flight();
    snapshot
}

async fn settle() {
    // Lets spawned tasks run up to their next timer without moving the clock.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn urgent_arriving_after_three_lows_runs_before_them() {
    let log = Log::default();
    let service = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .build()
        .layer(upstream(&log, Duration::from_secs(1)));
    let busy = send(&service, request("busy", "normal")).await;
    settle().await;
    let mut waiting = Vec::new();
    for (name, priority) in [
        ("low1", "low"),
        ("low2", "low"),
        ("low3", "low"),
        ("urgent", "urgent"),
    ] {
        waiting.push(send(&service, request(name, priority)).await);
    }
    busy.await.expect("task").expect("served");
    for handle in waiting {
        handle.await.expect("task").expect("served");
    }
    assert_eq!(
        *log.lock().expect("log"),
        ["busy", "urgent", "low1", "low2", "low3"]
    );
}

#[tokio::test(start_paused = true)]
async fn fifo_within_a_level_and_levels_in_order() {
    let log = Log::default();
    let service = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .build()
        .layer(upstream(&log, Duration::from_millis(10)));
    let mut handles = vec![send(&service, request("busy", "low")).await];
    settle().await;
    for (name, priority) in [
        ("n1", "normal"),
        ("h1", "high"),
        ("n2", "normal"),
        ("l1", "low"),
        ("h2", "high"),
        ("n3", "normal"),
        ("u1", "urgent"),
    ] {
        handles.push(send(&service, request(name, priority)).await);
    }
    for handle in handles {
        handle.await.expect("task").expect("served");
    }
    assert_eq!(
        *log.lock().expect("log"),
        ["busy", "u1", "h1", "h2", "n1", "n2", "n3", "l1"]
    );
}

#[tokio::test(start_paused = true)]
async fn full_room_displaces_the_newest_lowest_waiter_then_sheds_the_arrival() {
    let log = Log::default();
    let layer = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .capacity(2)
        .retry_after(Duration::from_secs(3))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream(&log, Duration::from_secs(1)));
    let busy = send(&service, request("busy", "normal")).await;
    settle().await;
    let low1 = send(&service, request("low1", "low")).await;
    let low2 = send(&service, request("low2", "low")).await;
    let high = send(&service, request("high", "high")).await;
    // low2 was the newest of the lowest level: shed at once.
    let shed = queue_error(low2.await.expect("task"));
    assert_eq!(
        shed,
        QueueError::QueueFull {
            priority: Priority::Low,
            retry_after: Duration::from_secs(3)
        }
    );
    let normal = send(&service, request("normal", "normal")).await;
    assert_eq!(
        queue_error(low1.await.expect("task")).priority(),
        Some(Priority::Low)
    );
    // Now high and normal wait: a low arrival has nobody below it to displace.
    let late_low = send(&service, request("late-low", "low")).await;
    assert!(matches!(
        queue_error(late_low.await.expect("task")),
        QueueError::QueueFull {
            priority: Priority::Low,
            ..
        }
    ));
    assert_eq!(handle.snapshot().queue_size, 2);
    for task in [busy, high, normal] {
        task.await.expect("task").expect("served");
    }
    assert_eq!(*log.lock().expect("log"), ["busy", "high", "normal"]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_past_its_level_maximum_wait_is_shed() {
    let log = Log::default();
    let layer = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .max_wait(Priority::Low, Duration::from_secs(2))
        .max_wait(Priority::High, Duration::from_secs(20))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream(&log, Duration::from_secs(5)));
    let busy = send(&service, request("busy", "normal")).await;
    settle().await;
    let start = Instant::now();
    let low = send(&service, request("low", "low")).await;
    let high = send(&service, request("high", "high")).await;
    match queue_error(low.await.expect("task")) {
        QueueError::QueueTimeout {
            priority, waited, ..
        } => {
            assert_eq!(priority, Priority::Low);
            assert_eq!(waited, Duration::from_secs(2));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(handle.snapshot().queue_size, 1);
    busy.await.expect("task").expect("served");
    assert_eq!(high.await.expect("task").expect("served"), "high");
    assert_eq!(handle.snapshot(), idle(&handle));
}

/// Priority from `x-priority`, and a request's own bound on its wait from `x-wait-secs`.
#[derive(Debug, Clone, Copy)]
struct OwnWait;

impl tower_priority_queue::PriorityExtractor<Request> for OwnWait {
    fn extract(&self, request: &Request) -> Result<Priority, QueueError> {
        tower_priority_queue::HeaderPriority::new().extract(request)
    }

    fn max_wait(&self, request: &Request) -> Option<Duration> {
        let secs = request.headers().get("x-wait-secs")?.to_str().ok()?;
        secs.parse().ok().map(Duration::from_secs)
    }
}

fn request_waiting_at_most(name: &'static str, secs: u64) -> Request {
    let mut request = request(name, "normal");
    request
        .headers_mut()
        .insert("x-wait-secs", http::HeaderValue::from(secs));
    request
}

#[tokio::test(start_paused = true)]
async fn a_request_bounds_its_own_wait_below_its_levels() {
    let log = Log::default();
    let layer = PriorityQueueLayer::builder()
        .extractor(OwnWait)
        .max_in_flight(1)
        .max_wait(Priority::Normal, Duration::from_secs(30))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream(&log, Duration::from_secs(10)));
    let busy = send(&service, request("busy", "normal")).await;
    settle().await;
    let start = Instant::now();
    // Its own bound (3 s) is the shorter: shed after it.
    let short = send(&service, request_waiting_at_most("short", 3)).await;
    // The level's (30 s) is the shorter: served when the slot frees at 10 s.
    let long = send(&service, request_waiting_at_most("long", 60)).await;
    // No bound of its own: the level's applies (served at 20 s).
    let plain = send(&service, request("plain", "normal")).await;
    match queue_error(short.await.expect("task")) {
        QueueError::QueueTimeout { waited, .. } => assert_eq!(waited, Duration::from_secs(3)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    busy.await.expect("task").expect("served");
    assert_eq!(long.await.expect("task").expect("served"), "long");
    assert_eq!(plain.await.expect("task").expect("served"), "plain");
    assert_eq!(*log.lock().expect("log"), ["busy", "long", "plain"]);
    // A request that finds a free slot is never asked for its bound.
    let zero = send(&service, request_waiting_at_most("zero", 0)).await;
    assert_eq!(zero.await.expect("task").expect("served"), "zero");
    assert_eq!(handle.snapshot(), idle(&handle));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_may_not_wait_displaces_nobody() {
    let log = Log::default();
    let layer = PriorityQueueLayer::builder()
        .extractor(OwnWait)
        .max_in_flight(1)
        .capacity(1)
        .max_wait_all(Duration::from_secs(60))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream(&log, Duration::from_secs(5)));
    let busy = send(&service, request("busy", "normal")).await;
    let low = send(&service, request("low", "low")).await;
    settle().await;
    assert_eq!(handle.snapshot().queue_size, 1);
    // Normal outranks the waiting low, but may not wait: refused at once, and the low
    // waiter keeps its place.
    let start = Instant::now();
    let hasty = send(&service, request_waiting_at_most("hasty", 0)).await;
    match queue_error(hasty.await.expect("task")) {
        QueueError::QueueTimeout { waited, .. } => assert_eq!(waited, Duration::ZERO),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    busy.await.expect("task").expect("served");
    assert_eq!(low.await.expect("task").expect("served"), "low");
    assert_eq!(*log.lock().expect("log"), ["busy", "low"]);
    assert_eq!(handle.snapshot(), idle(&handle));
}

/// A level whose maximum wait is zero may not wait at all: its requests are refused at once
/// without entering the room, so they displace nobody, as a request that bounds its own
/// wait to zero.
#[tokio::test(start_paused = true)]
async fn a_level_that_may_not_wait_displaces_nobody() {
    let log = Log::default();
    let layer = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .capacity(1)
        .max_wait_all(Duration::from_secs(60))
        .max_wait(Priority::High, Duration::ZERO)
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream(&log, Duration::from_secs(5)));
    let busy = send(&service, request("busy", "normal")).await;
    let low = send(&service, request("low", "low")).await;
    settle().await;
    assert_eq!(handle.snapshot().queue_size, 1);
    let start = Instant::now();
    let hasty = send(&service, request("hasty", "high")).await;
    match queue_error(hasty.await.expect("task")) {
        QueueError::QueueTimeout { waited, .. } => assert_eq!(waited, Duration::ZERO),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    busy.await.expect("task").expect("served");
    assert_eq!(low.await.expect("task").expect("kept its place"), "low");
    assert_eq!(*log.lock().expect("log"), ["busy", "low"]);
    assert_eq!(handle.snapshot(), idle(&handle));
}

/// Reads the queue's in-flight count when the inner call is dropped.
struct DropProbe {
    handle: tower_priority_queue::QueueHandle,
    seen: Arc<Mutex<Option<usize>>>,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        *self.seen.lock().expect("seen") = Some(self.handle.snapshot().processing);
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_is_ended_before_its_slot_is_freed() {
    let layer = PriorityQueueLayer::builder().max_in_flight(1).build();
    let handle = layer.handle();
    let seen = Arc::new(Mutex::new(None));
    let service = layer.layer(service_fn({
        let (handle, seen) = (handle.clone(), Arc::clone(&seen));
        move |_request: Request| {
            let probe = DropProbe {
                handle: handle.clone(),
                seen: Arc::clone(&seen),
            };
            async move {
                let _probe = probe;
                std::future::pending::<Result<&'static str, Infallible>>().await
            }
        }
    }));
    let call = send(&service, request("hangs", "normal")).await;
    settle().await;
    assert_eq!(handle.snapshot().processing, 1);
    call.abort();
    let _ = call.await;
    // The upstream call was gone while its slot was still held: no second call could
    // overlap it.
    assert_eq!(*seen.lock().expect("seen"), Some(1));
    assert_eq!(handle.snapshot(), idle(&handle));
}

#[tokio::test(start_paused = true)]
async fn zero_capacity_rejects_instead_of_queueing() {
    let log = Log::default();
    let service = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .capacity(0)
        .build()
        .layer(upstream(&log, Duration::from_secs(1)));
    let busy = send(&service, request("busy", "normal")).await;
    settle().await;
    let urgent = send(&service, request("urgent", "urgent")).await;
    assert!(matches!(
        queue_error(urgent.await.expect("task")),
        QueueError::QueueFull { .. }
    ));
    busy.await.expect("task").expect("served");
}

#[tokio::test(start_paused = true)]
async fn invalid_priority_is_refused_without_queueing() {
    let log = Log::default();
    let layer = PriorityQueueLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream(&log, Duration::ZERO));
    let result = send(&service, request("bad", "asap"))
        .await
        .await
        .expect("task");
    assert_eq!(queue_error(result), QueueError::InvalidPriority);
    assert!(log.lock().expect("log").is_empty());
    assert_eq!(handle.snapshot(), idle(&handle));
    // A request without the header is normal and served.
    let plain = http::Request::new("plain");
    let result = send(&service, plain).await.await.expect("task");
    assert_eq!(result.expect("served"), "plain");
}

#[tokio::test(start_paused = true)]
async fn clones_and_layer_calls_share_the_slots() {
    let log = Log::default();
    let layer = PriorityQueueLayer::builder().max_in_flight(1).build();
    let first = layer.layer(upstream(&log, Duration::from_secs(1)));
    let second = layer.layer(upstream(&log, Duration::from_secs(1)));
    let a = send(&first, request("a", "normal")).await;
    let b = send(&second.clone(), request("b", "normal")).await;
    settle().await;
    let snapshot = layer.handle().snapshot();
    assert_eq!(
        (snapshot.processing, snapshot.queue_size, snapshot.normal),
        (1, 1, 1)
    );
    a.await.expect("task").expect("served");
    b.await.expect("task").expect("served");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_and_a_dropped_call_frees_its_slot() {
    let log = Log::default();
    let layer = PriorityQueueLayer::builder().max_in_flight(1).build();
    let handle = layer.handle();
    let service = layer.layer(upstream(&log, Duration::from_secs(10)));
    let busy = send(&service, request("busy", "normal")).await;
    settle().await;
    let waiter = send(&service, request("waiter", "high")).await;
    let next = send(&service, request("next", "low")).await;
    settle().await;
    assert_eq!(handle.snapshot().queue_size, 2);
    waiter.abort();
    settle().await;
    let snapshot = handle.snapshot();
    assert_eq!(
        (snapshot.queue_size, snapshot.high, snapshot.low),
        (1, 0, 1)
    );
    // Dropping the call in flight hands its slot to the next waiter at once.
    busy.abort();
    settle().await;
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.processing, snapshot.queue_size), (1, 0));
    assert_eq!(next.await.expect("task").expect("served"), "next");
    assert_eq!(handle.snapshot(), idle(&handle));
    assert_eq!(*log.lock().expect("log"), ["busy", "next"]);
}

#[tokio::test(start_paused = true)]
async fn a_slot_is_held_while_the_inner_service_gets_ready() {
    let log = Log::default();
    let layer = PriorityQueueLayer::builder().max_in_flight(2).build();
    let handle = layer.handle();
    // The inner service admits one call at a time: the second request holds a queue slot
    // while it waits for the inner service's readiness.
    let inner =
        tower::limit::ConcurrencyLimitLayer::new(1).layer(upstream(&log, Duration::from_secs(1)));
    let service = layer.layer(inner);
    let first = send(&service, request("first", "normal")).await;
    let second = send(&service, request("second", "normal")).await;
    let third = send(&service, request("third", "urgent")).await;
    settle().await;
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.processing, snapshot.queue_size), (2, 1));
    assert_eq!(*log.lock().expect("log"), ["first"]);
    let start = Instant::now();
    for task in [first, second, third] {
        task.await.expect("task").expect("served");
    }
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(*log.lock().expect("log"), ["first", "second", "third"]);
    assert_eq!(handle.snapshot(), idle(&handle));
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_pass_through_and_free_the_slot() {
    #[derive(Clone)]
    struct Broken;
    impl Service<Request> for Broken {
        type Response = &'static str;
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<&'static str, std::io::Error>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Err(std::io::Error::other("inner closed")))
        }
        fn call(&mut self, _: Request) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let layer = PriorityQueueLayer::new();
    let handle = layer.handle();
    let service = layer.layer(Broken);
    let error = send(&service, request("x", "low"))
        .await
        .await
        .expect("task")
        .expect_err("broken");
    assert!(error.is::<std::io::Error>());
    assert_eq!(handle.snapshot(), idle(&handle));
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_unchanged() {
    #[derive(Debug)]
    struct UpstreamDown;
    impl std::fmt::Display for UpstreamDown {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("upstream down")
        }
    }
    impl std::error::Error for UpstreamDown {}

    let layer = PriorityQueueLayer::new();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_: Request| async {
        Err::<(), _>(UpstreamDown)
    }));
    let error = service
        .oneshot(request("x", "high"))
        .await
        .expect_err("inner error");
    assert!(error.is::<UpstreamDown>());
    assert_eq!(handle.snapshot(), idle(&handle));
}

#[tokio::test(start_paused = true)]
async fn low_priority_progresses_under_a_steady_urgent_stream() {
    let log = Log::default();
    let aging = Duration::from_secs(2);
    let layer = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .capacity(1000)
        .aging(aging)
        .max_wait_all(Duration::MAX)
        .build();
    let service = layer.layer(upstream(&log, Duration::from_millis(500)));
    let start = Instant::now();
    let mut handles = vec![send(&service, request("urgent", "urgent")).await];
    settle().await;
    let low = send(&service, request("low", "low")).await;
    // Four urgent requests a second, twice what the upstream can serve, for 30 s.
    let feeder = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for _ in 0..120 {
                handles.push(send(&service, request("urgent", "urgent")).await);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            handles
        })
    };
    low.await.expect("task").expect("served");
    let waited = start.elapsed();
    // Served before every urgent request that arrived more than 3 × aging after it,
    // that is within 3 × aging of urgent arrivals (4/s) at 0.5 s each, plus its own call.
    assert!(
        waited <= 3 * aging * 2 + Duration::from_secs(2),
        "low waited {waited:?}"
    );
    handles.extend(feeder.await.expect("feeder"));
    for handle in handles {
        handle.await.expect("task").expect("served");
    }
}

#[tokio::test(start_paused = true)]
async fn snapshot_serializes_with_the_umbrella_field_names() {
    let snapshot = PriorityQueueLayer::new().handle().snapshot();
    let json = serde_json::to_value(snapshot).expect("serializable");
    assert_eq!(
        json,
        serde_json::json!({"queueSize":0,"processing":0,"limit":2,"coolingDownSecs":0,"urgent":0,"high":0,"normal":0,"low":0})
    );
}

type Recorded = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// One metric from a snapshot (taking a snapshot resets the debugging recorder).
fn metric<'a>(
    recorded: &'a Recorded,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    recorded
        .iter()
        .find(|(key, _, _, _)| {
            let key = key.key();
            key.name() == name
                && labels.iter().all(|(label, value)| {
                    key.labels()
                        .any(|l| l.key() == *label && l.value() == *value)
                })
        })
        .map(|(_, _, _, value)| value)
}

#[tokio::test(start_paused = true)]
async fn sheds_waits_and_depths_are_recorded_with_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        PriorityQueueLayer::builder()
            .name("upstream")
            .max_in_flight(1)
            .capacity(1)
            .build()
    });
    let log = Log::default();
    let service = layer.layer(upstream(&log, Duration::from_secs(1)));
    let busy = send(&service, request("busy", "normal")).await;
    settle().await;
    let low = send(&service, request("low", "low")).await;
    settle().await;
    assert_eq!(layer.handle().snapshot().low, 1);
    let high = send(&service, request("high", "high")).await;
    let _ = send(&service, request("bad", "???")).await.await;
    queue_error(low.await.expect("task"));
    busy.await.expect("task").expect("served");
    high.await.expect("task").expect("served");
    let recorded: Recorded = snapshotter.snapshot().into_vec();
    let shed = |priority, reason| {
        metric(
            &recorded,
            "queue_shed_total",
            &[
                ("queue", "upstream"),
                ("priority", priority),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(shed("low", "displaced"), Some(&DebugValue::Counter(1)));
    assert_eq!(shed("invalid", "invalid"), Some(&DebugValue::Counter(1)));
    assert_eq!(
        metric(&recorded, "queue_in_flight", &[("queue", "upstream")]),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    assert_eq!(
        metric(&recorded, "queue_depth", &[("priority", "low")]),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    match metric(&recorded, "queue_wait_seconds", &[("priority", "high")]) {
        Some(DebugValue::Histogram(values)) => {
            assert_eq!(values.len(), 1);
            assert!((values[0].into_inner() - 1.0).abs() < 1e-9);
        }
        other => panic!("no wait histogram: {other:?}"),
    }
}

/// Never more than `max_in_flight` calls run at once.
#[derive(Clone, Default)]
struct Concurrency {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

mod cancellation {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Send { level: usize, work_ms: u64 },
        Drop { which: usize },
        Wait { ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..4, 0u64..40).prop_map(|(level, work_ms)| Op::Send { level, work_ms }),
            2 => (0usize..64).prop_map(|which| Op::Drop { which }),
            2 => (0u64..30).prop_map(|ms| Op::Wait { ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Requests are dropped at random points (waiting, in flight, finished): the depth
        /// and in-flight counts return to zero, and no slot is lost or doubled.
        #[test]
        fn random_drops_leave_no_trace(
            ops in proptest::collection::vec(op(), 1..80),
            max_in_flight in 1usize..4,
            capacity in 0usize..6,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let layer = PriorityQueueLayer::builder()
                    .max_in_flight(max_in_flight)
                    .capacity(capacity)
                    .max_wait(Priority::Low, Duration::from_millis(50))
                    .aging(Duration::from_millis(20))
                    .build();
                let handle = layer.handle();
                let concurrency = Concurrency::default();
                let inner = {
                    let concurrency = concurrency.clone();
                    service_fn(move |request: http::Request<u64>| {
                        let running = concurrency.now.fetch_add(1, Ordering::SeqCst) + 1;
                        concurrency.peak.fetch_max(running, Ordering::SeqCst);
                        let guard = Running(Arc::clone(&concurrency.now));
                        let work = Duration::from_millis(*request.body());
                        async move {
                            tokio::time::sleep(work).await;
                            drop(guard);
                            Ok::<_, Infallible>(())
                        }
                    })
                };
                let service = layer.layer(inner);
                let mut tasks = Vec::new();
                for op in ops {
                    match op {
                        Op::Send { level, work_ms } => {
                            let request = http::Request::builder()
                                .header("x-priority", Priority::ALL[level].as_str())
                                .body(work_ms)
                                .expect("request");
                            let mut service = service.clone();
                            service.ready().await.expect("ready");
                            tasks.push(tokio::spawn(service.call(request)));
                        }
                        Op::Drop { which } => {
                            if !tasks.is_empty() {
                                let task: JoinHandle<_> = tasks.swap_remove(which % tasks.len());
                                task.abort();
                            }
                        }
                        Op::Wait { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
                    }
                    let snapshot = handle.snapshot();
                    assert!(snapshot.processing <= max_in_flight);
                    assert!(snapshot.queue_size <= capacity);
                    assert!(concurrency.peak.load(Ordering::SeqCst) <= max_in_flight);
                }
                settle().await;
                for task in tasks {
                    // Each ends in exactly one response or one queue refusal.
                    match task.await.expect("not aborted") {
                        Ok(()) => {}
                        Err(error) => assert!(error.is::<QueueError>(), "{error}"),
                    }
                }
                assert_eq!(handle.snapshot(), idle(&handle));
                assert_eq!(concurrency.now.load(Ordering::SeqCst), 0);
                // Every slot is still there: `max_in_flight` calls run at once again.
                let mut running = Vec::new();
                for _ in 0..max_in_flight {
                    let mut service = service.clone();
                    service.ready().await.expect("ready");
                    running.push(tokio::spawn(service.call(http::Request::new(1_000))));
                }
                settle().await;
                assert_eq!(handle.snapshot().processing, max_in_flight);
                assert_eq!(concurrency.now.load(Ordering::SeqCst), max_in_flight);
                for task in running {
                    task.await.expect("task").expect("served");
                }
                assert_eq!(handle.snapshot(), idle(&handle));
            });
        }
    }
}
