//! Cost of the priority queue's admit path and of the retry layer, against a bare
//! baseline and tower's own layers, plus the wait per priority under saturation.
//!
//! Two threads on one slot run in one of two modes, the same for the queue and for
//! tower's `ConcurrencyLimit`: while a thread takes the slot back before the other has
//! parked, hand-overs are rare and a request costs hundreds of nanoseconds; once threads
//! park (one finds the slot taken, has nothing else to run, and its runtime sleeps on a
//! futex), every release must wake the sleeper, which takes microseconds to run, during
//! which the releasing thread's next request finds the slot handed over and parks in
//! turn: a convoy that lasts the run. Which one a run falls into is decided in its first
//! moments, so the one-slot rows print the share of requests that parked; the `_held`
//! rows force the convoy (each call keeps the slot for 5 µs, longer than parking takes).
//!
//! Run: `cargo bench -p tower-priority-queue --bench admission`.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bench_harness::Overlap;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue};
use http_body_util::Full;
use metrics_util::debugging::DebuggingRecorder;
use tower::limit::ConcurrencyLimitLayer;
use tower::retry::Policy;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_priority_queue::retry::clone_request;
use tower_priority_queue::{
    HttpOverload, Limit, Priority, PriorityQueueLayer, QueueError, RetryLayer,
};

type Request = http::Request<Full<Bytes>>;
type Response = http::Response<()>;

/// A fresh request as a client sends it: a small buffered body and the priority header.
/// Built without parsing (no URI or method strings), so that the baseline stays small and
/// the layers' costs stand out of the noise.
fn request() -> Request {
    const X_PRIORITY: HeaderName = HeaderName::from_static("x-priority");
    let mut request = http::Request::new(Full::new(Bytes::from_static(b"{\"id\":7}")));
    *request.method_mut() = http::Method::POST;
    request
        .headers_mut()
        .insert(X_PRIORITY, HeaderValue::from_static("high"));
    request
}

fn bare() -> impl Service<Request, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_request: Request| async { Ok::<_, Infallible>(Response::new(())) })
}

/// How long [`holding`]'s call keeps its slot: longer than a thread takes to find the
/// slot taken and park, so that every hand-over wakes a parked thread.
const HOLD: Duration = Duration::from_micros(5);

/// [`bare`], but its call spins for [`HOLD`] before answering (a call that is busy on
/// its core, not one that yields).
fn holding() -> impl Service<Request, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_request: Request| async {
        let until = std::time::Instant::now() + HOLD;
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        Ok::<_, Infallible>(Response::new(()))
    })
}

/// One request as middleware users send it: clone, ready, call, fresh request.
async fn drive<S>(service: &S)
where
    S: Service<Request, Response = Response> + Clone,
    S::Error: Debug,
{
    let mut service = service.clone();
    let ready = service.ready().await.expect("ready");
    black_box(ready.call(request()).await.expect("response"));
}

/// tower's `Retry` with a policy that keeps a copy of the request (as any retrying policy
/// must) and never retries.
#[derive(Clone)]
struct NeverRetry;

impl<E> Policy<Request, Response, E> for NeverRetry {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut Request, _: &mut Result<Response, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, request: &Request) -> Option<Request> {
        Some(clone_request(request))
    }
}

fn single_thread(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("one_thread");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let baseline = bare();
    group.bench_function("baseline_start", |b| {
        b.to_async(&runtime).iter(|| drive(&baseline));
    });
    let queue = PriorityQueueLayer::builder()
        .max_in_flight(2)
        .build()
        .layer(bare());
    group.bench_function("priority_queue", |b| {
        b.to_async(&runtime).iter(|| drive(&queue));
    });
    // The same with a metrics recorder behind the pre-resolved handles.
    let recorder = DebuggingRecorder::new();
    let recorded = metrics::with_local_recorder(&recorder, || {
        PriorityQueueLayer::builder().max_in_flight(2).build()
    })
    .layer(bare());
    group.bench_function("priority_queue_with_recorder", |b| {
        b.to_async(&runtime).iter(|| drive(&recorded));
    });
    // The same with an adaptive limit: each response is classified (its status read) and
    // fed to the controller. The bench keeps one request in flight, so once the limit has
    // grown past 2 it is idle and stays put, as in production between bursts.
    let adaptive = PriorityQueueLayer::builder()
        .limit(Limit::adaptive())
        .overload_classifier(HttpOverload::new())
        .build()
        .layer(bare());
    group.bench_function("priority_queue_adaptive", |b| {
        b.to_async(&runtime).iter(|| drive(&adaptive));
    });
    // The same without reading the header: the cost of the extractor.
    let fixed = PriorityQueueLayer::builder()
        .max_in_flight(2)
        .extractor(Priority::High)
        .build()
        .layer(bare());
    group.bench_function("priority_queue_fixed_priority", |b| {
        b.to_async(&runtime).iter(|| drive(&fixed));
    });
    let limit = ConcurrencyLimitLayer::new(2).layer(bare());
    group.bench_function("tower_concurrency_limit", |b| {
        b.to_async(&runtime).iter(|| drive(&limit));
    });
    let retry = RetryLayer::new().layer(bare());
    group.bench_function("retry", |b| {
        b.to_async(&runtime).iter(|| drive(&retry));
    });
    let tower_retry = tower::retry::RetryLayer::new(NeverRetry).layer(bare());
    group.bench_function("tower_retry", |b| {
        b.to_async(&runtime).iter(|| drive(&tower_retry));
    });
    group.bench_function("baseline_end", |b| {
        b.to_async(&runtime).iter(|| drive(&baseline));
    });
    group.finish();
}

