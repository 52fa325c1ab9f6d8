//! Buffering the request body, with a size limit and an optional check of the whole
//! request, before the layers that need the body whole: the cache hashes it and the
//! retry layer sends it again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body::Body;
use http_body_util::Full;
use pin_project::pin_project;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

/// A request refused before it reached the protected call: its body is too large or
/// unreadable, or the request check refused it.
///
/// The preset answers it with its status and a short JSON body (gRPC: 3
/// `INVALID_ARGUMENT`, or 8 `RESOURCE_EXHAUSTED` for a body over the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRejected {
    status: StatusCode,
    message: String,
}

impl RequestRejected {
    /// A refusal with this status (a 4xx) and a message for the client.
    #[must_use]
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// `400 Bad Request` with this message.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The HTTP status of the answer.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message for the client.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RequestRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestRejected {}

/// A check run on each request once its body is buffered: it sees the request's parts
/// and whole body, and may refuse the request or add extensions that the layers below
/// read.
pub type RequestCheck =
    Arc<dyn Fn(&mut http::request::Parts, &Bytes) -> Result<(), RequestRejected> + Send + Sync>;

/// Reads request bodies whole, up to a limit (413 beyond it, before reading when the
/// declared length is over), and runs an optional [`RequestCheck`]; the inner service
/// gets a `Request<Full<Bytes>>`, which layers below can hash and clone.
#[derive(Clone)]
pub struct BufferBodyLayer {
    limit: usize,
    check: Option<RequestCheck>,
}

impl BufferBodyLayer {
    /// Reads bodies of at most `limit` bytes.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self { limit, check: None }
    }

    /// Runs `check` on every request once its body is read.
    #[must_use]
    pub fn check(mut self, check: RequestCheck) -> Self {
        self.check = Some(check);
        self
    }
}

impl fmt::Debug for BufferBodyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferBodyLayer")
            .field("limit", &self.limit)
            .field("check", &self.check.is_some())
            .finish()
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
            check: self.check.clone(),
        }
    }
}

/// The service of [`BufferBodyLayer`]: hands the inner service a
/// `Request<Full<Bytes>>`.
#[derive(Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
    check: Option<RequestCheck>,
}

impl<S> BufferBody<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for BufferBody<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferBody")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BufferBodyFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // A body that declares more than the limit (Content-Length) is refused unread.
        if request.body().size_hint().lower() > self.limit as u64 {
            self.release();
            return BufferBodyFuture {
                state: State::Refused(Some(too_large(self.limit))),
            };
        }
        let (parts, body) = request.into_parts();
        // The body is pinned on the heap (its own size, a few words for a buffered body)
        // so that it can be polled now and, if it is still arriving, moved on with the
        // request into the future.
        let mut body = Box::pin(body);
        let mut read = ReadBody::default();
        // A body already there (a buffered one, or a small one that came with the head)
        // is read now, with no waker to register, and the request goes straight to the
        // ready inner service: nothing is cloned or moved into the future. A body still
        // arriving is polled again, with the task's waker, by the future.
        if let Poll::Ready(done) = read.poll(
            body.as_mut(),
            self.limit,
            &mut Context::from_waker(Waker::noop()),
        ) {
            let read = done.map(|()| read.into_bytes());
            return BufferBodyFuture {
                state: match pass_on(read, parts, self.check.as_ref()) {
                    Ok(request) => State::Call {
                        future: self.inner.call(request),
                    },
                    Err(refusal) => {
                        self.release();
                        State::Refused(Some(refusal))
                    }
                },
            };
        }
        // The ready service goes with this request; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let collecting = Box::new(Collecting {
            body,
            read,
            parts: Some(parts),
            inner: Some(std::mem::replace(&mut self.inner, clone)),
            limit: self.limit,
            check: self.check.clone(),
        });
        BufferBodyFuture {
            state: State::Collect(collecting),
        }
    }
}

/// A request body being read: the first chunk as it came (a buffered body is one chunk,
/// passed on without a copy), later ones gathered in one buffer.
///
/// Not http-body-util's `Limited` + `Collect`: `Collected` queues every chunk in a
/// `VecDeque`, an allocation per request even for a body of one chunk. The cache reads
/// request bodies the same way, with a gatherer of its own that it does not export.
#[derive(Default)]
struct ReadBody {
    first: Option<Bytes>,
    rest: BytesMut,
    len: usize,
}

