//! The miss path of the HTTP cache: one inner call per key at a time (single-flight),
//! storing, sharing, and stale-if-error. It runs as one boxed future: a miss costs an
//! upstream call, next to which the allocation is nothing; hits never come here.

use std::{future::poll_fn, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use tokio::{sync::watch, time::Instant};
use tower_service::Service;

use crate::{
    body::{CacheBody, Collected, Drained, TeeSink, collect, drain_ready},
    cached::{CachedResponse, mark, replay_entry},
    core::{Core, Flight, Found},
    error::{BoxError, CacheError},
    key::CacheKey,
    late::LateAnswer,
    metrics::Outcome,
    shared::{Asked, Grpc, HttpShared, Verdict},
    store::{CacheStore, Entry},
};

/// What the request that made the inner call got for itself.
enum Own<B> {
    /// Another flight had filled the entry just before this one started.
    Hit(Response<CacheBody<B>>),
    /// The inner answer; `failed` when degraded or a server error.
    Response {
        res: Response<CacheBody<B>>,
        failed: bool,
    },
    /// The inner service's (or the response body's) error, unchanged.
    Error(BoxError),
}

/// How many times a request behind failed leaders joins the next flight before it calls
/// on its own (with `share_failures(false)`): each round is one inner call, so the
/// upstream sees the waiters one at a time, never as a burst.
const MAX_ROUNDS: usize = 16;

pub(crate) async fn miss<S, ReqB, ResB, St>(
    shared: Arc<HttpShared<St>>,
    svc: S,
    req: Request<ReqB>,
    key: CacheKey,
    stale: Option<Arc<Entry<CachedResponse>>>,
) -> Result<Response<CacheBody<ResB>>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    let core = &shared.core;
    // Whether a stale entry may answer is judged when it would be served: a slow call
    // may have outlived the grace period it started in.
    let serve_stale = |when: bool| {
        stale
            .as_ref()
            .filter(|entry| when && core.still_stale(Some(entry)).is_some())
            .map(|entry| {
                core.record(Outcome::Stale);
                Ok(replay_entry(
                    Arc::clone(entry),
                    "STALE",
                    age_secs(core, entry),
                ))
            })
    };
    // Until when this request may wait for a call that runs on. Every such wait ends by
    // then, so it may wait for one call after another (the next one it joins may run
    // on too) and is never held past it.
    let late_until = shared
        .late_wait
        .as_ref()
        .and_then(|until| until(req.extensions()));
    let mut call = Some((svc, req));
    let mut rounds = 0;
    // Wait at most once for a body streaming to another request.
    let mut watch_streams = true;
    loop {
        // An identical call that runs on after its own request was answered: wait for
        // its answer rather than calling again while the provider works on it.
        if let Some(until) = late_until
            && let Some(late) = shared.running_on.get(&key)
            && let Some(done) = wait_answer(late, Some(until)).await
            && let Some(answer) = answer_from(core, &done, call.as_ref(), serve_stale)
        {
            return answer;
        }

        // An identical call whose answer is streaming to its own caller: wait for the
        // copy rather than calling again.
        if watch_streams && let Some(body) = shared.streams.get(&key) {
            watch_streams = false;
            if let Some(done) =
                wait_answer(body, Instant::now().checked_add(shared.body_wait)).await
            {
                return match answer_from(core, &done, call.as_ref(), serve_stale) {
                    Some(answer) => answer,
                    None => call_alone(core, call.take()).await,
                };
            }
        }

        let mut own = None;
        // Boxed: the flight (the single-flight wait and the inner call within it) is most of
        // this future's size, and a future is copied whole each time it moves, before its
        // first poll too. Boxed here, the miss future stays small, and the flight is built
        // once, where it runs.
        let flight = Box::pin(core.flight(key, async {
            let Some((svc, req)) = call.take() else {
                return Flight::Alone;
            };
            let (result, flight) = lead(&shared, svc, req, key, stale.is_some()).await;
            own = Some(result);
            flight
        }))
        .await;

        if let Some(own) = own {
            return match own {
                Own::Hit(res) => {
                    core.record(Outcome::Hit);
                    Ok(res)
                }
                Own::Response { res, failed } => match serve_stale(failed) {
                    Some(stale) => stale,
                    None => {
                        core.record(Outcome::Miss);
                        Ok(res)
                    }
                },
                Own::Error(e) => match serve_stale(true) {
                    Some(stale) => {
                        tracing::debug!(cache = %core.name, error = %e, "inner call failed");
                        stale
                    }
                    None => {
                        core.record(Outcome::Miss);
                        Err(e)
                    }
                },
            };
        }

        let streaming = match &*flight {
            Flight::Streaming(body) => Some(body.clone()),
            _ => None,
        };
        let done = match streaming {
            Some(body) => {
                watch_streams = false;
                match wait_answer(body, Instant::now().checked_add(shared.body_wait)).await {
                    Some(done) => done,
                    // Abandoned, or too slow: one of the waiters calls for all of them.
                    None if rounds < MAX_ROUNDS => {
                        rounds += 1;
                        continue;
                    }
                    None => return call_alone(core, call.take()).await,
                }
            }
            None => flight,
        };
        // No answer for this request from the flight, because the leader's own time ran
        // out, its call running on: a failure (unless a stale answer can answer now), or
        // an early answer that was the leader's alone. Wait for the call rather than
        // share the failure or call again.
        let unanswered = match &*done {
            Flight::Failed(_) | Flight::Shared { failed: true, .. } => stale
                .as_ref()
                .is_none_or(|entry| core.still_stale(Some(entry)).is_none()),
            Flight::Alone => true,
            Flight::Stored(_) | Flight::Shared { .. } | Flight::Streaming(_) => false,
        };
        if unanswered
            && let Some(until) = late_until
            && let Some(late) = shared.running_on.get(&key)
            && let Some(late) = wait_answer(late, Some(until)).await
            && let Some(answer) = answer_from(core, &late, call.as_ref(), serve_stale)
        {
            return answer;
        }
        if let Some(answer) = answer_from(core, &done, call.as_ref(), serve_stale) {
            return answer;
        }
        if let Flight::Failed(message) = &*done {
            if let Some(stale) = serve_stale(true) {
                return stale;
            }
            if shared.share_failures {
                core.record(Outcome::Coalesced);
                return Err(CacheError::Coalesced {
                    message: Arc::clone(message),
                }
                .into());
            }
            if rounds < MAX_ROUNDS {
                // Join (or lead) the next flight rather than all calling at once.
                rounds += 1;
                continue;
            }
        }
        // Not shareable, or another variant: this request's own call.
        return call_alone(core, call.take()).await;
    }
}

