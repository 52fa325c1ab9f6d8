use tower_layer::Layer;

use super::{Fallback, OnError};

/// Wraps services in a [`Fallback`].
#[derive(Clone, Copy, Debug)]
pub struct FallbackLayer<Cap, F, P = OnError> {
    capture: Cap,
    fallback: F,
    policy: P,
}

impl<Cap, F> FallbackLayer<Cap, F> {
    /// Answers failed calls (errors, by default) with `fallback`, a service called with
    /// a [`FallbackRequest`](super::FallbackRequest) that holds what `capture` took from
    /// the request.
    pub const fn new(capture: Cap, fallback: F) -> Self {
        Self {
            capture,
            fallback,
            policy: OnError,
        }
    }
}

impl<Cap, F, P> FallbackLayer<Cap, F, P> {
    /// Which results fall back (default [`OnError`]): any
    /// [`FallbackPolicy`](super::FallbackPolicy), including a closure
    /// `Fn(&Result<Res, BoxError>) -> bool`, e.g. to also replace 5xx responses.
    pub fn policy<P2>(self, policy: P2) -> FallbackLayer<Cap, F, P2> {
        FallbackLayer {
            capture: self.capture,
            fallback: self.fallback,
            policy,
        }
    }
}

impl<S, Cap: Clone, F: Clone, P: Clone> Layer<S> for FallbackLayer<Cap, F, P> {
    type Service = Fallback<S, Cap, F, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(
            inner,
            self.capture.clone(),
            self.fallback.clone(),
            self.policy.clone(),
        )
    }
}
