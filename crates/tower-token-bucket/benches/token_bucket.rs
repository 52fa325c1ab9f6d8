//! The admitted path of the rate limiter against a bare `service_fn`, bare governor and
//! `tower_governor`, on one thread and with two threads contending; and the resident
//! memory of a limiter that has seen 1,000,000 keys.
//!
//! Run: `cargo bench -p tower-token-bucket --bench token_bucket -- --measurement-time 3`
//!
//! tower's own `RateLimit` is not a peer here: it is not `Clone`, and its state lives in
//! each service instance, so driven as users drive services (a clone per request) it
//! does not limit at all. `tower_governor` is configured to admit everything and measured
//! over a baseline of its own request/response types (axum's `Body`); the layer is also
//! measured over that baseline (`layer-global-axum-body`).

use std::convert::Infallible;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bench_harness::Overlap;
use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use governor::{Quota as GovQuota, RateLimiter};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::GlobalKeyExtractor;
use tower_token_bucket::{InMemoryBackend, KeyError, Quota, RateLimitLayer, key_fn};

/// A quota nothing in this bench can exhaust: a token every nanosecond, a huge burst.
fn never_refuse() -> Quota {
    Quota::new(1, Duration::from_nanos(1)).with_burst(u32::MAX)
}

fn gov_never_refuse() -> GovQuota {
    GovQuota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX)
}

/// The i-th key among `n`, scattered.
#[inline]
fn key(i: u64, n: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n
}

/// Drives a service as middleware users do: clone, ready, call with a fresh request.
async fn drive<S>(svc: &S, body: u64)
where
    S: Service<Request<u64>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    let svc = svc.ready().await.unwrap();
    black_box(svc.call(Request::new(body)).await.unwrap());
}

fn baseline()
-> impl Service<Request<u64>, Response = Response<()>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|req: Request<u64>| {
        black_box(req);
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    })
}

fn axum_baseline()
-> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|req: Request<Body>| {
        black_box(req);
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::empty())))
    })
}

async fn drive_axum<S>(svc: &S)
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    let svc = svc.ready().await.unwrap();
    black_box(svc.call(Request::new(Body::empty())).await.unwrap());
}

fn by_body() -> impl tower_token_bucket::ExtractKey<Request<u64>, Key = u64> {
    key_fn(|r: &Request<u64>| Ok::<_, KeyError>(*r.body()))
}

fn single_thread(c: &mut Criterion, rt: &tokio::runtime::Runtime, tag: &str) {
    let mut g = c.benchmark_group("1-thread");
    let base = baseline();
    g.bench_function(format!("baseline-{tag}"), |b| {
        let mut i = 0u64;
        b.to_async(rt).iter(|| {
            i += 1;
            drive(&base, key(i, 1))
        });
    });
    if tag == "end" {
        g.finish();
        return;
    }

    let global = RateLimitLayer::builder(never_refuse())
        .build()
        .layer(baseline());
    g.bench_function("layer-global", |b| {
        b.to_async(rt).iter(|| drive(&global, 0));
    });

    for n in [1_000u64, 100_000] {
        let layer = RateLimitLayer::builder(never_refuse())
            .key(by_body())
            .max_keys(1_000_000)
            .prune_interval(Duration::from_secs(3600))
            .build();
        let svc = layer.layer(baseline());
        g.bench_function(format!("layer-keys-{n}"), |b| {
            let mut i = 0u64;
            b.to_async(rt).iter(|| {
                i += 1;
                drive(&svc, key(i, n))
            });
        });
    }

    let direct = RateLimiter::direct(gov_never_refuse());
    g.bench_function("governor-check-global", |b| {
        b.iter(|| black_box(direct.check()).is_ok());
    });
    for n in [1_000u64, 100_000] {
        let keyed = RateLimiter::<u64, _, _>::keyed(gov_never_refuse());
        g.bench_function(format!("governor-check-keys-{n}"), |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                black_box(keyed.check_key(&key(i, n))).is_ok()
            });
        });
    }

    // The clock read the in-process backend pays per decision with `Clock::Tokio` (tests
    // that pause time), against the TSC clock it reads by default, as governor does.
    g.bench_function("clock-tokio-instant-now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()));
    });
    let quanta = governor::clock::QuantaClock::default();
    g.bench_function("clock-governor-quanta-now", |b| {
        b.iter(|| black_box(governor::clock::Clock::now(&quanta)));
    });

    let in_memory = InMemoryBackend::<()>::new(&[never_refuse()]);
    g.bench_function("backend-decide-global", |b| {
        b.iter(|| black_box(in_memory.decide(&(), NonZeroU32::MIN)));
    });

    let axum_base = axum_baseline();
    g.bench_function("axum-baseline", |b| {
        b.to_async(rt).iter(|| drive_axum(&axum_base));
    });
    let tg = tower_governor_layer().layer(axum_baseline());
    g.bench_function("tower_governor-global", |b| {
        b.to_async(rt).iter(|| drive_axum(&tg));
    });
    let ours_axum = RateLimitLayer::builder(never_refuse())
        .build()
        .layer(axum_baseline());
    g.bench_function("layer-global-axum-body", |b| {
        b.to_async(rt).iter(|| drive_axum(&ours_axum));
    });
    g.finish();
}

