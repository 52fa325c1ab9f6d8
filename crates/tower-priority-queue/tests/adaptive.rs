//! The adaptive limit against simulated upstreams, on paused time: it finds a hidden
//! capacity, honours `Retry-After` with a capped cool-down, sees every attempt under the
//! retry layer, and leaks nothing when callers give up.

#![cfg(feature = "http")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_priority_queue::{
    AdaptiveLimit, HttpOverload, HttpReplay, Limit, PriorityQueueLayer, QueueHandle, Refusal,
    RetryLayer,
};

type Request = http::Request<()>;
type Response = http::Response<()>;

fn request() -> Request {
    http::Request::new(())
}

fn status(code: u16, retry_after: Option<&str>) -> Response {
    let mut response = http::Response::builder().status(code);
    if let Some(retry_after) = retry_after {
        response = response.header("retry-after", retry_after);
    }
    response.body(()).expect("valid response")
}

/// A small deterministic generator (xorshift64*), so that runs repeat by seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// What the simulated upstream saw.
#[derive(Debug, Default)]
struct Seen {
    calls: AtomicUsize,
    throttled: AtomicUsize,
    /// When the upstream last answered 429, in ms since the start (a decrease follows
    /// at that instant).
    last_throttle_ms: AtomicU64,
    /// Calls that found more in flight than the limit, outside an instant of a decrease.
    over_limit: AtomicUsize,
}

/// An upstream that accepts `capacity` calls at once, each taking 1-3 s, and answers 429
/// with `Retry-After: 1` at once above that.
fn upstream(
    capacity: usize,
    seed: u64,
    seen: &Arc<Seen>,
    handle: &Arc<Mutex<Option<QueueHandle>>>,
    start: Instant,
) -> impl Service<Request, Response = Response, Error = BoxError, Future: Send> + Clone + Send + use<>
{
    let active = Arc::new(AtomicUsize::new(0));
    let rng = Arc::new(Mutex::new(Rng::new(seed)));
    let seen = Arc::clone(seen);
    let handle = Arc::clone(handle);
    service_fn(move |_request: Request| {
        let now_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        seen.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(handle) = handle.lock().expect("handle").as_ref() {
            let snapshot = handle.snapshot();
            if snapshot.processing > snapshot.limit
                && seen.last_throttle_ms.load(Ordering::Relaxed) != now_ms
            {
                seen.over_limit.fetch_add(1, Ordering::Relaxed);
            }
        }
        let accepted = active.fetch_add(1, Ordering::AcqRel) < capacity;
        let latency = Duration::from_millis(1000 + rng.lock().expect("rng").below(2000));
        let active = Arc::clone(&active);
        let seen = Arc::clone(&seen);
        async move {
            if !accepted {
                active.fetch_sub(1, Ordering::AcqRel);
                seen.throttled.fetch_add(1, Ordering::Relaxed);
                seen.last_throttle_ms.store(now_ms, Ordering::Relaxed);
                return Ok(status(429, Some("1")));
            }
            // Counted out even if the caller gives up.
            struct Leave(Arc<AtomicUsize>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::AcqRel);
                }
            }
            let _leave = Leave(active);
            tokio::time::sleep(latency).await;
            Ok(status(200, None))
        }
    })
}

struct Outcome {
    mean_limit: f64,
    max_limit: usize,
    calls: usize,
    throttled: usize,
    over_limit: usize,
}

