//! The limiter's clock: the CPU's time-stamp counter, or tokio's clock when tokio's time
//! is paused (tests), so paused-time tests drive the limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use governor::nanos::Nanos;
use tokio::time::Instant;

/// Not chosen yet: read tokio's clock.
const UNDECIDED: u8 = 0;
/// tokio's clock was paused when the limiter was first used in a runtime: follow it.
const TOKIO: u8 = 1;
/// tokio's clock is real time: read the (cheaper) time-stamp counter instead.
const TSC: u8 = 2;

/// Nanoseconds since the clock was created, as governor's instant.
///
/// A read of tokio's clock costs an OS clock read (about 24 ns on a virtual machine);
/// quanta's TSC read about 10 ns. Both count from the same moment, and the choice is
/// made once, on the first decision made inside a tokio runtime ([`resolve`]): if
/// tokio's clock is paused there (`#[tokio::test(start_paused = true)]`,
/// `tokio::time::pause`), the limiter follows tokio's clock for good, so tests that
/// advance time see tokens come back exactly; otherwise it reads the TSC. Until then it
/// reads tokio's clock.
///
/// [`resolve`]: LimiterClock::resolve
#[derive(Clone, Debug)]
pub(crate) struct LimiterClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    mode: AtomicU8,
    tokio_start: Instant,
    tsc: quanta::Clock,
    tsc_start: u64,
}

impl LimiterClock {
    pub(crate) fn new() -> Self {
        let tsc = quanta::Clock::new();
        let tsc_start = tsc.raw();
        Self {
            inner: Arc::new(Inner {
                mode: AtomicU8::new(UNDECIDED),
                tokio_start: Instant::now(),
                tsc,
                tsc_start,
            }),
        }
    }

    /// Chooses the clock, once, if called inside a tokio runtime. Returns whether the
    /// choice is made.
    pub(crate) fn resolve(&self) -> bool {
        let inner = &*self.inner;
        if inner.mode.load(Ordering::Relaxed) != UNDECIDED {
            return true;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            // Outside a runtime tokio's clock is real time here, but the limiter may yet
            // be used in a paused runtime: decide there.
            return false;
        }
        let mode = if tokio_paused() { TOKIO } else { TSC };
        let _ = inner
            .mode
            .compare_exchange(UNDECIDED, mode, Ordering::Relaxed, Ordering::Relaxed);
        true
    }

    /// Whether the limiter follows tokio's clock (tokio's time was paused when chosen).
    #[cfg(test)]
    pub(crate) fn follows_tokio(&self) -> bool {
        self.inner.mode.load(Ordering::Relaxed) != TSC
    }

    /// Nanoseconds since the clock was created.
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        let inner = &*self.inner;
        if inner.mode.load(Ordering::Relaxed) == TSC {
            inner.tsc.delta_as_nanos(inner.tsc_start, inner.tsc.raw())
        } else {
            duration_nanos(Instant::now().saturating_duration_since(inner.tokio_start))
        }
    }
}

/// Whether tokio's clock is paused in the current runtime: a paused clock does not move
/// while we spin (it only moves when the runtime advances it, never during a poll).
fn tokio_paused() -> bool {
    let before = Instant::now();
    let real = std::time::Instant::now();
    while real.elapsed() < Duration::from_micros(2) {
        std::hint::spin_loop();
    }
    Instant::now() == before
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
    async fn follows_paused_tokio_time() {
        let clock = LimiterClock::new();
        assert!(clock.resolve());
        assert!(clock.follows_tokio());
        let before = clock.nanos();
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.nanos() - before, 1_500_000_000);
    }

    #[tokio::test]
    async fn reads_the_tsc_in_real_time() {
        let clock = LimiterClock::new();
        assert!(clock.resolve());
        assert!(!clock.follows_tokio());
        let before = clock.nanos();
        let outer = std::time::Instant::now();
        while outer.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let elapsed = clock.nanos() - before;
        assert!(elapsed >= 1_900_000, "{elapsed} ns");
        assert!(elapsed < 1_000_000_000, "{elapsed} ns");
    }

    #[test]
    fn undecided_outside_a_runtime() {
        let clock = LimiterClock::new();
        assert!(!clock.resolve());
        assert!(clock.follows_tokio());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(clock.resolve());
            assert!(clock.follows_tokio());
        });
    }
}
