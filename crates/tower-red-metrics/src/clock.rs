//! Where the layer reads the time: request durations, and the position in the window.

use std::time::Duration;

/// The clock a [`RedMetricsLayer`](crate::RedMetricsLayer) times requests with, chosen
/// with [`RedMetricsLayerBuilder::clock`](crate::RedMetricsLayerBuilder::clock).
///
/// The layer reads the clock twice per request (when it starts and when it is recorded),
/// so the clock is a good part of its cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Clock {
    /// The CPU's invariant time-stamp counter, through [quanta](https://docs.rs/quanta)
    /// (about 10 ns a read), calibrated against the OS's monotonic clock once per
    /// process; the OS's monotonic clock where the CPU has no stable counter. The default.
    ///
    /// It does not follow tokio's paused test clock: under `tokio::time::pause`, recorded
    /// durations are the real (tiny) ones. Use [`Clock::Tokio`] in such tests.
    #[default]
    Monotonic,
    /// tokio's clock (`tokio::time::Instant`): follows `tokio::time::pause` and
    /// `tokio::time::advance`, so a test with paused time records the durations it slept.
    /// A read costs an OS clock read (about 24 ns on a virtual machine).
    Tokio,
}

/// A started clock: reads nanoseconds since it was built.
#[derive(Debug)]
pub(crate) enum Ticks {
    /// quanta's clock, and its raw reading at the start.
    Monotonic(quanta::Clock, u64),
    /// tokio's clock, and its reading at the start.
    Tokio(tokio::time::Instant),
}

impl Ticks {
    /// Starts `clock`.
    pub(crate) fn new(clock: Clock) -> Self {
        match clock {
            Clock::Monotonic => {
                let clock = quanta::Clock::new();
                let start = clock.raw();
                Self::Monotonic(clock, start)
            }
            Clock::Tokio => Self::Tokio(tokio::time::Instant::now()),
        }
    }

    /// Nanoseconds since this clock was started (saturating at about 584 years).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Self::Monotonic(clock, start) => clock.delta_as_nanos(*start, clock.raw()),
            Self::Tokio(start) => {
                nanos(tokio::time::Instant::now().saturating_duration_since(*start))
            }
        }
    }
}

/// `duration` in whole nanoseconds, saturating.
#[inline]
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_ticks_follow_paused_time() {
        let ticks = Ticks::new(Clock::Tokio);
        let before = ticks.now();
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(ticks.now() - before, 1_500_000_000);
    }

    /// Some work that takes a while, with no clock read in it.
    fn work() -> u64 {
        (0..2_000_000u64).fold(0, |acc, i| std::hint::black_box(acc ^ i.rotate_left(7)))
    }

    #[test]
    fn monotonic_ticks_agree_with_the_os_clock() {
        let ticks = Ticks::new(Clock::Monotonic);
        // The ticks interval nested inside the OS clock's: at most the OS clock's (within
        // calibration error).
        let outer = std::time::Instant::now();
        let before = ticks.now();
        std::hint::black_box(work());
        let inner = ticks.now() - before;
        let os = nanos(outer.elapsed());
        assert!(inner <= os + os / 20, "{inner} ns inside {os} ns");
        // The OS clock's interval nested inside the ticks': at most the ticks'.
        let before = ticks.now();
        let outer = std::time::Instant::now();
        std::hint::black_box(work());
        let os = nanos(outer.elapsed());
        let inner = ticks.now() - before;
        assert!(os <= inner + inner / 20, "{os} ns inside {inner} ns");
        assert!(os > 0);
    }
}