impl ReadBody {
    /// Reads `body`'s frames while they are ready, up to `limit` bytes. Request trailers
    /// are dropped (the request passed on has a `Full` body).
    fn poll<B>(
        &mut self,
        mut body: Pin<&mut B>,
        limit: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), RequestRejected>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        loop {
            let Some(frame) = ready!(body.as_mut().poll_frame(cx)) else {
                return Poll::Ready(Ok(()));
            };
            let frame = frame.map_err(|error| {
                let error: BoxError = error.into();
                RequestRejected::bad_request(format!("request body could not be read: {error}"))
            })?;
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if !data.has_remaining() {
                continue;
            }
            self.len = self.len.saturating_add(data.remaining());
            if self.len > limit {
                return Poll::Ready(Err(too_large(limit)));
            }
            if self.first.is_none() && self.rest.is_empty() {
                self.first = Some(data.copy_to_bytes(data.remaining()));
            } else {
                if let Some(first) = self.first.take() {
                    self.rest.reserve(self.len);
                    self.rest.extend_from_slice(&first);
                }
                self.rest.put(data);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self.first {
            Some(first) => first,
            None => self.rest.freeze(),
        }
    }
}

/// The request to pass on once its body is read, or its refusal.
fn pass_on(
    read: Result<Bytes, RequestRejected>,
    mut parts: http::request::Parts,
    check: Option<&RequestCheck>,
) -> Result<Request<Full<Bytes>>, RequestRejected> {
    let body = read?;
    if let Some(check) = check {
        check(&mut parts, &body)?;
    }
    if let Some(slot) = parts.extensions.get::<crate::deadline::HeadSlot>() {
        slot.fill(&parts);
    }
    Ok(Request::from_parts(parts, Full::new(body)))
}

impl<S: Clone> BufferBody<S> {
    /// For a request refused without a call: a fresh clone replaces the ready inner
    /// service, so that what its readiness reserved (a limiter's permit) is released now,
    /// not held until the next request.
    fn release(&mut self) {
        let fresh = self.inner.clone();
        drop(std::mem::replace(&mut self.inner, fresh));
    }
}

fn too_large(limit: usize) -> RequestRejected {
    RequestRejected::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {limit} bytes"),
    )
}

/// The future of [`BufferBody`].
#[pin_project]
pub struct BufferBodyFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    #[pin]
    state: State<S, B>,
}

#[pin_project(project = StateProj)]
enum State<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    Refused(Option<RequestRejected>),
    /// A body still arriving: boxed, so that the common case (a body read in `call`)
    /// keeps the future small.
    Collect(Box<Collecting<S, B>>),
    Call {
        #[pin]
        future: S::Future,
    },
}

/// The request whose body is being read, with what it goes on with once read.
struct Collecting<S, B> {
    body: Pin<Box<B>>,
    read: ReadBody,
    parts: Option<http::request::Parts>,
    inner: Option<S>,
    limit: usize,
    check: Option<RequestCheck>,
}

impl<S, B> fmt::Debug for BufferBodyFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferBodyFuture").finish_non_exhaustive()
    }
}

