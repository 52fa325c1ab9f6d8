//! Which outcomes are worth another attempt.

use std::fmt;
use std::time::Duration;

use tower::BoxError;

use crate::error::QueueError;

/// What to do with an attempt's outcome.
///
/// A retry repeats the request, so the decision says how safe that is: whether the
/// upstream did not process the request (any request may be sent again), or may have
/// processed it (only an idempotent request may be sent again; see
/// [`Replay::is_idempotent`](crate::Replay::is_idempotent) and
/// [`RetryLayerBuilder::idempotent`](crate::RetryLayerBuilder::idempotent)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Give the outcome to the caller.
    Return,
    /// Try again after the backoff, whatever the request: the upstream did not process it
    /// (the connection was refused, or the upstream answered 429 or 503).
    Retry,
    /// Like [`Retry`](Self::Retry), not before this long (the upstream said so, e.g. with
    /// `Retry-After`); the wait is the longer of this (up to the layer's
    /// `retry_after_cap`) and the backoff.
    RetryAfter(Duration),
    /// Try again after the backoff only if the request is idempotent: the upstream may
    /// have processed it (a 500, a connection reset, an unknown error).
    RetryIfIdempotent,
    /// The attempt timed out, and the upstream may still be processing it: retried like
    /// [`RetryIfIdempotent`](Self::RetryIfIdempotent), and only while the layer retries
    /// timeouts ([`RetryLayerBuilder::retry_timeouts`](crate::RetryLayerBuilder::retry_timeouts)).
    RetryIfIdempotentTimedOut,
}

/// Decides whether an attempt's outcome is retried.
///
/// Provided: [`RetryErrors`] for any response type, [`HttpClassifier`](crate::HttpClassifier)
/// for `http::Response` (with the `http` feature), and closures through [`classify_fn`].
/// The layer boxes the inner service's errors before classifying, so a classifier can
/// recognise refusals of other layers with `error.is::<TheirError>()`.
pub trait Classify<Res> {
    /// Looks at one attempt's outcome.
    fn classify(&self, result: &Result<Res, BoxError>) -> RetryDecision;
}

/// Whether an error is a refusal of this crate's queue, which is never retried: a full
/// queue will not empty because its own caller asks again.
#[must_use]
pub fn is_queue_refusal(error: &BoxError) -> bool {
    error.is::<QueueError>()
}

/// Classifies errors for services whose response type says nothing about failure; never
/// retries a response.
///
/// | error | decision |
/// |---|---|
/// | this crate's [`QueueError`] | [`Return`](RetryDecision::Return) |
/// | the upstream did not process the request ([`is_not_processed`]) | [`Retry`](RetryDecision::Retry) |
/// | a timeout ([`is_timeout`]) | [`RetryIfIdempotentTimedOut`](RetryDecision::RetryIfIdempotentTimedOut) |
/// | any other error | [`RetryIfIdempotent`](RetryDecision::RetryIfIdempotent) |
///
/// Generic requests have no method that says whether they are idempotent: with
/// [`CloneReplay`](crate::CloneReplay), only errors that show the request was not
/// processed are retried, unless the layer is told that its calls are idempotent
/// ([`RetryLayerBuilder::idempotent`](crate::RetryLayerBuilder::idempotent)).
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryErrors;

impl<Res> Classify<Res> for RetryErrors {
    fn classify(&self, result: &Result<Res, BoxError>) -> RetryDecision {
        match result {
            Err(error) => classify_error(error),
            Ok(_) => RetryDecision::Return,
        }
    }
}

/// Errors: the queue's refusals are returned; the rest by what they say about the
/// upstream (see [`RetryErrors`]).
pub(crate) fn classify_error(error: &BoxError) -> RetryDecision {
    if is_queue_refusal(error) {
        RetryDecision::Return
    } else if is_not_processed(error) {
        RetryDecision::Retry
    } else if is_timeout(error) {
        RetryDecision::RetryIfIdempotentTimedOut
    } else {
        RetryDecision::RetryIfIdempotent
    }
}

