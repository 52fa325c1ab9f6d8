//! The default backend: governor's GCRA in process, one timestamp per key.

use std::fmt;
use std::hash::Hash;
use std::mem;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{InsufficientCapacity, RateLimiter};

use crate::Quota;
use crate::backend::{Decision, RateLimitBackend};
use crate::clock::{Clock, LimiterClock, duration_nanos};

/// The default cap on the number of keys a limiter tracks.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The default time between two prunes of idle keys.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// Rate-limit state in this process, on [governor]'s GCRA: one 8-byte timestamp per key
/// and quota.
///
/// - Several quotas are checked in order and the first refusal wins; tokens already
///   taken from earlier quotas are given back, so a refused request spends nothing.
///   A cost larger than the smallest burst is refused as [`Decision::CostTooLarge`]
///   before any quota is checked.
/// - A key type of size zero (such as the `()` of [`GlobalKey`](crate::GlobalKey)) is one
///   bucket without any map lookup.
/// - Idle keys (whose bucket is full again, so that forgetting them changes nothing) are
///   pruned every [`prune_interval`](crate::RateLimitLayerBuilder::prune_interval) by a
///   task started on the first check inside a tokio runtime. The task holds only a weak
///   reference and ends when the last clone of the limiter is dropped.
/// - Time is read from the CPU's time-stamp counter ([quanta], about 10 ns a read,
///   calibrated against the OS's monotonic clock: [`Clock::Monotonic`], the default),
///   which does not follow tokio's paused clock. Tests that pause tokio's time
///   (`#[tokio::test(start_paused = true)]`) and expect tokens back when they advance it
///   build the backend with [`Clock::Tokio`] ([`with_clock`](Self::with_clock),
///   [`RateLimitLayerBuilder::clock`](crate::RateLimitLayerBuilder::clock)).
/// - Keys are hashed with foldhash, seeded at random per map (see the source for why
///   that is enough for client-chosen keys).
/// - At most [`max_keys`](crate::RateLimitLayerBuilder::max_keys) keys are tracked
///   (approximately: concurrent first requests of new keys may overshoot by the number of
///   threads). A new key is never refused for lack of room, so a flood of made-up keys
///   cannot lock real users out: when the cap is reached, the request that finds it full
///   frees a sixteenth of it at once by forgetting, first, every key whose bucket is full
///   again (a full bucket is what a new key gets, so forgetting it changes nothing), then,
///   if that is not enough, the keys whose buckets are closest to full (the earliest
///   theoretical arrival time: the least owed, and among keys that spend alike, the least
///   recently used). A key that is mid-burst is therefore kept while keys that owe less
///   remain: a flood of keys that spend one token each never resets a user who has spent
///   more. If a flood pushes out a key that still owed tokens, that key comes back with a
///   full bucket: the limiter errs towards letting a request through, never towards
///   refusing one, and memory stays bounded. This sweep costs a pass over the map (a few
///   milliseconds at 100,000 keys) once per sixteenth of the cap of new keys, and only
///   while the cap is reached; the per-request path is unchanged.
///   [`Decision::KeyCapacity`] is never returned by this backend.
///
/// Cloning is cheap and clones share the state.
///
/// [governor]: https://docs.rs/governor
/// [quanta]: https://docs.rs/quanta
pub struct InMemoryBackend<K: Hash + Eq + Clone> {
    inner: Arc<Inner<K>>,
}

impl<K: Hash + Eq + Clone> Clone for InMemoryBackend<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for InMemoryBackend<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryBackend")
            .field("quotas", &self.inner.quotas)
            .field("max_keys", &self.inner.max_keys)
            .field("prune_interval", &self.inner.prune_interval)
            .finish_non_exhaustive()
    }
}

type Gov<K> = RateLimiter<K, KeyStore<K>, LimiterClock, NoOpMiddleware<Nanos>>;

struct Limiter<K: Hash + Eq + Clone> {
    gov: Gov<K>,
    store: Arc<Store<K>>,
    /// One token's worth of time, in nanoseconds (GCRA's `t`).
    t: u64,
    /// The bucket's tolerance in nanoseconds (GCRA's `tau` = `t * (burst - 1)`).
    tau: u64,
}

struct Inner<K: Hash + Eq + Clone> {
    limiters: Box<[Limiter<K>]>,
    quotas: Box<[Quota]>,
    /// The quota with the smallest burst: a larger cost can never fit.
    smallest: Quota,
    max_keys: usize,
    prune_interval: Duration,
    pruner_running: AtomicBool,
    /// The clock of every limiter.
    clock: LimiterClock,
}