fn tower_governor_layer() -> tower_governor::GovernorLayer<
    GlobalKeyExtractor,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    Body,
> {
    let config = GovernorConfigBuilder::default()
        .key_extractor(GlobalKeyExtractor)
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .finish()
        .unwrap();
    tower_governor::GovernorLayer::new(config)
}

/// What one of the two contending threads does per request.
trait Op: Clone + Send + 'static {
    fn run(&self, i: u64) -> impl std::future::Future<Output = ()> + '_;
}

/// A service driven as [`drive`] does (one clone per request), keyed by `key(i)`.
#[derive(Clone)]
struct Drive<S>(S, fn(u64) -> u64);

impl<S> Op for Drive<S>
where
    S: Service<Request<u64>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    fn run(&self, i: u64) -> impl std::future::Future<Output = ()> + '_ {
        drive(&self.0, (self.1)(i))
    }
}

/// An axum-body service driven as [`drive_axum`] does.
#[derive(Clone)]
struct DriveAxum<S>(S);

impl<S> Op for DriveAxum<S>
where
    S: Service<Request<Body>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    fn run(&self, _: u64) -> impl std::future::Future<Output = ()> + '_ {
        drive_axum(&self.0)
    }
}

/// Bare governor: one `check()` per iteration.
#[derive(Clone)]
struct Check(
    Arc<
        RateLimiter<
            governor::state::NotKeyed,
            governor::state::InMemoryState,
            governor::clock::DefaultClock,
        >,
    >,
);

impl Op for Check {
    fn run(&self, _: u64) -> impl std::future::Future<Output = ()> + '_ {
        black_box(self.0.check().is_ok());
        std::future::ready(())
    }
}

fn two_threads(c: &mut Criterion) {
    let mut g: BenchmarkGroup<'_, WallTime> = c.benchmark_group("2-threads");

    bench_contended(&mut g, "baseline", &Drive(baseline(), |i| i));

    let global = RateLimitLayer::builder(never_refuse())
        .build()
        .layer(baseline());
    bench_contended(&mut g, "layer-global", &Drive(global, |_| 0));

    let layer = RateLimitLayer::builder(never_refuse())
        .key(by_body())
        .max_keys(1_000_000)
        .prune_interval(Duration::from_secs(3600))
        .build();
    let keyed = layer.layer(baseline());
    bench_contended(
        &mut g,
        "layer-keys-100000",
        &Drive(keyed, |i| key(i, 100_000)),
    );

    let direct = Arc::new(RateLimiter::direct(gov_never_refuse()));
    bench_contended(&mut g, "governor-check-global", &Check(direct));

    bench_contended(&mut g, "axum-baseline", &DriveAxum(axum_baseline()));
    let tg = tower_governor_layer().layer(axum_baseline());
    bench_contended(&mut g, "tower_governor-global", &DriveAxum(tg));
    g.finish();
}

/// Two OS threads contending (see `bench_harness`), each request one [`Op::run`].
fn bench_contended<O: Op>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, op: &O) {
    let overlap = Overlap::default();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            bench_harness::contended(iters, &overlap, op, async |op, i| op.run(i).await)
        });
    });
    overlap.report(&format!("2-threads/{name}"));
}

/// Resident set size in bytes, from `/proc/self/statm`.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Resident memory of a limiter that has seen 1,000,000 distinct keys.
fn memory_report() {
    const KEYS: u64 = 1_000_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let before = rss().unwrap_or(0);
        let ints = InMemoryBackend::<u64>::with_limits(
            &[Quota::per_second(5)],
            2_000_000,
            Duration::from_secs(3600),
        );
        for k in 0..KEYS {
            black_box(ints.decide(&k, NonZeroU32::MIN));
        }
        let after = rss().unwrap_or(0);
        println!(
            "memory: 1,000,000 u64 keys: {:.1} MiB resident ({:.0} B/key)",
            (after - before) as f64 / 1_048_576.0,
            (after - before) as f64 / KEYS as f64
        );
        drop(ints);

        let before = rss().unwrap_or(0);
        let users = InMemoryBackend::<bytes::Bytes>::with_limits(
            &[Quota::per_second(5)],
            2_000_000,
            Duration::from_secs(3600),
        );
        for k in 0..KEYS {
            let id = bytes::Bytes::from(format!("user-{k:010}"));
            black_box(users.decide(&id, NonZeroU32::MIN));
        }
        let after = rss().unwrap_or(0);
        println!(
            "memory: 1,000,000 header keys (16 B user ids): {:.1} MiB resident ({:.0} B/key)",
            (after - before) as f64 / 1_048_576.0,
            (after - before) as f64 / KEYS as f64
        );
        let capped = InMemoryBackend::<u64>::new(&[Quota::per_second(5)]);
        for k in 0..KEYS {
            black_box(capped.decide(&k, NonZeroU32::MIN));
        }
        println!(
            "memory: default cap: after 1,000,000 keys, {} tracked",
            tower_token_bucket::RateLimitBackend::tracked_keys(&capped).unwrap_or(0)
        );
    });
}

fn main() {
    memory_report();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    single_thread(&mut c, &rt, "start");
    two_threads(&mut c);
    single_thread(&mut c, &rt, "end");
    c.final_summary();
}
