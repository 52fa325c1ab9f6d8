//! [`ResponseFuture`]: reads the request body when the key needs it, looks the key up,
//! and answers a hit without allocating a future; misses hand over to one boxed future.

use std::{
    fmt,
    future::{Future, poll_fn},
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body::Body;
use pin_project::pin_project;
use tower_service::Service;

use crate::{
    body::{CacheBody, Chunks},
    cached::{CachedResponse, mark, replay_entry},
    error::{BoxError, CacheError},
    http_key::Plan,
    key::CacheKey,
    metrics::Outcome,
    miss::miss,
    policy::Freshness,
    shared::HttpShared,
    store::{CacheStore, Entry},
};

/// An entry of the HTTP cache, as the store gives it.
type StoredEntry = Arc<Entry<CachedResponse>>;

type MissFuture<B> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, BoxError>> + Send>>;

/// The future of [`CacheService`](crate::CacheService).
///
/// When the store answers at once (the in-process store does) and the request body, if
/// the key needs it, is already there (a buffered body), a hit is decided in `call`
/// itself: the future is born ready, holding only the entry (the response is built
/// when it is polled, so moving the future copies a few words, not a response), and
/// neither the inner service nor the shared state is cloned. Every other path (a miss, a bypass, a body
/// still arriving, an asynchronous store) is one boxed future, so that the hit's future
/// stays small.
#[pin_project]
pub struct ResponseFuture<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    state: State<S, ReqB, ResB, St>,
    _res: PhantomData<fn() -> ResB>,
}

/// The request body, as read or as received.
enum ReqBody<B> {
    Read(Bytes),
    Unread(B),
}

enum State<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    /// Reading the request body to hash it.
    Collect(Box<Collecting<S, ReqB, St>>),
    /// Waiting for the store's answer.
    Lookup(Pin<Box<Looking<S, ReqB, St>>>),
    /// The miss or the bypass path.
    Miss { fut: MissFuture<ResB> },
    /// A fresh entry, replayed when polled: the future stays a few words, so moving it
    /// (out of `call`, into the caller's future) copies no response. The entry moves
    /// into the response's body.
    Hit {
        entry: Option<Arc<Entry<CachedResponse>>>,
        age_secs: u64,
    },
    /// Failed before reaching the inner service.
    Failed { error: Option<BoxError> },
}

struct Collecting<S, ReqB, St> {
    shared: Arc<HttpShared<St>>,
    parts: Option<Parts>,
    body: Pin<Box<ReqB>>,
    chunks: Chunks,
    svc: Option<S>,
}

#[pin_project]
struct Looking<S, ReqB, St>
where
    St: CacheStore<CachedResponse>,
{
    shared: Arc<HttpShared<St>>,
    #[pin]
    get: St::Get,
    key: CacheKey,
    parts: Option<Parts>,
    body: Option<ReqBody<ReqB>>,
    svc: Option<S>,
}

/// What reading a request body's ready frames found.
enum Read {
    /// The whole body.
    Done,
    /// A frame is not there yet.
    Pending,
    /// The body failed, or exceeded its declared size.
    Failed(BoxError),
}

/// Reads `body`'s frames into `chunks` while they are ready, up to `limit` bytes.
/// Request trailers cannot travel in a rebuilt body: they are dropped.
fn read_ready<B>(
    mut body: Pin<&mut B>,
    chunks: &mut Chunks,
    limit: u64,
    cx: &mut Context<'_>,
) -> Read
where
    B: Body,
    B::Error: Into<BoxError>,
{
    loop {
        match body.as_mut().poll_frame(cx) {
            Poll::Pending => return Read::Pending,
            Poll::Ready(None) => return Read::Done,
            Poll::Ready(Some(Err(e))) => {
                return Read::Failed(CacheError::RequestBody(e.into()).into());
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    chunks.push(data);
                    if chunks.len as u64 > limit {
                        return Read::Failed(
                            CacheError::RequestBody(
                                "request body exceeded its declared size".into(),
                            )
                            .into(),
                        );
                    }
                }
            }
        }
    }
}