impl<K> InMemoryBackend<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A backend enforcing `quotas` (checked in order), with the default key cap and
    /// prune interval.
    ///
    /// # Panics
    ///
    /// If `quotas` is empty.
    #[must_use]
    pub fn new(quotas: &[Quota]) -> Self {
        Self::with_limits(quotas, DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL)
    }

    /// A backend with an explicit key cap and prune interval.
    ///
    /// A `max_keys` of zero is one. A `prune_interval` of zero, or one too long to schedule (`Duration::MAX`), turns
    /// the periodic prune off; the key cap still bounds memory (see the type's docs).
    ///
    /// # Panics
    ///
    /// If `quotas` is empty.
    #[must_use]
    pub fn with_limits(quotas: &[Quota], max_keys: usize, prune_interval: Duration) -> Self {
        Self::with_clock(quotas, max_keys, prune_interval, Clock::default())
    }

    /// A backend with an explicit key cap, prune interval and [`Clock`]
    /// ([`Clock::Tokio`] for tests that pause tokio's time).
    ///
    /// # Panics
    ///
    /// If `quotas` is empty.
    #[must_use]
    pub fn with_clock(
        quotas: &[Quota],
        max_keys: usize,
        prune_interval: Duration,
        clock: Clock,
    ) -> Self {
        assert!(
            !quotas.is_empty(),
            "a rate limiter needs at least one quota"
        );
        let clock = LimiterClock::new(clock);
        let limiters = quotas
            .iter()
            .map(|quota| {
                let store = Arc::new(Store::new());
                let gov = RateLimiter::new(
                    quota.to_governor(),
                    KeyStore(Arc::clone(&store)),
                    clock.clone(),
                );
                let t = duration_nanos(quota.gcra_interval());
                let tau = t.saturating_mul(u64::from(quota.burst() - 1));
                Limiter { gov, store, t, tau }
            })
            .collect();
        let smallest = *quotas
            .iter()
            .min_by_key(|q| q.burst())
            .unwrap_or(&quotas[0]);
        Self {
            inner: Arc::new(Inner {
                limiters,
                quotas: quotas.into(),
                smallest,
                max_keys: max_keys.max(1),
                prune_interval,
                pruner_running: AtomicBool::new(false),
                clock,
            }),
        }
    }

    /// Forgets every key whose bucket is full again. Runs on its own every prune
    /// interval; call it to prune at a time of your choosing.
    pub fn prune(&self) {
        self.inner.prune();
    }

    /// Try to spend `cost` tokens of `key`, synchronously.
    pub fn decide(&self, key: &K, cost: NonZeroU32) -> Decision {
        let inner = &*self.inner;
        if !inner.pruner_running.load(Ordering::Relaxed) {
            start_pruner(&self.inner);
        }
        if cost.get() > inner.smallest.burst() {
            return Decision::CostTooLarge {
                quota: inner.smallest,
            };
        }
        for (i, lim) in inner.limiters.iter().enumerate() {
            if lim.store.is_full(inner.max_keys) && !lim.store.contains(key) {
                lim.store.make_room(inner.max_keys, inner.clock.nanos());
            }
            let checked = if cost == NonZeroU32::MIN {
                Ok(lim.gov.check_key(key))
            } else {
                lim.gov.check_key_n(key, cost)
            };
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    inner.give_back(key, cost, i);
                    let retry_after = not_until.wait_time_from(inner.clock.now());
                    return Decision::Limited {
                        retry_after,
                        quota: inner.quotas[i],
                    };
                }
                Err(InsufficientCapacity(_)) => {
                    inner.give_back(key, cost, i);
                    return Decision::CostTooLarge {
                        quota: inner.quotas[i],
                    };
                }
            }
        }
        Decision::Allowed
    }
}

