//! The response body wrapper that records a gRPC request when its status arrives.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

use crate::classify::{GRPC_UNKNOWN, Status};
use crate::http::grpc_status;
use crate::state::Recording;

/// A response body that records its request when the body's outcome is known: on the
/// trailers (gRPC's `grpc-status`), at the end of the stream, on a body error, or, when
/// dropped before any of these, as [`Status::Cancelled`].
///
/// Responses recorded when their head arrived (plain HTTP, trailers-only gRPC) carry
/// their body as it is, with nothing more to record: `RedBody<B>` is then the size of
/// `B` (so a response stays as small as the layer below made it, and moves as cheaply).
/// A body that still has a request to record moves, with its recording, into a box.
/// Frames and errors pass through unchanged, so `RedBody<B>` is an axum response body
/// whenever `B` is.
#[pin_project]
#[derive(Debug)]
pub struct RedBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<B> {
    /// Recorded already.
    Recorded(#[pin] B),
    /// Recorded when the body ends.
    Recording(Pin<Box<Tracked<B>>>),
}

#[pin_project]
#[derive(Debug)]
struct Tracked<B> {
    #[pin]
    inner: B,
    recording: Recording,
}

impl<B> RedBody<B> {
    /// A body that records with `recording` when it ends, if it has a request to record.
    /// The request counts as in flight until then.
    pub(crate) fn new(inner: B, mut recording: Recording) -> Self {
        if !recording.is_armed() {
            return Self {
                kind: Kind::Recorded(inner),
            };
        }
        recording.mark_in_flight();
        Self {
            kind: Kind::Recording(Box::pin(Tracked { inner, recording })),
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        match &self.kind {
            Kind::Recorded(inner) => inner,
            Kind::Recording(tracked) => &tracked.inner,
        }
    }

    /// The wrapped body, consuming this one (a pending recording records as cancelled).
    ///
    /// A body still to record is pinned in a box, hence `B: Unpin` (as hyper's, axum's
    /// and tonic's bodies are).
    pub fn into_inner(self) -> B
    where
        B: Unpin,
    {
        match self.kind {
            Kind::Recorded(inner) => inner,
            Kind::Recording(tracked) => Pin::into_inner(tracked).inner,
        }
    }
}

impl<B: Body> Body for RedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Recorded(inner) => inner.poll_frame(cx),
            KindProj::Recording(tracked) => {
                let this = tracked.as_mut().project();
                let frame = ready!(this.inner.poll_frame(cx));
                let status = match &frame {
                    Some(Ok(frame)) => frame.trailers_ref().map(grpc_status),
                    Some(Err(_)) => Some(Status::Error),
                    None => Some(Status::Grpc(GRPC_UNKNOWN)),
                };
                if let Some(status) = status {
                    std::mem::replace(this.recording, Recording::disarmed()).finish(status);
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.get_ref().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.get_ref().size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body recorded at its head is carried as it is: a body with a spare niche
    /// (here a flag, as the cache's body has) makes a `RedBody` of its own size.
    #[test]
    fn a_recorded_body_is_its_own_size() {
        assert_eq!(
            size_of::<RedBody<(Box<u8>, bool)>>(),
            2 * size_of::<usize>()
        );
    }
}
