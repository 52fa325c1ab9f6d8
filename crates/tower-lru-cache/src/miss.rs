//! The miss path of the HTTP cache: one inner call per key at a time (single-flight),
//! storing, sharing, and stale-if-error. It runs as one boxed future: a miss costs an
//! upstream call, next to which the allocation is nothing; hits never come here.

use std::{future::poll_fn, sync::Arc};

use bytes::Bytes;
use http::{Request, Response};
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
    shared::HttpShared,
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
    let mut call = Some((svc, req));
    let mut own = None;
    let flight = shared
        .core
        .flight(key, async {
            let Some((svc, req)) = call.take() else {
                return Flight::Alone;
            };
            let (result, flight) = lead(&shared, svc, req, key).await;
            own = Some(result);
            flight
        })
        .await;
    let core = &shared.core;
    let serve_stale = |entry: &Entry<CachedResponse>| {
        core.record(Outcome::Stale);
        Ok(entry.value().replay("STALE", Some(age_secs(entry))))
    };

    if let Some(own) = own {
        return match own {
            Own::Hit(res) => {
                core.record(Outcome::Hit);
                Ok(res)
            }
            Own::Response { res, failed } => match stale.as_deref() {
                Some(entry) if failed => serve_stale(entry),
                _ => {
                    core.record(Outcome::Miss);
                    Ok(res)
                }
            },
            Own::Error(e) => match stale.as_deref() {
                Some(entry) => {
                    tracing::debug!(cache = %core.name, error = %e, "inner call failed");
                    serve_stale(entry)
                }
                None => {
                    core.record(Outcome::Miss);
                    Err(e)
                }
            },
        };
    }

    match &*flight {
        Flight::Stored(entry) => {
            core.record(Outcome::Coalesced);
            Ok(entry.value().replay("MISS", Some(age_secs(entry))))
        }
        Flight::Shared { value, failed } => match stale.as_deref() {
            Some(entry) if *failed => serve_stale(entry),
            _ => {
                core.record(Outcome::Coalesced);
                Ok(value.replay("MISS", None))
            }
        },
        Flight::Failed(message) => match stale.as_deref() {
            Some(entry) => serve_stale(entry),
            None if shared.share_failures => {
                core.record(Outcome::Coalesced);
                Err(CacheError::Coalesced {
                    message: Arc::clone(message),
                }
                .into())
            }
            None => call_alone(core, call.take()).await,
        },
        Flight::Alone => call_alone(core, call.take()).await,
    }
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
    // A flight for this key may have finished between our lookup and now.
    if let Found::Fresh(entry) = core.classify(core.store.get(&key).await, Instant::now()) {
        let res = entry.value().replay("HIT", Some(age_secs(&entry)));
        return (Own::Hit(res), Flight::Stored(entry));
    }
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
    let is_failure = degraded || parts.status.is_server_error();
    let ttl = shared.storable_for(&parts, degraded);
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
            let cached = CachedResponse::from_parts(parts, data, trailers);
            let res = cached.replay("MISS", None);
            match ttl {
                Some(ttl) => {
                    let entry = core.store(key, cached.for_storage(), ttl);
                    (Own::Response { res, failed: false }, Flight::Stored(entry))
                }
                None => (
                    Own::Response {
                        res,
                        failed: is_failure,
                    },
                    Flight::Shared {
                        value: cached,
                        failed: is_failure,
                    },
                ),
            }
        }
    }
}
