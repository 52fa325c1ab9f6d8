//! The storage seam: where entries live. [`MokaStore`] (in process, LRU, bounded) is the
//! default; a shared store (Redis, for several instances) implements [`CacheStore`] too.

use std::{
    fmt,
    future::{Future, Ready, ready},
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
    time::Duration,
};

use moka::{policy::EvictionPolicy, sync::Cache};
use tokio::time::Instant;

use crate::key::CacheKey;

/// A stored answer, with when it was stored and for how long it stays fresh.
pub struct Entry<V> {
    value: V,
    stored_at: Instant,
    ttl: Duration,
    retain: Duration,
}

impl<V> Entry<V> {
    /// An entry stored at `stored_at`, fresh for `ttl`, then kept `grace` longer to answer
    /// for failed refills (stale-if-error).
    pub fn new(value: V, stored_at: Instant, ttl: Duration, grace: Duration) -> Self {
        Self {
            value,
            stored_at,
            ttl,
            retain: ttl.saturating_add(grace),
        }
    }

    /// The stored answer.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// When it was stored (tokio time).
    pub fn stored_at(&self) -> Instant {
        self.stored_at
    }

    /// How long it is fresh after [`stored_at`](Self::stored_at).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long a store must keep it: its TTL plus the stale-if-error grace period.
    pub fn retain_for(&self) -> Duration {
        self.retain
    }
}

impl<V> fmt::Debug for Entry<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("stored_at", &self.stored_at)
            .field("ttl", &self.ttl)
            .field("retain", &self.retain)
            .finish_non_exhaustive()
    }
}

/// Where cache entries live.
///
/// Lookups are asynchronous so that a remote store fits; the in-process [`MokaStore`]
/// answers with [`std::future::Ready`], so the seam costs nothing on the hit path.
/// Writes are synchronous: a remote store may complete them in the background. A store
/// must bound its memory, and need not keep an entry past [`Entry::retain_for`].
///
/// Freshness is decided by the cache, not the store: a store returns any entry it still
/// holds, and the cache tells fresh from stale with tokio's clock.
pub trait CacheStore<V>: Send + Sync + 'static {
    /// The future returned by [`get`](Self::get).
    type Get: Future<Output = Option<Arc<Entry<V>>>> + Send + 'static;

    /// Looks up `key`.
    fn get(&self, key: &CacheKey) -> Self::Get;

    /// Looks up `key` without waiting, when the store can (the in-process store always
    /// can): `Some(answer)`. `None` (the default) means "call [`get`](Self::get)". With
    /// it, a hit is answered in `Service::call` without cloning the inner service.
    fn get_now(&self, key: &CacheKey) -> Option<Option<Arc<Entry<V>>>> {
        let _ = key;
        None
    }

    /// Looks up an entry that this instance may have stored moments ago (an identical
    /// request's answer, checked again before calling the inner service). A tiered
    /// store answers from its local level, without another remote round trip. The
    /// default is [`get`](Self::get).
    fn get_recent(&self, key: &CacheKey) -> Self::Get {
        self.get(key)
    }

    /// Called by the request about to call the inner service for `key` (after the
    /// in-process single-flight, so once per key and instance): `None` (the default)
    /// means "call". A shared store may return a lookup that first settles which
    /// instance fills the key (a short lock), resolving to `None` for the one that
    /// fills, and, for the others, to the entry it stored once it is there, or to
    /// `None` when waiting gave nothing (then they call too). The wait must be bounded.
    fn fill_turn(&self, key: &CacheKey) -> Option<Self::Get> {
        let _ = key;
        None
    }

    /// A counter the store bumps on every invalidation it learns of from elsewhere
    /// (another instance's, through a shared store), and never lowers: an answer whose
    /// call started before a bump is not stored. The default is always 0.
    fn generation(&self) -> u64 {
        0
    }

    /// Stores `entry` under `key`, replacing any previous one.
    fn insert(&self, key: CacheKey, entry: Arc<Entry<V>>);

    /// Removes `key`'s entry, if any.
    fn remove(&self, key: &CacheKey);

    /// Removes every entry.
    fn clear(&self);

    /// How many entries the store holds (may lag slightly behind recent writes).
    fn entry_count(&self) -> u64;

    /// Called once, when the layer is built and before any other use: no entry needs to
    /// be kept longer than `retain` (the layer's TTL plus its stale-if-error grace; a
    /// response's `Cache-Control` only ever shortens an entry's life). A store may drop
    /// entries after it, or after each entry's own [`Entry::retain_for`]. The default
    /// does nothing.
    fn retain_at_most(&mut self, retain: Duration) {
        let _ = retain;
    }

    /// Called once, when the layer is built and before any other use, with the cache's
    /// name (the `cache` label of its metrics), for the store's own metrics and logs.
    /// The default does nothing.
    fn set_name(&mut self, name: &str) {
        let _ = name;
    }
}

