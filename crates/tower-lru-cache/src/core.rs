//! What the HTTP and the generic cache share: the store, single-flight, counting.

use std::{
    borrow::Cow,
    collections::{HashMap, hash_map::Entry as Slot},
    fmt,
    future::Future,
    hash::BuildHasherDefault,
    marker::PhantomData,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::clock::{CacheClock, Clock};

use crate::{
    key::CacheKey,
    metrics::{Metrics, Outcome},
    policy::{Freshness, freshness, freshness_at_age},
    stats::{CacheSnapshot, Stats},
    store::{CacheStore, Entry, PrefixHasher},
};

/// What a lookup found.
pub(crate) enum Found<V> {
    Fresh(Arc<Entry<V>>),
    /// Expired, within grace: kept to answer if the refill fails.
    Stale(Arc<Entry<V>>),
    Absent,
}

/// The result of one inner call, shared with every request coalesced onto it.
pub(crate) enum Flight<V> {
    /// Stored: fresh for everyone.
    Stored(Arc<Entry<V>>),
    /// Not storable, but the answer to every coalesced request. `failed`: a failure for
    /// stale-if-error purposes (degraded, or a server error).
    Shared { value: V, failed: bool },
    /// The inner call failed with this message.
    Failed(Arc<str>),
    /// The answer cannot be shared (too large to buffer, or it may not be shared): each
    /// request calls for itself.
    Alone,
    /// The answer's head went to the leading request, and its body is still streaming
    /// to it: this tells when the whole answer is there (a [`Flight::Stored`] or
    /// [`Flight::Shared`]), or closes without a value when the copy was abandoned (too
    /// large, failed, or the leader went away).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Streaming(Body<V>),
}

/// The outcome of a streamed answer, once its body has ended.
pub(crate) type Body<V> = tokio::sync::watch::Receiver<Option<Arc<Flight<V>>>>;

pub(crate) struct Core<V, St> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) store: St,
    /// The calls in flight, for single-flight.
    flights: Flights<V>,
    stats: Stats,
    metrics: Metrics,
    /// Bumped by every invalidation: a flight that started under an older generation
    /// does not store its answer, so an invalidation is never undone by a call that was
    /// already in flight.
    generation: AtomicU64,
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
    /// Where the time is read.
    clock: CacheClock,
    _value: PhantomData<fn() -> V>,
}

impl<V, St> fmt::Debug for Core<V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl<V, St> Core<V, St> {
    /// The time now, on the cache's clock.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }
}

impl<V, St> Core<V, St>
where
    V: Send + Sync + 'static,
    St: CacheStore<V>,
{
    pub(crate) fn new(
        name: Cow<'static, str>,
        mut store: St,
        ttl: Duration,
        grace: Duration,
        clock: Clock,
    ) -> Self {
        store.set_name(&name);
        store.retain_at_most(ttl.saturating_add(grace));
        let metrics = Metrics::new(&name);
        metrics.set_entries(store.entry_count());
        Self {
            flights: Flights::default(),
            metrics,
            name,
            store,
            stats: Stats::default(),
            generation: AtomicU64::new(0),
            ttl,
            grace,
            clock: CacheClock::new(clock),
            _value: PhantomData,
        }
    }

    pub(crate) fn classify(&self, entry: Option<Arc<Entry<V>>>, now: Instant) -> Found<V> {
        let Some(entry) = entry else {
            return Found::Absent;
        };
        match freshness(entry.stored_at(), entry.ttl(), self.grace, now) {
            Freshness::Fresh => Found::Fresh(entry),
            Freshness::Stale => Found::Stale(entry),
            Freshness::Expired => Found::Absent,
        }
    }

    /// Where `entry`, `age` old, stands.
    pub(crate) fn freshness_at_age(&self, entry: &Entry<V>, age: Duration) -> Freshness {
        freshness_at_age(age, entry.ttl(), self.grace)
    }

    pub(crate) fn record(&self, outcome: Outcome) {
        self.stats.record(outcome);
        self.metrics.record(outcome);
        match outcome {
            Outcome::Stale => {
                tracing::warn!(cache = %self.name, "refill failed; served a stale entry");
            }
            Outcome::Bypass => tracing::debug!(cache = %self.name, "request bypassed the cache"),
            _ => tracing::trace!(cache = %self.name, result = outcome.label(), "cache lookup"),
        }
    }

    /// A stale entry still within its grace period now, at the moment it would be
    /// served (a slow refill may have outlived the grace it started in).
    pub(crate) fn still_stale<'a>(&self, entry: Option<&'a Entry<V>>) -> Option<&'a Entry<V>> {
        entry.filter(|entry| {
            freshness(entry.stored_at(), entry.ttl(), self.grace, self.now()) != Freshness::Expired
        })
    }

    /// The invalidation generation, read when a flight starts: this layer's
    /// invalidations and those the store learned of from elsewhere.
    pub(crate) fn generation(&self) -> u64 {
        // Both counters only grow: the sum changes whenever either does.
        self.generation
            .load(Ordering::Acquire)
            .wrapping_add(self.store.generation())
    }

    /// Stores `value`, unless an invalidation happened since `generation` was read (then
    /// `Err(value)`: the answer may still be given to the requests that asked for it).
    pub(crate) fn store(
        &self,
        key: CacheKey,
        value: V,
        ttl: Duration,
        generation: u64,
    ) -> Result<Arc<Entry<V>>, V> {
        if self.generation() != generation {
            tracing::debug!(cache = %self.name, %key, "invalidated during the call; not stored");
            return Err(value);
        }
        let entry = Arc::new(Entry::new(value, self.now(), ttl, self.grace));
        self.store.insert(key, Arc::clone(&entry));
        if self.generation() != generation {
            // An invalidation ran between the check and the insert: undo the insert.
            self.store.remove(&key);
        }
        self.metrics.set_entries(self.store.entry_count());
        tracing::debug!(cache = %self.name, %key, ?ttl, "stored a response");
        Ok(entry)
    }

    pub(crate) fn remove(&self, key: &CacheKey) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.store.remove(key);
        self.metrics.set_entries(self.store.entry_count());
        tracing::debug!(cache = %self.name, %key, "invalidated an entry");
    }

    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.store.clear();
        self.metrics.set_entries(self.store.entry_count());
        tracing::info!(cache = %self.name, "invalidated every entry");
    }

    pub(crate) fn snapshot(&self) -> CacheSnapshot {
        let entries = self.store.entry_count();
        self.metrics.set_entries(entries);
        self.stats.snapshot(&self.name, entries)
    }

    /// Runs `init` unless an identical call is in flight, in which case waits for that
    /// call's outcome instead. If the running call is dropped, one waiter runs its own
    /// `init` (a hand-over), so no waiter hangs.
    pub(crate) async fn flight<F>(&self, key: CacheKey, init: F) -> Arc<Flight<V>>
    where
        F: Future<Output = Flight<V>>,
    {
        self.flights.run(key, init).await
    }
}

