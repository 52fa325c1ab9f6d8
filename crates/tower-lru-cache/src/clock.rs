//! Where the cache reads the time: when an entry was stored, and whether it is still fresh.

use std::time::Duration;

use tokio::time::Instant;

/// The clock a cache reads, chosen with
/// [`CacheLayerBuilder::clock`](crate::CacheLayerBuilder::clock) or
/// [`FnCacheLayerBuilder::clock`](crate::FnCacheLayerBuilder::clock).
///
/// The cache reads it on every lookup (is the entry fresh?) and every store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Clock {
    /// The CPU's invariant time-stamp counter, through [quanta](https://docs.rs/quanta)
    /// (about 10 ns a read), calibrated against the OS's monotonic clock once per
    /// process; the OS's monotonic clock where the CPU has no stable counter. The default.
    ///
    /// It does not follow tokio's paused test clock: under `tokio::time::pause`, entries
    /// age in real time only. Use [`Clock::Tokio`] in such tests.
    #[default]
    Monotonic,
    /// tokio's clock (`tokio::time::Instant`): follows `tokio::time::pause` and
    /// `tokio::time::advance`, so a test with paused time sees entries go stale and
    /// expire when it advances the clock. A read costs an OS clock read (about 24 ns on
    /// a virtual machine).
    Tokio,
}

/// A started [`Clock`], read as tokio instants (the monotonic clock counts from the
/// tokio instant it was started at).
#[derive(Debug)]
pub(crate) enum CacheClock {
    /// quanta's clock, its raw reading at the start, and tokio's instant then.
    Monotonic(quanta::Clock, u64, Instant),
    /// tokio's clock.
    Tokio,
}

impl CacheClock {
    /// Starts `clock`.
    pub(crate) fn new(clock: Clock) -> Self {
        match clock {
            Clock::Monotonic => {
                let tsc = quanta::Clock::new();
                let start = tsc.raw();
                Self::Monotonic(tsc, start, Instant::now())
            }
            Clock::Tokio => Self::Tokio,
        }
    }

    /// The time now.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        match self {
            Self::Monotonic(tsc, start, epoch) => {
                *epoch + Duration::from_nanos(tsc.delta_as_nanos(*start, tsc.raw()))
            }
            Self::Tokio => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = CacheClock::new(Clock::Tokio);
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now() - before, Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn the_monotonic_clock_ignores_paused_time() {
        let clock = CacheClock::new(Clock::Monotonic);
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert!(clock.now() - before < Duration::from_secs(1));
    }

    #[test]
    fn the_monotonic_clock_reads_real_time() {
        let clock = CacheClock::new(Clock::Monotonic);
        let before = clock.now();
        let outer = std::time::Instant::now();
        while outer.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let elapsed = clock.now() - before;
        assert!(elapsed >= Duration::from_micros(1_900), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    }
}
