//! The miss path of the HTTP cache: one inner call per key at a time (single-flight),
//! storing, sharing, and stale-if-error. It runs as one boxed future: a miss costs an
//! upstream call, next to which the allocation is nothing; hits never come here.

use std::{future::poll_fn, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    body::{CacheBody, Collected, collect},
    cached::{CachedResponse, mark},
    core::{Core, Flight, Found},
    error::{BoxError, CacheError},
    key::CacheKey,
    metrics::Outcome,
    shared::{Asked, Grpc, HttpShared, Verdict, vary_names, vary_values},
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
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    let core = &shared.core;
    // Whether a stale entry may answer is judged when it would be served: a slow call
    // may have outlived the grace period it started in.
    let serve_stale = |when: bool| {
        core.still_stale(stale.as_deref())
            .filter(|_| when)
            .map(|entry| {
                core.record(Outcome::Stale);
                Ok(entry.value().replay("STALE", Some(age_secs(entry))))
            })
    };
    let mut call = Some((svc, req));
    let mut rounds = 0;
    loop {
        let mut own = None;
        let flight = core
            .flight(key, async {
                let Some((svc, req)) = call.take() else {
                    return Flight::Alone;
                };
                let (result, flight) = lead(&shared, svc, req, key).await;
                own = Some(result);
                flight
            })
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

        // A waiter: the answer is this request's only if it varies on nothing this
        // request sends differently.
        match &*flight {
            Flight::Stored(entry) if fits(call.as_ref(), entry.value()) => {
                core.record(Outcome::Coalesced);
                return Ok(entry.value().replay("MISS", Some(age_secs(entry))));
            }
            Flight::Shared { value, failed } if fits(call.as_ref(), value) => {
                if let Some(stale) = serve_stale(*failed) {
                    return stale;
                }
                core.record(Outcome::Coalesced);
                return Ok(value.replay("MISS", None));
            }
            Flight::Failed(message) => {
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
                return call_alone(core, call.take()).await;
            }
            // Not shareable, or another variant: this request's own call.
            _ => return call_alone(core, call.take()).await,
        }
    }
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

fn age_secs<V>(entry: &Entry<V>) -> u64 {
    Instant::now()
        .saturating_duration_since(entry.stored_at())
        .as_secs()
}

/// The leading request's inner call: its own result, and what followers share.
async fn lead<S, ReqB, ResB, St>(
    shared: &HttpShared<St>,
    mut svc: S,
    req: Request<ReqB>,
    key: CacheKey,
) -> (Own<ResB>, Flight<CachedResponse>)
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
    St: CacheStore<CachedResponse>,
{
    let core = &shared.core;
    // Read before the call: an invalidation during it keeps its answer out of the store.
    let generation = core.generation();
    // A flight for this key may have finished between our lookup and now.
    if let Found::Fresh(entry) = core.classify(core.store.get(&key).await, Instant::now())
        && entry.value().vary_matches(req.headers())
    {
        let res = entry.value().replay("HIT", Some(age_secs(&entry)));
        return (Own::Hit(res), Flight::Stored(entry));
    }
    let asked = Asked {
        authorized: req.headers().contains_key(header::AUTHORIZATION),
        headers: req.headers().clone(),
    };
    let failed = |e: BoxError| {
        let message: Arc<str> = e.to_string().into();
        (Own::Error(e), Flight::Failed(message))
    };
    if let Err(e) = poll_fn(|cx| svc.poll_ready(cx)).await {
        return failed(e.into());
    }
    let res = match svc.call(req).await {
        Ok(res) => res,
        Err(e) => return failed(e.into()),
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
    match collect(body, shared.max_response_body).await {
        Collected::Failed(e) => failed(CacheError::ResponseBody(e).into()),
        Collected::TooBig(body) => {
            tracing::debug!(cache = %core.name, "response too large to cache; streamed through");
            let mut res = Response::from_parts(parts, body);
            mark(res.headers_mut(), "MISS", None);
            (
                Own::Response {
                    res,
                    failed: is_failure,
                },
                Flight::Alone,
            )
        }
        Collected::Full { data, trailers } => {
            // A gRPC status in the trailers is known only now.
            let grpc_failed = grpc.with_trailers(trailers.as_ref()) == Grpc::Failed;
            let is_failure = is_failure || grpc_failed;
            let vary = vary_names(&parts.headers)
                .filter(|names| !names.is_empty())
                .map(|names| vary_values(names, &asked.headers));
            let mut cached = CachedResponse::from_parts(parts, data, trailers);
            if let Some(vary) = vary {
                cached = cached.with_vary(vary);
            }
            let res = cached.replay("MISS", None);
            let own = Own::Response {
                res,
                failed: is_failure,
            };
            match verdict {
                Verdict::Store(ttl) if !grpc_failed => {
                    match core.store(key, cached.for_storage(), ttl, generation) {
                        Ok(entry) => (own, Flight::Stored(entry)),
                        Err(_) => (
                            own,
                            Flight::Shared {
                                value: cached,
                                failed: false,
                            },
                        ),
                    }
                }
                _ => (
                    own,
                    Flight::Shared {
                        value: cached,
                        failed: is_failure,
                    },
                ),
            }
        }
    }
}
