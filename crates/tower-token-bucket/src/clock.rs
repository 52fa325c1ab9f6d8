//! A governor clock that follows tokio's time, so paused-time tests drive the limiter.

use std::time::Duration;

use tokio::time::Instant;

/// Reads [`tokio::time::Instant`], as a [`Duration`] since the clock was created.
///
/// Under `#[tokio::test(start_paused = true)]` time only moves when the test advances
/// it, so rate-limit tests are exact and instantaneous.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokioClock {
    base: Instant,
}

impl TokioClock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }
}

impl governor::clock::Clock for TokioClock {
    type Instant = Duration;

    #[inline]
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.base)
    }
}
