//! [`CacheBody`], the response body of the HTTP cache, and bounded body collection.

use std::{
    fmt,
    future::poll_fn,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

use crate::error::BoxError;

/// The response body of [`CacheService`](crate::CacheService).
///
/// Either a replayed cached body (bytes and optional trailers, shared without copying),
/// or the inner service's own body `B` when the response was not buffered (bypassed
/// requests, or a body larger than the cache's response limit, replayed from the bytes
/// already read and then streamed on). Its errors are `B`'s, boxed.
#[pin_project]
pub struct CacheBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project(project = KindProj)]
enum Kind<B> {
    Full {
        data: Option<Bytes>,
        // Boxed: trailers are rare (gRPC), and a smaller body is a smaller response to
        // move on every hit.
        trailers: Option<Box<HeaderMap>>,
    },
    Inner(#[pin] B),
    Prefixed {
        prefix: Option<Bytes>,
        rest: Pin<Box<B>>,
    },
}

impl<B> CacheBody<B> {
    /// A body that yields `data` then, if any, `trailers`.
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Full {
                data,
                trailers: trailers.map(Box::new),
            },
        }
    }

    /// The inner service's body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner(body),
        }
    }

    fn prefixed(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Self {
            kind: Kind::Prefixed { prefix, rest },
        }
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner(_) => "Inner",
            Kind::Prefixed { .. } => "Prefixed",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|trailers| Frame::trailers(*trailers)))
                    .map(Ok),
            ),
            KindProj::Inner(body) => body.poll_frame(cx).map_err(Into::into),
            KindProj::Prefixed { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => rest.as_mut().poll_frame(cx).map_err(Into::into),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner(body) => body.size_hint(),
            Kind::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}

/// A body read to its end, within a limit.
pub(crate) enum Collected<B> {
    /// All of it.
    Full {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// More than the limit: the bytes read so far, and the rest, still to stream.
    TooBig(CacheBody<B>),
    /// The body failed.
    Failed(BoxError),
}

/// Reads `body` to its end if it fits in `limit` bytes; stops reading (and buffers
/// nothing more) as soon as it does not.
pub(crate) async fn collect<B>(body: B, limit: usize) -> Collected<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    if body.size_hint().lower() > limit as u64 {
        return Collected::TooBig(CacheBody::prefixed(Bytes::new(), body));
    }
    let mut chunks = Chunks::default();
    loop {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => {
                return Collected::Full {
                    data: chunks.into_bytes(),
                    trailers: None,
                };
            }
            Some(Err(e)) => return Collected::Failed(e.into()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    chunks.push(data);
                    if chunks.len > limit {
                        return Collected::TooBig(CacheBody::prefixed(chunks.into_bytes(), body));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        // Trailers end the body.
                        return Collected::Full {
                            data: chunks.into_bytes(),
                            trailers: Some(trailers),
                        };
                    }
                }
            },
        }
    }
}

/// Data chunks gathered without copying while there is only one.
#[derive(Default)]
pub(crate) struct Chunks {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    pub(crate) len: usize,
}

impl Chunks {
    pub(crate) fn push(&mut self, mut data: impl Buf) {
        let n = data.remaining();
        if n == 0 {
            return;
        }
        self.len = self.len.saturating_add(n);
        if let Some(rest) = &mut self.rest {
            rest.extend_from_slice(&data.copy_to_bytes(n));
        } else if let Some(first) = self.first.take() {
            let mut rest = BytesMut::with_capacity(first.len() + n);
            rest.extend_from_slice(&first);
            rest.extend_from_slice(&data.copy_to_bytes(n));
            self.rest = Some(rest);
        } else {
            self.first = Some(data.copy_to_bytes(n));
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(rest)) => rest.freeze(),
            (Some(first), None) => first,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn stream(
        chunks: &[&'static [u8]],
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn collects_within_limit() {
        let Collected::Full { data, trailers } = collect(stream(&[b"ab", b"cd"]), 4).await else {
            panic!("expected full")
        };
        assert_eq!(&data[..], b"abcd");
        assert!(trailers.is_none());
    }

    #[tokio::test]
    async fn too_big_is_replayed_whole() {
        let Collected::TooBig(body) = collect(stream(&[b"ab", b"cd", b"ef"]), 3).await else {
            panic!("expected too big")
        };
        let all = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .ok();
        assert_eq!(all.as_deref(), Some(&b"abcdef"[..]));
    }

    #[tokio::test]
    async fn declared_too_big_is_not_read() {
        let Collected::TooBig(body) =
            collect(Full::new(Bytes::from_static(b"0123456789")), 3).await
        else {
            panic!("expected too big")
        };
        assert!(format!("{body:?}").contains("Prefixed"));
        assert_eq!(body.size_hint().exact(), Some(10));
    }

    #[tokio::test]
    async fn full_body_replays_data_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = CacheBody::<Full<Bytes>>::full(Bytes::from_static(b"hi"), Some(trailers));
        assert_eq!(body.size_hint().exact(), Some(2));
        let collected = body.collect().await.ok();
        let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
        assert_eq!(
            trailers.map(|t| t["grpc-status"].clone()),
            Some(http::HeaderValue::from_static("0"))
        );
    }
}
