//! The Redis backend against a `redis-server` the bench starts on a free port:
//!
//! - `latency`: one decision at a time on one connection; p50/p99 printed from 20,000
//!   timed decisions, and criterion's mean;
//! - `concurrent-64`: 64 tasks deciding at once on one multiplexed connection, on a
//!   two-worker runtime (criterion's time is per decision; decisions/s printed);
//! - `layer-*`: the admitted path through the layer, in-memory and Redis, per request
//!   (the difference is what Redis adds);
//! - `refusal-*`: a refused key, answered by the in-memory backend and by the Redis
//!   backend's local cache of refusals (no round trip).
//!
//! Run: `cargo bench -p tower-token-bucket --features redis --bench redis --
//! --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use redis_test_server::RedisServer;
use tower::{Layer, ServiceExt, service_fn};
use tower_token_bucket::{
    Decision, FailurePolicy, InMemoryBackend, KeyError, Quota, RateLimitBackend, RateLimitLayer,
    RedisBackend, key_fn,
};

/// A quota nothing here can exhaust.
fn never_refuse() -> Quota {
    Quota::new(1, Duration::from_nanos(1)).with_burst(u32::MAX)
}

const ONE: NonZeroU32 = NonZeroU32::MIN;

fn percentiles(rt: &tokio::runtime::Runtime, backend: &RedisBackend<u64>) {
    let mut samples = rt.block_on(async {
        let mut samples = Vec::with_capacity(20_000);
        for i in 0..20_000u64 {
            let start = Instant::now();
            let decision = backend.check(&(i % 1000), ONE).await;
            samples.push(start.elapsed());
            assert_eq!(decision, Decision::Allowed);
        }
        samples
    });
    samples.sort();
    let at = |p: usize| samples[samples.len() * p / 100];
    println!(
        "redis decision latency, one connection, 20,000 sequential: p50 {:?}, p99 {:?}, max {:?}",
        at(50),
        at(99),
        samples[samples.len() - 1]
    );
}

fn throughput(rt: &tokio::runtime::Runtime, backend: &RedisBackend<u64>, total: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    for i in 0..total.div_ceil(64) {
                        let decision = backend.check(&((t * 7919 + i) % 1000), ONE).await;
                        assert_eq!(decision, Decision::Allowed);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

fn main() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = |rt: &tokio::runtime::Runtime, prefix: &str, quota: Quota| {
        let url = server.url();
        rt.block_on(async {
            RedisBackend::from_url(&url)
                .unwrap()
                .prefix(prefix)
                .timeout(Duration::from_secs(1))
                .failure_policy(FailurePolicy::FailClosed)
                .build::<u64>(&[quota])
        })
    };

    // Latency, one connection.
    let one = backend(&rt, "lat:", never_refuse());
    percentiles(&rt, &one);
    let mut g = c.benchmark_group("redis");
    g.bench_function("latency", |b| {
        let mut i = 0u64;
        b.to_async(&rt).iter(|| {
            i += 1;
            let one = &one;
            async move { black_box(one.check(&(i % 1000), ONE).await) }
        });
    });

    // 64 concurrent decisions on one connection, two worker threads.
    let shared = backend(&multi, "conc:", never_refuse());
    let elapsed = throughput(&multi, &shared, 64_000);
    println!(
        "redis decisions/s, 64 concurrent on one connection, 2 workers: {:.0}",
        64_000.0 / elapsed.as_secs_f64()
    );
    g.throughput(criterion::Throughput::Elements(1));
    g.bench_function("concurrent-64", |b| {
        b.iter_custom(|iters| {
            // Whole rounds of 64; the time is scaled back to `iters` decisions.
            let run = iters.div_ceil(64) * 64;
            #[allow(clippy::cast_precision_loss)]
            let scale = iters as f64 / run as f64;
            throughput(&multi, &shared, run).mul_f64(scale)
        });
    });

    // The admitted path through the layer: in-memory, then Redis.
    let by_body = || key_fn(|r: &u64| Ok::<_, KeyError>(*r % 1000));
    let inner = || service_fn(|r: u64| async move { Ok::<_, tower::BoxError>(black_box(r)) });
    let memory = RateLimitLayer::builder(never_refuse())
        .key(by_body())
        .build()
        .layer(inner());
    let redis = {
        let _guard = rt.enter();
        RateLimitLayer::builder(never_refuse())
            .key(by_body())
            .build_redis(
                RedisBackend::from_url(&server.url())
                    .unwrap()
                    .prefix("layer:")
                    .timeout(Duration::from_secs(1))
                    .failure_policy(FailurePolicy::FailClosed),
            )
            .layer(inner())
    };
    g.bench_function("layer-in-memory", |b| {
        let mut i = 0u64;
        b.to_async(&rt).iter(|| {
            i += 1;
            memory.clone().oneshot(i)
        });
    });
    g.bench_function("layer-redis", |b| {
        let mut i = 0u64;
        b.to_async(&rt).iter(|| {
            i += 1;
            redis.clone().oneshot(i)
        });
    });

    // A refused key: the in-memory backend's refusal, and the Redis backend's local one.
    let memory = InMemoryBackend::<u64>::new(&[Quota::per_hour(1)]);
    let refused = Arc::new(backend(&rt, "refused:", Quota::per_hour(1)));
    rt.block_on(async {
        assert_eq!(memory.check(&1, ONE).await, Decision::Allowed);
        assert!(matches!(
            memory.check(&1, ONE).await,
            Decision::Limited { .. }
        ));
        assert_eq!(refused.check(&1, ONE).await, Decision::Allowed);
        assert!(matches!(
            refused.check(&1, ONE).await,
            Decision::Limited { .. }
        ));
    });
    g.bench_function("refusal-in-memory", |b| {
        let _guard = rt.enter();
        b.iter(|| black_box(memory.decide(black_box(&1), ONE)));
    });
    let trips = refused.stats().round_trips;
    g.bench_function("refusal-redis-local", |b| {
        let _guard = rt.enter();
        b.iter(|| {
            let mut check = refused.check(black_box(&1), ONE);
            // Ready at once: polled with a no-op waker, as the layer does.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            black_box(std::pin::Pin::new(&mut check).poll_ready_now(&mut cx))
        });
    });
    assert_eq!(
        refused.stats().round_trips,
        trips,
        "a refusal went to redis"
    );
    g.finish();
    c.final_summary();
}

/// Polls a future once.
trait PollNow: std::future::Future {
    fn poll_ready_now(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Option<Self::Output> {
        match self.poll(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }
}

impl<F: std::future::Future + ?Sized> PollNow for F {}