impl<S, B> Future for BufferBodyFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Refused(refusal) => {
                    let refusal = refusal.take().unwrap_or_else(|| {
                        RequestRejected::bad_request("request polled after completion")
                    });
                    return Poll::Ready(Err(refusal.into()));
                }
                StateProj::Collect(collecting) => {
                    let this = &mut **collecting;
                    let done = ready!(this.read.poll(this.body.as_mut(), this.limit, cx));
                    let read = done.map(|()| std::mem::take(&mut this.read).into_bytes());
                    let (Some(parts), Some(mut inner)) = (this.parts.take(), this.inner.take())
                    else {
                        return Poll::Ready(Err(RequestRejected::bad_request(
                            "request polled after completion",
                        )
                        .into()));
                    };
                    match pass_on(read, parts, this.check.as_ref()) {
                        Ok(request) => State::Call {
                            future: inner.call(request),
                        },
                        Err(refusal) => return Poll::Ready(Err(refusal.into())),
                    }
                }
                StateProj::Call { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
            };
            this.state.set(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    /// A body whose chunks each arrive one poll after being asked for.
    struct Trickle {
        chunks: std::collections::VecDeque<Bytes>,
        ready: bool,
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            if !std::mem::replace(&mut self.ready, false) {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(
                self.chunks
                    .pop_front()
                    .map(|c| Ok(http_body::Frame::data(c))),
            )
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_refused_without_a_call_releases_the_inner_services_reservation() {
        // One permit, reserved by `poll_ready`, as tower's ConcurrencyLimit does.
        let svc =
            BufferBodyLayer::new(8).layer(tower::limit::ConcurrencyLimit::new(service_fn(echo), 1));
        let permit_is_free = || async {
            tokio::time::timeout(
                std::time::Duration::from_secs(1),
                ServiceExt::<Request<Full<Bytes>>>::ready_oneshot(svc.clone()),
            )
            .await
            .is_ok()
        };
        // Refused for its declared size, unread.
        let mut refused = svc.clone();
        ServiceExt::<Request<Full<Bytes>>>::ready(&mut refused)
            .await
            .unwrap();
        let declared = Request::new(Full::new(Bytes::from_static(b"123456789")));
        let err = refused.call(declared).await.unwrap_err();
        assert_eq!(rejected(&err).status(), StatusCode::PAYLOAD_TOO_LARGE);
        // `refused` is still alive; its permit must not be.
        assert!(permit_is_free().await, "a 413 kept the only permit");
        drop(refused);
        // Refused once read (no declared size), in `call`.
        let mut refused = svc.clone();
        ServiceExt::<Request<Full<Bytes>>>::ready(&mut refused)
            .await
            .unwrap();
        let streamed = http_body_util::StreamBody::new(futures_stream(vec![
            Bytes::from_static(b"12345"),
            Bytes::from_static(b"6789"),
        ]));
        let err = refused.call(Request::new(streamed)).await.unwrap_err();
        assert_eq!(rejected(&err).status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            permit_is_free().await,
            "a body over the limit kept the only permit"
        );
    }

    #[tokio::test]
    async fn bodies_arriving_in_pieces_reach_the_inner_service_whole() {
        let svc = BufferBodyLayer::new(8).layer(service_fn(echo));
        let chunks = || [&b"123"[..], b"45", b"678"].map(Bytes::from_static);
        // Read in `call`: every chunk is there at once.
        let ready = http_body_util::StreamBody::new(futures_stream(chunks().to_vec()));
        let out = svc.clone().oneshot(Request::new(ready)).await.unwrap();
        assert_eq!(out, Bytes::from_static(b"12345678"));
        // Read by the future, a chunk per wake-up.
        let trickle = Trickle {
            chunks: chunks().into_iter().collect(),
            ready: false,
        };
        let out = svc.clone().oneshot(Request::new(trickle)).await.unwrap();
        assert_eq!(out, Bytes::from_static(b"12345678"));
        // And cut off at the limit all the same.
        let trickle = Trickle {
            chunks: [&b"12345"[..], b"6789"]
                .map(Bytes::from_static)
                .into_iter()
                .collect(),
            ready: false,
        };
        let err = svc.oneshot(Request::new(trickle)).await.unwrap_err();
        assert_eq!(rejected(&err).status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    async fn echo(req: Request<Full<Bytes>>) -> Result<Bytes, BoxError> {
        Ok(req.into_body().collect().await?.to_bytes())
    }

    fn rejected(err: &BoxError) -> &RequestRejected {
        err.downcast_ref::<RequestRejected>()
            .expect("a RequestRejected")
    }

    #[tokio::test]
    async fn bodies_within_the_limit_reach_the_inner_service_whole() {
        let svc = BufferBodyLayer::new(8).layer(service_fn(echo));
        let out = svc
            .oneshot(Request::new(Full::new(Bytes::from_static(b"12345678"))))
            .await
            .unwrap();
        assert_eq!(out, Bytes::from_static(b"12345678"));
    }

    #[tokio::test]
    async fn bodies_over_the_limit_get_413_without_a_call() {
        let svc = BufferBodyLayer::new(8).layer(service_fn(|_: Request<Full<Bytes>>| async {
            panic!("the inner service must not be called");
            #[allow(unreachable_code)]
            Ok::<_, BoxError>(())
        }));
        let err = svc
            .clone()
            .oneshot(Request::new(Full::new(Bytes::from_static(b"123456789"))))
            .await
            .unwrap_err();
        assert_eq!(rejected(&err).status(), StatusCode::PAYLOAD_TOO_LARGE);
        // A streamed body of unknown length is cut off at the limit too.
        let stream = http_body_util::StreamBody::new(futures_stream(vec![
            Bytes::from_static(b"12345"),
            Bytes::from_static(b"67890"),
        ]));
        let err = svc.oneshot(Request::new(stream)).await.unwrap_err();
        assert_eq!(rejected(&err).status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn the_check_may_refuse_or_annotate() {
        #[derive(Clone, Debug, PartialEq)]
        struct Seen(usize);
        let check: RequestCheck = Arc::new(|parts: &mut http::request::Parts, body: &Bytes| {
            if parts.uri.path() == "/bad" {
                return Err(RequestRejected::bad_request("bad path"));
            }
            parts.extensions.insert(Seen(body.len()));
            Ok(())
        });
        let svc = BufferBodyLayer::new(64).check(check).layer(service_fn(
            |req: Request<Full<Bytes>>| async move {
                Ok::<_, BoxError>(req.extensions().get::<Seen>().cloned())
            },
        ));
        let req = Request::builder()
            .uri("/bad")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert_eq!(rejected(&err).message(), "bad path");
        let out = svc
            .oneshot(Request::new(Full::new(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        assert_eq!(out, Some(Seen(3)));
    }

    fn futures_stream(
        chunks: Vec<Bytes>,
    ) -> impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, BoxError>> {
        futures_util::stream::iter(chunks.into_iter().map(|c| Ok(http_body::Frame::data(c))))
    }
}