impl<K> Inner<K>
where
    K: Hash + Eq + Clone,
{
    /// Gives back the tokens that limiters `..upto` took for a request that a later
    /// limiter refused. GCRA state is additive, so subtracting the cost undoes the
    /// spend even when other requests spent in between.
    fn give_back(&self, key: &K, cost: NonZeroU32, upto: usize) {
        for lim in &self.limiters[..upto] {
            lim.store
                .refund(key, lim.t.saturating_mul(u64::from(cost.get())));
        }
    }

    fn prune(&self) {
        for lim in &self.limiters {
            lim.gov.retain_recent();
        }
    }

    fn remaining(&self, key: &K) -> u32 {
        self.limiters
            .iter()
            .map(|lim| {
                let burst = lim.tau / lim.t + 1;
                let remaining = match lim.store.read(key) {
                    None => burst,
                    Some(tat) => {
                        let now = self.clock.nanos();
                        let ahead = tat.saturating_sub(now);
                        if ahead > lim.tau {
                            0
                        } else {
                            ((lim.tau - ahead) / lim.t + 1).min(burst)
                        }
                    }
                };
                u32::try_from(remaining).unwrap_or(u32::MAX)
            })
            .min()
            .unwrap_or(0)
    }
}

impl<K> RateLimitBackend<K> for InMemoryBackend<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Future = std::future::Ready<Decision>;

    #[inline]
    fn check(&self, key: &K, cost: NonZeroU32) -> Self::Future {
        std::future::ready(self.decide(key, cost))
    }

    fn quotas(&self) -> &[Quota] {
        &self.inner.quotas
    }

    fn remaining(&self, key: &K) -> Option<u32> {
        Some(self.inner.remaining(key))
    }

    fn tracked_keys(&self) -> Option<usize> {
        self.inner.limiters.iter().map(|lim| lim.store.len()).max()
    }
}

/// On the first decisions inside a tokio runtime: starts the prune task.
#[cold]
fn start_pruner<K>(inner: &Arc<Inner<K>>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    if mem::size_of::<K>() == 0 {
        // One bucket, nothing to prune.
        inner.pruner_running.store(true, Ordering::Relaxed);
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if inner.pruner_running.swap(true, Ordering::AcqRel) {
        return;
    }
    let every = inner.prune_interval;
    // Zero, or too long to schedule: no periodic prune (the key cap bounds memory).
    let first = tokio::time::Instant::now().checked_add(every);
    let Some(first) = first.filter(|_| !every.is_zero()) else {
        return;
    };
    let guard = PrunerGuard(Arc::downgrade(inner));
    runtime.spawn(async move {
        let guard = guard;
        let mut tick = tokio::time::interval_at(first, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = guard.0.upgrade() else {
                tracing::trace!("rate limiter dropped; pruning stops");
                return;
            };
            inner.prune();
        }
    });
}

/// Lets a later check start a new prune task if this one's runtime shuts down.
struct PrunerGuard<K: Hash + Eq + Clone>(Weak<Inner<K>>);

impl<K: Hash + Eq + Clone> Drop for PrunerGuard<K> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.pruner_running.store(false, Ordering::Release);
        }
    }
}

/// The per-key map's hasher: foldhash, seeded at random per map.
///
/// Keys come from clients (headers, IPs), so the hash must not be predictable: a client
/// who could choose keys that collide would turn lookups into scans. foldhash mixes every
/// input with a per-process random secret and a per-map seed, which defeats precomputed
/// collision sets (its authors call it "minimally DoS-resistant": it does not claim to
/// resist an attacker who recovers the secret by studying timings), at about a tenth of
/// SipHash-1-3's cost on a `u64` or a short byte string. The key cap bounds the map in any
/// case, so a flood of keys cannot grow it.
type KeyHasher = foldhash::fast::RandomState;

/// Per-key GCRA timestamps, with a key count for the cap. A zero-sized key type (one
/// global bucket) skips the map.
struct Store<K> {
    single: InMemoryState,
    map: DashMap<K, InMemoryState, KeyHasher>,
    len: AtomicUsize,
    /// Held while the map is swept at its cap: one sweep at a time.
    sweeping: Mutex<()>,
}

impl<K: Hash + Eq + Clone> Store<K> {
    const SINGLE: bool = mem::size_of::<K>() == 0;

    fn new() -> Self {
        Self {
            single: InMemoryState::default(),
            map: DashMap::with_hasher(KeyHasher::default()),
            len: AtomicUsize::new(0),
            sweeping: Mutex::new(()),
        }
    }

