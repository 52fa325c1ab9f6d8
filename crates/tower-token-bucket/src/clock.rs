//! The limiter's clock: the CPU's time-stamp counter by default, or tokio's clock when
//! asked (tests that pause tokio's time).

use std::sync::Arc;
use std::time::Duration;

use governor::nanos::Nanos;
use tokio::time::Instant;

/// The clock an [`InMemoryBackend`](crate::InMemoryBackend) reads, chosen with
/// [`RateLimitLayerBuilder::clock`](crate::RateLimitLayerBuilder::clock) or
/// [`InMemoryBackend::with_clock`](crate::InMemoryBackend::with_clock).
///
/// The limiter reads it once or twice a decision, so it is a good part of its cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Clock {
    /// The CPU's invariant time-stamp counter, through [quanta](https://docs.rs/quanta)
    /// (about 10 ns a read), calibrated against the OS's monotonic clock once per
    /// process; the OS's monotonic clock where the CPU has no stable counter. The default.
    ///
    /// It does not follow tokio's paused test clock: under `tokio::time::pause`, tokens
    /// come back in real time only. Use [`Clock::Tokio`] in such tests.
    #[default]
    Monotonic,
    /// tokio's clock (`tokio::time::Instant`): follows `tokio::time::pause` and
    /// `tokio::time::advance`, so a test with paused time sees tokens come back exactly
    /// when it advances the clock. A read costs an OS clock read (about 24 ns on a
    /// virtual machine).
    Tokio,
}

/// Nanoseconds since the clock was created, as governor's instant, on the chosen
/// [`Clock`]. Clones share the start.
#[derive(Clone, Debug)]
pub(crate) struct LimiterClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
enum Inner {
    /// quanta's clock, and its raw reading at the start.
    Monotonic(quanta::Clock, u64),
    /// tokio's clock, and its reading at the start.
    Tokio(Instant),
}

impl LimiterClock {
    pub(crate) fn new(clock: Clock) -> Self {
        let inner = match clock {
            Clock::Monotonic => {
                let tsc = quanta::Clock::new();
                let start = tsc.raw();
                Inner::Monotonic(tsc, start)
            }
            Clock::Tokio => Inner::Tokio(Instant::now()),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Nanoseconds since the clock was created.
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        match &*self.inner {
            Inner::Monotonic(tsc, start) => tsc.delta_as_nanos(*start, tsc.raw()),
            Inner::Tokio(start) => duration_nanos(Instant::now().saturating_duration_since(*start)),
        }
    }
}

impl governor::clock::Clock for LimiterClock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        Nanos::from(self.nanos())
    }
}

/// `d` in whole nanoseconds, saturating.
#[inline]
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = LimiterClock::new(Clock::Tokio);
        let before = clock.nanos();
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.nanos() - before, 1_500_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_monotonic_clock_ignores_paused_time() {
        let clock = LimiterClock::new(Clock::Monotonic);
        let before = clock.nanos();
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert!(clock.nanos() - before < 1_000_000_000);
    }

    #[test]
    fn the_monotonic_clock_reads_real_time() {
        let clock = LimiterClock::new(Clock::Monotonic);
        let before = clock.nanos();
        let outer = std::time::Instant::now();
        while outer.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let elapsed = clock.nanos() - before;
        assert!(elapsed >= 1_900_000, "{elapsed} ns");
        assert!(elapsed < 1_000_000_000, "{elapsed} ns");
    }
}
