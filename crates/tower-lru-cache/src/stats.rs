//! Counters, the snapshot they produce and the handle that reads them.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use serde::Serialize;

use crate::{key::CacheKey, metrics::Outcome};

/// How many independent counter sets [`Stats`] keeps, so that threads counting at the
/// same time mostly write different cache lines.
const SHARDS: usize = 8;

/// One shard's per-outcome counters, alone on its cache line(s).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard([AtomicU64; 5]);

/// Per-outcome request counters, sharded by thread.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    shards: [Shard; SHARDS],
}

fn shard_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl Stats {
    pub(crate) fn record(&self, outcome: Outcome) {
        self.shards[shard_index()].0[outcome as usize].fetch_add(1, Relaxed);
    }

    fn total(&self, outcome: Outcome) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[outcome as usize].load(Relaxed))
            .sum()
    }

    pub(crate) fn snapshot(&self, name: &str, entries: u64) -> CacheSnapshot {
        let hits = self.total(Outcome::Hit);
        let misses = self.total(Outcome::Miss);
        let stale = self.total(Outcome::Stale);
        let coalesced = self.total(Outcome::Coalesced);
        let lookups = hits + misses + stale + coalesced;
        #[allow(clippy::cast_precision_loss)]
        let hit_rate_percent = if lookups == 0 {
            0.0
        } else {
            hits as f64 * 100.0 / lookups as f64
        };
        CacheSnapshot {
            name: name.to_owned(),
            hits,
            misses,
            stale,
            coalesced,
            bypassed: self.total(Outcome::Bypass),
            entries,
            hit_rate_percent,
        }
    }
}

/// A point-in-time view of one cache's counters.
///
/// Each completed request is counted under exactly one of `hits`, `misses`, `stale`,
/// `coalesced` and `bypassed`. Only `hits` are answers served without any inner call
/// (so `hits × cost per call` is money saved); `coalesced` answers shared another
/// request's inner call and saved a call each too.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheSnapshot {
    /// The cache's name (its metrics label).
    pub name: String,
    /// Answered from a fresh entry, without an inner call.
    pub hits: u64,
    /// Answered by their own inner call.
    pub misses: u64,
    /// Answered from an expired entry within its grace period, because the refill failed
    /// or was degraded.
    pub stale: u64,
    /// Answered by an identical concurrent request's inner call (single-flight).
    pub coalesced: u64,
    /// Not eligible for caching: passed straight to the inner service.
    pub bypassed: u64,
    /// Entries held now.
    pub entries: u64,
    /// `hits / (hits + misses + stale + coalesced)` as a percentage, from 0.0 to 100.0
    /// (0.0 before any lookup); `hitRate` in the JSON, as the seed's `/api/metrics` has
    /// it (`60.0` is 60 %).
    #[serde(rename = "hitRate")]
    pub hit_rate_percent: f64,
}

/// What a handle can do to the cache it belongs to.
pub(crate) trait HandleOps: Send + Sync + 'static {
    fn snapshot(&self) -> CacheSnapshot;
    fn remove(&self, key: &CacheKey);
    fn clear(&self);
    #[cfg(feature = "http")]
    fn key_for(&self, parts: &http::request::Parts, body: &[u8]) -> Option<CacheKey>;
}

/// A cheap, cloneable handle on one cache: statistics and invalidation.
///
/// Every clone of the layer, and every service the layer builds, shares the cache this
/// handle reads.
#[derive(Clone)]
pub struct CacheHandle {
    ops: Arc<dyn HandleOps>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheHandle")
            .field(&self.snapshot())
            .finish()
    }
}

impl CacheHandle {
    pub(crate) fn new(ops: Arc<dyn HandleOps>) -> Self {
        Self { ops }
    }

    /// The counters and entry count now.
    #[must_use]
    pub fn snapshot(&self) -> CacheSnapshot {
        self.ops.snapshot()
    }

    /// Removes one entry.
    pub fn invalidate(&self, key: &CacheKey) {
        self.ops.remove(key);
    }

    /// Removes every entry.
    pub fn invalidate_all(&self) {
        self.ops.clear();
    }

    /// Removes the entry that the request with these parts and body would hit, and
    /// returns its key; `None` when such a request bypasses the cache, and always for the
    /// handle of an [`FnCacheLayer`](crate::FnCacheLayer), whose keys come from your own
    /// function (use [`invalidate`](Self::invalidate) there).
    #[cfg(feature = "http")]
    pub fn invalidate_request(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Option<CacheKey> {
        let key = self.ops.key_for(parts, body)?;
        self.ops.remove(&key);
        Some(key)
    }
}
