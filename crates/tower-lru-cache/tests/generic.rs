//! The cache for any request type, keyed by a function.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use proptest::prelude::*;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_lru_cache::Clock;
use tower_lru_cache::{CacheError, CacheKey, FnCacheLayer, KeyHasher};

fn key_of(prompt: &String) -> Option<CacheKey> {
    if prompt.starts_with("nocache") {
        return None;
    }
    let mut key = KeyHasher::new();
    key.field(0, prompt.as_bytes());
    Some(key.finish())
}

#[derive(Clone, Default)]
struct Sdk {
    calls: Arc<AtomicUsize>,
    failing: Arc<Mutex<bool>>,
}

impl Sdk {
    fn service(
        &self,
        delay: Duration,
    ) -> impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let this = self.clone();
        service_fn(move |prompt: String| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, SeqCst) + 1;
                tokio::time::sleep(delay).await;
                if *this.failing.lock().unwrap() {
                    return Err::<String, BoxError>("sdk unavailable".into());
                }
                Ok(format!("{prompt}#{n}"))
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn hits_misses_bypass_and_degraded() {
    let sdk = Sdk::default();
    let layer = FnCacheLayer::builder(key_of)
        .clock(Clock::Tokio)
        .name("sdk")
        .degraded_if(|answer: &String| answer.contains("degraded"))
        .build();
    let handle = layer.handle();
    let svc = layer.layer(sdk.service(Duration::ZERO));
    assert_eq!(svc.clone().oneshot("a".to_owned()).await.unwrap(), "a#1");
    assert_eq!(svc.clone().oneshot("a".to_owned()).await.unwrap(), "a#1");
    assert_eq!(
        svc.clone().oneshot("nocache".to_owned()).await.unwrap(),
        "nocache#2"
    );
    assert_eq!(
        svc.clone().oneshot("degraded".to_owned()).await.unwrap(),
        "degraded#3"
    );
    assert_eq!(
        svc.clone().oneshot("degraded".to_owned()).await.unwrap(),
        "degraded#4"
    );
    let s = handle.snapshot();
    assert_eq!((s.hits, s.misses, s.bypassed, s.entries), (1, 3, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn single_flight_and_shared_failure() {
    let sdk = Sdk::default();
    let layer = FnCacheLayer::builder(key_of).clock(Clock::Tokio).build();
    let handle = layer.handle();
    let svc = layer.layer(sdk.service(Duration::from_secs(60)));
    let run = |n: usize| {
        (0..n)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.oneshot("q".to_owned()).await })
            })
            .collect::<Vec<_>>()
    };
    for task in run(50) {
        assert_eq!(task.await.unwrap().unwrap(), "q#1");
    }
    assert_eq!(sdk.calls.load(SeqCst), 1);
    assert_eq!(handle.snapshot().coalesced, 49);

    handle.invalidate_all();
    *sdk.failing.lock().unwrap() = true;
    let mut coalesced = 0;
    for task in run(10) {
        let err = task.await.unwrap().unwrap_err();
        if err.downcast_ref::<CacheError>().is_some() {
            coalesced += 1;
        } else {
            assert_eq!(err.to_string(), "sdk unavailable");
        }
    }
    assert_eq!((coalesced, sdk.calls.load(SeqCst)), (9, 2));
}