/// Two OS threads contending on the same layer state (see `bench_harness`), each request
/// driven by [`drive`]; the per-thread time for `iters` requests.
fn contend<S>(service: &S, iters: u64, overlap: &Overlap) -> Duration
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Debug,
{
    bench_harness::contended(iters, overlap, service, async |service, _| {
        drive(service).await;
    })
}

/// Counts the requests of a contended run that had to wait for a hand-over: their future
/// returned `Pending` at least once, and with nothing else to run, their thread's runtime
/// parked the thread until the other thread's release woke it (a futex wake and a
/// context switch, microseconds, against tens of nanoseconds for a request that never
/// waits). The share of such requests decides which of the two modes a run is in.
#[derive(Debug, Default)]
struct Handovers {
    requests: AtomicU64,
    waited: AtomicU64,
}

impl Handovers {
    fn report(&self, name: &str) {
        let requests = self.requests.load(Ordering::Relaxed);
        let waited = self.waited.load(Ordering::Relaxed);
        if requests > 0 {
            #[allow(clippy::cast_precision_loss)]
            let share = waited as f64 * 100.0 / requests as f64;
            println!(
                "{name}: {share:.2}% of {requests} requests waited for a hand-over (parked their thread)"
            );
        }
    }
}

/// [`drive`], counting whether the request had to wait.
async fn drive_counting<S>(service: &S, handovers: &Handovers)
where
    S: Service<Request, Response = Response> + Clone,
    S::Error: Debug,
{
    let mut service = service.clone();
    // tower's ConcurrencyLimit waits in `poll_ready`, the queue in its response future.
    let mut waited = false;
    std::future::poll_fn(|cx| {
        let poll = service.poll_ready(cx);
        waited |= poll.is_pending();
        poll
    })
    .await
    .expect("ready");
    let mut call = std::pin::pin!(service.call(request()));
    let response = std::future::poll_fn(|cx| {
        let poll = call.as_mut().poll(cx);
        waited |= poll.is_pending();
        poll
    })
    .await;
    black_box(response.expect("response"));
    handovers.requests.fetch_add(1, Ordering::Relaxed);
    if waited {
        handovers.waited.fetch_add(1, Ordering::Relaxed);
    }
}

fn contend_counting<S>(
    service: &S,
    iters: u64,
    overlap: &Overlap,
    handovers: &Handovers,
) -> Duration
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Debug,
{
    bench_harness::contended(iters, overlap, service, async |service, _| {
        drive_counting(service, handovers).await;
    })
}

