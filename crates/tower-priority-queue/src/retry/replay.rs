//! Copying a request so that it can be sent again.

/// Makes the copy of a request that a retry sends.
///
/// A request that cannot be copied (`None`) is sent once and not retried; the layer counts
/// it as `retry_attempts_total{outcome="not_replayable"}`.
pub trait Replay<Req> {
    /// A copy of `request` to send again, or `None` if it cannot be replayed.
    fn replay(&self, request: &Req) -> Option<Req>;
}

/// Replays any `Clone` request by cloning it.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneReplay;

impl<Req: Clone> Replay<Req> for CloneReplay {
    fn replay(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}