impl<S, ReqB, ResB, St> ResponseFuture<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqB: Body + From<Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    pub(crate) fn new(shared: &Arc<HttpShared<St>>, inner: &S, req: Request<ReqB>) -> Self {
        let (parts, body) = req.into_parts();
        // A range asks for part of an answer: never served from, nor stored in, the cache.
        let ranged = parts.headers.contains_key(http::header::RANGE);
        let key = match shared.key.plan(&parts) {
            _ if ranged => None,
            Plan::Bypass => None,
            Plan::WithoutBody => shared.key.key(&parts, None),
            // An empty body needs no reading: key it as empty and pass it on untouched.
            Plan::WithBody if body.is_end_stream() => shared.key.key(&parts, Some(&[])),
            Plan::WithBody => {
                // Only bodies known to fit are read; anything else passes through unread.
                let fits = body
                    .size_hint()
                    .upper()
                    .is_some_and(|upper| upper <= shared.max_request_body);
                if !fits {
                    return Self::with(bypass(
                        shared,
                        inner.clone(),
                        Request::from_parts(parts, body),
                    ));
                }
                // A buffered body is all there: read it now, with no waker to register
                // (a body that is not ready is polled again, with the task's waker, by
                // the `Collect` state).
                let mut body = Box::pin(body);
                let mut chunks = Chunks::default();
                let mut cx = Context::from_waker(Waker::noop());
                let state = match read_ready(
                    body.as_mut(),
                    &mut chunks,
                    shared.max_request_body,
                    &mut cx,
                ) {
                    Read::Done => keyed(shared, || inner.clone(), parts, chunks.into_bytes()),
                    Read::Failed(e) => State::Failed { error: Some(e) },
                    Read::Pending => State::Collect(Box::new(Collecting {
                        shared: Arc::clone(shared),
                        parts: Some(parts),
                        body,
                        chunks,
                        svc: Some(inner.clone()),
                    })),
                };
                return Self::with(state);
            }
        };
        let Some(key) = key else {
            return Self::with(bypass(
                shared,
                inner.clone(),
                Request::from_parts(parts, body),
            ));
        };
        let body = ReqBody::Unread(body);
        Self::with(match lookup_now(shared, &key, &parts.headers) {
            Some(Ok(hit)) => hit,
            Some(Err(stale)) => miss_state(shared, || inner.clone(), key, parts, body, stale),
            None => looking(shared, inner.clone(), key, parts, body),
        })
    }

    fn with(state: State<S, ReqB, ResB, St>) -> Self {
        Self {
            state,
            _res: PhantomData,
        }
    }
}

/// The request's body is read: key it and look it up, or bypass.
#[inline]
fn keyed<S, ReqB, ResB, St>(
    shared: &Arc<HttpShared<St>>,
    svc: impl FnOnce() -> S,
    parts: Parts,
    bytes: Bytes,
) -> State<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqB: Body + From<Bytes> + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    let Some(key) = shared.key.key(&parts, Some(&bytes)) else {
        return bypass(shared, svc(), Request::from_parts(parts, ReqB::from(bytes)));
    };
    let body = ReqBody::Read(bytes);
    match lookup_now(shared, &key, &parts.headers) {
        Some(Ok(hit)) => hit,
        Some(Err(stale)) => miss_state(shared, svc, key, parts, body, stale),
        None => looking(shared, svc(), key, parts, body),
    }
}

/// Passes the request to the inner service (once it is ready), uncached.
fn bypass<S, ReqB, ResB, St>(
    shared: &HttpShared<St>,
    mut svc: S,
    req: Request<ReqB>,
) -> State<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: Send + 'static,
    St: CacheStore<CachedResponse>,
{
    shared.core.record(Outcome::Bypass);
    State::Miss {
        fut: Box::pin(async move {
            poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into)?;
            let mut res = svc
                .call(req)
                .await
                .map_err(Into::into)?
                .map(CacheBody::inner);
            mark(res.headers_mut(), "BYPASS", None);
            Ok(res)
        }),
    }
}

/// What [`lookup_now`] found.
type Looked<S, ReqB, ResB, St> = Option<Result<State<S, ReqB, ResB, St>, Option<StoredEntry>>>;

/// Looks `key` up when the store can answer at once: `Some(Ok(_))` with a hit's state,
/// `Some(Err(_))` for a miss (with the stale entry it may fall back on), `None` when the
/// store must be waited for. The request's head is only read: on a hit it is dropped
/// where it is, never moved (a move of a request head is a call to `memcpy`).
#[inline(always)]
fn lookup_now<S, ReqB, ResB, St>(
    shared: &HttpShared<St>,
    key: &CacheKey,
    headers: &http::HeaderMap,
) -> Looked<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    shared
        .core
        .store
        .get_now(key)
        .map(|found| hit(shared, found, headers))
}