type Answer<B> = Result<Response<CacheBody<B>>, BoxError>;

/// A waiter's answer from a flight's stored or shared response, when it fits the
/// waiter's request.
fn answer_from<S, ReqB, ResB, St>(
    core: &Core<CachedResponse, St>,
    flight: &Flight<CachedResponse>,
    call: Option<&(S, Request<ReqB>)>,
    serve_stale: impl Fn(bool) -> Option<Answer<ResB>>,
) -> Option<Answer<ResB>>
where
    St: CacheStore<CachedResponse>,
{
    match flight {
        Flight::Stored(entry) if fits(call, entry.value()) => {
            core.record(Outcome::Coalesced);
            Some(Ok(replay_entry(
                Arc::clone(entry),
                "MISS",
                age_secs(core, entry),
            )))
        }
        Flight::Shared { value, failed } if fits(call, value) => {
            serve_stale(*failed).or_else(|| {
                core.record(Outcome::Coalesced);
                Some(Ok(value.replay("MISS", None)))
            })
        }
        _ => None,
    }
}

/// Waits, until `until` (`None`: as long as it takes), for an answer still to come: a
/// streaming answer's complete copy, or that of an identical call running on after its
/// own request was answered. `None` when it was abandoned or not stored, or is too slow
/// to come.
async fn wait_answer(
    mut body: crate::core::Body<CachedResponse>,
    until: Option<Instant>,
) -> Option<Arc<Flight<CachedResponse>>> {
    let answer = body.wait_for(Option::is_some);
    let done = match until {
        Some(until) => tokio::time::timeout_at(until, answer).await.ok()?,
        None => answer.await,
    };
    done.ok()?.clone()
}

/// Whether a shared answer answers this request too: it varies on nothing this request
/// sends differently.
fn fits<S, ReqB>(call: Option<&(S, Request<ReqB>)>, value: &CachedResponse) -> bool {
    call.is_some_and(|(_, req)| value.vary_matches(req.headers()))
}

/// A call of this request's own, uncached: the leader's answer could not be buffered, or
/// its failure is not shared.
async fn call_alone<S, ReqB, ResB, St>(
    core: &Core<CachedResponse, St>,
    call: Option<(S, Request<ReqB>)>,
) -> Result<Response<CacheBody<ResB>>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    let Some((mut svc, req)) = call else {
        return Err(CacheError::Coalesced {
            message: "leading request's answer was not shared".into(),
        }
        .into());
    };
    core.record(Outcome::Miss);
    poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into)?;
    let res = svc.call(req).await.map_err(Into::into)?;
    let mut res = res.map(CacheBody::inner);
    mark(res.headers_mut(), "MISS", None);
    Ok(res)
}

fn age_secs<V, St>(core: &Core<V, St>, entry: &Entry<V>) -> u64 {
    core.now()
        .saturating_duration_since(entry.stored_at())
        .as_secs()
}

