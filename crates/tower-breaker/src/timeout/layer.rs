use std::time::Duration;

use tower_layer::Layer;

use super::Timeout;

/// The default call timeout: 120 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Wraps services in a [`Timeout`].
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Calls that take longer than `timeout` are cancelled and fail with
    /// [`BreakerError::Timeout`](crate::BreakerError::Timeout). `Duration::ZERO` fails
    /// every call that does not answer at its first poll; `Duration::MAX` never fires.
    #[must_use]
    pub const fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Default for TimeoutLayer {
    /// [`DEFAULT_TIMEOUT`] (120 s).
    fn default() -> Self {
        Self::new(DEFAULT_TIMEOUT)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout)
    }
}
