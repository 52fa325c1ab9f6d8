//! Exponential backoff with full jitter, as a tower [`MakeBackoff`].

use std::time::Duration;

use tokio::time::Sleep;
use tower::retry::backoff::{Backoff, MakeBackoff};
use tower::util::rng::{HasherRng, Rng};

/// Makes [`FullJitterBackoff`]s: retry `n` (counting from 0) sleeps a uniformly random
/// time in `[0, min(cap, base · 2^n))`.
///
/// Full jitter spreads the retries of many clients that failed together over the whole
/// window, instead of bunching them just after `base · 2^n` as tower's
/// [`ExponentialBackoffMaker`](tower::retry::backoff::ExponentialBackoffMaker) does (its
/// jitter only adds to the exponential delay). It plugs into tower's retry machinery like
/// any other [`MakeBackoff`], and its sleeps follow tokio's (pausable) clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FullJitterBackoffMaker {
    base: Duration,
    cap: Duration,
}

impl FullJitterBackoffMaker {
    /// Backoff starting at `base` and doubling, never above `cap` (a `cap` below `base` is
    /// raised to `base`).
    #[must_use]
    pub fn new(base: Duration, cap: Duration) -> Self {
        FullJitterBackoffMaker {
            base,
            cap: cap.max(base),
        }
    }

    /// The first retry's upper bound.
    #[must_use]
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest upper bound.
    #[must_use]
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

impl MakeBackoff for FullJitterBackoffMaker {
    type Backoff = FullJitterBackoff;

    fn make_backoff(&mut self) -> Self::Backoff {
        FullJitterBackoff {
            maker: *self,
            retries: 0,
            rng: HasherRng::default(),
        }
    }
}

/// One request's sequence of backoffs; see [`FullJitterBackoffMaker`].
#[derive(Clone, Debug)]
pub struct FullJitterBackoff {
    maker: FullJitterBackoffMaker,
    retries: u32,
    rng: HasherRng,
}

impl FullJitterBackoff {
    /// The upper bound of the next delay: `min(cap, base · 2^n)`.
    #[must_use]
    pub fn ceiling(&self) -> Duration {
        let FullJitterBackoffMaker { base, cap } = self.maker;
        2u32.checked_pow(self.retries)
            .and_then(|factor| base.checked_mul(factor))
            .map_or(cap, |delay| delay.min(cap))
    }

    /// The next delay, drawn uniformly from `[0, ceiling)`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = u64::try_from(self.ceiling().as_nanos()).unwrap_or(u64::MAX);
        self.retries = self.retries.saturating_add(1);
        let scaled = (u128::from(ceiling) * u128::from(self.rng.next_u64())) >> 64;
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    }
}

impl Backoff for FullJitterBackoff {
    type Future = Sleep;

    fn next_backoff(&mut self) -> Self::Future {
        tokio::time::sleep(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let mut backoff =
            FullJitterBackoffMaker::new(Duration::from_millis(100), Duration::from_millis(500))
                .make_backoff();
        let mut ceilings = Vec::new();
        for _ in 0..5 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn delays_are_spread_over_the_window() {
        let mut maker = FullJitterBackoffMaker::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..200)
            .map(|_| maker.make_backoff().next_delay())
            .collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(250)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(750)));
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_its_ceiling(base_ms in 0u64..10_000, cap_ms in 0u64..100_000, retries in 0usize..80) {
            let mut backoff = FullJitterBackoffMaker::new(
                Duration::from_millis(base_ms),
                Duration::from_millis(cap_ms),
            ).make_backoff();
            for _ in 0..retries {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                prop_assert!(delay <= ceiling);
                prop_assert!(ceiling <= Duration::from_millis(cap_ms.max(base_ms)));
            }
        }
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let mut backoff = FullJitterBackoffMaker::new(Duration::MAX, Duration::MAX).make_backoff();
        for _ in 0..70 {
            let _ = backoff.next_delay();
        }
    }
}
