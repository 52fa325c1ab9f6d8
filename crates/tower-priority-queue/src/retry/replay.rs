//! Copying a request so that it can be sent again, and whether sending it again is safe.

use std::fmt;

/// Makes the copy of a request that a retry sends, and says whether the request is
/// idempotent.
///
/// A request that cannot be copied (`None`) is sent once and not retried; the layer counts
/// it as `retry_attempts_total{outcome="not_replayable"}`.
pub trait Replay<Req> {
    /// A copy of `request` to send again, or `None` if it cannot be replayed.
    fn replay(&self, request: &Req) -> Option<Req>;

    /// Whether `request` may be sent again after the upstream may have processed it (a
    /// 500, a reset connection, a timeout): repeating it has the same effect as sending
    /// it once. Requests that the upstream did not process (a refused connection, a 429
    /// or 503) are retried whatever this says.
    ///
    /// The default is `false`: a request is not known to be idempotent unless its type
    /// says so (as [`HttpReplay`](crate::HttpReplay) reads the method) or the user does
    /// ([`RetryLayerBuilder::idempotent`](crate::RetryLayerBuilder::idempotent),
    /// [`RetryLayerBuilder::idempotent_if`](crate::RetryLayerBuilder::idempotent_if)).
    fn is_idempotent(&self, request: &Req) -> bool {
        let _ = request;
        false
    }
}

/// Replays any `Clone` request by cloning it. It knows nothing of the request's
/// idempotency ([`Replay::is_idempotent`] is `false`): declare it on the layer's builder.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneReplay;

impl<Req: Clone> Replay<Req> for CloneReplay {
    fn replay(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// A [`Replay`] whose requests are also idempotent when a predicate says so; built by
/// [`RetryLayerBuilder::idempotent_if`](crate::RetryLayerBuilder::idempotent_if).
#[derive(Clone, Copy)]
pub struct IdempotentIf<R, F> {
    inner: R,
    predicate: F,
}

impl<R, F> IdempotentIf<R, F> {
    /// `inner`'s replay, with requests for which `predicate` is true idempotent too.
    pub fn new(inner: R, predicate: F) -> Self {
        IdempotentIf { inner, predicate }
    }
}

impl<R: fmt::Debug, F> fmt::Debug for IdempotentIf<R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentIf")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<R, F, Req> Replay<Req> for IdempotentIf<R, F>
where
    R: Replay<Req>,
    F: Fn(&Req) -> bool,
{
    fn replay(&self, request: &Req) -> Option<Req> {
        self.inner.replay(request)
    }

    fn is_idempotent(&self, request: &Req) -> bool {
        (self.predicate)(request) || self.inner.is_idempotent(request)
    }
}