/// Runs `clients` closed-loop clients for `run` against an upstream of `capacity`, and
/// samples the limit every 100 ms after `warm_up`.
async fn simulate(
    limit: AdaptiveLimit,
    capacity: usize,
    seed: u64,
    clients: usize,
    warm_up: Duration,
    run: Duration,
) -> Outcome {
    let start = Instant::now();
    let seen = Arc::new(Seen::default());
    let slot = Arc::new(Mutex::new(None));
    let layer = PriorityQueueLayer::builder()
        .limit(limit)
        .overload_classifier(HttpOverload::new())
        .capacity(1024)
        .max_wait_all(Duration::MAX)
        .build();
    let handle = layer.handle();
    *slot.lock().expect("slot") = Some(handle.clone());
    let service = layer.layer(upstream(capacity, seed, &seen, &slot, start));
    let end = start + run;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let _ = service.clone().oneshot(request()).await;
            }
        }));
    }
    tokio::time::sleep(warm_up).await;
    let (mut sum, mut samples, mut max_limit) = (0_usize, 0_usize, 0_usize);
    while Instant::now() < end {
        let limit = handle.max_in_flight();
        sum += limit;
        samples += 1;
        max_limit = max_limit.max(limit);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.await.expect("no panic");
    }
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.processing, 0);
    assert_eq!(snapshot.queue_size, 0);
    #[allow(clippy::cast_precision_loss)]
    let mean_limit = sum as f64 / samples as f64;
    Outcome {
        mean_limit,
        max_limit,
        calls: seen.calls.load(Ordering::Relaxed),
        throttled: seen.throttled.load(Ordering::Relaxed),
        over_limit: seen.over_limit.load(Ordering::Relaxed),
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The limit finds a hidden capacity C: after warm-up its mean is within 20% of C, it
    /// never goes past C + 1, fewer than 5% of calls meet a 429, and no call is admitted
    /// past the limit.
    #[test]
    fn the_limit_finds_a_hidden_capacity(
        capacity in 1_usize..=32,
        seed in any::<u64>(),
        accepted in any::<bool>(),
    ) {
        // With or without growth on accepted calls (100 ms: the 429 comes at once).
        let mut limit = Limit::adaptive().max(64);
        if accepted {
            limit = limit.accepted_after(Duration::from_millis(100));
        }
        let outcome = paused_runtime().block_on(simulate(
            limit,
            capacity,
            seed,
            2 * capacity + 4,
            Duration::from_secs(300),
            Duration::from_secs(1500),
        ));
        #[allow(clippy::cast_precision_loss)]
        let (c, share) = (capacity as f64, outcome.throttled as f64 / outcome.calls as f64);
        prop_assert!(
            (outcome.mean_limit - c).abs() <= 0.2 * c,
            "C = {}: mean limit {:.2}", capacity, outcome.mean_limit
        );
        prop_assert!(outcome.max_limit <= capacity + 1, "C = {}: limit reached {}", capacity, outcome.max_limit);
        prop_assert!(share < 0.05, "C = {}: {:.3} of {} calls got 429", capacity, share, outcome.calls);
        prop_assert_eq!(outcome.over_limit, 0);
    }
}

/// An upstream that takes `capacity` calls at once, each `latency` long (`None`: it
/// never answers), and answers 429 with `Retry-After: 1` at once above that. Returns the
/// service with counters: calls refused, and the most ever in progress.
fn held_upstream(
    capacity: usize,
    latency: Option<Duration>,
) -> (
    impl Service<Request, Response = Response, Error = BoxError, Future: Send> + Clone + Send + use<>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let throttled = Arc::new(AtomicUsize::new(0));
    let most_active = Arc::new(AtomicUsize::new(0));
    let service = service_fn({
        let (throttled, most_active) = (Arc::clone(&throttled), Arc::clone(&most_active));
        move |_request: Request| {
            let (active, throttled, most_active) = (
                Arc::clone(&active),
                Arc::clone(&throttled),
                Arc::clone(&most_active),
            );
            async move {
                let now = active.fetch_add(1, Ordering::AcqRel) + 1;
                if now > capacity {
                    active.fetch_sub(1, Ordering::AcqRel);
                    throttled.fetch_add(1, Ordering::Relaxed);
                    return Ok::<_, BoxError>(status(429, Some("1")));
                }
                most_active.fetch_max(now, Ordering::Relaxed);
                match latency {
                    Some(latency) => tokio::time::sleep(latency).await,
                    None => std::future::pending::<()>().await,
                }
                active.fetch_sub(1, Ordering::AcqRel);
                Ok(status(200, None))
            }
        }
    });
    (service, throttled, most_active)
}

fn holding_queue(
    accepted_after: Option<Duration>,
    room: usize,
) -> PriorityQueueLayer<tower_priority_queue::HeaderPriority, HttpOverload> {
    let mut limit = Limit::adaptive();
    if let Some(after) = accepted_after {
        limit = limit.accepted_after(after);
    }
    PriorityQueueLayer::builder()
        .limit(limit)
        .overload_classifier(HttpOverload::new())
        .capacity(room)
        .max_wait_all(Duration::MAX)
        .build()
}

/// Calls of a minute to an upstream that takes 8 at once, a request every second.
/// Growing on accepted calls, the limit climbs a step per 2 s of held calls, to twice its
/// start (4) before any call has ended, and to the capacity a few steps after the first
/// success; growing only on completions, it is 4 then.
#[tokio::test(start_paused = true)]
async fn accepted_calls_find_the_capacity_soon_after_the_first_success() {
    for accepted_after in [Some(Duration::from_secs(2)), None] {
        let layer = holding_queue(accepted_after, 1024);
        let handle = layer.handle();
        let (upstream, throttled, most_active) = held_upstream(8, Some(Duration::from_secs(60)));
        let service = layer.layer(upstream);
        let mut tasks = Vec::new();
        let mut rises = Vec::new();
        let mut limit = handle.max_in_flight();
        for second in 1..=80_u64 {
            tasks.push(tokio::spawn(service.clone().oneshot(request())));
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = handle.max_in_flight();
            if now > limit {
                rises.push(second);
            }
            limit = now;
            if second < 60 {
                assert!(limit <= 4, "{limit} at {second} s, before any call ended");
            }
        }
        let refused = throttled.load(Ordering::Relaxed);
        match accepted_after {
            Some(after) => {
                assert!(
                    (8..=9).contains(&limit),
                    "limit {limit} after 80 s (rises at {rises:?})"
                );
                assert_eq!(most_active.load(Ordering::Relaxed), 8);
                assert!(refused <= 3, "{refused} calls got 429");
                // Before the first success, only accepted calls raise it: a step per
                // `after` at most.
                let early: Vec<_> = rises.iter().filter(|&&s| s < 60).collect();
                assert_eq!(early.len(), 2, "rises at {rises:?}");
                assert!(early.windows(2).all(|w| w[1] - w[0] >= after.as_secs()));
            }
            None => {
                assert_eq!(limit, 4, "rises at {rises:?}");
                assert_eq!((most_active.load(Ordering::Relaxed), refused), (4, 0));
            }
        }
        for task in tasks {
            task.abort();
        }
    }
}

