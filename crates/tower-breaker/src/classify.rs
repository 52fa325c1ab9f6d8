//! Deciding whether a call's result is a success, a failure, or neither.

use std::time::Duration;

use crate::BreakerError;

/// Boxed error type used by every service of this crate (the same as `tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The breaker's verdict on one completed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The upstream answered well: counts toward closing.
    Success,
    /// The upstream failed: counts toward opening.
    Failure,
    /// A failure for which the upstream asked callers to wait (an upstream `429` or `503`
    /// with `Retry-After`): counts as a failure and opens the circuit at once for at
    /// least this long.
    FailureRetryAfter(Duration),
    /// Not the upstream's doing (a local refusal, a cancelled request): not counted.
    Ignored,
}

impl Verdict {
    /// Whether this verdict counts as a failure.
    #[must_use]
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failure | Self::FailureRetryAfter(_))
    }
}

/// Classifies the result of a call.
///
/// Implemented for every `Fn(&Result<Res, BoxError>) -> Verdict`, so a closure can wrap
/// [`DefaultClassifier`] to treat some errors differently:
///
/// ```
/// use tower_breaker::{BoxError, Classify, DefaultClassifier, Verdict};
///
/// #[derive(Debug)]
/// struct QueueFull;
/// impl std::fmt::Display for QueueFull {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("queue full")
///     }
/// }
/// impl std::error::Error for QueueFull {}
///
/// let classifier = |result: &Result<http::Response<()>, BoxError>| match result {
///     // A local refusal is not the upstream's failure.
///     Err(error) if error.is::<QueueFull>() => Verdict::Ignored,
///     _ => DefaultClassifier::new().classify(result),
/// };
/// let refused: Result<http::Response<()>, BoxError> = Err(Box::new(QueueFull));
/// assert_eq!(classifier.classify(&refused), Verdict::Ignored);
/// ```
///
/// A breaker keeps one classifier, shared by all its calls: it is never cloned, and must
/// be `Send + Sync + 'static`.
pub trait Classify<Res> {
    /// The verdict on one call's result.
    fn classify(&self, result: &Result<Res, BoxError>) -> Verdict;
}

impl<F, Res> Classify<Res> for F
where
    F: Fn(&Result<Res, BoxError>) -> Verdict,
{
    fn classify(&self, result: &Result<Res, BoxError>) -> Verdict {
        self(result)
    }
}

/// What the [`DefaultClassifier`] needs to know about a response.
///
/// Implemented for `http::Response<B>` (feature `http`): a 5xx status is a failure, and
/// so is a trailers-only gRPC answer with `grpc-status` `UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `INTERNAL`, `UNAVAILABLE` or `DATA_LOSS`; anything else is a success. Implement it for your own response type to use the default
/// classifier with it, or pass a closure to the builder's `classifier` instead.
pub trait ResponseVerdict {
    /// Whether this response is an upstream failure.
    fn is_failure(&self) -> bool;

    /// The wait the upstream asked for, if this response is a throttling answer that
    /// carries one (for HTTP: a `429` or `503` with `Retry-After` in seconds).
    fn upstream_retry_after(&self) -> Option<Duration> {
        None
    }
}

/// The default classifier.
///
/// - `Ok(response)`: a failure when [`ResponseVerdict::is_failure`] says so (for HTTP,
///   a 5xx status, or a trailers-only gRPC answer whose `grpc-status` is a server
///   failure), else a success. A 4xx is the client's doing and counts as a success.
/// - `Err(error)`: our own [`BreakerError::Timeout`] and any other error (transport,
///   upstream) are failures; [`BreakerError::CircuitOpen`] from a nested breaker is
///   ignored.
/// - With [`honor_retry_after`](Self::honor_retry_after), an upstream throttling answer
///   with a `Retry-After` becomes [`Verdict::FailureRetryAfter`], capped.
///
/// Local refusals of other layers (rate limited, queue full) should not count as upstream
/// failures: wrap this classifier in a closure that returns [`Verdict::Ignored`] for
/// them (see [`Classify`]).
#[derive(Clone, Copy, Debug)]
pub struct DefaultClassifier {
    honor_retry_after: Option<Duration>,
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultClassifier {
    /// The default classifier; upstream `Retry-After` is not honoured.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            honor_retry_after: None,
        }
    }

    /// Honour an upstream throttling answer's `Retry-After` by holding the circuit open
    /// that long, at most `cap` (a hostile or broken upstream cannot hold it open for
    /// ever).
    #[must_use]
    pub const fn honor_retry_after(mut self, cap: Duration) -> Self {
        self.honor_retry_after = Some(cap);
        self
    }

    /// The verdict on an error alone (the `Err` half of [`Classify`]).
    #[must_use]
    pub fn classify_error(&self, error: &BoxError) -> Verdict {
        match error.downcast_ref::<BreakerError>() {
            Some(BreakerError::CircuitOpen { .. }) => Verdict::Ignored,
            _ => Verdict::Failure,
        }
    }
}

impl<Res: ResponseVerdict> Classify<Res> for DefaultClassifier {
    fn classify(&self, result: &Result<Res, BoxError>) -> Verdict {
        match result {
            Ok(response) => {
                if let Some(cap) = self.honor_retry_after
                    && let Some(wait) = response.upstream_retry_after()
                {
                    return Verdict::FailureRetryAfter(wait.min(cap));
                }
                if response.is_failure() {
                    Verdict::Failure
                } else {
                    Verdict::Success
                }
            }
            Err(error) => self.classify_error(error),
        }
    }
}