/// The outcome of a call in flight, sent once to every request waiting on it.
type CallOutcome<V> = watch::Sender<Option<Arc<Flight<V>>>>;

/// The calls in flight, by key: single-flight.
///
/// Written here rather than taken from moka's `try_get_with` (which coalesces the same
/// way): moka's waiters are a concurrent map of async locks and event listeners, and
/// took about half of a miss's cost; this is one short lock, one map entry and one
/// `watch` channel per call. A waiter holds only a receiver, so dropping it at any await
/// is free; dropping the leader (or a panic in its call) removes its entry and closes its
/// channel, and every waiter then leads or waits anew.
pub(crate) struct Flights<V> {
    calls: Mutex<HashMap<CacheKey, Arc<CallOutcome<V>>, BuildHasherDefault<PrefixHasher>>>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Self {
            calls: Mutex::default(),
        }
    }
}

impl<V> Flights<V> {
    fn calls(
        &self,
    ) -> MutexGuard<'_, HashMap<CacheKey, Arc<CallOutcome<V>>, BuildHasherDefault<PrefixHasher>>>
    {
        // Nothing panics while holding the lock; a poisoned map is still consistent.
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many calls are in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls().len()
    }

    async fn run<F>(&self, key: CacheKey, init: F) -> Arc<Flight<V>>
    where
        F: Future<Output = Flight<V>>,
    {
        // Wait on the call in flight until this request gets its outcome, or finds none
        // (the leader went away without one) and leads.
        let outcome = loop {
            // The lock is held for the map operation only, never across an await.
            let mut waiting = match self.calls().entry(key) {
                Slot::Occupied(call) => call.get().subscribe(),
                Slot::Vacant(slot) => {
                    let outcome = Arc::new(watch::Sender::new(None));
                    slot.insert(Arc::clone(&outcome));
                    break outcome;
                }
            };
            if let Ok(out) = waiting.wait_for(Option::is_some).await
                && let Some(out) = out.as_ref()
            {
                return Arc::clone(out);
            }
        };
        let leading = Leading {
            flights: self,
            key,
            outcome,
        };
        let out = Arc::new(init.await);
        leading.finish(Arc::clone(&out));
        out
    }
}

/// The leader's hold on its entry: removed when the call ends or is dropped, and only if
/// it is still this call's (a later call for the key may have taken its place).
struct Leading<'a, V> {
    flights: &'a Flights<V>,
    key: CacheKey,
    outcome: Arc<CallOutcome<V>>,
}

impl<V> Leading<'_, V> {
    /// Ends the call: its entry goes first, then its waiters get `out`. In this order a
    /// waiter that saw the outcome and comes back for the key (a failure it may not share)
    /// finds the next call, never this one's outcome again.
    fn finish(self, out: Arc<Flight<V>>) {
        self.remove();
        self.outcome.send_replace(Some(out));
    }

    fn remove(&self) {
        let mut calls = self.flights.calls();
        if let Slot::Occupied(call) = calls.entry(self.key)
            && Arc::ptr_eq(call.get(), &self.outcome)
        {
            call.remove();
        }
    }
}

