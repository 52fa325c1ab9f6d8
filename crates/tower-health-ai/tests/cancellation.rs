//! Whole-preset cancellation: 10,000 requests over an upstream with random latencies,
//! hangs past the call timeout, failures and 429s, each dropped at a random point (before
//! its first poll, while limited, queued, waiting for an identical call, in the call, in
//! a backoff, or while its answer's body is read). Afterwards the handles show no slot,
//! no queued request and no half-open probe held, the upstream has no call running, and
//! every cache key answers a fresh request at once with a real answer (a single-flight
//! leadership left behind would keep it waiting until its deadline).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_health_ai::Clock;
use tower_health_ai::breaker::State;
use tower_health_ai::token_bucket::Quota;
use tower_health_ai::{HealthAiStack, UpstreamRequest};

const REQUESTS: u64 = 10_000;
const USERS: u64 = 40;
const BODIES: u64 = 5;
/// Arrivals spread over this much (paused) time.
const SPREAD: Duration = Duration::from_secs(300);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(20);
/// When every call fails, from the test's start.
const OUTAGES: [(Duration, Duration); 2] = [
    (Duration::from_secs(60), Duration::from_secs(100)),
    (Duration::from_secs(180), Duration::from_secs(200)),
];

/// splitmix64: a small seeded generator, so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.below(max + 1))
    }
}

/// The upstream: random latency, sometimes a hang past the call timeout, a failure or a
/// 429 with `Retry-After`, unless `healthy`. Counts the calls running now.
#[derive(Clone)]
struct Upstream {
    seed: Arc<AtomicU64>,
    running: Arc<AtomicUsize>,
    calls: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    born: Instant,
}

/// A running call: counted while it lives, also when its caller drops it.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Upstream {
    fn new() -> Self {
        Self {
            seed: Arc::new(AtomicU64::new(7)),
            running: Arc::new(AtomicUsize::new(0)),
            calls: Arc::new(AtomicU64::new(0)),
            healthy: Arc::new(AtomicBool::new(false)),
            born: Instant::now(),
        }
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
                this.running.fetch_add(1, Ordering::SeqCst);
                let _running = Running(Arc::clone(&this.running));
                let mut rng = Rng(this.seed.fetch_add(1, Ordering::SeqCst));
                let body = request.into_body().collect().await?.to_bytes();
                let answer = || {
                    Ok(Response::new(Body::from(format!(
                        "ai:{}",
                        String::from_utf8_lossy(&body)
                    ))))
                };
                if this.healthy.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return answer();
                }
                // Two outages, long enough to open the circuit and send probes.
                let now = this.born.elapsed();
                if OUTAGES.iter().any(|(from, to)| now >= *from && now < *to) {
                    tokio::time::sleep(rng.millis(Duration::from_millis(500))).await;
                    return Err("upstream down".into());
                }
                match rng.below(100) {
                    // Overloaded: at once, with a wait.
                    0..10 => Ok(Response::builder()
                        .status(StatusCode::TOO_MANY_REQUESTS)
                        .header("retry-after", "1")
                        .body(Body::empty())?),
                    // A hang past the call timeout.
                    10..15 => {
                        tokio::time::sleep(CALL_TIMEOUT * 3).await;
                        answer()
                    }
                    // A failure after a while.
                    15..30 => {
                        tokio::time::sleep(rng.millis(Duration::from_secs(2))).await;
                        Err("upstream failed".into())
                    }
                    _ => {
                        tokio::time::sleep(rng.millis(Duration::from_secs(3))).await;
                        answer()
                    }
                }
            }
        })
    }
}

fn request(user: u64, body: u64, priority: u64) -> Request<Body> {
    Request::post("/analyze")
        .header("x-user-id", format!("user-{user}"))
        .header(
            "x-priority",
            ["urgent", "high", "normal", "low"][(priority % 4) as usize],
        )
        .body(Body::from(format!("record-{body}")))
        .unwrap()
}