#[tokio::test(start_paused = true)]
async fn dropped_waiters_leave_nothing_stuck() {
    let sdk = Sdk::default();
    let layer = FnCacheLayer::builder(key_of).clock(Clock::Tokio).build();
    let svc = layer.layer(sdk.service(Duration::from_secs(10)));
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot("q".to_owned()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    let answer =
        tokio::time::timeout(Duration::from_secs(11), svc.clone().oneshot("q".to_owned())).await;
    assert_eq!(answer.unwrap().unwrap(), "q#2");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_within_grace() {
    let sdk = Sdk::default();
    let layer = FnCacheLayer::builder(key_of)
        .clock(Clock::Tokio)
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(5))
        .build();
    let svc = layer.layer(sdk.service(Duration::ZERO));
    assert_eq!(svc.clone().oneshot("a".to_owned()).await.unwrap(), "a#1");
    *sdk.failing.lock().unwrap() = true;
    tokio::time::advance(Duration::from_secs(12)).await;
    assert_eq!(svc.clone().oneshot("a".to_owned()).await.unwrap(), "a#1");
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(svc.clone().oneshot("a".to_owned()).await.is_err());
    assert_eq!(layer.handle().snapshot().stale, 1);
}

#[derive(Clone, Debug)]
enum Op {
    Call(u8),
    Advance(u8),
    Fail(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4).prop_map(Op::Call),
        2 => (0u8..7).prop_map(|n| Op::Advance(n * 5)),
        1 => any::<bool>().prop_map(Op::Fail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Against a model of TTL and grace: every request is counted once, hits never call
    /// the inner service, and each answer is the one the model predicts.
    #[test]
    fn matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async move {
            const TTL: u64 = 20;
            const GRACE: u64 = 10;
            let sdk = Sdk::default();
            let layer = FnCacheLayer::builder(key_of).clock(Clock::Tokio)
                .ttl(Duration::from_secs(TTL))
                .stale_if_error(Duration::from_secs(GRACE))
                .build();
            let handle = layer.handle();
            let svc = layer.layer(sdk.service(Duration::ZERO));
            // key -> (answer, stored at)
            let mut model: HashMap<u8, (String, u64)> = HashMap::new();
            let (mut now, mut failing, mut requests, mut calls) = (0u64, false, 0u64, 0usize);
            for op in ops {
                match op {
                    Op::Advance(s) => {
                        now += u64::from(s);
                        tokio::time::advance(Duration::from_secs(u64::from(s))).await;
                    }
                    Op::Fail(f) => {
                        failing = f;
                        *sdk.failing.lock().unwrap() = f;
                    }
                    Op::Call(k) => {
                        requests += 1;
                        let got = svc.clone().oneshot(format!("k{k}")).await.ok();
                        let expected = match model.get(&k) {
                            Some((answer, at)) if now - at < TTL => Some(answer.clone()),
                            entry => {
                                calls += 1;
                                if failing {
                                    entry.filter(|(_, at)| now - at < TTL + GRACE).map(|(a, _)| a.clone())
                                } else {
                                    let answer = format!("k{k}#{calls}");
                                    model.insert(k, (answer.clone(), now));
                                    Some(answer)
                                }
                            }
                        };
                        prop_assert_eq!(got, expected);
                    }
                }
            }
            let s = handle.snapshot();
            prop_assert_eq!(s.hits + s.misses + s.stale + s.coalesced + s.bypassed, requests);
            prop_assert_eq!(sdk.calls.load(SeqCst), calls);
            Ok(())
        })?;
    }
}

/// A store that answers lookups only after a yield, as a remote store would.
struct RemoteLike(tower_lru_cache::MokaStore<String>);

impl tower_lru_cache::CacheStore<String> for RemoteLike {
    type Get = std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<Arc<tower_lru_cache::Entry<String>>>> + Send>,
    >;

    fn get(&self, key: &CacheKey) -> Self::Get {
        let found = self.0.get_now(key).flatten();
        Box::pin(async move {
            tokio::task::yield_now().await;
            found
        })
    }

    fn insert(&self, key: CacheKey, entry: Arc<tower_lru_cache::Entry<String>>) {
        self.0.insert(key, entry);
    }

    fn remove(&self, key: &CacheKey) {
        self.0.remove(key);
    }

    fn clear(&self) {
        self.0.clear();
    }

    fn entry_count(&self) -> u64 {
        self.0.entry_count()
    }
}

#[tokio::test(start_paused = true)]
async fn an_asynchronous_store_behaves_the_same() {
    let sdk = Sdk::default();
    let layer = FnCacheLayer::builder(key_of)
        .clock(Clock::Tokio)
        .store(RemoteLike(tower_lru_cache::MokaStore::with_max_entries(10)))
        .build();
    let handle = layer.handle();
    let svc = layer.layer(sdk.service(Duration::ZERO));
    assert_eq!(svc.clone().oneshot("a".to_owned()).await.unwrap(), "a#1");
    assert_eq!(svc.clone().oneshot("a".to_owned()).await.unwrap(), "a#1");
    assert_eq!(
        svc.clone().oneshot("nocache".to_owned()).await.unwrap(),
        "nocache#2"
    );
    let s = handle.snapshot();
    assert_eq!((s.hits, s.misses, s.bypassed, s.entries), (1, 1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_slow_failed_refill_serves_no_entry_past_its_grace() {
    let sdk = Sdk::default();
    let svc = FnCacheLayer::builder(key_of)
        .clock(Clock::Tokio)
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(10))
        .build()
        .layer(sdk.service(Duration::from_secs(60)));
    assert_eq!(svc.clone().oneshot("a".to_owned()).await.unwrap(), "a#1");
    tokio::time::advance(Duration::from_secs(15)).await;
    *sdk.failing.lock().unwrap() = true;
    // The refill fails at age 75 s, past TTL + grace (20 s).
    let err = svc.clone().oneshot("a".to_owned()).await.unwrap_err();
    assert_eq!(err.to_string(), "sdk unavailable");
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_during_a_call_is_not_undone() {
    let sdk = Sdk::default();
    let layer = FnCacheLayer::builder(key_of).clock(Clock::Tokio).build();
    let handle = layer.handle();
    let svc = layer.layer(sdk.service(Duration::from_secs(10)));
    let call = tokio::spawn(svc.clone().oneshot("a".to_owned()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle.invalidate_all();
    assert_eq!(call.await.unwrap().unwrap(), "a#1");
    assert_eq!(svc.clone().oneshot("a".to_owned()).await.unwrap(), "a#2");
}
