//! The metrics this crate emits, and their recording.
//!
//! Handles are resolved with their labels once, when the layer is built, so a request
//! pays one atomic increment, not a label lookup. **Install the `metrics` recorder
//! before building the layer**: handles resolved before a recorder exists record nothing.

use std::time::Duration;

use metrics::{Counter, Gauge};

/// The default cache name, used as the `cache` metrics label.
pub const DEFAULT_NAME: &str = "default";
/// Default bound: 100 entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 100;
/// Default freshness: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Counter: requests seen by the cache, labelled `cache` (the layer's name) and `result`
/// (`hit`, `miss`, `stale`, `coalesced`, `bypass`).
pub const CACHE_REQUESTS_TOTAL: &str = "cache_requests_total";
/// Gauge: entries held, labelled `cache`.
pub const CACHE_ENTRIES: &str = "cache_entries";

/// Counter: failed or timed-out round trips to a shared store (the Redis level of
/// `RedisStore`), labelled `cache`. Each is answered as if the shared level were absent.
pub const CACHE_BACKEND_ERRORS_TOTAL: &str = "cache_backend_errors_total";

/// How one request was answered. Every request that completes is counted once, under
/// exactly one result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from a fresh entry, without an inner call.
    Hit = 0,
    /// Answered by its own inner call.
    Miss,
    /// Answered from an expired entry because the refill failed.
    Stale,
    /// Answered by an identical concurrent request's inner call.
    Coalesced,
    /// Not eligible for the cache (method, body size, no partition, ...).
    Bypass,
}

impl Outcome {
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Coalesced => "coalesced",
            Self::Bypass => "bypass",
        }
    }
}

/// Pre-resolved metric handles for one cache.
#[derive(Debug)]
pub(crate) struct Metrics {
    hit: Counter,
    miss: Counter,
    stale: Counter,
    coalesced: Counter,
    bypass: Counter,
    entries: Gauge,
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let counter = |outcome: Outcome| metrics::counter!(CACHE_REQUESTS_TOTAL, "cache" => name.to_owned(), "result" => outcome.label());
        Self {
            hit: counter(Outcome::Hit),
            miss: counter(Outcome::Miss),
            stale: counter(Outcome::Stale),
            coalesced: counter(Outcome::Coalesced),
            bypass: counter(Outcome::Bypass),
            entries: metrics::gauge!(CACHE_ENTRIES, "cache" => name.to_owned()),
        }
    }

    pub(crate) fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Hit => &self.hit,
            Outcome::Miss => &self.miss,
            Outcome::Stale => &self.stale,
            Outcome::Coalesced => &self.coalesced,
            Outcome::Bypass => &self.bypass,
        }
        .increment(1);
    }

    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn set_entries(&self, entries: u64) {
        self.entries.set(entries as f64);
    }
}