/// The leading request's inner call: its own result, and what followers share.
async fn lead<S, ReqB, ResB, St>(
    shared: &Arc<HttpShared<St>>,
    mut svc: S,
    mut req: Request<ReqB>,
    key: CacheKey,
    has_stale: bool,
) -> (Own<ResB>, Flight<CachedResponse>)
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    let core = &shared.core;
    // Read before the call: an invalidation during it keeps its answer out of the store.
    let generation = core.generation();
    let started = core.now();
    // A flight for this key may have finished between our lookup and now.
    if let Found::Fresh(entry) = core.classify(core.store.get_recent(&key).await, core.now())
        && entry.value().vary_matches(req.headers())
    {
        let res = replay_entry(Arc::clone(&entry), "HIT", age_secs(core, &entry));
        return (Own::Hit(res), Flight::Stored(entry));
    }
    // Another instance may be filling this key (a shared store's lock): its answer.
    if let Some(turn) = core.store.fill_turn(&key)
        && let Found::Fresh(entry) = core.classify(turn.await, core.now())
        && entry.value().vary_matches(req.headers())
    {
        let res = replay_entry(Arc::clone(&entry), "HIT", age_secs(core, &entry));
        return (Own::Hit(res), Flight::Stored(entry));
    }
    // Shared with the late answer: one copy of the request's headers per miss.
    let asked = Arc::new(Asked {
        authorized: req.headers().contains_key(header::AUTHORIZATION),
        headers: req.headers().clone(),
    });
    // For a layer below that lets this call run on after its caller was answered.
    let (late, running_on) = LateAnswer::new(shared, key, generation, started, Arc::clone(&asked));
    req.extensions_mut().insert(late);
    let failed = |e: BoxError| {
        let message: Arc<str> = e.to_string().into();
        (Own::Error(e), Flight::Failed(message))
    };
    if let Err(e) = poll_fn(|cx| svc.poll_ready(cx)).await {
        return failed(e.into());
    }
    let res = svc.call(req).await.map_err(Into::into);
    // The request and its call are gone: a `LateAnswer` still alive belongs to the call,
    // running on. Registered before this flight ends, for its waiters to find.
    if shared.late_wait.is_some() {
        shared.running_on.start_if_open(key, &running_on);
    }
    let res = match res {
        Ok(res) => res,
        Err(e) => return failed(e),
    };
    let (parts, body) = res.into_parts();
    let degraded = (shared.degraded)(&parts);
    let (verdict, is_failure) = shared.judge(&asked, &parts, degraded);
    if verdict == Verdict::Alone {
        // This request's own answer: passed through as it comes, never buffered.
        let mut res = Response::from_parts(parts, CacheBody::inner(body));
        mark(res.headers_mut(), "MISS", None);
        return (
            Own::Response {
                res,
                failed: is_failure,
            },
            Flight::Alone,
        );
    }
    let grpc = Grpc::of(&parts);
    let vary = asked.vary_of(&parts.headers);
    let mut publish = Publish::new(shared, key, generation, verdict, is_failure, grpc);
    // With a stale entry to fall back on, a failure (known from the head, or from a gRPC
    // status in the trailers) must be known before answering: read the body first.
    let read_first = has_stale && (is_failure || grpc == Grpc::Pending);
    let full = if read_first {
        match collect(body, shared.max_response_body).await {
            Collected::Full { data, trailers } => Ok((data, trailers)),
            Collected::TooBig(body) => return too_big(core, parts, body, is_failure),
            Collected::Failed(e) => Err(e),
        }
    } else {
        // What is already there (a buffered body, or data that came with the head) is
        // read at once: such an answer is complete, stored and shared now.
        let mut body = Box::pin(body);
        match drain_ready(&mut body, shared.max_response_body) {
            Drained::Pending(read) => {
                // Answer at once and stream the body on, keeping a copy: the requests
                // coalesced onto this call (and those arriving meanwhile) get the copy
                // when it is complete.
                let (tx, rx) = watch::channel(None);
                shared.streams.start(key, rx.clone());
                publish.head = Some(CachedResponse::from_head(&parts, vary));
                publish.body = Some(rx.clone());
                publish.tx = Some(tx);
                let body = CacheBody::tee(body, read, shared.max_response_body, Box::new(publish));
                let mut res = Response::from_parts(parts, body);
                mark(res.headers_mut(), "MISS", None);
                return (
                    Own::Response {
                        res,
                        failed: is_failure,
                    },
                    Flight::Streaming(rx),
                );
            }
            Drained::TooBig(read) => {
                return too_big(core, parts, CacheBody::prefixed(read, body), is_failure);
            }
            Drained::Ended { data, trailers } => Ok((data, trailers)),
            Drained::Failed(e) => Err(e),
        }
    };
    match full {
        Ok((data, trailers)) => {
            let mut cached = CachedResponse::from_parts(parts, data, trailers);
            if let Some(vary) = vary {
                cached = cached.with_vary(vary);
            }
            // The caller's own answer keeps its extensions (a stored entry does not).
            match publish.finish(cached) {
                Finished::Stored { entry, answer } => {
                    let res = answer.replay("MISS", None);
                    (Own::Response { res, failed: false }, Flight::Stored(entry))
                }
                Finished::Shared { value, failed } => {
                    let res = value.replay("MISS", None);
                    (
                        Own::Response { res, failed },
                        Flight::Shared { value, failed },
                    )
                }
            }
        }
        Err(e) => failed(CacheError::ResponseBody(e).into()),
    }
}