/// An upstream that hangs holds every call as an upstream that works does: accepted
/// calls alone never take the limit past twice its start.
#[tokio::test(start_paused = true)]
async fn a_hung_upstream_does_not_drive_the_limit_up() {
    let layer = holding_queue(Some(Duration::from_secs(2)), 1024);
    let handle = layer.handle();
    let (upstream, _, most_active) = held_upstream(64, None);
    let service = layer.layer(upstream);
    let mut tasks = Vec::new();
    for _ in 0..600 {
        tasks.push(tokio::spawn(service.clone().oneshot(request())));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(handle.max_in_flight(), 4);
    assert_eq!(most_active.load(Ordering::Relaxed), 4);
    for task in tasks {
        task.abort();
    }
}

/// The limit grows as a request arrives at a full waiting room: the new slot goes to the
/// one waiting, and the arrival takes its place rather than being refused; when a call
/// ends, its slot goes to the arrival.
#[tokio::test(start_paused = true)]
async fn a_slot_gained_at_a_full_room_goes_out_before_the_arrival_is_judged() {
    let layer = holding_queue(Some(Duration::from_secs(2)), 1);
    let handle = layer.handle();
    let (upstream, _, _) = held_upstream(64, Some(Duration::from_secs(60)));
    let service = layer.layer(upstream);
    let first = tokio::spawn(service.clone().oneshot(request()));
    let second = tokio::spawn(service.clone().oneshot(request()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = tokio::spawn(service.clone().oneshot(request()));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.processing, snapshot.queue_size), (2, 1));
    // 2.5 s of two held calls with one waiting: the fourth raises the limit.
    let fourth = tokio::spawn(service.clone().oneshot(request()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let snapshot = handle.snapshot();
    assert_eq!(handle.max_in_flight(), 3);
    assert_eq!((snapshot.processing, snapshot.queue_size), (3, 1));
    assert!(
        !fourth.is_finished(),
        "the fourth waits: it was not refused"
    );
    // The first two calls end at 60 s: the fourth takes a slot they free (the third's
    // call and its own are in flight).
    tokio::time::sleep(Duration::from_millis(57_000)).await;
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.processing, snapshot.queue_size), (2, 0));
    for task in [first, second, third, fourth] {
        let answer = task.await.expect("no panic").expect("answered");
        assert_eq!(answer.status(), 200);
    }
}

/// When held calls raise the limit and the room has a place, the arrival competes for
/// the new slot by priority: an urgent arrival takes it ahead of a low waiter.
#[tokio::test(start_paused = true)]
async fn a_slot_gained_goes_to_the_highest_priority_the_arrival_included() {
    let layer = holding_queue(Some(Duration::from_secs(2)), 8);
    let handle = layer.handle();
    let (upstream, _, _) = held_upstream(64, None);
    let service = layer.layer(upstream);
    let with_priority = |priority: &str| {
        http::Request::builder()
            .header("x-priority", priority)
            .body(())
            .expect("valid request")
    };
    let mut tasks = vec![
        tokio::spawn(service.clone().oneshot(with_priority("normal"))),
        tokio::spawn(service.clone().oneshot(with_priority("normal"))),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    tasks.push(tokio::spawn(service.clone().oneshot(with_priority("low"))));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    tasks.push(tokio::spawn(
        service.clone().oneshot(with_priority("urgent")),
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let snapshot = handle.snapshot();
    assert_eq!(handle.max_in_flight(), 3);
    assert_eq!(snapshot.processing, 3);
    assert_eq!((snapshot.urgent, snapshot.low), (0, 1), "{snapshot:?}");
    for task in tasks {
        task.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_admitted_during_a_cool_down_and_it_is_capped() {
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = Arc::clone(&calls);
    let start = Instant::now();
    let upstream = service_fn(move |_request: Request| {
        let mut log = log.lock().expect("log");
        log.push(Instant::now());
        // The first answer asks for a pause of a day; the rest succeed.
        let response = if log.len() == 1 {
            status(503, Some("86400"))
        } else {
            status(200, None)
        };
        async move { Ok::<_, BoxError>(response) }
    });
    let layer = PriorityQueueLayer::builder()
        .limit(
            Limit::adaptive()
                .initial(4)
                .max_cooldown(Duration::from_secs(30)),
        )
        .overload_classifier(HttpOverload::new())
        .max_wait_all(Duration::MAX)
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let first = service.clone().oneshot(request()).await.expect("answered");
    assert_eq!(first.status(), 503);
    assert_eq!(handle.snapshot().cooling_down_secs, 30, "capped at 30 s");
    assert_eq!(handle.max_in_flight(), 3, "the 503 lowered the limit");
    let waiters: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(request())))
        .collect();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        calls.lock().expect("log").len(),
        1,
        "nothing admitted while cooling down"
    );
    assert_eq!(
        handle.snapshot().queue_size,
        3,
        "the requests wait in the room"
    );
    for waiter in waiters {
        let response = waiter.await.expect("no panic").expect("answered");
        assert_eq!(response.status(), 200);
    }
    let calls = calls.lock().expect("log");
    assert_eq!(calls.len(), 4);
    assert!(
        calls[1..]
            .iter()
            .all(|at| *at == start + Duration::from_secs(30))
    );
    assert_eq!(handle.snapshot().cooling_down_secs, 0);
}

#[tokio::test(start_paused = true)]
async fn a_fixed_limit_ignores_overload_signals() {
    let upstream =
        service_fn(|_request: Request| async move { Ok::<_, BoxError>(status(429, Some("60"))) });
    let layer = PriorityQueueLayer::builder().max_in_flight(3).build();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    for _ in 0..5 {
        let response = service.clone().oneshot(request()).await.expect("answered");
        assert_eq!(response.status(), 429);
    }
    assert_eq!(handle.max_in_flight(), 3);
    assert_eq!(handle.snapshot().cooling_down_secs, 0);
}

#[tokio::test(start_paused = true)]
async fn a_429_that_a_retry_turns_into_a_success_still_lowers_the_limit() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&attempts);
    let upstream = service_fn(
        move |_request: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let attempt = counted.fetch_add(1, Ordering::Relaxed);
            async move {
                Ok::<_, BoxError>(if attempt == 0 {
                    status(429, None)
                } else {
                    status(200, None)
                })
            }
        },
    );
    let queue = PriorityQueueLayer::builder()
        .limit(Limit::adaptive().initial(10))
        .overload_classifier(HttpOverload::new())
        .build();
    let handle = queue.handle();
    let retry = RetryLayer::builder()
        .replay(HttpReplay::new())
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .build();
    let service = retry.layer(queue.layer(upstream));
    let request = http::Request::post("/analyze")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .expect("request");
    let response = service.oneshot(request).await.expect("answered");
    assert_eq!(
        response.status(),
        200,
        "the retry turned the 429 into a success"
    );
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    assert_eq!(handle.max_in_flight(), 9, "the queue saw the 429 attempt");
}