/// The default store: a [`moka`] cache with the LRU eviction policy, bounded by entry
/// count or by weight, dropping entries one retention period (TTL plus grace) after they
/// were stored.
///
/// Entries are dropped on one schedule, the layer's, not each on its own: moka's per-entry
/// expiry costs about 35 ns a lookup. An entry whose `Cache-Control: max-age` made it
/// expire earlier is never served stale past its own grace (the cache checks every
/// entry's age), but its memory is reclaimed by LRU eviction or at the end of the
/// layer's retention period.
pub struct MokaStore<V> {
    cache: Cache<CacheKey, Arc<Entry<V>>, BuildHasherDefault<PrefixHasher>>,
    capacity: u64,
    weigher: Option<Weigher<V>>,
}

type Weigher<V> = Arc<dyn Fn(&V) -> u32 + Send + Sync>;

/// moka refuses retention periods past 1,000 years.
const MAX_RETAIN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl<V> Clone for MokaStore<V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            capacity: self.capacity,
            weigher: self.weigher.clone(),
        }
    }
}

impl<V> fmt::Debug for MokaStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaStore")
            .field("capacity", &self.capacity)
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> MokaStore<V> {
    /// A store of at most `max_entries` entries.
    #[must_use]
    pub fn with_max_entries(max_entries: u64) -> Self {
        Self::build(max_entries, None, None)
    }

    /// A store bounded by total weight: `weigher` gives each value's weight (for example
    /// its size in bytes), and the weights add up to at most `max_weight`.
    #[must_use]
    pub fn with_weigher(
        max_weight: u64,
        weigher: impl Fn(&V) -> u32 + Send + Sync + 'static,
    ) -> Self {
        Self::build(max_weight, Some(Arc::new(weigher)), None)
    }

    fn build(capacity: u64, weigher: Option<Weigher<V>>, retain: Option<Duration>) -> Self {
        let mut builder = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru());
        if let Some(weigher) = weigher.clone() {
            builder = builder.weigher(move |_key, entry: &Arc<Entry<V>>| weigher(entry.value()));
        }
        if let Some(retain) = retain {
            builder = builder.time_to_live(retain.min(MAX_RETAIN));
        }
        Self {
            cache: builder.build_with_hasher(BuildHasherDefault::default()),
            capacity,
            weigher,
        }
    }
}

#[cfg(feature = "http")]
impl MokaStore<crate::cached::CachedResponse> {
    /// A store of HTTP answers bounded by about `bytes` in all: bodies, headers and
    /// trailers, as [`CachedResponse::weight`](crate::CachedResponse::weight) counts them.
    #[must_use]
    pub fn with_max_bytes(bytes: u64) -> Self {
        Self::with_weigher(bytes, |res: &crate::cached::CachedResponse| {
            u32::try_from(res.weight()).unwrap_or(u32::MAX)
        })
    }
}