    /// Frees room at the cap of `max` keys: forgets a sixteenth of the cap (at least one
    /// key), first the keys whose bucket is full at `now`, then the keys closest to full.
    /// Callers wait for a sweep under way, so the map overshoots the cap by at most one
    /// key per thread.
    #[cold]
    #[inline(never)]
    fn make_room(&self, max: usize, now: u64) {
        let _sweep = self.sweeping.lock().unwrap_or_else(PoisonError::into_inner);
        let len = self.len.load(Ordering::Relaxed);
        if len < max {
            // Another thread made room while this one waited.
            return;
        }
        let target = max.saturating_sub((max / 16).max(1));
        // Full buckets first: a new key starts with a full bucket, so nothing is lost.
        self.forget_while(|tat| tat <= now);
        let len = self.len.load(Ordering::Relaxed);
        if len <= target {
            tracing::debug!(len, "rate limiter at its key cap; forgot full buckets");
            return;
        }
        // Then the buckets closest to full: the smallest theoretical arrival times.
        let excess = len - target;
        let mut tats: Vec<u64> = self
            .map
            .iter()
            .map(|entry| read_state(entry.value()).unwrap_or(0))
            .collect();
        let Some(nth) = excess.min(tats.len()).checked_sub(1) else {
            return;
        };
        let (_, &mut cutoff, _) = tats.select_nth_unstable(nth);
        drop(tats);
        let mut left = excess;
        self.forget_while(|tat| {
            let forget = left > 0 && tat <= cutoff;
            left -= usize::from(forget);
            forget
        });
        tracing::warn!(
            forgotten = excess - left,
            "rate limiter at its key cap; forgot the keys closest to a full bucket"
        );
    }

