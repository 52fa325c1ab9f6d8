//! `RedisBackend` against a real `redis-server`, started per test on a free port.
//!
//! These tests run in real time where Redis's `TIME` decides (tokio's paused clock
//! would race the socket: it jumps to the next timer whenever the runtime idles, which
//! fires every decision's timeout at once). Their tolerances are generous, for slow
//! machines; the exact arithmetic is checked with a manual clock instead.
//!
//! Without `redis-server` installed they print a note and pass, unless
//! `HEALTH_AI_REQUIRE_REDIS=1` (CI), where they fail.

use std::net::TcpListener;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use redis_test_server::RedisServer;
use tower::{Service, ServiceExt, service_fn};
use tower_token_bucket::{
    Decision, FailurePolicy, InMemoryBackend, ManualClock, Quota, RateLimitBackend, RateLimitError,
    RateLimitLayer, RedisBackend, RedisBackendBuilder, RedisClock, Refusal, key_fn,
};

const ONE: NonZeroU32 = NonZeroU32::MIN;

/// Starts a server, or returns from the test (with a note) when there is none.
macro_rules! server {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A prefix no other test run shares.
fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{test}-{}:", N.fetch_add(1, Ordering::Relaxed))
}

fn builder(
    url: &str,
    test: &str,
) -> RedisBackendBuilder<tower_token_bucket::redis::aio::ConnectionManager> {
    RedisBackend::from_url(url).unwrap().prefix(prefix(test))
}

async fn decide<B: RateLimitBackend<K>, K>(backend: &B, key: &K, cost: u32) -> Decision {
    backend.check(key, NonZeroU32::new(cost).unwrap()).await
}

// ---------------------------------------------------------------------------------
// The in-memory backend's properties, on Redis, with a manual clock: the same traffic
// at the same times gets the same decisions, retry-afters included, as from the
// in-memory backend; and the bound `burst + rate * t` holds.

/// Quotas whose interval is a whole number of milliseconds, so that both backends
/// compute with exactly the same interval.
fn quota() -> impl Strategy<Value = Quota> {
    (1u32..20, 1u64..250, 1u32..30).prop_map(|(count, interval_ms, burst)| {
        Quota::new(count, Duration::from_millis(interval_ms * u64::from(count))).with_burst(burst)
    })
}

/// (wait before the request in µs, its cost)
fn traffic() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec((0u64..400_000, 1u32..8), 1..60)
}

fn in_memory_decisions(quotas: &[Quota], traffic: &[(u64, u32)]) -> Vec<Decision> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = InMemoryBackend::<u8>::with_clock(
            quotas,
            tower_token_bucket::DEFAULT_MAX_KEYS,
            tower_token_bucket::DEFAULT_PRUNE_INTERVAL,
            tower_token_bucket::Clock::Tokio,
        );
        let mut out = Vec::new();
        for &(gap, cost) in traffic {
            tokio::time::advance(Duration::from_micros(gap)).await;
            out.push(backend.decide(&7, NonZeroU32::new(cost).unwrap()));
        }
        out
    })
}

fn redis_decisions(url: &str, quotas: &[Quota], traffic: &[(u64, u32)]) -> Vec<(u64, Decision)> {
    runtime().block_on(async {
        let clock = ManualClock::new();
        let backend = builder(url, "prop")
            .clock(RedisClock::Manual(clock.clone()))
            .timeout(Duration::from_secs(5))
            .failure_policy(FailurePolicy::FailClosed)
            .build::<u8>(quotas);
        let mut out = Vec::new();
        for &(gap, cost) in traffic {
            clock.advance(Duration::from_micros(gap));
            let at = u64::try_from(clock.now().as_micros()).unwrap();
            out.push((at, decide(&backend, &7, cost).await));
        }
        assert_eq!(backend.stats().failures, 0, "redis failed");
        out
    })
}

