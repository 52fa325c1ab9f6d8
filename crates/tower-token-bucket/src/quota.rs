//! Quotas: how many tokens a key may spend over what period, and how many at once.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Serialize;

/// A rate: `count` tokens every `period`, with a burst of `burst` tokens (default:
/// `count`).
///
/// Quotas say what they mean: [`Quota::per_second(5)`](Quota::per_second) admits five
/// requests a second, and a key that has been idle may spend five at once. Tokens come
/// back continuously (one every `period / count`), not all at once at the end of a
/// window.
///
/// ```
/// use std::time::Duration;
/// use tower_token_bucket::Quota;
///
/// let q = Quota::per_minute(100).with_burst(10);
/// assert_eq!(q.count(), 100);
/// assert_eq!(q.period(), Duration::from_secs(60));
/// assert_eq!(q.burst(), 10);
/// assert_eq!(q.replenish_interval(), Duration::from_millis(600));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    count: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
}

impl Quota {
    /// `count` tokens every `period`, burst `count`.
    ///
    /// # Panics
    ///
    /// If `count` is zero or `period` is zero: both are configuration errors, caught when
    /// the limiter is set up, never on a request.
    #[must_use]
    pub fn new(count: u32, period: Duration) -> Self {
        let Some(count) = NonZeroU32::new(count) else {
            panic!("a quota needs a count of at least 1 token");
        };
        assert!(!period.is_zero(), "a quota needs a non-zero period");
        Self {
            count,
            period,
            burst: count,
        }
    }

    /// `count` tokens a second.
    ///
    /// # Panics
    ///
    /// If `count` is zero.
    #[must_use]
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` tokens a minute.
    ///
    /// # Panics
    ///
    /// If `count` is zero.
    #[must_use]
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` tokens an hour.
    ///
    /// # Panics
    ///
    /// If `count` is zero.
    #[must_use]
    pub fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// Sets how many tokens an idle key may spend at once (the bucket's size).
    ///
    /// # Panics
    ///
    /// If `burst` is zero.
    #[must_use]
    pub fn with_burst(mut self, burst: u32) -> Self {
        let Some(burst) = NonZeroU32::new(burst) else {
            panic!("a quota needs a burst of at least 1 token");
        };
        self.burst = burst;
        self
    }

    /// Tokens per period.
    #[must_use]
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period over which [`count`](Self::count) tokens come back.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The size of the bucket: the most tokens spendable at once.
    #[must_use]
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The time it takes one token to come back (`period / count`, at least 1 ns).
    #[must_use]
    pub fn replenish_interval(&self) -> Duration {
        (self.period / self.count.get()).max(Duration::from_nanos(1))
    }

    /// The same quota in governor's terms.
    pub(crate) fn to_governor(self) -> governor::Quota {
        governor::Quota::with_period(self.replenish_interval())
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst)
    }

    /// The serializable description of this quota.
    #[must_use]
    pub fn info(&self) -> QuotaInfo {
        QuotaInfo {
            count: self.count(),
            period_seconds: self.period.as_secs_f64(),
            burst: self.burst(),
        }
    }
}

/// A quota as it appears in a [`RateLimitSnapshot`](crate::RateLimitSnapshot).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaInfo {
    /// Tokens per period.
    pub count: u32,
    /// The period, in seconds.
    pub period_seconds: f64,
    /// The bucket size.
    pub burst: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_means_per_second() {
        let q = Quota::per_second(5);
        assert_eq!(q.replenish_interval(), Duration::from_millis(200));
        assert_eq!(q.burst(), 5);
        assert_eq!(q.to_governor().burst_size().get(), 5);
        assert_eq!(
            q.to_governor().replenish_interval(),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn tiny_interval_is_clamped() {
        let q = Quota::new(u32::MAX, Duration::from_nanos(1));
        assert_eq!(q.replenish_interval(), Duration::from_nanos(1));
        let _ = q.to_governor();
    }

    #[test]
    #[should_panic(expected = "at least 1 token")]
    fn zero_count_is_refused() {
        let _ = Quota::per_second(0);
    }
}
