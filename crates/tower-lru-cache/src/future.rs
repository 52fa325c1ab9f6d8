//! [`ResponseFuture`]: reads the request body when the key needs it, looks the key up,
//! and answers a hit without allocating a future; misses hand over to one boxed future.

use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body::Body;
use pin_project::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    body::{CacheBody, Chunks},
    cached::{CachedResponse, mark},
    core::Found,
    error::{BoxError, CacheError},
    http_key::Plan,
    key::CacheKey,
    metrics::Outcome,
    miss::miss,
    shared::HttpShared,
    store::{CacheStore, Entry},
};

type MissFuture<B> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, BoxError>> + Send>>;

/// The future of [`CacheService`](crate::CacheService).
///
/// When the key needs no body (or the body is empty) and the store answers at once (the
/// in-process store does), a hit is decided in `call` itself: the future is born ready,
/// and neither the inner service nor the shared state is cloned.
#[pin_project]
pub struct ResponseFuture<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    #[pin]
    state: State<S, ReqB, ResB, St>,
    _res: PhantomData<fn() -> ResB>,
}

/// The request body, as read or as received.
enum ReqBody<B> {
    Read(Bytes),
    Unread(B),
}

#[pin_project(project = StateProj)]
enum State<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    /// Reading the request body to hash it.
    Collect {
        shared: Arc<HttpShared<St>>,
        parts: Option<Parts>,
        #[pin]
        body: ReqB,
        chunks: Chunks,
        svc: Option<S>,
    },
    /// Waiting for the store's answer.
    Lookup {
        shared: Arc<HttpShared<St>>,
        #[pin]
        get: St::Get,
        key: CacheKey,
        parts: Option<Parts>,
        body: Option<ReqBody<ReqB>>,
        svc: Option<S>,
    },
    /// Bypassing: waiting for the inner service to be ready.
    Ready { svc: S, req: Option<Request<ReqB>> },
    /// Bypassing: the inner call.
    Call {
        #[pin]
        fut: S::Future,
    },
    /// The miss path.
    Miss { fut: MissFuture<ResB> },
    /// Answered without the inner service.
    Done {
        out: Option<Result<Response<CacheBody<ResB>>, BoxError>>,
    },
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
        let key = match shared.key.plan(&parts) {
            Plan::Bypass => None,
            Plan::WithoutBody => shared.key.key(&parts, None),
            // An empty body needs no reading: key it as empty and pass it on untouched.
            Plan::WithBody if body.is_end_stream() => shared.key.key(&parts, Some(&[])),
            Plan::WithBody => {
                let state = match body.size_hint().upper() {
                    // Only bodies known to fit are read; anything else passes through unread.
                    Some(upper) if upper <= shared.max_request_body => State::Collect {
                        shared: Arc::clone(shared),
                        parts: Some(parts),
                        body,
                        chunks: Chunks::default(),
                        svc: Some(inner.clone()),
                    },
                    _ => bypass(shared, inner.clone(), Request::from_parts(parts, body)),
                };
                return Self::with(state);
            }
        };
        Self::with(match key {
            Some(key) => lookup(shared, || inner.clone(), key, parts, ReqBody::Unread(body)),
            None => bypass(shared, inner.clone(), Request::from_parts(parts, body)),
        })
    }

    fn with(state: State<S, ReqB, ResB, St>) -> Self {
        Self {
            state,
            _res: PhantomData,
        }
    }
}

fn bypass<S, ReqB, ResB, St>(
    shared: &HttpShared<St>,
    svc: S,
    req: Request<ReqB>,
) -> State<S, ReqB, ResB, St>
where
    S: Service<Request<ReqB>>,
    St: CacheStore<CachedResponse>,
{
    shared.core.record(Outcome::Bypass);
    State::Ready {
        svc,
        req: Some(req),
    }
}

/// Looks `key` up: at once when the store can answer synchronously, else in the future.
fn lookup<S, ReqB, ResB, St>(
    shared: &Arc<HttpShared<St>>,
    svc: impl FnOnce() -> S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody<ReqB>,
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
    match shared.core.store.get_now(&key) {
        Some(found) => decide(shared, found, svc, key, parts, body),
        None => State::Lookup {
            shared: Arc::clone(shared),
            get: shared.core.store.get(&key),
            key,
            parts: Some(parts),
            body: Some(body),
            svc: Some(svc()),
        },
    }
}

/// A fresh entry answers; anything else takes the miss path.
fn decide<S, ReqB, ResB, St>(
    shared: &Arc<HttpShared<St>>,
    found: Option<Arc<Entry<CachedResponse>>>,
    svc: impl FnOnce() -> S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody<ReqB>,
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
    let now = Instant::now();
    let stale = match shared.core.classify(found, now) {
        Found::Fresh(entry) => {
            shared.core.record(Outcome::Hit);
            let age = now.saturating_duration_since(entry.stored_at()).as_secs();
            return State::Done {
                out: Some(Ok(entry.value().replay("HIT", Some(age)))),
            };
        }
        Found::Stale(entry) => Some(entry),
        Found::Absent => None,
    };
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

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Collect {
                    shared,
                    parts,
                    mut body,
                    chunks,
                    svc,
                } => match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Err(e)) => State::Done {
                        out: Some(Err(CacheError::RequestBody(e.into()).into())),
                    },
                    Some(Ok(frame)) => {
                        // Request trailers cannot travel in a rebuilt body: they are dropped.
                        if let Ok(data) = frame.into_data() {
                            chunks.push(data);
                            if chunks.len as u64 > shared.max_request_body {
                                let e = CacheError::RequestBody(
                                    "request body exceeded its declared size".into(),
                                );
                                State::Done {
                                    out: Some(Err(e.into())),
                                }
                            } else {
                                continue;
                            }
                        } else {
                            continue;
                        }
                    }
                    None => {
                        let bytes = std::mem::take(chunks).into_bytes();
                        let (Some(parts), Some(svc)) = (parts.take(), svc.take()) else {
                            return Poll::Ready(Err(polled_after_completion()));
                        };
                        match shared.key.key(&parts, Some(&bytes)) {
                            Some(key) => {
                                lookup(shared, move || svc, key, parts, ReqBody::Read(bytes))
                            }
                            None => {
                                bypass(shared, svc, Request::from_parts(parts, ReqB::from(bytes)))
                            }
                        }
                    }
                },
                StateProj::Lookup {
                    shared,
                    get,
                    key,
                    parts,
                    body,
                    svc,
                } => {
                    let found = ready!(get.poll(cx));
                    let (Some(parts), Some(body), Some(svc)) =
                        (parts.take(), body.take(), svc.take())
                    else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    decide(shared, found, move || svc, *key, parts, body)
                }
                StateProj::Ready { svc, req } => {
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    State::Call { fut: svc.call(req) }
                }
                StateProj::Call { fut } => {
                    let mut res = ready!(fut.poll(cx))
                        .map_err(Into::into)?
                        .map(CacheBody::inner);
                    mark(res.headers_mut(), "BYPASS", None);
                    return Poll::Ready(Ok(res));
                }
                StateProj::Miss { fut } => return fut.as_mut().poll(cx),
                StateProj::Done { out } => {
                    return Poll::Ready(
                        out.take().unwrap_or_else(|| Err(polled_after_completion())),
                    );
                }
            };
            self.as_mut().project().state.set(next);
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
            State::Collect { .. } => "Collect",
            State::Lookup { .. } => "Lookup",
            State::Ready { .. } => "Ready",
            State::Call { .. } => "Call",
            State::Miss { .. } => "Miss",
            State::Done { .. } => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