impl<V: Send + Sync + 'static> CacheStore<V> for MokaStore<V> {
    type Get = Ready<Option<Arc<Entry<V>>>>;

    fn get(&self, key: &CacheKey) -> Self::Get {
        ready(self.cache.get(key))
    }

    fn get_now(&self, key: &CacheKey) -> Option<Option<Arc<Entry<V>>>> {
        Some(self.cache.get(key))
    }

    fn insert(&self, key: CacheKey, entry: Arc<Entry<V>>) {
        self.cache.insert(key, entry);
    }

    fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key);
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }

    fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Rebuilds the (still empty) moka cache with `retain` as its time to live.
    fn retain_at_most(&mut self, retain: Duration) {
        *self = Self::build(self.capacity, self.weigher.take(), Some(retain));
    }
}

/// A [`CacheKey`] is already a SHA-256 digest: its first eight bytes are the hash.
#[derive(Default)]
pub(crate) struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than `CacheKey` (which writes one u64): fold them in.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyHasher;

    fn key(n: u32) -> CacheKey {
        let mut h = KeyHasher::new();
        h.field(0, &n.to_le_bytes());
        h.finish()
    }

    #[test]
    fn bounded_by_entries() {
        let store = MokaStore::with_max_entries(10);
        for n in 0..1_000 {
            store.insert(
                key(n),
                Arc::new(Entry::new(
                    n,
                    Instant::now(),
                    Duration::from_secs(60),
                    Duration::ZERO,
                )),
            );
        }
        assert!(store.entry_count() <= 10, "{}", store.entry_count());
    }

    #[test]
    fn retention_keeps_the_bounds_and_accepts_any_duration() {
        let mut store = MokaStore::with_max_entries(10);
        store.retain_at_most(Duration::MAX);
        store.retain_at_most(Duration::from_secs(60));
        for n in 0..1_000 {
            store.insert(
                key(n),
                Arc::new(Entry::new(
                    n,
                    Instant::now(),
                    Duration::from_secs(60),
                    Duration::ZERO,
                )),
            );
        }
        assert!(store.entry_count() <= 10, "{}", store.entry_count());
        let mut store = MokaStore::with_weigher(1_000, |v: &Vec<u8>| {
            u32::try_from(v.len()).unwrap_or(u32::MAX)
        });
        store.retain_at_most(Duration::from_secs(60));
        for n in 0..100 {
            store.insert(
                key(n),
                Arc::new(Entry::new(
                    vec![0; 100],
                    Instant::now(),
                    Duration::from_secs(60),
                    Duration::ZERO,
                )),
            );
        }
        assert!(store.entry_count() <= 10, "{}", store.entry_count());
    }

    #[test]
    fn bounded_by_weight() {
        let store = MokaStore::with_weigher(1_000, |v: &Vec<u8>| {
            u32::try_from(v.len()).unwrap_or(u32::MAX)
        });
        for n in 0..100 {
            store.insert(
                key(n),
                Arc::new(Entry::new(
                    vec![0; 100],
                    Instant::now(),
                    Duration::from_secs(60),
                    Duration::ZERO,
                )),
            );
        }
        assert!(store.entry_count() <= 10, "{}", store.entry_count());
    }

    #[tokio::test]
    async fn get_insert_remove_clear() {
        let store = MokaStore::with_max_entries(10);
        let entry = Arc::new(Entry::new(
            "a",
            Instant::now(),
            Duration::from_secs(1),
            Duration::from_secs(2),
        ));
        assert_eq!(entry.retain_for(), Duration::from_secs(3));
        store.insert(key(1), entry);
        store.insert(
            key(2),
            Arc::new(Entry::new(
                "b",
                Instant::now(),
                Duration::from_secs(1),
                Duration::ZERO,
            )),
        );
        assert_eq!(store.get(&key(1)).await.map(|e| *e.value()), Some("a"));
        store.remove(&key(1));
        assert!(store.get(&key(1)).await.is_none());
        assert_eq!(store.entry_count(), 1);
        store.clear();
        assert!(store.get(&key(2)).await.is_none());
    }
}