    /// Removes the keys whose theoretical arrival time `forget` selects.
    fn forget_while(&self, mut forget: impl FnMut(u64) -> bool) {
        self.map.retain(|_, state| {
            let drop = forget(read_state(state).unwrap_or(0));
            if drop {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            !drop
        });
    }

    #[inline]
    fn is_full(&self, max: usize) -> bool {
        !Self::SINGLE && self.len.load(Ordering::Relaxed) >= max
    }

    fn contains(&self, key: &K) -> bool {
        Self::SINGLE || self.map.contains_key(key)
    }

    fn len(&self) -> usize {
        if Self::SINGLE {
            1
        } else {
            self.len.load(Ordering::Relaxed)
        }
    }

    fn read(&self, key: &K) -> Option<u64> {
        if Self::SINGLE {
            read_state(&self.single)
        } else {
            self.map.get(key).and_then(|state| read_state(&state))
        }
    }

    fn refund(&self, key: &K, nanos: u64) {
        let give_back = |state: &InMemoryState| {
            let _ = state.measure_and_replace(&NotKeyed::NonKey, |prev| {
                let prev = prev.map_or(0, Nanos::as_u64);
                Ok::<_, ()>(((), Nanos::from(prev.saturating_sub(nanos))))
            });
        };
        if Self::SINGLE {
            give_back(&self.single);
        } else if let Some(state) = self.map.get(key) {
            give_back(&state);
        }
    }
}

/// The stored theoretical arrival time, in nanoseconds since the limiter's start.
fn read_state(state: &InMemoryState) -> Option<u64> {
    state
        .measure_and_replace(&NotKeyed::NonKey, |prev| {
            Err::<((), Nanos), Option<u64>>(prev.map(Nanos::as_u64))
        })
        .err()
        .flatten()
}

/// The store as governor sees it.
struct KeyStore<K>(Arc<Store<K>>);

impl<K: Hash + Eq + Clone> StateStore for KeyStore<K> {
    type Key = K;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let store = &*self.0;
        if Store::<K>::SINGLE {
            return store.single.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if let Some(state) = store.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = store.map.entry(key.clone()).or_insert_with(|| {
            store.len.fetch_add(1, Ordering::Relaxed);
            InMemoryState::default()
        });
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for KeyStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let store = &*self.0;
        if Store::<K>::SINGLE {
            return;
        }
        let before = store.len.load(Ordering::Relaxed);
        store.map.retain(|_, state| {
            let keep = read_state(state).is_some_and(|tat| tat > drop_below.as_u64());
            if !keep {
                store.len.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
        let after = store.len.load(Ordering::Relaxed);
        if after < before / 2 {
            store.map.shrink_to_fit();
        }
        tracing::debug!(before, after, "pruned idle rate-limit keys");
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: NonZeroU32 = NonZeroU32::MIN;

    #[test]
    fn burst_then_refill() {
        let b = InMemoryBackend::<u64>::with_clock(
            &[Quota::per_second(5)],
            DEFAULT_MAX_KEYS,
            DEFAULT_PRUNE_INTERVAL,
            Clock::Tokio,
        );
        for _ in 0..5 {
            assert_eq!(b.decide(&1, ONE), Decision::Allowed);
        }
        match b.decide(&1, ONE) {
            Decision::Limited { retry_after, .. } => {
                assert!(retry_after <= Duration::from_millis(200), "{retry_after:?}");
                assert!(retry_after > Duration::from_millis(150), "{retry_after:?}");
            }
            other => panic!("expected Limited, got {other:?}"),
        }
        // Another key is untouched.
        assert_eq!(b.decide(&2, ONE), Decision::Allowed);
        assert_eq!(b.remaining(&2), Some(4));
        assert_eq!(b.remaining(&3), Some(5));
        assert_eq!(b.tracked_keys(), Some(2));
    }

    #[test]
    fn cost_larger_than_burst_never_fits() {
        let b = InMemoryBackend::<u64>::with_clock(
            &[Quota::per_second(5)],
            DEFAULT_MAX_KEYS,
            DEFAULT_PRUNE_INTERVAL,
            Clock::Tokio,
        );
        let six = NonZeroU32::new(6).unwrap();
        assert!(matches!(b.decide(&1, six), Decision::CostTooLarge { .. }));
        assert_eq!(b.remaining(&1), Some(5), "a refused request spends nothing");
    }

    #[test]
    fn a_later_quota_refusing_gives_back_the_earlier_tokens() {
        let b = InMemoryBackend::<u64>::with_clock(
            &[Quota::per_second(5), Quota::per_minute(2)],
            DEFAULT_MAX_KEYS,
            DEFAULT_PRUNE_INTERVAL,
            Clock::Tokio,
        );
        assert_eq!(b.decide(&1, ONE), Decision::Allowed);
        assert_eq!(b.decide(&1, ONE), Decision::Allowed);
        for _ in 0..10 {
            match b.decide(&1, ONE) {
                Decision::Limited { quota, .. } => assert_eq!(quota, Quota::per_minute(2)),
                other => panic!("expected Limited, got {other:?}"),
            }
        }
        // The per-second bucket only lost the two admitted tokens.
        let first = &b.inner.limiters[0];
        let tat = first.store.read(&1).unwrap();
        let now = b.inner.clock.nanos();
        let spent = tat.saturating_sub(now) / first.t;
        assert!(spent <= 2, "spent {spent}");
    }

    #[test]
    fn global_key_uses_one_bucket() {
        let b = InMemoryBackend::<()>::with_clock(
            &[Quota::per_second(2)],
            DEFAULT_MAX_KEYS,
            DEFAULT_PRUNE_INTERVAL,
            Clock::Tokio,
        );
        assert_eq!(b.decide(&(), ONE), Decision::Allowed);
        assert_eq!(b.decide(&(), ONE), Decision::Allowed);
        assert!(matches!(b.decide(&(), ONE), Decision::Limited { .. }));
        assert_eq!(b.inner.limiters[0].store.map.len(), 0);
    }

    #[test]
    fn at_the_key_cap_the_key_closest_to_full_is_forgotten() {
        let b = InMemoryBackend::<u64>::with_clock(
            &[Quota::per_second(5)],
            3,
            Duration::from_secs(1),
            Clock::Tokio,
        );
        // Key 0 owes 3 tokens, key 1 owes 2, key 2 owes 1.
        for (k, spent) in [(0, 3), (1, 2), (2, 1)] {
            for _ in 0..spent {
                assert_eq!(b.decide(&k, ONE), Decision::Allowed);
            }
        }
        // A new key is admitted; key 2, the closest to a full bucket, makes room.
        assert_eq!(b.decide(&99, ONE), Decision::Allowed);
        assert_eq!(b.tracked_keys(), Some(3));
        let tracked = |k: u64| b.inner.limiters[0].store.contains(&k);
        assert!(tracked(0) && tracked(1) && tracked(99) && !tracked(2));
        assert_eq!(b.remaining(&0), Some(2), "kept keys keep their state");
        assert_eq!(b.remaining(&1), Some(3));
    }

    #[test]
    fn a_zero_key_cap_tracks_one_key() {
        let b = InMemoryBackend::<u64>::with_clock(
            &[Quota::per_second(1)],
            0,
            Duration::ZERO,
            Clock::Tokio,
        );
        assert_eq!(b.decide(&1, ONE), Decision::Allowed);
        assert!(matches!(b.decide(&1, ONE), Decision::Limited { .. }));
        assert_eq!(b.decide(&2, ONE), Decision::Allowed);
        assert_eq!(b.tracked_keys(), Some(1));
    }
}