/// Waits for the store's answer (a store that cannot answer at once).
fn looking<S, ReqB, ResB, St>(
    shared: &Arc<HttpShared<St>>,
    svc: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody<ReqB>,
) -> State<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    State::Lookup(Box::pin(Looking {
        shared: Arc::clone(shared),
        get: shared.core.store.get(&key),
        key,
        parts: Some(parts),
        body: Some(body),
        svc: Some(svc),
    }))
}

/// A fresh entry of this request's variant answers: `Ok` with the hit's state. Else
/// `Err` with the stale entry the miss may fall back on, if any. Takes the request's
/// headers by reference, so that a hit moves nothing of the request.
#[inline]
fn hit<S, ReqB, ResB, St>(
    shared: &HttpShared<St>,
    found: Option<StoredEntry>,
    headers: &http::HeaderMap,
) -> Result<State<S, ReqB, ResB, St>, Option<StoredEntry>>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    let Some(entry) = found else {
        return Err(None);
    };
    let age = shared
        .core
        .now()
        .saturating_duration_since(entry.stored_at());
    match shared.core.freshness_at_age(&entry, age) {
        // An entry of another variant (its `Vary` headers differ) is no answer here.
        Freshness::Fresh | Freshness::Stale if !entry.value().vary_matches(headers) => Err(None),
        Freshness::Fresh => {
            shared.core.record(Outcome::Hit);
            Ok(State::Hit {
                entry: Some(entry),
                age_secs: age.as_secs(),
            })
        }
        Freshness::Stale => Err(Some(entry)),
        Freshness::Expired => Err(None),
    }
}

/// The miss path, with the stale entry it may fall back on.
fn miss_state<S, ReqB, ResB, St>(
    shared: &Arc<HttpShared<St>>,
    svc: impl FnOnce() -> S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody<ReqB>,
    stale: Option<StoredEntry>,
) -> State<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqB: Body + From<Bytes> + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    let body = match body {
        ReqBody::Read(bytes) => ReqB::from(bytes),
        ReqBody::Unread(body) => body,
    };
    let req = Request::from_parts(parts, body);
    State::Miss {
        fut: Box::pin(miss(Arc::clone(shared), svc(), req, key, stale)),
    }
}

impl<S, ReqB, ResB, St> Future for ResponseFuture<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqB: Body + From<Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    type Output = Result<Response<CacheBody<ResB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = self.project().state;
        loop {
            let next = match state {
                State::Collect(collecting) => {
                    let this = &mut **collecting;
                    match read_ready(
                        this.body.as_mut(),
                        &mut this.chunks,
                        this.shared.max_request_body,
                        cx,
                    ) {
                        Read::Pending => return Poll::Pending,
                        Read::Failed(e) => return Poll::Ready(Err(e)),
                        Read::Done => {
                            let bytes = std::mem::take(&mut this.chunks).into_bytes();
                            let (Some(parts), Some(svc)) = (this.parts.take(), this.svc.take())
                            else {
                                return Poll::Ready(Err(polled_after_completion()));
                            };
                            keyed(&this.shared, move || svc, parts, bytes)
                        }
                    }
                }
                State::Lookup(looking) => {
                    let this = looking.as_mut().project();
                    let found = ready!(this.get.poll(cx));
                    let (Some(parts), Some(body), Some(svc)) =
                        (this.parts.take(), this.body.take(), this.svc.take())
                    else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    match hit(this.shared, found, &parts.headers) {
                        Ok(hit) => hit,
                        Err(stale) => {
                            miss_state(this.shared, move || svc, *this.key, parts, body, stale)
                        }
                    }
                }
                State::Miss { fut } => return fut.as_mut().poll(cx),
                State::Hit { entry, age_secs } => {
                    return Poll::Ready(match entry.take() {
                        Some(entry) => Ok(replay_entry(entry, "HIT", *age_secs)),
                        None => Err(polled_after_completion()),
                    });
                }
                State::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)));
                }
            };
            *state = next;
        }
    }
}

fn polled_after_completion() -> BoxError {
    "cache response future polled after completion".into()
}

impl<S, ReqB, ResB, St> fmt::Debug for ResponseFuture<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Collect(_) => "Collect",
            State::Lookup(_) => "Lookup",
            State::Miss { .. } => "Miss",
            State::Hit { .. } => "Hit",
            State::Failed { .. } => "Failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
