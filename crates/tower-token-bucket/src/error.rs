//! What the limiter refuses, and why.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::Quota;

/// A request the rate limiter refused.
///
/// Services return it boxed in a [`tower::BoxError`](https://docs.rs/tower/latest/tower/type.BoxError.html);
/// recognise it with `err.downcast_ref::<RateLimitError>()`. With the `http` feature it
/// turns into a `429`/`RESOURCE_EXHAUSTED` response (and the other statuses below) through
/// `to_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitError {
    /// Not enough tokens now (reject mode), or not within `max_wait` (wait mode).
    /// HTTP 429, gRPC 8 `RESOURCE_EXHAUSTED`.
    RateLimited {
        /// How long until the same request would fit.
        retry_after: Duration,
        /// The quota that refused.
        quota: Quota,
        /// The limiter's name (the `limiter` metric label).
        limiter: Cow<'static, str>,
    },
    /// The request costs more tokens than the bucket holds: it can never fit.
    /// HTTP 413, gRPC 8 `RESOURCE_EXHAUSTED`.
    CostTooLarge {
        /// What the request costs.
        cost: u32,
        /// The quota whose burst is too small.
        quota: Quota,
    },
    /// The limiter already tracks as many keys as it may, and this key is new.
    /// HTTP 503, gRPC 14 `UNAVAILABLE`.
    KeyCapacity {
        /// When idle keys will have been pruned.
        retry_after: Duration,
    },
    /// The limiter's shared store (Redis) is unreachable and its failure policy refuses.
    /// HTTP 503, gRPC 14 `UNAVAILABLE`.
    Unavailable {
        /// When to try again.
        retry_after: Duration,
    },
    /// The rate-limit key could not be taken from the request (a missing or malformed
    /// header, no peer address). HTTP 400, gRPC 3 `INVALID_ARGUMENT`.
    InvalidKey {
        /// What was missing or malformed.
        reason: &'static str,
    },
    /// The request carries no identity to limit by (e.g. no authenticated user).
    /// HTTP 401, gRPC 16 `UNAUTHENTICATED`.
    Unauthenticated {
        /// What was missing.
        reason: &'static str,
    },
}

impl RateLimitError {
    /// How long to wait before trying again, when a retry can succeed.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::KeyCapacity { retry_after }
            | Self::Unavailable { retry_after } => Some(*retry_after),
            Self::CostTooLarge { .. } | Self::InvalidKey { .. } | Self::Unauthenticated { .. } => {
                None
            }
        }
    }

    /// The `Retry-After` value: whole seconds, rounded up, at least 1.
    #[must_use]
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(ceil_secs)
    }
}

/// Whole seconds, rounded up, at least 1.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    secs.max(1)
}

impl fmt::Display for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RateLimited { quota, .. } => write!(
                f,
                "rate limit exceeded: {} requests per {}s",
                quota.count(),
                quota.period().as_secs_f64()
            ),
            Self::CostTooLarge { cost, quota } => write!(
                f,
                "request cost {cost} exceeds the rate limit burst of {}",
                quota.burst()
            ),
            Self::KeyCapacity { .. } => f.write_str("rate limiter is tracking too many clients"),
            Self::Unavailable { .. } => f.write_str("rate limiter unavailable"),
            Self::InvalidKey { reason } => write!(f, "no rate-limit key: {reason}"),
            Self::Unauthenticated { reason } => write!(f, "unauthenticated: {reason}"),
        }
    }
}

impl std::error::Error for RateLimitError {}

/// Why a [`KeyExtractor`](crate::KeyExtractor) found no key in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyError {
    reason: &'static str,
    unauthenticated: bool,
}

impl KeyError {
    /// The key is missing or malformed: refused as [`RateLimitError::InvalidKey`] (400).
    #[must_use]
    pub const fn invalid(reason: &'static str) -> Self {
        Self {
            reason,
            unauthenticated: false,
        }
    }

    /// The request has no identity: refused as [`RateLimitError::Unauthenticated`] (401).
    #[must_use]
    pub const fn unauthenticated(reason: &'static str) -> Self {
        Self {
            reason,
            unauthenticated: true,
        }
    }

    /// What was missing or malformed.
    #[must_use]
    pub const fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for KeyError {}

impl From<KeyError> for RateLimitError {
    fn from(e: KeyError) -> Self {
        if e.unauthenticated {
            Self::Unauthenticated { reason: e.reason }
        } else {
            Self::InvalidKey { reason: e.reason }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_nanos(2_000_000_001)), 3);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }
}