/// The error and its [`source`](std::error::Error::source) chain, outermost first.
fn chain(error: &BoxError) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    let first: &(dyn std::error::Error + 'static) = &**error;
    std::iter::successors(Some(first), |error| error.source())
}

/// Whether an error shows that the upstream did not process the request, so that any
/// request, idempotent or not, may be sent again: some error in its
/// [`source`](std::error::Error::source) chain is a [`std::io::Error`] of kind
/// [`ConnectionRefused`](std::io::ErrorKind::ConnectionRefused) or
/// [`AddrNotAvailable`](std::io::ErrorKind::AddrNotAvailable) (the connection was never
/// made).
///
/// The concern crates do not depend on HTTP clients, so this looks at the standard
/// error types clients carry as sources: hyper-util's legacy client, for one, reports a
/// refused connection as an `Error` whose `is_connect()` is true, with the connector's
/// error and then the `io::Error` as its sources. Anything not recognised (a DNS
/// failure, a reset, a connect timeout) counts as possibly processed: the safe side.
/// To say more about a client's errors, wrap [`HttpClassifier`](crate::HttpClassifier)
/// or [`RetryErrors`] with [`classify_fn`] and return [`RetryDecision::Retry`] for them.
#[must_use]
pub fn is_not_processed(error: &BoxError) -> bool {
    chain(error).any(|error| {
        error.downcast_ref::<std::io::Error>().is_some_and(|error| {
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        })
    })
}

/// Whether an error is a timeout: some error in its [`source`](std::error::Error::source)
/// chain is tower's [`Elapsed`](tower::timeout::error::Elapsed), tokio's
/// [`Elapsed`](tokio::time::error::Elapsed), or a [`std::io::Error`] of kind
/// [`TimedOut`](std::io::ErrorKind::TimedOut).
///
/// Other layers' own timeout errors (such as a circuit breaker's call timeout) are not
/// known here; an unrecognised timeout is classified as any other error
/// ([`RetryDecision::RetryIfIdempotent`]), which
/// [`retry_timeouts(false)`](crate::RetryLayerBuilder::retry_timeouts) does not cover: map it
/// to [`RetryDecision::RetryIfIdempotentTimedOut`] with [`classify_fn`].
#[must_use]
pub fn is_timeout(error: &BoxError) -> bool {
    chain(error).any(|error| {
        error.is::<tower::timeout::error::Elapsed>()
            || error.is::<tokio::time::error::Elapsed>()
            || error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|error| error.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// A [`Classify`] built from a closure; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

/// Uses a closure `Fn(&Result<Res, BoxError>) -> RetryDecision` as a [`Classify`].
///
/// A typical use extends a provided classifier with the refusals of other layers, which
/// must not be retried:
///
/// ```
/// use tower::BoxError;
/// use tower_priority_queue::{classify_fn, Classify, RetryDecision, RetryErrors};
///
/// #[derive(Debug)]
/// struct CircuitOpen;
/// impl std::fmt::Display for CircuitOpen {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("open") }
/// }
/// impl std::error::Error for CircuitOpen {}
///
/// let classifier = classify_fn(|result: &Result<String, BoxError>| match result {
///     Err(error) if error.is::<CircuitOpen>() => RetryDecision::Return,
///     other => RetryErrors.classify(other),
/// });
/// assert_eq!(classifier.classify(&Err(Box::new(CircuitOpen))), RetryDecision::Return);
/// assert_eq!(
///     classifier.classify(&Err("connection reset".into())),
///     RetryDecision::RetryIfIdempotent
/// );
/// ```
pub fn classify_fn<F, Res>(f: F) -> ClassifyFn<F>
where
    F: Fn(&Result<Res, BoxError>) -> RetryDecision,
{
    ClassifyFn { f }
}

impl<F, Res> Classify<Res> for ClassifyFn<F>
where
    F: Fn(&Result<Res, BoxError>) -> RetryDecision,
{
    fn classify(&self, result: &Result<Res, BoxError>) -> RetryDecision {
        (self.f)(result)
    }
}
