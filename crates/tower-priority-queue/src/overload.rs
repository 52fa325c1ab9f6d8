//! What a call's outcome says about the upstream's load: the adaptive limit's input.

use std::fmt;
use std::time::Duration;

use tower::BoxError;

use crate::retry::is_timeout;

/// One call's load signal, as an [`OverloadClassifier`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// No sign of overload: the upstream answered (a 2xx, a 4xx). Counts as a successful
    /// call: the limit may grow.
    Normal,
    /// Says nothing either way (a failure that is not overload, such as a refused
    /// connection or a 500; a refusal of another local layer): the limit neither grows nor
    /// shrinks, so that an outage of errors does not raise it.
    Ignore,
    /// The upstream is overloaded (a 429 or 503 without `Retry-After`, a call timeout):
    /// the adaptive limit goes down.
    Overload,
    /// The upstream is overloaded and asked to be left alone this long (a 429 or 503
    /// with `Retry-After`): the adaptive limit goes down and a cool-down starts.
    OverloadRetryAfter(Duration),
}

impl Signal {
    /// Whether this is an overload signal.
    #[must_use]
    pub fn is_overload(self) -> bool {
        matches!(self, Signal::Overload | Signal::OverloadRetryAfter(_))
    }
}

/// Reads the load signal of each call's outcome, for the queue's
/// [adaptive limit](crate::AdaptiveLimit); swap it with
/// [`PriorityQueueLayerBuilder::overload_classifier`](crate::PriorityQueueLayerBuilder::overload_classifier).
///
/// The queue sits below the retry layer, so it classifies every attempt: a 429 that a
/// retry later turns into a success still lowers the limit. Closures
/// `Fn(&Result<Res, BoxError>) -> Signal` implement it. It is cloned into each response
/// future that may need it, so keep it cheap to clone (most are zero-sized).
pub trait OverloadClassifier<Res> {
    /// The load signal of one call's outcome.
    fn classify(&self, result: &Result<Res, BoxError>) -> Signal;
}

impl<F, Res> OverloadClassifier<Res> for F
where
    F: Fn(&Result<Res, BoxError>) -> Signal,
{
    fn classify(&self, result: &Result<Res, BoxError>) -> Signal {
        self(result)
    }
}

/// The default classifier, for any response type: an error that is a timeout (tower's
/// or tokio's `Elapsed`, an I/O `TimedOut`; see [`is_timeout`]) is overload, any other
/// error [`Signal::Ignore`], a response [`Signal::Normal`].
///
/// For HTTP answers use [`HttpOverload`](crate::HttpOverload), which also reads 429 and
/// 503 and their `Retry-After`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutOverload;

impl<Res> OverloadClassifier<Res> for TimeoutOverload {
    fn classify(&self, result: &Result<Res, BoxError>) -> Signal {
        match result {
            Err(error) if is_timeout(error) => Signal::Overload,
            Err(_) => Signal::Ignore,
            Ok(_) => Signal::Normal,
        }
    }
}

/// An [`OverloadClassifier`] built from a closure; see [`overload_fn`].
#[derive(Clone, Copy)]
pub struct OverloadFn<F> {
    f: F,
}

impl<F> fmt::Debug for OverloadFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OverloadFn").finish_non_exhaustive()
    }
}

/// An [`OverloadClassifier`] from a closure, with the types spelled out so that closures
/// infer their argument type.
pub fn overload_fn<Res, F>(f: F) -> OverloadFn<F>
where
    F: Fn(&Result<Res, BoxError>) -> Signal,
{
    OverloadFn { f }
}

impl<F, Res> OverloadClassifier<Res> for OverloadFn<F>
where
    F: Fn(&Result<Res, BoxError>) -> Signal,
{
    fn classify(&self, result: &Result<Res, BoxError>) -> Signal {
        (self.f)(result)
    }
}