impl<V> Drop for Leading<'_, V> {
    fn drop(&mut self) {
        // Ended without an outcome (dropped, or its call panicked): its waiters see the
        // channel close and lead or wait anew. After `finish`, a no-op.
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::key::test_key as key;

    fn value(flight: &Flight<u64>) -> Option<u64> {
        match flight {
            Flight::Shared { value, .. } => Some(*value),
            _ => None,
        }
    }

    /// A call that takes `ms`, counting how many run at once for its key.
    async fn call(running: &AtomicUsize, most: &AtomicUsize, ms: u64, out: u64) -> Flight<u64> {
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        // Decremented however the call ends, dropped included.
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _done = Done(running);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Flight::Shared {
            value: out,
            failed: false,
        }
    }

    /// A request that waits forever fails the test (paused time runs the timeout out)
    /// rather than hanging it.
    async fn no_hang<T>(task: tokio::task::JoinHandle<T>) -> Result<T, tokio::task::JoinError> {
        tokio::time::timeout(Duration::from_secs(3_600), task)
            .await
            .expect("a request waited forever")
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_leads_when_the_leaders_call_panics() {
        let flights = Arc::new(Flights::<u64>::default());
        let leader = tokio::spawn({
            let flights = Arc::clone(&flights);
            async move {
                flights
                    .run(key(1), async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        panic!("the call panicked");
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        let waiter = tokio::spawn({
            let flights = Arc::clone(&flights);
            async move {
                flights
                    .run(key(1), async {
                        Flight::Shared {
                            value: 7,
                            failed: false,
                        }
                    })
                    .await
            }
        });
        assert!(no_hang(leader).await.is_err_and(|e| e.is_panic()));
        assert_eq!(value(&no_hang(waiter).await.unwrap()), Some(7));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn identical_calls_share_one_and_leave_nothing_behind() {
        let flights = Arc::new(Flights::<u64>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..5u64)
            .map(|i| {
                let (flights, calls) = (Arc::clone(&flights), Arc::clone(&calls));
                tokio::spawn(async move {
                    flights
                        .run(key(1), async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            Flight::Shared {
                                value: i,
                                failed: false,
                            }
                        })
                        .await
                })
            })
            .collect();
        let mut outs = Vec::new();
        for task in tasks {
            outs.push(no_hang(task).await.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(outs.iter().all(|out| Arc::ptr_eq(out, &outs[0])));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_leads_when_the_leader_is_dropped() {
        let flights = Arc::new(Flights::<u64>::default());
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let spawn = |out: u64| {
            let (flights, running, most) = (
                Arc::clone(&flights),
                Arc::clone(&running),
                Arc::clone(&most),
            );
            tokio::spawn(
                async move { flights.run(key(1), call(&running, &most, 1_000, out)).await },
            )
        };
        let leader = spawn(1);
        tokio::task::yield_now().await;
        let waiters = [spawn(2), spawn(3)];
        tokio::time::sleep(Duration::from_millis(500)).await;
        leader.abort();
        let mut values = Vec::new();
        for waiter in waiters {
            values.push(value(&no_hang(waiter).await.unwrap()));
        }
        // One waiter took over and the other waited on it: one answer, its own.
        assert_eq!(values[0], values[1]);
        assert!(matches!(values[0], Some(2 | 3)), "{values:?}");
        assert_eq!(most.load(Ordering::SeqCst), 1, "never two calls at once");
        assert_eq!(flights.len(), 0);
    }

    proptest! {
        /// Whatever the keys, the call lengths and which requests are dropped when: one
        /// key never has two calls at once, every request that is not dropped gets an
        /// answer, and the map is empty at the end.
        #[test]
        fn single_flight_survives_random_cancellation(
            requests in prop::collection::vec((0u8..3, 1u64..50, 0u64..20, any::<bool>()), 1..24),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let flights = Arc::new(Flights::<u64>::default());
                let counters: Arc<Vec<(AtomicUsize, AtomicUsize)>> = Arc::new(
                    (0..3).map(|_| (AtomicUsize::new(0), AtomicUsize::new(0))).collect(),
                );
                let mut kept = Vec::new();
                for (i, (k, ms, start, dropped)) in requests.into_iter().enumerate() {
                    let (flights, counters) = (Arc::clone(&flights), Arc::clone(&counters));
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(start)).await;
                        let (running, most) = &counters[usize::from(k)];
                        flights.run(key(k), call(running, most, ms, i as u64)).await
                    });
                    if dropped {
                        let abort = task.abort_handle();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(start + ms / 2)).await;
                            abort.abort();
                        });
                    } else {
                        kept.push(task);
                    }
                }
                for task in kept {
                    let out = no_hang(task).await.unwrap();
                    prop_assert!(value(&out).is_some());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                for (running, most) in counters.iter() {
                    prop_assert_eq!(running.load(Ordering::SeqCst), 0);
                    prop_assert!(most.load(Ordering::SeqCst) <= 1);
                }
                prop_assert_eq!(flights.len(), 0);
                Ok(())
            })?;
        }
    }
}
