//! Properties of the limiter's decisions, over random quotas and traffic.

use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use tower_token_bucket::{
    Clock, DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL, Decision, InMemoryBackend, Quota,
    RateLimitBackend,
};

fn quota() -> impl Strategy<Value = Quota> {
    (1u32..20, 50u64..5_000, 1u32..30).prop_map(|(count, period_ms, burst)| {
        Quota::new(count, Duration::from_millis(period_ms)).with_burst(burst)
    })
}

/// (wait before the request in µs, its cost)
fn traffic() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec((0u64..400_000, 1u32..8), 1..120)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Over any window of length t, the cost admitted never exceeds burst + rate * t,
    /// for every quota of the limiter.
    #[test]
    fn admitted_cost_never_exceeds_burst_plus_rate(
        quotas in prop::collection::vec(quota(), 1..3),
        traffic in traffic(),
    ) {
        let admitted = paused_runtime().block_on(async {
            let backend = InMemoryBackend::<u8>::with_clock(&quotas, DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL, Clock::Tokio);
            let start = tokio::time::Instant::now();
            let mut admitted = Vec::new();
            for (gap, cost) in traffic {
                tokio::time::advance(Duration::from_micros(gap)).await;
                let cost = NonZeroU32::new(cost).unwrap();
                if backend.decide(&7, cost) == Decision::Allowed {
                    admitted.push((nanos(start.elapsed()), u128::from(cost.get())));
                }
            }
            admitted
        });
        for q in &quotas {
            let t = nanos(q.replenish_interval());
            let burst = u128::from(q.burst());
            for i in 0..admitted.len() {
                let mut spent = 0;
                for &(at, cost) in &admitted[i..] {
                    spent += cost;
                    let window = at - admitted[i].0;
                    prop_assert!(
                        spent * t <= burst * t + window,
                        "quota {q:?}: {spent} admitted over {window} ns"
                    );
                }
            }
        }
    }

    /// A refusal is honest: nothing is spent, a cost larger than the burst is refused as
    /// such, and the same request made exactly `retry_after` later is admitted rather
    /// than refused a second time.
    #[test]
    fn retry_after_is_exact_and_refusals_spend_nothing(
        quotas in prop::collection::vec(quota(), 1..3),
        traffic in traffic(),
    ) {
        paused_runtime().block_on(async {
            let backend = InMemoryBackend::<u8>::with_clock(&quotas, DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL, Clock::Tokio);
            let max_burst = quotas.iter().map(Quota::burst).min().unwrap();
            for (gap, cost) in traffic {
                tokio::time::advance(Duration::from_micros(gap)).await;
                let cost = NonZeroU32::new(cost).unwrap();
                let before = backend.remaining(&7);
                match backend.decide(&7, cost) {
                    Decision::Allowed => {
                        prop_assert!(cost.get() <= max_burst);
                    }
                    Decision::CostTooLarge { quota } => {
                        prop_assert!(cost.get() > quota.burst());
                        prop_assert_eq!(backend.remaining(&7), before);
                    }
                    Decision::Limited { retry_after, .. } => {
                        prop_assert_eq!(backend.remaining(&7), before);
                        tokio::time::advance(retry_after).await;
                        // A later quota may refuse next; what the first refusal promised
                        // holds: each retry moves forward and ends admitted.
                        let mut tries = 0;
                        loop {
                            match backend.decide(&7, cost) {
                                Decision::Allowed => break,
                                Decision::Limited { retry_after, .. } => {
                                    prop_assert!(!retry_after.is_zero());
                                    tokio::time::advance(retry_after).await;
                                }
                                other => prop_assert!(false, "{other:?}"),
                            }
                            tries += 1;
                            prop_assert!(tries < quotas.len(), "refused again by the same quota");
                        }
                    }
                    other => prop_assert!(false, "{other:?}"),
                }
            }
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// At the key cap: a request that fits a full bucket is never refused for lack of
    /// room, the map stays within the cap, and the keys forgotten to make room are the
    /// ones closest to a full bucket (no kept key had more tokens left than a forgotten
    /// one had).
    #[test]
    fn the_key_cap_forgets_the_keys_closest_to_full(
        quota in quota(),
        max_keys in 1usize..12,
        traffic in prop::collection::vec((0u8..30, 0u64..100_000, 1u32..4), 1..200),
    ) {
        paused_runtime().block_on(async {
            let backend = InMemoryBackend::<u8>::with_clock(&[quota], max_keys, Duration::ZERO, Clock::Tokio);
            let burst = quota.burst();
            for (key, gap, cost) in traffic {
                tokio::time::advance(Duration::from_micros(gap)).await;
                let cost = NonZeroU32::new(cost.min(burst)).unwrap();
                let before: Vec<u32> = (0..30).map(|k| backend.remaining(&k).unwrap()).collect();
                let decision = backend.decide(&key, cost);
                if before[usize::from(key)] == burst {
                    prop_assert_eq!(decision, Decision::Allowed, "a full bucket was refused");
                }
                prop_assert!(backend.tracked_keys().unwrap() <= max_keys);
                let after: Vec<u32> = (0..30).map(|k| backend.remaining(&k).unwrap()).collect();
                let others = (0..30u8).filter(|&k| k != key).map(usize::from);
                let forgotten: Vec<usize> = others.clone().filter(|&k| after[k] > before[k]).collect();
                for e in &forgotten {
                    for k in others.clone().filter(|k| !forgotten.contains(k)) {
                        prop_assert!(
                            before[*e] >= before[k] || before[k] == burst,
                            "forgot key {} ({} left) but kept key {} ({} left)",
                            e, before[*e], k, before[k]
                        );
                    }
                }
            }
            Ok(())
        })?;
    }
}
