//! Behaviour of the layer as a tower service: reject and wait modes, sharing, costs,
//! non-HTTP requests, cancellation, pruning and metrics.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_token_bucket::{
    Clock, ExtractKeyExt, KeyError, Quota, RateLimitError, RateLimitLayer, Refusal, key_fn,
};

/// A request that is not HTTP: an AI SDK call.
#[derive(Clone, Debug)]
struct Analyze {
    user: u64,
    tokens: u32,
}

fn counting_upstream() -> (
    Arc<AtomicUsize>,
    impl Service<Analyze, Response = u64, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let svc = service_fn(move |req: Analyze| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(req.user) }
    });
    (calls, svc)
}

fn by_user() -> impl tower_token_bucket::ExtractKey<Analyze, Key = u64> {
    key_fn(|r: &Analyze| Ok::<_, KeyError>(r.user))
}

fn rate_limited(err: &BoxError) -> &RateLimitError {
    err.downcast_ref::<RateLimitError>()
        .unwrap_or_else(|| panic!("not a RateLimitError: {err}"))
}

#[tokio::test(start_paused = true)]
async fn reject_mode_limits_a_non_http_service_per_key() {
    let (calls, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .clock(Clock::Tokio)
        .key(by_user())
        .build();
    let svc = layer.layer(upstream);
    let req = |user| Analyze { user, tokens: 1 };

    for _ in 0..5 {
        assert_eq!(svc.clone().oneshot(req(1)).await.unwrap(), 1);
    }
    let err = svc.clone().oneshot(req(1)).await.unwrap_err();
    match rate_limited(&err) {
        RateLimitError::RateLimited { retry_after, .. } => {
            assert_eq!(*retry_after, Duration::from_millis(200));
        }
        other => panic!("{other:?}"),
    }
    // Another user has their own bucket.
    assert_eq!(svc.clone().oneshot(req(2)).await.unwrap(), 2);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "a refused request never reaches upstream"
    );

    // One token back after 200 ms, not before.
    tokio::time::advance(Duration::from_millis(199)).await;
    assert!(svc.clone().oneshot(req(1)).await.is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(svc.clone().oneshot(req(1)).await.is_ok());

    let snap = layer.handle().snapshot();
    assert_eq!((snap.allowed, snap.rejected, snap.waited), (7, 2, 0));
    assert_eq!(snap.tracked_keys, Some(2));
    assert_eq!(layer.handle().remaining(&1), Some(0));
    // User 2 spent one token 200 ms ago: it has come back.
    assert_eq!(layer.handle().remaining(&2), Some(5));
    assert_eq!(layer.handle().remaining(&3), Some(5));
}

#[tokio::test(start_paused = true)]
async fn clones_and_layer_calls_share_one_limit() {
    let layer = RateLimitLayer::builder(Quota::per_second(3))
        .clock(Clock::Tokio)
        .build();
    let (_, a) = counting_upstream();
    let (_, b) = counting_upstream();
    let a = layer.layer(a);
    let b = layer.clone().layer(b);
    let req = Analyze { user: 1, tokens: 1 };
    assert!(a.clone().oneshot(req.clone()).await.is_ok());
    assert!(b.clone().oneshot(req.clone()).await.is_ok());
    assert!(a.clone().oneshot(req.clone()).await.is_ok());
    assert!(b.clone().oneshot(req.clone()).await.is_err());
    assert!(a.clone().oneshot(req).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn weighted_cost_and_cost_too_large() {
    let (calls, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(10))
        .clock(Clock::Tokio)
        .key(
            by_user().with_cost(|r: &Analyze| NonZeroU32::new(r.tokens).unwrap_or(NonZeroU32::MIN)),
        )
        .build();
    let svc = layer.layer(upstream);
    assert!(
        svc.clone()
            .oneshot(Analyze { user: 1, tokens: 7 })
            .await
            .is_ok()
    );
    let err = svc
        .clone()
        .oneshot(Analyze { user: 1, tokens: 4 })
        .await
        .unwrap_err();
    assert!(matches!(
        rate_limited(&err),
        RateLimitError::RateLimited { .. }
    ));
    assert!(
        svc.clone()
            .oneshot(Analyze { user: 1, tokens: 3 })
            .await
            .is_ok()
    );

    let err = svc
        .clone()
        .oneshot(Analyze {
            user: 2,
            tokens: 11,
        })
        .await
        .unwrap_err();
    assert_eq!(
        rate_limited(&err),
        &RateLimitError::CostTooLarge {
            cost: 11,
            quota: Quota::per_second(10)
        }
    );
    assert_eq!(rate_limited(&err).retry_after(), None);
    assert_eq!(
        layer.handle().remaining(&2),
        Some(10),
        "refused requests spend nothing"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn several_quotas_first_refusal_wins() {
    let (_, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .clock(Clock::Tokio)
        .quota(Quota::per_minute(7))
        .key(by_user())
        .build();
    let svc = layer.layer(upstream);
    let req = Analyze { user: 1, tokens: 1 };
    for _ in 0..5 {
        assert!(svc.clone().oneshot(req.clone()).await.is_ok());
    }
    let err = svc.clone().oneshot(req.clone()).await.unwrap_err();
    assert!(
        matches!(rate_limited(&err), RateLimitError::RateLimited { quota, .. } if *quota == Quota::per_second(5))
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(svc.clone().oneshot(req.clone()).await.is_ok());
    assert!(svc.clone().oneshot(req.clone()).await.is_ok());
    let err = svc.clone().oneshot(req.clone()).await.unwrap_err();
    match rate_limited(&err) {
        RateLimitError::RateLimited {
            quota, retry_after, ..
        } => {
            assert_eq!(*quota, Quota::per_minute(7));
            assert!(*retry_after > Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn missing_key_is_a_client_error_not_a_panic() {
    let (calls, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .clock(Clock::Tokio)
        .key(key_fn(|r: &Analyze| {
            if r.user == 0 {
                Err(KeyError::unauthenticated("anonymous"))
            } else {
                Ok(r.user)
            }
        }))
        .build();
    let err = layer
        .layer(upstream)
        .oneshot(Analyze { user: 0, tokens: 1 })
        .await
        .unwrap_err();
    assert_eq!(
        rate_limited(&err),
        &RateLimitError::Unauthenticated {
            reason: "anonymous"
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(layer.handle().snapshot().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_paces_requests() {
    let (calls, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(2))
        .clock(Clock::Tokio)
        .wait(Duration::from_secs(5))
        .build();
    let svc = layer.layer(upstream);
    let start = Instant::now();
    let mut admitted_at = Vec::new();
    for _ in 0..6 {
        svc.clone()
            .oneshot(Analyze { user: 1, tokens: 1 })
            .await
            .unwrap();
        admitted_at.push(start.elapsed());
    }
    let ms: Vec<u128> = admitted_at.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [0, 0, 500, 1000, 1500, 2000]);
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    let snap = layer.handle().snapshot();
    assert_eq!((snap.allowed, snap.waited, snap.rejected), (2, 4, 0));
    assert_eq!(snap.mode, "wait");
}

#[tokio::test(start_paused = true)]
async fn wait_beyond_max_wait_is_refused_at_once() {
    let (calls, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .clock(Clock::Tokio)
        .wait(Duration::from_millis(500))
        .build();
    let svc = layer.layer(upstream);
    let req = Analyze { user: 1, tokens: 1 };
    assert!(svc.clone().oneshot(req.clone()).await.is_ok()); // the burst token
    // The next token is 1 s away, more than 500 ms: refused now, without waiting.
    let start = Instant::now();
    let err = svc.clone().oneshot(req.clone()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    match rate_limited(&err) {
        RateLimitError::RateLimited { retry_after, .. } => {
            assert_eq!(*retry_after, Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    // 600 ms later the token is 400 ms away: that request waits, exactly that long.
    tokio::time::advance(Duration::from_millis(600)).await;
    let start = Instant::now();
    assert!(svc.clone().oneshot(req.clone()).await.is_ok());
    assert_eq!(start.elapsed(), Duration::from_millis(400));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let snap = layer.handle().snapshot();
    assert_eq!((snap.allowed, snap.waited, snap.rejected), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_request_spends_nothing() {
    let (calls, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .clock(Clock::Tokio)
        .wait(Duration::from_secs(10))
        .build();
    let svc = layer.layer(upstream);
    let req = Analyze { user: 1, tokens: 1 };
    assert!(svc.clone().oneshot(req.clone()).await.is_ok());
    // Start waiting, then give up half-way.
    let waiting = svc.clone().oneshot(req.clone());
    let timed_out = tokio::time::timeout(Duration::from_millis(500), waiting).await;
    assert!(timed_out.is_err());
    // At 1 s the token is there for the next request: the dropped one took nothing.
    tokio::time::advance(Duration::from_millis(500)).await;
    let start = Instant::now();
    assert!(svc.clone().oneshot(req.clone()).await.is_ok());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_pruned_and_the_pruner_stops_with_the_layer() {
    let (_, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .clock(Clock::Tokio)
        .key(by_user())
        .prune_interval(Duration::from_secs(1))
        .max_keys(100)
        .build();
    let svc = layer.layer(upstream);
    for user in 0..100 {
        assert!(
            svc.clone()
                .oneshot(Analyze { user, tokens: 1 })
                .await
                .is_ok()
        );
    }
    let handle = layer.handle();
    assert_eq!(handle.snapshot().tracked_keys, Some(100));
    // Full: a new key still gets in (a key whose bucket is closest to full makes room),
    // and the cap holds.
    assert!(
        svc.clone()
            .oneshot(Analyze {
                user: 1000,
                tokens: 1,
            })
            .await
            .is_ok()
    );
    assert!(handle.snapshot().tracked_keys.unwrap() <= 100);
    assert!(
        svc.clone()
            .oneshot(Analyze {
                user: 99,
                tokens: 1
            })
            .await
            .is_ok()
    );

    let runtime = tokio::runtime::Handle::current().metrics();
    assert_eq!(runtime.num_alive_tasks(), 1, "one prune task");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(handle.snapshot().tracked_keys, Some(0), "idle keys pruned");
    assert!(
        svc.clone()
            .oneshot(Analyze {
                user: 1000,
                tokens: 1
            })
            .await
            .is_ok()
    );

    drop((layer, svc, handle));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        runtime.num_alive_tasks(),
        0,
        "the prune task ended with the layer"
    );
}

#[test]
fn decisions_are_recorded_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (_, upstream) = counting_upstream();
            let layer = RateLimitLayer::builder(Quota::per_second(1))
                .clock(Clock::Tokio)
                .name("per-user")
                .build();
            let svc = layer.layer(upstream);
            let req = Analyze { user: 1, tokens: 1 };
            assert!(svc.clone().oneshot(req.clone()).await.is_ok());
            assert!(svc.clone().oneshot(req.clone()).await.is_err());
            assert!(svc.clone().oneshot(req).await.is_err());
        });
    });
    let mut seen = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        assert_eq!(
            key.name(),
            tower_token_bucket::metrics::RATELIMIT_DECISIONS_TOTAL
        );
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        assert!(labels.contains(&("limiter".into(), "per-user".into())));
        let decision = labels
            .iter()
            .find(|(k, _)| k == "decision")
            .unwrap()
            .1
            .clone();
        let DebugValue::Counter(n) = value else {
            panic!("not a counter")
        };
        seen.push((decision, n));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("allowed".into(), 1),
            ("rejected".into(), 2),
            ("waited".into(), 0)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn snapshot_serializes_in_camel_case() {
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .clock(Clock::Tokio)
        .name("per-user")
        .build();
    let json = serde_json::to_value(layer.handle().snapshot()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "per-user",
            "mode": "reject",
            "maxWaitSeconds": null,
            "quotas": [{"count": 5, "periodSeconds": 1.0, "burst": 5}],
            "allowed": 0,
            "rejected": 0,
            "waited": 0,
            "trackedKeys": 1
        })
    );
}

#[tokio::test(start_paused = true)]
async fn wait_mode_without_a_limit_does_not_panic() {
    let (calls, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .clock(Clock::Tokio)
        .wait(Duration::MAX)
        .build();
    let svc = layer.layer(upstream);
    let req = Analyze { user: 1, tokens: 1 };
    let start = Instant::now();
    for _ in 0..3 {
        assert!(svc.clone().oneshot(req.clone()).await.is_ok());
    }
    // Duration::MAX is no limit: every request waits for its token.
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let snap = layer.handle().snapshot();
    assert_eq!((snap.allowed, snap.waited, snap.rejected), (1, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_made_up_keys_locks_nobody_out() {
    let (_, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .clock(Clock::Tokio)
        .key(by_user())
        .build();
    let svc = layer.layer(upstream);
    let call = |user| svc.clone().oneshot(Analyze { user, tokens: 1 });
    // A real user is mid-burst: 3 of 5 tokens spent.
    for _ in 0..3 {
        assert!(call(1).await.is_ok());
    }
    // 200,000 made-up ids, twice the key cap, one request each.
    for user in 1_000..201_000 {
        assert!(call(user).await.is_ok(), "made-up id {user} refused");
    }
    // A newcomer gets the whole burst, and not one more.
    for _ in 0..5 {
        assert!(call(7).await.is_ok(), "a newcomer is refused");
    }
    assert!(call(7).await.is_err());
    // The user mid-burst was not reset by the flood: 2 tokens left, not 5.
    assert_eq!(layer.handle().remaining(&1), Some(2));
    assert!(call(1).await.is_ok());
    assert!(call(1).await.is_ok());
    assert!(call(1).await.is_err());
    // Memory stays bounded.
    let tracked = layer.handle().snapshot().tracked_keys.unwrap();
    assert!(tracked <= 100_000, "{tracked} keys tracked");
}

/// Every duration a limiter is configured with, at `Duration::ZERO` and `Duration::MAX`:
/// a clear error when the limiter is set up, or sane behaviour, never a panic.
#[tokio::test(start_paused = true)]
async fn every_duration_setting_takes_zero_and_max() {
    let req = Analyze { user: 1, tokens: 1 };

    // A quota's period: zero is refused when the quota is made, with a clear error.
    let err = Quota::try_new(5, Duration::ZERO).unwrap_err();
    assert_eq!(err.to_string(), "a quota needs a non-zero period");
    // The longest period: one request, then refused (in reject and wait modes) with a
    // retry-after that fits, and responses that build.
    for wait in [None, Some(Duration::from_secs(1)), Some(Duration::MAX)] {
        let (calls, upstream) = counting_upstream();
        let builder = RateLimitLayer::builder(Quota::new(1, Duration::MAX))
            .clock(Clock::Tokio)
            .key(by_user());
        let layer = match wait {
            None => builder.build(),
            Some(max_wait) => builder.wait(max_wait).build(),
        };
        let svc = layer.layer(upstream);
        assert!(svc.clone().oneshot(req.clone()).await.is_ok());
        let second = svc.clone().oneshot(req.clone());
        let err = match tokio::time::timeout(Duration::from_secs(3600), second).await {
            Ok(result) => result.unwrap_err(),
            Err(_) => {
                // With no limit on the wait, the request is still waiting: sane.
                assert_eq!(wait, Some(Duration::MAX));
                assert_eq!(calls.load(Ordering::SeqCst), 1);
                continue;
            }
        };
        let retry_after = rate_limited(&err).retry_after().unwrap();
        assert!(
            retry_after > Duration::from_secs(365 * 24 * 3600),
            "{retry_after:?}"
        );
        let response: http::Response<bytes::Bytes> = rate_limited(&err).to_http_response();
        assert_eq!(response.status(), 429);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let _ = serde_json::to_string(&layer.handle().snapshot()).unwrap();
    }

    // Wait mode with no wait allowed: a request that must wait is refused at once.
    let (calls, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(1))
        .clock(Clock::Tokio)
        .wait(Duration::ZERO)
        .build();
    let svc = layer.layer(upstream);
    assert!(svc.clone().oneshot(req.clone()).await.is_ok());
    let start = Instant::now();
    let err = svc.clone().oneshot(req.clone()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(matches!(
        rate_limited(&err),
        RateLimitError::RateLimited { .. }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // ... and Duration::MAX, no limit: see `wait_mode_without_a_limit_does_not_panic`.
}

/// The prune interval at zero and at the longest: periodic pruning is off; the key cap
/// still bounds the keys.
#[tokio::test(start_paused = true)]
async fn a_zero_or_endless_prune_interval_turns_pruning_off() {
    for every in [Duration::ZERO, Duration::MAX] {
        let (_, upstream) = counting_upstream();
        let layer = RateLimitLayer::builder(Quota::per_second(5))
            .clock(Clock::Tokio)
            .key(by_user())
            .prune_interval(every)
            .max_keys(10)
            .build();
        let svc = layer.layer(upstream);
        for user in 0..50 {
            assert!(
                svc.clone()
                    .oneshot(Analyze { user, tokens: 1 })
                    .await
                    .is_ok()
            );
        }
        assert!(layer.handle().snapshot().tracked_keys.unwrap() <= 10);
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(tasks, 0, "no prune task for {every:?}");
    }
}

/// What the quota docs promise: a burst, then the rate. `per_second(5)` admits 9 in a busy
/// client's first second (5 at once, then at 200, 400, 600 and 800 ms), then 5 a second.
#[tokio::test(start_paused = true)]
async fn per_second_is_a_burst_then_the_rate() {
    let (_, upstream) = counting_upstream();
    let layer = RateLimitLayer::builder(Quota::per_second(5))
        .clock(Clock::Tokio)
        .build();
    let svc = layer.layer(upstream);
    let mut per_second = [0; 3];
    for tick in 0..300 {
        if svc
            .clone()
            .oneshot(Analyze { user: 1, tokens: 1 })
            .await
            .is_ok()
        {
            per_second[tick / 100] += 1;
        }
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert_eq!(per_second, [9, 5, 5]);
}