#[test]
fn redis_decides_exactly_as_the_in_memory_backend() {
    let server = server!();
    let url = server.url();
    proptest!(ProptestConfig::with_cases(48), |(
        quotas in prop::collection::vec(quota(), 1..3),
        traffic in traffic(),
    )| {
        let expected = in_memory_decisions(&quotas, &traffic);
        let got = redis_decisions(&url, &quotas, &traffic);
        let got_decisions: Vec<Decision> = got.iter().map(|(_, d)| *d).collect();
        prop_assert_eq!(&got_decisions, &expected);
        // And the bound itself: over any window t, at most burst + t / interval tokens.
        let admitted: Vec<(u64, u64)> = got
            .iter()
            .zip(&traffic)
            .filter(|((_, d), _)| *d == Decision::Allowed)
            .map(|((at, _), (_, cost))| (*at, u64::from(*cost)))
            .collect();
        for q in &quotas {
            let t = u64::try_from(q.replenish_interval().as_micros()).unwrap();
            for i in 0..admitted.len() {
                let mut spent = 0;
                for &(at, cost) in &admitted[i..] {
                    spent += cost;
                    let window = at - admitted[i].0;
                    prop_assert!(spent * t <= u64::from(q.burst()) * t + window);
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------

#[test]
fn three_instances_share_one_quota() {
    let server = server!();
    runtime().block_on(async {
        let prefix = prefix("three");
        // Three instances, each with its own connection.
        let instances: Vec<_> = (0..3)
            .map(|_| {
                RedisBackend::from_url(&server.url())
                    .unwrap()
                    .prefix(prefix.clone())
                    .timeout(Duration::from_secs(2))
                    .failure_policy(FailurePolicy::FailClosed)
                    .build::<String>(&[Quota::per_second(10)])
            })
            .collect();
        let alone: Vec<_> = (0..3)
            .map(|_| InMemoryBackend::<String>::new(&[Quota::per_second(10)]))
            .collect();
        let key = "alice".to_owned();
        let start = Instant::now();
        let (mut shared, mut separate) = (0u64, 0u64);
        for _ in 0..20 {
            for (redis, memory) in instances.iter().zip(&alone) {
                if decide(redis, &key, 1).await == Decision::Allowed {
                    shared += 1;
                }
                if memory.decide(&key, ONE) == Decision::Allowed {
                    separate += 1;
                }
            }
        }
        let elapsed = start.elapsed();
        // The burst of 10, plus one token per 100 ms that passed (a slow machine may
        // take a while over 60 round trips), across all three.
        let refilled = u64::try_from(elapsed.as_millis() / 100).unwrap();
        assert!(shared >= 10, "shared admitted {shared}");
        assert!(
            shared <= 10 + refilled + 1,
            "shared admitted {shared} in {elapsed:?}"
        );
        assert!(
            separate >= 30,
            "three separate limiters admitted {separate}"
        );
        for redis in &instances {
            assert_eq!(redis.stats().failures, 0);
        }
    });
}

#[test]
fn weighted_costs_and_several_quotas_on_redis() {
    let server = server!();
    runtime().block_on(async {
        // Slow refills (a token per 5 s and per 300 s), so a slow machine changes nothing.
        let fast = Quota::new(20, Duration::from_secs(100));
        let hourly = Quota::per_hour(12);
        let backend = builder(&server.url(), "weighted")
            .failure_policy(FailurePolicy::FailClosed)
            .timeout(Duration::from_secs(2))
            .build::<u64>(&[fast, hourly]);
        // Cost above the smallest burst: refused without a round trip.
        assert_eq!(
            decide(&backend, &1, 13).await,
            Decision::CostTooLarge { quota: hourly }
        );
        assert_eq!(backend.stats().round_trips, 0);
        assert_eq!(decide(&backend, &1, 8).await, Decision::Allowed); // 12 and 4 left
        // The first quota has room, the hourly one refuses: six tokens short.
        match decide(&backend, &1, 10).await {
            Decision::Limited { quota, retry_after } => {
                assert_eq!(quota, hourly);
                assert!(retry_after > Duration::from_secs(1500), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(1800), "{retry_after:?}");
            }
            other => panic!("expected Limited, got {other:?}"),
        }
        // The refusal spent nothing from the first quota: 4 fits both (8 and 0 left)...
        assert_eq!(decide(&backend, &1, 4).await, Decision::Allowed);
        // ...and 9 is one token short of the first, which refuses first.
        match decide(&backend, &1, 9).await {
            Decision::Limited { quota, retry_after } => {
                assert_eq!(quota, fast);
                assert!(retry_after <= Duration::from_secs(5), "{retry_after:?}");
                assert!(retry_after > Duration::ZERO);
            }
            other => panic!("expected Limited, got {other:?}"),
        }
        // Another key is untouched.
        assert_eq!(decide(&backend, &2, 12).await, Decision::Allowed);
    });
}

#[test]
fn keys_expire_once_their_bucket_is_full_again() {
    let server = server!();
    runtime().block_on(async {
        let backend = builder(&server.url(), "expiry")
            .failure_policy(FailurePolicy::FailClosed)
            .timeout(Duration::from_secs(2))
            .build::<String>(&[Quota::per_second(5)]);
        let key = "bob".to_owned();
        for _ in 0..3 {
            assert_eq!(decide(&backend, &key, 1).await, Decision::Allowed);
        }
        let name = String::from_utf8(backend.redis_keys(&key).remove(0)).unwrap();
        assert!(name.contains("{bob}"), "{name}");
        // Three tokens owed at 200 ms each: the key lives about 600 ms.
        let pttl: i64 = server
            .command(&format!("PTTL {name}"))
            .trim_start_matches(':')
            .trim()
            .parse()
            .unwrap();
        assert!((1..=600).contains(&pttl), "PTTL {pttl}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(server.command(&format!("EXISTS {name}")).trim(), ":0");
    });
}

#[test]
fn script_flush_is_survived() {
    let server = server!();
    runtime().block_on(async {
        let backend = builder(&server.url(), "flush")
            .failure_policy(FailurePolicy::FailClosed)
            .timeout(Duration::from_secs(2))
            .build::<u64>(&[Quota::per_second(2)]);
        assert_eq!(decide(&backend, &1, 1).await, Decision::Allowed);
        assert_eq!(server.command("SCRIPT FLUSH").trim(), "+OK");
        assert_eq!(decide(&backend, &1, 1).await, Decision::Allowed);
        assert!(matches!(
            decide(&backend, &1, 1).await,
            Decision::Limited { .. }
        ));
        assert_eq!(backend.stats().failures, 0);
        assert!(server.command_calls("script|load") + server.command_calls("script") >= 1);
    });
}

#[test]
fn a_refused_key_is_answered_locally_until_its_retry_after() {
    let server = server!();
    runtime().block_on(async {
        let backend = builder(&server.url(), "local")
            .failure_policy(FailurePolicy::FailClosed)
            .timeout(Duration::from_secs(2))
            .build::<String>(&[Quota::new(1, Duration::from_millis(800))]);
        let key = "mallory".to_owned();
        assert_eq!(decide(&backend, &key, 1).await, Decision::Allowed);
        let Decision::Limited { retry_after, .. } = decide(&backend, &key, 1).await else {
            panic!("expected a refusal");
        };
        assert!(retry_after <= Duration::from_millis(800));
        assert_eq!(server.command("CONFIG RESETSTAT").trim(), "+OK");
        let round_trips = backend.stats().round_trips;
        let mut refused = 0;
        while backend.stats().round_trips == round_trips && refused < 1000 {
            match decide(&backend, &key, 1).await {
                Decision::Limited { retry_after, .. } => {
                    assert!(retry_after <= Duration::from_millis(800));
                    refused += 1;
                }
                other => panic!("expected Limited, got {other:?}"),
            }
            if refused >= 100 {
                break;
            }
        }
        assert_eq!(refused, 100);
        assert_eq!(backend.stats().local_refusals, 100);
        assert_eq!(
            server.command_calls("evalsha"),
            0,
            "a command reached redis"
        );
        assert_eq!(server.command_calls("eval"), 0, "a command reached redis");
        // A different key still goes to Redis.
        assert_eq!(
            decide(&backend, &"eve".to_owned(), 1).await,
            Decision::Allowed
        );
        assert_eq!(server.command_calls("evalsha"), 1);
        // After the retry-after, the key goes to Redis again and is admitted.
        tokio::time::sleep(retry_after).await;
        assert_eq!(decide(&backend, &key, 1).await, Decision::Allowed);
        assert_eq!(server.command_calls("evalsha"), 2);
    });
}

/// Counts the `WARN` and `INFO` events of this crate.
#[derive(Default)]
struct Events {
    warn: AtomicU64,
    info: AtomicU64,
}

impl tracing::Subscriber for &'static Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        if !meta.target().starts_with("tower_token_bucket") {
            return;
        }
        if *meta.level() == tracing::Level::WARN {
            self.warn.fetch_add(1, Ordering::Relaxed);
        } else if *meta.level() == tracing::Level::INFO {
            self.info.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Stopping Redis mid-run: decisions fall to the policy within the timeout, with one
/// warning per outage; after a restart they go back to Redis by themselves.
#[test]
fn an_outage_switches_to_the_policy_and_back() {
    let events: &'static Events = Box::leak(Box::default());
    let _log = tracing::subscriber::set_default(events);
    let mut server = server!();
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = runtime();
    let backend = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            RedisBackend::from_url(&server.url())
                .unwrap()
                .prefix(prefix("outage"))
                .name("outage")
                .failure_policy(FailurePolicy::FailClosed)
                .build::<u64>(&[Quota::per_second(1000)])
        })
    });
    rt.block_on(async {
        // Warm up: connected.
        assert_eq!(decide(&backend, &1, 1).await, Decision::Allowed);
        server.stop();
        let start = Instant::now();
        let first = decide(&backend, &1, 1).await;
        let took = start.elapsed();
        assert!(matches!(first, Decision::Unavailable { .. }), "{first:?}");
        // The timeout is 50 ms; a slow machine gets slack.
        assert!(took < Duration::from_millis(500), "took {took:?}");
        assert!(!backend.is_reachable());
        // Between probes, the policy answers at once.
        let start = Instant::now();
        for _ in 0..50 {
            assert!(matches!(
                decide(&backend, &1, 1).await,
                Decision::Unavailable { .. }
            ));
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        // Over several probe intervals (100 ms each): each probe fails, still refused.
        let until = Instant::now() + Duration::from_millis(350);
        while Instant::now() < until {
            assert!(matches!(
                decide(&backend, &1, 1).await,
                Decision::Unavailable { .. }
            ));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(backend.stats().round_trips >= 4, "{:?}", backend.stats());
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if decide(&backend, &1, 1).await == Decision::Allowed {
                break;
            }
            assert!(Instant::now() < deadline, "redis never used again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(backend.is_reachable());
        assert_eq!(
            events.warn.load(Ordering::Relaxed),
            1,
            "one warning per outage"
        );
        assert_eq!(
            events.info.load(Ordering::Relaxed),
            1,
            "one line on recovery"
        );
        // A second outage warns again, once.
        server.stop();
        for _ in 0..20 {
            assert!(matches!(
                decide(&backend, &1, 1).await,
                Decision::Unavailable { .. }
            ));
        }
        assert_eq!(events.warn.load(Ordering::Relaxed), 2);
    });
    let errors: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "ratelimit_backend_errors_total")
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert!(errors >= 1, "errors {errors}");
}

// ---------------------------------------------------------------------------------
// Failure policies, without a server: a port that refuses, and one that never answers.

/// A listener that accepts connections and never answers.
fn black_hole() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// A port nothing listens on.
fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("redis://{}", listener.local_addr().unwrap())
}

#[test]
fn a_silent_redis_costs_at_most_the_timeout() {
    let (_listener, url) = black_hole();
    runtime().block_on(async {
        let backend = RedisBackend::from_url(&url)
            .unwrap()
            .timeout(Duration::from_millis(50))
            .failure_policy(FailurePolicy::FailOpen)
            .build::<u64>(&[Quota::per_second(1)]);
        let start = Instant::now();
        assert_eq!(decide(&backend, &1, 1).await, Decision::Allowed);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(45), "took {took:?}");
        assert!(took < Duration::from_millis(500), "took {took:?}");
        // Fail open admits everything, well past the quota.
        for _ in 0..10 {
            assert_eq!(decide(&backend, &1, 1).await, Decision::Allowed);
        }
        assert_eq!(backend.stats().failures, 11);
    });
}

#[test]
fn the_local_policy_admits_this_instances_share() {
    let url = refused_url();
    runtime().block_on(async {
        let backend = RedisBackend::from_url(&url)
            .unwrap()
            .instances(3)
            .build::<u64>(&[Quota::per_second(30).with_burst(9)]);
        assert_eq!(backend.failure_policy(), FailurePolicy::Local);
        let mut admitted = 0;
        let start = Instant::now();
        for _ in 0..20 {
            if decide(&backend, &1, 1).await == Decision::Allowed {
                admitted += 1;
            }
        }
        // A third of the burst, and the share's refill (a token per 100 ms) over
        // however long a slow machine took.
        let refill = start.elapsed().as_millis() / 100;
        assert!(admitted >= 3, "admitted {admitted}");
        assert!(
            admitted <= 3 + refill + 1,
            "admitted {admitted} in {:?}",
            start.elapsed()
        );
        // A cost the shared burst holds but the share's does not: refused, not 413.
        assert!(matches!(
            decide(&backend, &2, 5).await,
            Decision::Limited { .. }
        ));
    });
}

#[test]
fn fail_closed_answers_503_with_retry_after() {
    let url = refused_url();
    runtime().block_on(async {
        let layer = RateLimitLayer::builder(Quota::per_second(5))
            .name("closed")
            .key(key_fn(|_: &http::Request<()>| {
                Ok::<_, tower_token_bucket::KeyError>(1u64)
            }))
            .build_redis(
                RedisBackend::from_url(&url)
                    .unwrap()
                    .failure_policy(FailurePolicy::FailClosed)
                    .unavailable_retry_after(Duration::from_secs(2)),
            );
        let mut svc = tower::Layer::layer(
            &layer,
            service_fn(|_: http::Request<()>| async { Ok::<_, tower::BoxError>("ok") }),
        );
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap_err();
        let err = err.downcast_ref::<RateLimitError>().unwrap();
        assert_eq!(
            err,
            &RateLimitError::Unavailable {
                retry_after: Duration::from_secs(2)
            }
        );
        let response: http::Response<Bytes> = err.to_http_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(layer.handle().snapshot().rejected, 1);
    });
}

/// Wait mode through the Redis backend: a request that finds no token sleeps for the
/// retry-after Redis gave and is then admitted.
#[test]
fn wait_mode_waits_out_the_redis_retry_after() {
    let server = server!();
    runtime().block_on(async {
        let layer = RateLimitLayer::builder(Quota::per_second(10).with_burst(1))
            .name("paced")
            .wait(Duration::from_secs(5))
            .build_redis(
                RedisBackend::from_url(&server.url())
                    .unwrap()
                    .prefix(prefix("wait"))
                    .failure_policy(FailurePolicy::FailClosed)
                    .timeout(Duration::from_secs(2)),
            );
        let svc = tower::Layer::layer(
            &layer,
            service_fn(|_: ()| async { Ok::<_, tower::BoxError>(Instant::now()) }),
        );
        let start = Instant::now();
        let first = svc.clone().oneshot(()).await.unwrap();
        let second = svc.clone().oneshot(()).await.unwrap();
        let third = svc.clone().oneshot(()).await.unwrap();
        assert!(
            first - start < Duration::from_secs(2),
            "{:?}",
            first - start
        );
        // One token every 100 ms: the third is at least ~200 ms after the start.
        assert!(
            third - start >= Duration::from_millis(180),
            "{:?}",
            third - start
        );
        assert!(second <= third);
        let snapshot = layer.handle().snapshot();
        assert_eq!(snapshot.allowed + snapshot.waited, 3);
        assert!(snapshot.waited >= 1);
    });
}
