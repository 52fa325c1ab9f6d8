//! A cheap handle on a limiter, and its serializable snapshot.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::layer::{Mode, Shared};
use crate::quota::QuotaInfo;
use crate::{KeyExtractor, RateLimitBackend};

/// Reads a limiter's counts and a key's remaining capacity. Cheap to clone; it shares
/// the limiter's state and keeps it alive.
pub struct RateLimitHandle<K> {
    shared: Arc<dyn Inspect<K>>,
}

impl<K> Clone for RateLimitHandle<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K> fmt::Debug for RateLimitHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RateLimitHandle")
            .field(&self.shared.snapshot())
            .finish()
    }
}

impl<K> RateLimitHandle<K> {
    pub(crate) fn new(shared: Arc<dyn Inspect<K>>) -> Self {
        Self { shared }
    }

    /// The limiter's configuration and counts now.
    #[must_use]
    pub fn snapshot(&self) -> RateLimitSnapshot {
        self.shared.snapshot()
    }

    /// How many tokens `key` could spend now (the smallest over all quotas), if the
    /// backend can tell.
    #[must_use]
    pub fn remaining(&self, key: &K) -> Option<u32> {
        self.shared.remaining(key)
    }
}

/// A limiter's configuration and counts, for a metrics endpoint.
///
/// Serializes with camelCase names:
/// `{"name":"per-user","mode":"reject","maxWaitSeconds":null,"quotas":[{"count":5,"periodSeconds":1.0,"burst":5}],"allowed":10,"rejected":2,"waited":0,"trackedKeys":3}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RateLimitSnapshot {
    /// The limiter's name.
    pub name: String,
    /// `"reject"` or `"wait"`.
    pub mode: &'static str,
    /// In wait mode, the longest a request is held, in seconds.
    pub max_wait_seconds: Option<f64>,
    /// The quotas, in the order they are checked.
    pub quotas: Vec<QuotaInfo>,
    /// Requests admitted at once.
    pub allowed: u64,
    /// Requests refused.
    pub rejected: u64,
    /// Requests admitted after waiting.
    pub waited: u64,
    /// Keys holding state, if the backend can tell.
    pub tracked_keys: Option<usize>,
}

pub(crate) trait Inspect<K>: Send + Sync {
    fn snapshot(&self) -> RateLimitSnapshot;
    fn remaining(&self, key: &K) -> Option<u32>;
}

impl<X, B> Inspect<X::Key> for Shared<X, B>
where
    X: KeyExtractor,
    B: RateLimitBackend<X::Key>,
{
    fn snapshot(&self) -> RateLimitSnapshot {
        let (allowed, rejected, waited) = self.recorder.counts();
        let (mode, max_wait_seconds) = match self.mode {
            Mode::Reject => ("reject", None),
            Mode::Wait { max_wait } => ("wait", Some(max_wait.as_secs_f64())),
        };
        RateLimitSnapshot {
            name: self.name.to_string(),
            mode,
            max_wait_seconds,
            quotas: self
                .backend
                .quotas()
                .iter()
                .map(crate::Quota::info)
                .collect(),
            allowed,
            rejected,
            waited,
            tracked_keys: self.backend.tracked_keys(),
        }
    }

    fn remaining(&self, key: &X::Key) -> Option<u32> {
        self.backend.remaining(key)
    }
}
