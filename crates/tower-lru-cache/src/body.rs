//! [`CacheBody`], the response body of the HTTP cache, and bounded body collection.

use std::{
    fmt,
    future::poll_fn,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

use crate::{cached::CachedResponse, error::BoxError, store::Entry};

/// The response body of [`CacheService`](crate::CacheService).
///
/// Either a replayed cached body (bytes and optional trailers, shared without copying),
/// or the inner service's own body `B` when the response was not buffered (bypassed
/// requests, or a body larger than the cache's response limit, replayed from the bytes
/// already read and then streamed on). Its errors are `B`'s, boxed.
///
/// It is two words: a hit's body is the stored entry itself (its bytes are shared when
/// polled), and every other kind is boxed. A hit's response is then 128 bytes, which
/// the layers and the server above it move with a few register copies rather than a
/// call to `memcpy` each time.
pub struct CacheBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// A stored entry, replayed: its bytes, then its trailers, cloned out when polled.
    /// The entry is let go with the last frame, so that a finished body keeps alive no
    /// more than the frames it gave (the entry may have left the cache since).
    Stored {
        entry: Option<Arc<Entry<CachedResponse>>>,
        next: Next,
    },
    /// Any other body.
    Boxed(Pin<Box<Other<B>>>),
}

/// What a replayed entry yields next (while it is held).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    Data,
    Trailers,
}

#[pin_project(project = OtherProj)]
enum Other<B> {
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Inner(#[pin] B),
    Prefixed {
        prefix: Option<Bytes>,
        rest: Pin<Box<B>>,
    },
    /// The inner body, passed on frame by frame while a copy is kept for the cache.
    Tee(Tee<B>),
}

/// A body streamed to the caller while a copy is kept for the cache.
struct Tee<B> {
    /// Read before the head was returned: already in `copy`, not yet passed on.
    prefix: Option<Bytes>,
    inner: Pin<Box<B>>,
    copy: Chunks,
    limit: usize,
    /// Gone once the copy is complete or abandoned.
    sink: Option<Box<dyn TeeSink>>,
}

/// Where a teed body's copy goes when the body has ended: the cache, and the requests
/// waiting for the answer. Dropped without [`complete`](Self::complete), the copy is
/// abandoned (too large, a failed body, or a client that went away).
pub(crate) trait TeeSink: Send + Sync + 'static {
    /// The whole body, and its trailers.
    fn complete(self: Box<Self>, data: Bytes, trailers: Option<HeaderMap>);
}

impl<B> CacheBody<B> {
    fn boxed(other: Other<B>) -> Self {
        Self {
            kind: Kind::Boxed(Box::pin(other)),
        }
    }

    /// The body of a stored entry: its bytes, then its trailers, if any.
    pub(crate) fn stored(entry: Arc<Entry<CachedResponse>>) -> Self {
        Self {
            kind: Kind::Stored {
                entry: Some(entry),
                next: Next::Data,
            },
        }
    }

    /// A body that yields `data` then, if any, `trailers`.
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self::boxed(Other::Full { data, trailers })
    }

    /// The inner service's body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        Self::boxed(Other::Inner(body))
    }

    /// `body`, streamed to the caller as it comes, with a copy of at most `limit` bytes
    /// handed to `sink` when it ends.
    /// `read` holds the bytes already read from it.
    pub(crate) fn tee(
        body: Pin<Box<B>>,
        read: Chunks,
        limit: usize,
        sink: Box<dyn TeeSink>,
    ) -> Self {
        let prefix = read.into_bytes();
        let mut copy = Chunks::default();
        copy.push(prefix.clone());
        Self::boxed(Other::Tee(Tee {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner: body,
            copy,
            limit,
            sink: Some(sink),
        }))
    }

    pub(crate) fn prefixed(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Self::boxed(Other::Prefixed { prefix, rest })
    }
}

/// An empty body, as a gRPC trailers-only answer has.
impl<B> Default for CacheBody<B> {
    fn default() -> Self {
        Self::full(Bytes::new(), None)
    }
}