/// An answer too large to keep: streamed through to its caller, not shared.
fn too_big<B, St>(
    core: &Core<CachedResponse, St>,
    parts: http::response::Parts,
    body: CacheBody<B>,
    failed: bool,
) -> (Own<B>, Flight<CachedResponse>) {
    tracing::debug!(cache = %core.name, "response too large to cache; streamed through");
    let mut res = Response::from_parts(parts, body);
    mark(res.headers_mut(), "MISS", None);
    (Own::Response { res, failed }, Flight::Alone)
}

/// Turns a complete answer into what the cache keeps and shares: stored when its
/// verdict allows (and no invalidation happened since its call started), shared
/// otherwise. For a streamed answer, also tells the waiting requests.
pub(crate) struct Publish<St> {
    shared: Arc<HttpShared<St>>,
    key: CacheKey,
    generation: u64,
    verdict: Verdict,
    failed: bool,
    grpc: Grpc,
    /// For a streamed answer: its head, without a body yet.
    head: Option<CachedResponse>,
    /// For a streamed answer: its entry in the streams map, and the waiters' channel.
    body: Option<crate::core::Body<CachedResponse>>,
    tx: Option<watch::Sender<Option<Arc<Flight<CachedResponse>>>>>,
}

/// A complete answer, judged.
pub(crate) enum Finished {
    /// Stored as `entry` (a copy without extensions); `answer` is the original.
    Stored {
        entry: Arc<Entry<CachedResponse>>,
        answer: CachedResponse,
    },
    /// Not stored: shared with the waiters only. `failed`: a failure for
    /// stale-if-error.
    Shared { value: CachedResponse, failed: bool },
}

impl<St: CacheStore<CachedResponse>> Publish<St> {
    /// For the answer to the call for `key` that started at `generation`, judged
    /// `verdict` (`failed`: a failure for stale-if-error) from its head.
    pub(crate) fn new(
        shared: &Arc<HttpShared<St>>,
        key: CacheKey,
        generation: u64,
        verdict: Verdict,
        failed: bool,
        grpc: Grpc,
    ) -> Self {
        Self {
            shared: Arc::clone(shared),
            key,
            generation,
            verdict,
            failed,
            grpc,
            head: None,
            body: None,
            tx: None,
        }
    }

    /// Stores the complete answer when its verdict allows (and no invalidation happened
    /// since its call started), else keeps it to share.
    pub(crate) fn finish(&self, cached: CachedResponse) -> Finished {
        // A gRPC status in the trailers is known only now.
        let grpc_failed = self.grpc.with_trailers(cached.trailers()) == Grpc::Failed;
        let failed = self.failed || grpc_failed;
        match self.verdict {
            Verdict::Store(ttl) if !grpc_failed => {
                let core = &self.shared.core;
                match core.store(self.key, cached.for_storage(), ttl, self.generation) {
                    Ok(entry) => Finished::Stored {
                        entry,
                        answer: cached,
                    },
                    Err(_) => Finished::Shared {
                        value: cached,
                        failed: false,
                    },
                }
            }
            _ => Finished::Shared {
                value: cached,
                failed,
            },
        }
    }
}

impl<St: CacheStore<CachedResponse>> TeeSink for Publish<St> {
    fn complete(mut self: Box<Self>, data: Bytes, trailers: Option<http::HeaderMap>) {
        let (Some(tx), Some(head)) = (self.tx.take(), self.head.take()) else {
            return;
        };
        let flight = match self.finish(head.with_body(data, trailers)) {
            Finished::Stored { entry, .. } => Flight::Stored(entry),
            Finished::Shared { value, failed } => Flight::Shared { value, failed },
        };
        // No receiver left is fine: nobody was waiting.
        let _ = tx.send(Some(Arc::new(flight)));
    }
}

impl<St> Drop for Publish<St> {
    fn drop(&mut self) {
        if let Some(body) = &self.body {
            self.shared.streams.end(&self.key, body);
        }
    }
}