fn two_threads(c: &mut Criterion) {
    let overlap = Overlap::default();
    let mut group = c.benchmark_group("two_threads");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let baseline = bare();
    group.bench_function("baseline_start", |b| {
        b.iter_custom(|iters| contend(&baseline, iters, &overlap));
    });
    let queue = PriorityQueueLayer::builder()
        .max_in_flight(2)
        .build()
        .layer(bare());
    group.bench_function("priority_queue", |b| {
        b.iter_custom(|iters| contend(&queue, iters, &overlap));
    });
    let recorder = DebuggingRecorder::new();
    let recorded = metrics::with_local_recorder(&recorder, || {
        PriorityQueueLayer::builder().max_in_flight(2).build()
    })
    .layer(bare());
    group.bench_function("priority_queue_with_recorder", |b| {
        b.iter_custom(|iters| contend(&recorded, iters, &overlap));
    });
    let adaptive = PriorityQueueLayer::builder()
        .limit(Limit::adaptive())
        .overload_classifier(HttpOverload::new())
        .build()
        .layer(bare());
    group.bench_function("priority_queue_adaptive", |b| {
        b.iter_custom(|iters| contend(&adaptive, iters, &overlap));
    });
    let limit = ConcurrencyLimitLayer::new(2).layer(bare());
    group.bench_function("tower_concurrency_limit", |b| {
        b.iter_custom(|iters| contend(&limit, iters, &overlap));
    });
    // One slot for two threads: every other request queues (the slow path).
    let saturated = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .build()
        .layer(bare());
    let ours_handovers = Handovers::default();
    group.bench_function("priority_queue_one_slot", |b| {
        b.iter_custom(|iters| contend_counting(&saturated, iters, &overlap, &ours_handovers));
    });
    let limit_saturated = ConcurrencyLimitLayer::new(1).layer(bare());
    let peer_handovers = Handovers::default();
    group.bench_function("tower_concurrency_limit_one_slot", |b| {
        b.iter_custom(|iters| contend_counting(&limit_saturated, iters, &overlap, &peer_handovers));
    });
    // The slow mode, forced: the call holds the slot for a few microseconds, so the other
    // thread always finds it taken and parks, and every hand-over wakes a parked thread
    // (a futex wake and a context switch), for both implementations alike.
    let bare_held = holding();
    group.bench_function("baseline_held", |b| {
        b.iter_custom(|iters| contend(&bare_held, iters, &overlap));
    });
    let held = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .build()
        .layer(holding());
    let ours_held = Handovers::default();
    group.bench_function("priority_queue_one_slot_held", |b| {
        b.iter_custom(|iters| contend_counting(&held, iters, &overlap, &ours_held));
    });
    let limit_held = ConcurrencyLimitLayer::new(1).layer(holding());
    let peer_held = Handovers::default();
    group.bench_function("tower_concurrency_limit_one_slot_held", |b| {
        b.iter_custom(|iters| contend_counting(&limit_held, iters, &overlap, &peer_held));
    });
    let retry = RetryLayer::new().layer(bare());
    group.bench_function("retry", |b| {
        b.iter_custom(|iters| contend(&retry, iters, &overlap));
    });
    let tower_retry = tower::retry::RetryLayer::new(NeverRetry).layer(bare());
    group.bench_function("tower_retry", |b| {
        b.iter_custom(|iters| contend(&tower_retry, iters, &overlap));
    });
    group.bench_function("baseline_end", |b| {
        b.iter_custom(|iters| contend(&baseline, iters, &overlap));
    });
    group.finish();
    overlap.report("two_threads");
    ours_handovers.report("two_threads/priority_queue_one_slot");
    peer_handovers.report("two_threads/tower_concurrency_limit_one_slot");
    ours_held.report("two_threads/priority_queue_one_slot_held");
    peer_held.report("two_threads/tower_concurrency_limit_one_slot_held");
}

/// Saturation on paused time: 2 slots, 100 ms calls (20/s), 25 arrivals/s with uniformly
/// random priorities for 200 s. Prints the wait percentiles per level and the sheds.
fn saturation(_c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let waits: Arc<Mutex<[Vec<Duration>; 4]>> = Arc::default();
        let inner = {
            let waits = Arc::clone(&waits);
            service_fn(
                move |request: http::Request<(Priority, tokio::time::Instant)>| {
                    let (priority, arrived) = *request.body();
                    let index = Priority::ALL
                        .iter()
                        .position(|p| *p == priority)
                        .unwrap_or(0);
                    waits.lock().expect("waits")[index].push(arrived.elapsed());
                    async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, Infallible>(())
                    }
                },
            )
        };
        let service = PriorityQueueLayer::builder()
            .max_in_flight(2)
            .capacity(64)
            .max_wait_all(Duration::from_secs(10))
            .extractor(tower_priority_queue::priority_fn(
                |request: &http::Request<(Priority, tokio::time::Instant)>| request.body().0,
            ))
            .build()
            .layer(inner);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut tasks = Vec::new();
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let priority = Priority::ALL[usize::try_from(seed % 4).unwrap_or(0)];
            let mut service = service.clone();
            service.ready().await.expect("ready");
            let request = http::Request::new((priority, tokio::time::Instant::now()));
            tasks.push((priority, tokio::spawn(service.call(request))));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let mut shed = [0usize; 4];
        for (priority, task) in tasks {
            if let Err(error) = task.await.expect("task") {
                assert!(error.is::<QueueError>());
                shed[Priority::ALL
                    .iter()
                    .position(|p| *p == priority)
                    .unwrap_or(0)] += 1;
            }
        }
        let mut waits = waits.lock().expect("waits");
        for (index, level) in Priority::ALL.iter().enumerate() {
            let served = &mut waits[index];
            served.sort();
            let percentile = |p: usize| {
                served
                    .get((served.len() * p / 100).min(served.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or_default()
            };
            println!(
                "saturation {level:>6}: served {:>4}, shed {:>4}, wait p50 {:>8.3?}, p99 {:>8.3?}",
                served.len(),
                shed[index],
                percentile(50),
                percentile(99),
            );
        }
    });
}

criterion_group!(benches, single_thread, two_threads, saturation);
criterion_main!(benches);