fn stack() -> HealthAiStack {
    HealthAiStack::builder()
        .clock(Clock::Tokio)
        .per_user_quota(Quota::per_second(10_000))
        .global_quota(Quota::per_second(50))
        .global_max_wait(Duration::from_secs(10))
        // Short-lived entries, so that calls keep going to the upstream.
        .cache_ttl(Duration::from_secs(2))
        .cache_stale_grace(Duration::from_secs(2))
        .call_timeout(CALL_TIMEOUT)
        .request_deadline(DEADLINE)
        .breaker_open_for(Duration::from_secs(5))
        .max_in_flight(16)
        .queue_capacity(100)
        .priority_header(tower_health_ai::PriorityHeader::Trusted)
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_dropped_requests_leave_nothing_held() {
    let upstream = Upstream::new();
    let stack = stack();
    let handle = stack.handle();
    let service = stack.layer(upstream.service());
    let mut rng = Rng(42);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let mut keys = BTreeSet::new();
    for _ in 0..REQUESTS {
        let (user, body, priority) = (rng.below(USERS), rng.below(BODIES), rng.below(4));
        keys.insert((user, body));
        let arrival = rng.millis(SPREAD);
        let how = rng.below(10);
        let after = rng.millis(DEADLINE + Duration::from_secs(2));
        let mut service = service.clone();
        let dropped = Arc::clone(&dropped);
        tasks.spawn(async move {
            tokio::time::sleep(arrival).await;
            let Ok(ready) = ServiceExt::<Request<Body>>::ready(&mut service).await;
            let future = ready.call(request(user, body, priority));
            match how {
                // Dropped before its first poll.
                0 => drop(future),
                // Dropped after one poll.
                1 => {
                    let mut future = Box::pin(future);
                    let _ = futures_util::poll!(future.as_mut());
                    drop(future);
                }
                // Dropped while its answer's body is read (after the first frame).
                2 => {
                    if let Ok(Ok(response)) = tokio::time::timeout(after, future).await {
                        let mut body = response.into_body();
                        let _ = body.frame().await;
                        drop(body);
                    }
                }
                // Dropped at a random time, which may be after its answer.
                _ => {
                    if tokio::time::timeout(after, future).await.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let dropped_in_flight = dropped.load(Ordering::Relaxed);
    assert!(
        dropped_in_flight > REQUESTS / 10,
        "only {dropped_in_flight} requests were dropped while running"
    );
    assert!(
        upstream.calls.load(Ordering::SeqCst) > 1_000,
        "too few calls reached the upstream to test anything: {}",
        upstream.calls.load(Ordering::SeqCst)
    );

    let breaker = handle.metrics().circuit_breaker;
    assert!(
        breaker.rejected_calls > 0,
        "the outages never opened the circuit: {breaker:?}"
    );

    // Let every timer inside the stack run out: open periods, cool-downs, backoffs.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let metrics = handle.metrics();
    assert_eq!(
        metrics.queue.processing, 0,
        "slots held: {:?}",
        metrics.queue
    );
    assert_eq!(metrics.queue.queue_size, 0, "queued: {:?}", metrics.queue);
    assert_eq!(
        metrics.circuit_breaker.probes_in_flight, 0,
        "probes held: {:?}",
        metrics.circuit_breaker
    );
    assert_eq!(upstream.running.load(Ordering::SeqCst), 0);

    // The upstream recovers. No leadership was left behind: every key used gets a real
    // answer at once (a waiter behind a lost leader would wait for its 20 s deadline).
    upstream.healthy.store(true, Ordering::SeqCst);
    handle.breaker().reset();
    for (user, body) in keys {
        let asked = Instant::now();
        let response = service
            .clone()
            .oneshot(request(user, body, 2))
            .await
            .unwrap();
        let degraded = response.headers().contains_key("x-degraded");
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            !degraded && text.starts_with(b"ai:"),
            "user-{user} record-{body}: {:?} after {:?}",
            String::from_utf8_lossy(&text),
            asked.elapsed()
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
    }
    assert_eq!(handle.circuit_state(), State::Closed);
    let metrics = handle.metrics();
    assert_eq!(metrics.queue.processing, 0);
    assert_eq!(metrics.queue.queue_size, 0);
    println!(
        "cancellation: {REQUESTS} requests over {:?} of paused time, {dropped_in_flight} dropped \
         while running, {} upstream calls, {} refused by the open circuit",
        start.elapsed(),
        upstream.calls.load(Ordering::SeqCst),
        handle.metrics().circuit_breaker.rejected_calls,
    );
}