#[test]
fn the_limit_and_cool_downs_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        paused_runtime().block_on(async {
            let upstream =
                service_fn(
                    |_request: Request| async move { Ok::<_, BoxError>(status(429, Some("5"))) },
                );
            let layer = PriorityQueueLayer::builder()
                .name("ai")
                .limit(Limit::adaptive().initial(8))
                .overload_classifier(HttpOverload::new())
                .build();
            let service = layer.layer(upstream);
            service.oneshot(request()).await.expect("answered");
        });
    });
    let recorded = snapshotter.snapshot().into_vec();
    let value = |name: &str| {
        recorded
            .iter()
            .find(|(key, _, _, _)| {
                key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|label| label.key() == "queue" && label.value() == "ai")
            })
            .map(|(_, _, _, value)| value)
    };
    assert_eq!(
        value("queue_limit"),
        Some(&DebugValue::Gauge(7.0.into())),
        "8 lowered to 7"
    );
    assert_eq!(
        value("queue_cooldowns_total"),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value("queue_cooldown_seconds"),
        Some(&DebugValue::Gauge(5.0.into()))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random overloads, cool-downs and cancellations: every request ends, and afterwards
    /// no slot is held, nobody waits, and the limit is within its bounds.
    #[test]
    fn random_cancellation_leaks_nothing(
        answers in prop::collection::vec((0_u8..4, 0_u64..3000), 1..40),
        cancel_after in prop::collection::vec(prop::option::of(0_u64..4000), 1..40),
        max in 1_usize..6,
        accepted in any::<bool>(),
    ) {
        paused_runtime().block_on(async move {
            let answers = Arc::new(answers);
            let next = Arc::new(AtomicUsize::new(0));
            let upstream = service_fn(move |_request: Request| {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let (kind, latency) = answers[index % answers.len()];
                async move {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                    Ok::<_, BoxError>(match kind {
                        0 => status(429, Some("1")),
                        1 => status(503, None),
                        _ => status(200, None),
                    })
                }
            });
            // With growth on held calls: from 1, arrivals 150 ms apart, held for 100 ms.
            let limit = if accepted {
                Limit::adaptive().max(max).initial(1).accepted_after(Duration::from_millis(100))
            } else {
                Limit::adaptive().max(max).initial(max)
            };
            let layer = PriorityQueueLayer::builder()
                .limit(limit)
                .overload_classifier(HttpOverload::new())
                .capacity(64)
                .max_wait_all(Duration::from_secs(20))
                .build();
            let handle = layer.handle();
            let service = layer.layer(upstream);
            let mut tasks = Vec::new();
            for cancel in cancel_after {
                if accepted {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                let call: Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>> =
                    Box::pin(service.clone().oneshot(request()));
                tasks.push(tokio::spawn(async move {
                    match cancel {
                        Some(after) => {
                            let _ = tokio::time::timeout(Duration::from_millis(after), call).await;
                        }
                        None => {
                            let _ = call.await;
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.expect("no panic");
            }
            let snapshot = handle.snapshot();
            assert_eq!(snapshot.processing, 0, "no slot is held");
            assert_eq!(snapshot.queue_size, 0, "nobody waits");
            assert!((1..=max).contains(&snapshot.limit));
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_cool_down_longer_than_the_max_wait_refuses_at_once() {
    let upstream =
        service_fn(|_request: Request| async move { Ok::<_, BoxError>(status(429, Some("40"))) });
    let layer = PriorityQueueLayer::builder()
        .limit(Limit::adaptive())
        .overload_classifier(HttpOverload::new())
        .max_wait(
            tower_priority_queue::Priority::Normal,
            Duration::from_secs(10),
        )
        .max_wait(
            tower_priority_queue::Priority::Urgent,
            Duration::from_secs(60),
        )
        .build();
    let service = layer.layer(upstream);
    let first = service.clone().oneshot(request()).await.expect("answered");
    assert_eq!(first.status(), 429);
    let started = Instant::now();
    let error = service
        .clone()
        .oneshot(request())
        .await
        .expect_err("refused during the cool-down");
    assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
    let refusal = error
        .downcast_ref::<tower_priority_queue::QueueError>()
        .unwrap_or_else(|| panic!("a queue refusal, not {error}"));
    assert!(
        matches!(refusal, tower_priority_queue::QueueError::CoolingDown { retry_after, .. } if *retry_after == Duration::from_secs(40)),
        "{refusal:?}"
    );
    assert_eq!(refusal.status_code(), 503);
    // An urgent request may wait out the pause: it is admitted when it ends.
    let urgent = http::Request::builder()
        .header("x-priority", "urgent")
        .body(())
        .expect("request");
    let response = service.clone().oneshot(urgent).await.expect("answered");
    assert_eq!(response.status(), 429);
    assert_eq!(started.elapsed(), Duration::from_secs(40));
}

#[tokio::test(start_paused = true)]
async fn retry_after_ms_gives_a_cool_down_shorter_than_a_second() {
    let upstream = service_fn(|_request: Request| async move {
        let response = http::Response::builder()
            .status(429)
            .header("retry-after", "1")
            .header("retry-after-ms", "250")
            .body(())
            .expect("response");
        Ok::<_, BoxError>(response)
    });
    let layer = PriorityQueueLayer::builder()
        .limit(Limit::adaptive().initial(4))
        .overload_classifier(HttpOverload::new())
        .build();
    let service = layer.layer(upstream);
    service.clone().oneshot(request()).await.expect("answered");
    let started = Instant::now();
    service.clone().oneshot(request()).await.expect("answered");
    assert_eq!(started.elapsed(), Duration::from_millis(250));
}

#[test]
fn a_cool_down_ends_for_the_waiters_even_if_the_runtime_that_started_it_is_gone() {
    let upstream = service_fn(|request: Request| async move {
        if request.headers().contains_key("x-first") {
            Ok::<_, BoxError>(status(429, Some("5")))
        } else {
            Ok(status(200, None))
        }
    });
    let layer = PriorityQueueLayer::builder()
        .limit(Limit::adaptive().initial(1).min(1))
        .overload_classifier(HttpOverload::new())
        .max_wait_all(Duration::from_secs(60))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    // The 429 comes back on a runtime that is then dropped.
    let first = http::Request::builder()
        .header("x-first", "1")
        .body(())
        .expect("request");
    paused_runtime()
        .block_on(service.clone().oneshot(first))
        .expect("answered");
    assert!(handle.snapshot().cooling_down_secs > 0);
    // Another runtime's request waits out the pause and is admitted when it ends.
    paused_runtime().block_on(async {
        let started = Instant::now();
        let response =
            tokio::time::timeout(Duration::from_secs(30), service.clone().oneshot(request()))
                .await
                .expect("admitted when the pause ends, not stranded")
                .expect("answered");
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() <= Duration::from_secs(5));
    });
    assert_eq!(handle.snapshot().queue_size, 0);
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_errors_does_not_raise_the_limit() {
    let upstream = service_fn(|_request: Request| async move {
        Err::<Response, BoxError>(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        )
    });
    let layer = PriorityQueueLayer::builder()
        .limit(Limit::adaptive())
        .overload_classifier(HttpOverload::new())
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    for _ in 0..100 {
        let calls: Vec<_> = (0..4)
            .map(|_| tokio::spawn(service.clone().oneshot(request())))
            .collect();
        for call in calls {
            assert!(call.await.expect("no panic").is_err());
        }
    }
    assert_eq!(
        handle.max_in_flight(),
        2,
        "failures say nothing about capacity"
    );
    let upstream =
        service_fn(|_request: Request| async move { Ok::<_, BoxError>(status(500, None)) });
    let layer = PriorityQueueLayer::builder()
        .limit(Limit::adaptive())
        .overload_classifier(HttpOverload::new())
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    for _ in 0..100 {
        let calls: Vec<_> = (0..4)
            .map(|_| tokio::spawn(service.clone().oneshot(request())))
            .collect();
        for call in calls {
            call.await.expect("no panic").expect("answered");
        }
    }
    assert_eq!(handle.max_in_flight(), 2);
}

/// A request already waiting when the upstream asks for a pause is admitted when the
/// pause ends, even if nothing else happens then (no arrival, no call completing): it
/// does not sit out its whole maximum wait beside a free slot.
#[tokio::test(start_paused = true)]
async fn a_waiter_queued_before_a_cool_down_is_admitted_when_it_ends() {
    let upstream = service_fn(|request: Request| async move {
        if request.headers().contains_key("x-first") {
            // Held for a second, then throttled with a pause of 5 s.
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(status(429, Some("5")))
        } else {
            Ok(status(200, None))
        }
    });
    let layer = PriorityQueueLayer::builder()
        .limit(Limit::adaptive().initial(1))
        .overload_classifier(HttpOverload::new())
        .max_wait_all(Duration::from_secs(60))
        .build();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let started = Instant::now();
    let first = http::Request::builder()
        .header("x-first", "1")
        .body(())
        .expect("request");
    let first = tokio::spawn(service.clone().oneshot(first));
    tokio::task::yield_now().await;
    // Waits for the only slot, before any pause is asked for.
    let waiter = tokio::spawn(service.clone().oneshot(request()));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().queue_size, 1);
    let throttled = first.await.expect("no panic").expect("answered");
    assert_eq!(throttled.status(), 429);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(handle.snapshot().processing, 0, "the slot is back");
    let response = waiter
        .await
        .expect("no panic")
        .expect("admitted when the pause ends, not shed after its max wait");
    assert_eq!(response.status(), 200);
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    assert_eq!(handle.snapshot().queue_size, 0);
}

/// The `queue_limit` gauge: each value set, and a hook run once when a given value is set,
/// before it is stored.
struct LimitGauge {
    value: Mutex<f64>,
    hook_at: f64,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl metrics::GaugeFn for LimitGauge {
    fn increment(&self, value: f64) {
        *self.value.lock().expect("value") += value;
    }

    fn decrement(&self, value: f64) {
        *self.value.lock().expect("value") -= value;
    }

    fn set(&self, value: f64) {
        #[allow(clippy::float_cmp)] // whole numbers
        let hook = if value == self.hook_at {
            self.hook.lock().expect("hook").take()
        } else {
            None
        };
        if let Some(hook) = hook {
            hook();
        }
        *self.value.lock().expect("value") = value;
    }
}

/// Hands out [`LimitGauge`] for one gauge (`queue_limit` unless told), and no-op handles
/// for the rest.
struct LimitRecorder(Arc<LimitGauge>, &'static str);

impl metrics::Recorder for LimitRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        if key.name() == self.1 {
            metrics::Gauge::from_arc(Arc::clone(&self.0))
        } else {
            metrics::Gauge::noop()
        }
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Two calls lower the limit one after the other (5 to 4, then 4 to 3), and the second
/// change is made and recorded between the first's change and its recording, as another
/// thread can: the gauge still ends at the limit in force, 3, not at the stale 4.
#[tokio::test(start_paused = true)]
async fn the_limit_gauge_ends_at_the_limit_when_changes_interleave() {
    let gauge = Arc::new(LimitGauge {
        value: Mutex::new(f64::NAN),
        hook_at: 4.0,
        hook: Mutex::new(None),
    });
    let recorder = LimitRecorder(Arc::clone(&gauge), "queue_limit");
    let layer = metrics::with_local_recorder(&recorder, || {
        PriorityQueueLayer::builder()
            .limit(Limit::adaptive().initial(5))
            .overload_classifier(HttpOverload::new())
            .build()
    });
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_request: Request| async {
        Ok::<_, BoxError>(status(429, None))
    }));
    // The second call, admitted after the first decrease and answered 429 at once; run
    // while the first call records its decrease.
    let second = service.clone();
    *gauge.hook.lock().expect("hook") = Some(Box::new(move || {
        let mut service = second;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(service.poll_ready(&mut cx).is_ready());
        let mut call = std::pin::pin!(service.call(request()));
        match call.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(response)) => assert_eq!(response.status(), 429),
            other => panic!("the second call is answered at once, not {other:?}"),
        }
    }));
    let first = service.clone().oneshot(request()).await.expect("answered");
    assert_eq!(first.status(), 429);
    assert!(gauge.hook.lock().expect("hook").is_none(), "the hook ran");
    assert_eq!(handle.max_in_flight(), 3);
    #[allow(clippy::cast_precision_loss)]
    let limit = handle.max_in_flight() as f64;
    assert_eq!(*gauge.value.lock().expect("value"), limit);
}

/// Two calls answer 429 asking for pauses of 5 s and 20 s, and the second extends the
/// cool-down and records it between the first's start and its recording, as another
/// thread can: `queue_cooldown_seconds` still ends at the pause in progress, 20 s.
#[tokio::test(start_paused = true)]
async fn the_cool_down_gauge_ends_at_the_pause_in_progress_when_starts_interleave() {
    let gauge = Arc::new(LimitGauge {
        value: Mutex::new(f64::NAN),
        hook_at: 5.0,
        hook: Mutex::new(None),
    });
    let recorder = LimitRecorder(Arc::clone(&gauge), "queue_cooldown_seconds");
    let layer = metrics::with_local_recorder(&recorder, || {
        PriorityQueueLayer::builder()
            .limit(Limit::adaptive().initial(4))
            .overload_classifier(HttpOverload::new())
            .build()
    });
    let handle = layer.handle();
    let answer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = layer.layer(service_fn({
        let answer = Arc::clone(&answer);
        move |request: Request| {
            let answer = Arc::clone(&answer);
            async move {
                if request.headers().contains_key("x-second") {
                    // Answers when told to.
                    std::future::poll_fn(|_| {
                        if answer.load(Ordering::Relaxed) {
                            std::task::Poll::Ready(())
                        } else {
                            std::task::Poll::Pending
                        }
                    })
                    .await;
                    Ok::<_, BoxError>(status(429, Some("20")))
                } else {
                    Ok(status(429, Some("5")))
                }
            }
        }
    }));
    // The second call is in flight before the first; it answers while the first records
    // the start of its cool-down.
    let second_request = http::Request::builder()
        .header("x-second", "1")
        .body(())
        .expect("request");
    let mut second = service.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(second.poll_ready(&mut cx).is_ready());
    let mut second = Box::pin(second.call(second_request));
    assert!(second.as_mut().poll(&mut cx).is_pending());
    *gauge.hook.lock().expect("hook") = Some(Box::new(move || {
        answer.store(true, Ordering::Relaxed);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match second.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(response)) => assert_eq!(response.status(), 429),
            other => panic!("the second call is answered at once, not {other:?}"),
        }
    }));
    let first = service.clone().oneshot(request()).await.expect("answered");
    assert_eq!(first.status(), 429);
    assert!(gauge.hook.lock().expect("hook").is_none(), "the hook ran");
    assert_eq!(handle.snapshot().cooling_down_secs, 20);
    assert_eq!(*gauge.value.lock().expect("value"), 20.0);
    // The pause ends at 20 s for the next arrival, which meets the next pause.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(handle.snapshot().cooling_down_secs, 0);
    let after = service.clone().oneshot(request()).await.expect("answered");
    assert_eq!(after.status(), 429);
    assert_eq!(*gauge.value.lock().expect("value"), 5.0, "the next pause");
}

/// High requests, which may not wait: by their own bound (`x-no-wait`), or by their
/// level's maximum wait.
#[derive(Clone, Copy, Debug)]
struct NoWait;

impl tower_priority_queue::PriorityExtractor<Request> for NoWait {
    fn extract(
        &self,
        request: &Request,
    ) -> Result<tower_priority_queue::Priority, tower_priority_queue::QueueError> {
        tower_priority_queue::HeaderPriority::new().extract(request)
    }

    fn max_wait(&self, request: &Request) -> Option<Duration> {
        request
            .headers()
            .contains_key("x-no-wait")
            .then_some(Duration::ZERO)
    }
}

/// A request that may not wait (by its own bound or by its level's) meets a cool-down:
/// it is refused at once with what is left of the pause, and once the pause is over it is
/// admitted, even if nothing else has ended the pause yet.
#[tokio::test(start_paused = true)]
async fn a_request_that_may_not_wait_meets_a_cool_down() {
    for own in [true, false] {
        let upstream = service_fn(|request: Request| async move {
            if request.headers().contains_key("x-first") {
                Ok::<_, BoxError>(status(429, Some("5")))
            } else {
                Ok(status(200, None))
            }
        });
        let mut builder = PriorityQueueLayer::builder()
            .extractor(NoWait)
            .limit(Limit::adaptive().initial(4))
            .overload_classifier(HttpOverload::new());
        if !own {
            builder = builder.max_wait(tower_priority_queue::Priority::High, Duration::ZERO);
        }
        let layer = builder.build();
        let handle = layer.handle();
        let service = layer.layer(upstream);
        let first = http::Request::builder()
            .header("x-first", "1")
            .body(())
            .expect("request");
        let throttled = service.clone().oneshot(first).await.expect("answered");
        assert_eq!(throttled.status(), 429);
        let high = || {
            let mut request = http::Request::builder().header("x-priority", "high");
            if own {
                request = request.header("x-no-wait", "1");
            }
            request.body(()).expect("request")
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let error = service
            .clone()
            .oneshot(high())
            .await
            .expect_err("refused during the pause");
        let refusal = error
            .downcast_ref::<tower_priority_queue::QueueError>()
            .unwrap_or_else(|| panic!("a queue refusal, not {error}"));
        assert!(
            matches!(refusal, tower_priority_queue::QueueError::CoolingDown { retry_after, .. } if *retry_after == Duration::from_secs(4)),
            "own bound {own}: {refusal:?}"
        );
        assert_eq!(handle.snapshot().queue_size, 0, "it never waited");
        tokio::time::sleep(Duration::from_secs(4)).await;
        let response = service
            .clone()
            .oneshot(high())
            .await
            .unwrap_or_else(|error| panic!("own bound {own}: refused after the pause: {error}"));
        assert_eq!(response.status(), 200);
        assert_eq!(handle.snapshot().processing, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random requests against an upstream that answers after a while, some with 429 and
    /// a pause: whenever someone waits, every slot is in use or a pause runs (no waiter is
    /// left beside a free slot, e.g. after a pause ends), and nothing leaks.
    #[test]
    fn no_waiter_is_left_beside_a_free_slot(
        requests in prop::collection::vec((0_u64..6000, 0_usize..4, 0_u8..6, 0_u64..4000), 1..40),
        max in 1_usize..5,
        max_wait_ms in 500_u64..20_000,
    ) {
        paused_runtime().block_on(async move {
            let upstream = service_fn(|request: Request| async move {
                let kind: u8 = request.headers()["x-kind"].to_str().expect("ascii").parse().expect("kind");
                let latency: u64 = request.headers()["x-latency"].to_str().expect("ascii").parse().expect("ms");
                tokio::time::sleep(Duration::from_millis(latency)).await;
                Ok::<_, BoxError>(match kind {
                    0 => status(429, Some("1")),
                    1 => status(429, Some("3")),
                    2 => status(503, None),
                    _ => status(200, None),
                })
            });
            let layer = PriorityQueueLayer::builder()
                .limit(Limit::adaptive().max(max).initial(max))
                .overload_classifier(HttpOverload::new())
                .capacity(64)
                .max_wait_all(Duration::from_millis(max_wait_ms))
                .build();
            let handle = layer.handle();
            let service = layer.layer(upstream);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for (at, level, kind, latency) in requests {
                let request = http::Request::builder()
                    .header("x-priority", tower_priority_queue::Priority::ALL[level].as_str())
                    .header("x-kind", kind.to_string())
                    .header("x-latency", latency.to_string())
                    .body(())
                    .expect("request");
                let call: Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>> =
                    Box::pin(service.clone().oneshot(request));
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                    let _ = call.await;
                }));
            }
            // Look every 50 ms, once what happens at that instant has run.
            let mut violations = Vec::new();
            let mut at = start;
            while tasks.iter().any(|task| !task.is_finished()) {
                tokio::time::sleep_until(at).await;
                for _ in 0..64 {
                    tokio::task::yield_now().await;
                }
                let snapshot = handle.snapshot();
                if snapshot.queue_size > 0
                    && snapshot.processing < snapshot.limit
                    && snapshot.cooling_down_secs == 0
                {
                    violations.push((at - start, snapshot));
                }
                at += Duration::from_millis(50);
            }
            let violations: Vec<_> = violations.into_iter().take(3).collect();
            for task in tasks {
                task.await.expect("no panic");
            }
            assert!(violations.is_empty(), "waiting beside a free slot: {violations:?}");
            let snapshot = handle.snapshot();
            assert_eq!((snapshot.processing, snapshot.queue_size), (0, 0));
        });
    }
}