/// A body of these bytes, as the cache's answers to its refusals have.
impl<B> From<Bytes> for CacheBody<B> {
    fn from(data: Bytes) -> Self {
        Self::full(data, None)
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Stored { .. } => "Stored",
            Kind::Boxed(other) => match &**other {
                Other::Full { .. } => "Full",
                Other::Inner(_) => "Inner",
                Other::Prefixed { .. } => "Prefixed",
                Other::Tee(_) => "Tee",
            },
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
        match &mut self.get_mut().kind {
            Kind::Stored { entry, next } => Poll::Ready(replay_frame(entry, next).map(Ok)),
            Kind::Boxed(other) => poll_other(other.as_mut(), cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stored { entry, next } => entry.as_ref().is_none_or(|entry| {
                let stored = entry.value();
                (*next == Next::Trailers || stored.body().is_empty()) && stored.trailers().is_none()
            }),
            Kind::Boxed(other) => match &**other {
                Other::Full { data, trailers } => data.is_none() && trailers.is_none(),
                Other::Inner(body) => body.is_end_stream(),
                Other::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
                Other::Tee(tee) => tee.prefix.is_none() && tee.inner.is_end_stream(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stored { entry, next } => SizeHint::with_exact(match (entry, next) {
                (Some(entry), Next::Data) => entry.value().body().len() as u64,
                _ => 0,
            }),
            Kind::Boxed(other) => match &**other {
                Other::Full { data, .. } => {
                    SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
                }
                Other::Inner(body) => body.size_hint(),
                Other::Prefixed { prefix, rest } => {
                    prefixed_hint(prefix.as_ref(), rest.size_hint())
                }
                Other::Tee(tee) => prefixed_hint(tee.prefix.as_ref(), tee.inner.size_hint()),
            },
        }
    }
}

/// The next frame of a stored entry's body: its bytes, then its trailers. The entry is
/// dropped with the last frame.
fn replay_frame(
    held: &mut Option<Arc<Entry<CachedResponse>>>,
    next: &mut Next,
) -> Option<Frame<Bytes>> {
    let entry = held.as_ref()?;
    let stored = entry.value();
    if *next == Next::Data {
        *next = Next::Trailers;
        if !stored.body().is_empty() {
            let data = Frame::data(stored.body().clone());
            if stored.trailers().is_none() {
                *held = None;
            }
            return Some(data);
        }
    }
    let trailers = stored.trailers().cloned().map(Frame::trailers);
    *held = None;
    trailers
}

/// A frame of a body that is not a stored entry's.
fn poll_other<B>(
    other: Pin<&mut Other<B>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match other.project() {
        OtherProj::Full { data, trailers } => Poll::Ready(
            data.take()
                .map(Frame::data)
                .or_else(|| trailers.take().map(Frame::trailers))
                .map(Ok),
        ),
        OtherProj::Inner(body) => body.poll_frame(cx).map_err(Into::into),
        OtherProj::Prefixed { prefix, rest } => match prefix.take() {
            Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
            None => rest.as_mut().poll_frame(cx).map_err(Into::into),
        },
        OtherProj::Tee(tee) => {
            let Tee {
                prefix,
                inner,
                copy,
                limit,
                sink,
            } = tee;
            if let Some(prefix) = prefix.take() {
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
            let frame = ready!(inner.as_mut().poll_frame(cx));
            if sink.is_some() {
                match &frame {
                    None => complete(sink, copy, None),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            copy.push(data.clone());
                            if copy.len > *limit {
                                // Too large to keep: stream on, abandon the copy.
                                *sink = None;
                                *copy = Chunks::default();
                            } else if inner.is_end_stream() {
                                // Callers may stop polling at the end of the stream.
                                complete(sink, copy, None);
                            }
                        } else if let Some(trailers) = frame.trailers_ref() {
                            complete(sink, copy, Some(trailers.clone()));
                        }
                    }
                    Some(Err(_)) => *sink = None,
                }
            }
            Poll::Ready(frame.map(|f| f.map_err(Into::into)))
        }
    }
}

/// The size hint of `inner` with `prefix` before it.
fn prefixed_hint(prefix: Option<&Bytes>, inner: SizeHint) -> SizeHint {
    let extra = prefix.map_or(0, |p| p.len() as u64);
    let mut hint = SizeHint::new();
    hint.set_lower(inner.lower().saturating_add(extra));
    if let Some(upper) = inner.upper() {
        hint.set_upper(upper.saturating_add(extra));
    }
    hint
}

/// Hands the complete copy to the sink.
fn complete(sink: &mut Option<Box<dyn TeeSink>>, copy: &mut Chunks, trailers: Option<HeaderMap>) {
    if let Some(sink) = sink.take() {
        sink.complete(std::mem::take(copy).into_bytes(), trailers);
    }
}

/// What reading a response body's ready frames found.
pub(crate) enum Drained {
    /// All of it, with its trailers.
    Ended {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// The bytes read so far; the next frame is not there yet.
    Pending(Chunks),
    /// More than the limit: the bytes read so far.
    TooBig(Bytes),
    /// The body failed.
    Failed(BoxError),
}

/// Reads the frames of `body` that are already there (a buffered body, or data that
/// arrived with the head), without waiting and within `limit` bytes.
pub(crate) fn drain_ready<B>(body: &mut Pin<Box<B>>, limit: usize) -> Drained
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut chunks = Chunks::default();
    if body.is_end_stream() {
        return Drained::Ended {
            data: Bytes::new(),
            trailers: None,
        };
    }
    if body.size_hint().lower() > limit as u64 {
        return Drained::TooBig(Bytes::new());
    }
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Pending => return Drained::Pending(chunks),
            Poll::Ready(None) => {
                return Drained::Ended {
                    data: chunks.into_bytes(),
                    trailers: None,
                };
            }
            Poll::Ready(Some(Err(e))) => return Drained::Failed(e.into()),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    chunks.push(data);
                    if chunks.len > limit {
                        return Drained::TooBig(chunks.into_bytes());
                    }
                    if body.is_end_stream() {
                        return Drained::Ended {
                            data: chunks.into_bytes(),
                            trailers: None,
                        };
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Drained::Ended {
                            data: chunks.into_bytes(),
                            trailers: Some(trailers),
                        };
                    }
                }
            },
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

