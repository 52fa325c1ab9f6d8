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
/// Responses recorded when their head arrived (plain HTTP, trailers-only gRPC) carry a
/// body that records nothing more. Frames and errors pass through unchanged, so
/// `RedBody<B>` is an axum response body whenever `B` is.
#[pin_project]
#[derive(Debug)]
pub struct RedBody<B> {
    #[pin]
    inner: B,
    recording: Recording,
}

impl<B> RedBody<B> {
    /// A body that records with `recording` when it ends. The request counts as in
    /// flight until then.
    pub(crate) fn new(inner: B, mut recording: Recording) -> Self {
        recording.mark_in_flight();
        Self { inner, recording }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body, consuming this one (a pending recording records as cancelled).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for RedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
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

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
