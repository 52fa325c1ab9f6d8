//! Quotas: how many tokens a key may spend over what period, and how many at once.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Serialize;

/// The longest a whole bucket takes to refill: about a century. A quota slower than that
/// (`Quota::new(1, Duration::MAX)`) is enforced as one token per century per burst
/// token, which no client can tell apart.
const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A rate: `count` tokens every `period`, from a bucket of `burst` tokens (default:
/// `count`).
///
/// A quota is a token bucket: a burst, then the rate. A key that has been idle finds its
/// bucket full and may spend `burst` tokens at once; after that a token comes back every
/// `period / count`, continuously, not all at once at the end of a window. So
/// [`Quota::per_second(5)`](Quota::per_second) admits 5 requests at once, then one every
/// 200 ms: a client that keeps trying gets **9 requests in its first second** (5 at
/// 0 ms, then at 200, 400, 600 and 800 ms) and 5 a second from then on. Over any span of
/// time `T`, a key spends at most `burst + count * T / period` tokens.
///
/// To hold the first second to the rate as well, make the bucket smaller:
/// `Quota::per_second(5).with_burst(1)` admits one request every 200 ms from the start,
/// 5 in the first second.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use tower_token_bucket::{Clock, DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL};
/// use tower_token_bucket::{Decision, InMemoryBackend, Quota};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// /// Requests admitted in the first second to a client that tries every 10 ms.
/// async fn first_second(quota: Quota) -> u32 {
///     // tokio's clock, which this example pauses and advances.
///     let limiter =
///         InMemoryBackend::<()>::with_clock(&[quota], DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL, Clock::Tokio);
///     let mut admitted = 0;
///     for _ in 0..100 {
///         if limiter.decide(&(), NonZeroU32::MIN) == Decision::Allowed {
///             admitted += 1;
///         }
///         tokio::time::advance(Duration::from_millis(10)).await;
///     }
///     admitted
/// }
///
/// assert_eq!(first_second(Quota::per_second(5)).await, 9); // 5 at once, then 4 more
/// assert_eq!(first_second(Quota::per_second(5).with_burst(1)).await, 5);
///
/// let q = Quota::per_minute(100).with_burst(10);
/// assert_eq!(q.count(), 100);
/// assert_eq!(q.period(), Duration::from_secs(60));
/// assert_eq!(q.burst(), 10);
/// assert_eq!(q.replenish_interval(), Duration::from_millis(600));
/// # }
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
    /// Any non-zero period works, `Duration::MAX` included (a very slow quota: see
    /// [`replenish_interval`](Self::replenish_interval)).
    ///
    /// # Panics
    ///
    /// If `count` is zero or `period` is zero: both are configuration errors, caught when
    /// the limiter is set up, never on a request. [`try_new`](Self::try_new) returns
    /// them as an error instead.
    #[must_use]
    pub fn new(count: u32, period: Duration) -> Self {
        match Self::try_new(count, period) {
            Ok(quota) => quota,
            Err(e) => panic!("{e}"),
        }
    }

    /// `count` tokens every `period`, burst `count`, or why that is not a quota.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_token_bucket::Quota;
    ///
    /// assert!(Quota::try_new(5, Duration::from_secs(1)).is_ok());
    /// let err = Quota::try_new(5, Duration::ZERO).unwrap_err();
    /// assert_eq!(err.to_string(), "a quota needs a non-zero period");
    /// ```
    ///
    /// # Errors
    ///
    /// If `count` is zero or `period` is zero.
    pub fn try_new(count: u32, period: Duration) -> Result<Self, InvalidQuota> {
        let Some(count) = NonZeroU32::new(count) else {
            return Err(InvalidQuota("a quota needs a count of at least 1 token"));
        };
        if period.is_zero() {
            return Err(InvalidQuota("a quota needs a non-zero period"));
        }
        Ok(Self {
            count,
            period,
            burst: count,
        })
    }

    /// `count` tokens a second, burst `count`: `count` at once, then one every
    /// `1 s / count` (see the [type's docs](Quota) for what that admits).
    ///
    /// # Panics
    ///
    /// If `count` is zero.
    #[must_use]
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` tokens a minute, burst `count`.
    ///
    /// # Panics
    ///
    /// If `count` is zero.
    #[must_use]
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` tokens an hour, burst `count`.
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
    ///
    /// A quota so slow that a whole bucket would take more than about a century to
    /// refill is enforced at that century (its time arithmetic stays in range).
    #[must_use]
    pub fn replenish_interval(&self) -> Duration {
        (self.period / self.count.get()).max(Duration::from_nanos(1))
    }

    /// The interval enforced: [`replenish_interval`](Self::replenish_interval), capped
    /// so that a whole bucket refills within [`MAX_REFILL`] (governor's nanosecond
    /// arithmetic would overflow past 584 years).
    pub(crate) fn gcra_interval(&self) -> Duration {
        let cap = MAX_REFILL / self.burst.get();
        self.replenish_interval()
            .min(cap)
            .max(Duration::from_nanos(1))
    }

    /// The same quota in governor's terms.
    pub(crate) fn to_governor(self) -> governor::Quota {
        governor::Quota::with_period(self.gcra_interval())
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

/// Why [`Quota::try_new`] refused its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidQuota(&'static str);

impl fmt::Display for InvalidQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidQuota {}

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
