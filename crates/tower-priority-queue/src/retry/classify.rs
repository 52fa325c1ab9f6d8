//! Which outcomes are worth another attempt.

use std::fmt;
use std::time::Duration;

use tower::BoxError;

use crate::error::QueueError;

/// What to do with an attempt's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Give the outcome to the caller.
    Return,
    /// Try again after the backoff.
    Retry,
    /// Try again, not before this long (the upstream said so, e.g. with `Retry-After`); the
    /// wait is the longer of this (up to the layer's `retry_after_cap`) and the backoff.
    RetryAfter(Duration),
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

/// Retries every error except this crate's [`QueueError`] refusals; never retries a
/// response. For services whose response type says nothing about failure.
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

/// Errors are retried, except the queue's refusals.
pub(crate) fn classify_error(error: &BoxError) -> RetryDecision {
    if is_queue_refusal(error) {
        RetryDecision::Return
    } else {
        RetryDecision::Retry
    }
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
/// assert_eq!(classifier.classify(&Err("connection reset".into())), RetryDecision::Retry);
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
