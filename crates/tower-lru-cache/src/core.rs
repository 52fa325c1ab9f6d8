//! What the HTTP and the generic cache share: the store, single-flight, counting.

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::clock::{CacheClock, Clock};

use crate::{
    key::CacheKey,
    metrics::{Metrics, Outcome},
    policy::{Freshness, freshness},
    stats::{CacheSnapshot, Stats},
    store::{CacheStore, Entry},
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
    /// Used only for moka's coalescing of concurrent `try_get_with` calls: every init
    /// future returns `Err`, so it never holds a value, and the outcome reaches every
    /// waiter as the shared error.
    flights: moka::future::Cache<CacheKey, ()>,
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
            flights: moka::future::Cache::new(1),
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
    /// `init` (moka's hand-over), so no waiter hangs.
    pub(crate) async fn flight<F>(&self, key: CacheKey, init: F) -> Arc<Flight<V>>
    where
        F: Future<Output = Flight<V>>,
    {
        // Boxed: moka hands `init` down through several futures of its own, and a future
        // is copied whole at each step; boxed, only a pointer moves.
        let init = Box::pin(async { Err::<(), Flight<V>>(init.await) });
        match self.flights.try_get_with(key, init).await {
            Err(shared) => shared,
            // The flight cache never holds a value, so this cannot be reached; if it were,
            // calling for oneself is always correct.
            Ok(()) => Arc::new(Flight::Alone),
        }
    }
}
