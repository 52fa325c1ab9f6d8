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

    /// The timeout.
    #[must_use]
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(feature = "http")]
impl TimeoutLayer {
    /// This timeout in the form that answers its refusals itself: a call that runs past
    /// the timeout gets the answer of [`BreakerError::Timeout`](crate::BreakerError)
    /// (see [`Refusal`](crate::Refusal)): 504, or the gRPC trailers-only
    /// `DEADLINE_EXCEEDED`; and the service keeps the inner service's error type, as
    /// tower-http's `TimeoutLayer` does. On an axum route it attaches with `.layer(...)`;
    /// see the [crate documentation](crate#refusals-as-errors-or-as-answers).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use axum::{Router, routing::post};
    /// use tower_breaker::TimeoutLayer;
    ///
    /// let app: Router = Router::new().route(
    ///     "/analyze",
    ///     post(|| async { "analysed" })
    ///         .layer(TimeoutLayer::new(Duration::from_secs(120)).answer_refusals()),
    /// );
    /// ```
    #[must_use]
    pub fn answer_refusals(self) -> tower_refusal::AnswerRefusalsLayer<Self, crate::BreakerError> {
        tower_refusal::AnswerRefusalsLayer::new(self)
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