    fn entry(body: &'static [u8], trailers: Option<HeaderMap>) -> Arc<Entry<CachedResponse>> {
        let value = CachedResponse::new(
            http::StatusCode::OK,
            http::Version::HTTP_11,
            HeaderMap::new(),
            Bytes::from_static(body),
            trailers,
        );
        Arc::new(Entry::new(
            value,
            tokio::time::Instant::now(),
            std::time::Duration::from_secs(1),
            std::time::Duration::ZERO,
        ))
    }

    #[tokio::test]
    async fn a_stored_body_yields_the_entry_s_bytes_then_its_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut body = CacheBody::<Full<Bytes>>::stored(entry(b"hi", Some(trailers)));
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
        let data = body
            .frame()
            .await
            .and_then(Result::ok)
            .and_then(|f| f.into_data().ok());
        assert_eq!(data.as_deref(), Some(&b"hi"[..]));
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(!body.is_end_stream(), "the trailers are still to come");
        let trailers = body
            .frame()
            .await
            .and_then(Result::ok)
            .and_then(|f| f.into_trailers().ok());
        assert_eq!(
            trailers.map(|t| t["grpc-status"].clone()),
            Some(http::HeaderValue::from_static("0"))
        );
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    /// A finished body lets the entry go: it may have left the cache, and the body must
    /// not keep it alive (the bytes it gave are the reader's to keep).
    #[tokio::test]
    async fn a_finished_stored_body_lets_the_entry_go() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        for (data, trailers) in [
            (&b"hi"[..], None),
            (&b"hi"[..], Some(trailers.clone())),
            (&b""[..], Some(trailers)),
            (&b""[..], None),
        ] {
            let with_trailers = trailers.is_some();
            let entry = entry(data, trailers);
            let weak = Arc::downgrade(&entry);
            let mut body = CacheBody::<Full<Bytes>>::stored(entry);
            let mut frames = 0;
            while body.frame().await.is_some() {
                frames += 1;
            }
            assert_eq!(
                frames,
                usize::from(!data.is_empty()) + usize::from(with_trailers)
            );
            assert!(body.is_end_stream());
            assert!(
                weak.upgrade().is_none(),
                "{data:?}, trailers: {with_trailers}"
            );
        }
    }

    #[tokio::test]
    async fn an_empty_stored_body_ends_at_once() {
        let mut body = CacheBody::<Full<Bytes>>::stored(entry(b"", None));
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
        let mut body = CacheBody::<Full<Bytes>>::stored(entry(b"x", None));
        assert!(body.frame().await.is_some());
        assert!(body.is_end_stream(), "no trailers after the data");
    }

    /// A hit's response fits in 128 bytes, which moves without a call to `memcpy`.
    #[test]
    fn a_hit_s_response_is_128_bytes() {
        assert_eq!(std::mem::size_of::<CacheBody<Full<Bytes>>>(), 16);
        assert!(std::mem::size_of::<http::Response<CacheBody<Full<Bytes>>>>() <= 128);
    }
}
