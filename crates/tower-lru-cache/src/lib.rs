//! A response cache for [tower] services, on [moka].
//!
//! Requests are keyed by SHA-256 over an unambiguous encoding of the method, path, query,
//! selected headers, body and an optional partition (such as the user id). Entries are
//! evicted least-recently-used past a capacity and expire after a TTL; concurrent misses
//! for one key make a single inner call (single-flight); an expired entry may answer for
//! a failed call (stale-if-error). Hit, miss, stale and coalesced counts are kept.
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//!
//! use bytes::Bytes;
//! use http::{HeaderName, Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_lru_cache::{CacheLayer, Partition};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lru_cache::BoxError> {
//! let cache = CacheLayer::builder()
//!     .name("analyze")
//!     .max_entries(100)
//!     .ttl(Duration::from_secs(3600))
//!     .stale_if_error(Duration::from_secs(600))
//!     // Without a partition, answers are shared between users.
//!     .partition(Partition::header(HeaderName::from_static("x-user-id")))
//!     .build();
//! let handle = cache.handle();
//!
//! let svc = ServiceBuilder::new().layer(cache).service_fn(|req: Request<Full<Bytes>>| async move {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("an expensive answer"))))
//! });
//!
//! for expected in ["MISS", "HIT"] {
//!     let req = Request::post("/analyze").header("x-user-id", "ada").body(Full::from("record 7"))?;
//!     let res = svc.clone().oneshot(req).await?;
//!     assert_eq!(res.headers()["x-cache"], expected);
//! }
//! assert_eq!(handle.snapshot().hits, 1);
//! # Ok(())
//! # }
//! ```
//!
//!
//! # Keys, and who shares an answer
//!
//! [`RequestKey`] (the default [`KeyBuilder`]) hashes, with SHA-256 and length-prefixed
//! fields so that no two requests encode alike: the method, path and query, the request
//! headers you list with [`RequestKey::vary`], the body, and the [`Partition`].
//!
//! **Without a partition, cached answers are shared between all users**: user B is
//! served the answer to user A's identical request. Partition by user whenever an answer
//! depends on who asks ([`Partition::header`], [`Partition::extension`],
//! [`Partition::from_fn`], combined with [`Partition::or`]); a request whose partition
//! cannot be found bypasses the cache. Replace the key entirely by implementing
//! [`KeyBuilder`]; [`CacheHandle::invalidate_request`] uses the same builder.
//!
//! By default `GET`, `HEAD` and `POST` are cached; other methods bypass.
//!
//! # Bodies
//!
//! - **Request bodies** are read only when the key needs them, and only when their
//!   `size_hint` promises at most [`CacheLayerBuilder::max_request_body`] bytes (1 MiB by
//!   default): a larger body, or one of unknown size, bypasses the cache unread, so
//!   nothing is buffered beyond the limit. A read body is hashed once and handed to the
//!   inner service as a request of the same body type, rebuilt with `From<Bytes>` (so a
//!   retry layer further in can still clone it). Request trailers are not carried over.
//!   A body that fails, or sends more than it promised, is a [`CacheError::RequestBody`]
//!   (400).
//! - **Response bodies** of any `http_body::Body<Data = Bytes>` are never held back. What
//!   is already there when the head arrives (a buffered body) is read at once; otherwise
//!   the head is returned at once and the body streams to the caller while the cache
//!   keeps a copy (a tee). The copy, with its trailers (so that unary gRPC answers replay
//!   whole), is stored and shared only when the body completes within
//!   [`CacheLayerBuilder::max_response_body`] bytes; a longer body, a failed one, or one
//!   whose caller goes away is streamed on and its copy dropped. Stored answers replay
//!   as [`CacheBody`].
//!
//! # What is stored and what is shared
//!
//! A shared cache shares only what [RFC 9111] lets a shared cache share, and
//! single-flight (handing one call's answer to the identical requests that waited for
//! it) follows the same rules as storage: an answer that may not be stored is not
//! shared, and the requests that waited for it make their own calls.
//!
//! **Never stored, never shared** (passed through to the request that asked, unbuffered):
//!
//! - `Cache-Control: no-store`, `no-cache` (this cache never revalidates), `max-age=0` or
//!   `s-maxage=0`; `private`, unless the key is partitioned ([`Partition`]). Honoured
//!   unless [`respect_cache_control(false)`](CacheLayerBuilder::respect_cache_control).
//! - An answer carrying `Set-Cookie`: one client's session is never given to another.
//! - The answer to a request with `Authorization` (RFC 9111 §3.5), unless it says
//!   `public`, `s-maxage` or `must-revalidate`, or the key is partitioned.
//! - `206 Partial Content`. Requests with `Range` bypass the cache (`x-cache: BYPASS`):
//!   only complete answers are stored, and a fragment never answers a plain request.
//! - `Vary: *`, or a `Vary` that names something that is not a header.
//! - `text/event-stream`: a stream of events is passed through as it comes.
//!
//! **Shared with the waiting requests, not stored**: an answer the
//! [`cacheable`](CacheLayerBuilder::cacheable) predicate refuses (by default anything
//! but `2xx`), a [degraded](CacheLayerBuilder::degraded_if) one, a server error, a
//! gRPC failure.
//!
//! **Stored** (and shared): the rest, fresh for the [`ttl`](CacheLayerBuilder::ttl),
//! shortened (never lengthened) by `s-maxage`, else `max-age`. Besides:
//!
//! - **gRPC**: an answer with `content-type: application/grpc*` is stored only with
//!   `grpc-status: 0`, read from its head (a trailers-only answer) or its trailers; any
//!   other status, or none, is a failure, never stored, and stale-if-error answers for
//!   it like for a server error.
//! - **The response's `Vary`** is honoured: the values the named request headers had are
//!   kept with the entry, and the entry answers only requests with the same values
//!   (another variant is a miss and replaces it); a waiting request whose values differ
//!   from the caller's makes its own call. This works with any key; adding the header to
//!   the key ([`RequestKey::vary`]) keeps one entry per variant instead.
//! - **The host**: with `host` in the key, the URI's authority is the host when there is
//!   one (HTTP/2 has no `Host` header), so virtual hosts never share entries.
//! - **Invalidation wins**: a call that started before an invalidation
//!   ([`CacheHandle::invalidate`], [`CacheHandle::invalidate_all`],
//!   [`CacheHandle::invalidate_request`]) does not store its answer.
//! - **Memory**: a stored body and its header values are copied out of the buffers they
//!   were read into, so an entry keeps alive only what
//!   [`max_bytes`](CacheLayerBuilder::max_bytes) weighs.
//!
//! Errors are never stored. Entries are bounded by
//! [`max_entries`](CacheLayerBuilder::max_entries) (100 by default) or by
//! [`max_bytes`](CacheLayerBuilder::max_bytes), evicted least-recently-used.
//!
//! # Single-flight
//!
//! Concurrent misses for one key make exactly one inner call: the others wait and get
//! the same answer (counted as `coalesced`), within the rules above. The calls in flight
//! are a map behind a mutex held for one map operation, with a `watch` channel per call. If the leading request is dropped, a waiting
//! one takes over with its own inner call. When the answer's body streams, the waiters
//! (and identical requests arriving meanwhile) get the complete copy when it ends, or,
//! past [`body_wait`](CacheLayerBuilder::body_wait) (30 s by default) or when the copy
//! is dropped, one of them calls for all: no request waits on a body that another
//! client is reading.
//!
//! If the inner call fails, the leader gets the inner error unchanged. With
//! [`share_failures(true)`](CacheLayerBuilder::share_failures) (the default) each
//! waiter gets a [`CacheError::Coalesced`] carrying its message (no request hangs, and
//! a failing upstream is not hit again by every waiter). With `false`, each waiter gets
//! its own answer or error, but the waiters do not all call at once: they coalesce
//! again, so the upstream sees one call for the key at a time.
//!
//! A layer below the cache may answer the leader before its call ends (at a deadline,
//! from a fallback) and let the call run on ([`LateAnswer`]). With
//! [`wait_for_late_answers`](CacheLayerBuilder::wait_for_late_answers), the waiters then
//! wait for that call's answer rather than share the leader's, and identical requests
//! arriving meanwhile wait for it rather than call again, each until the instant the
//! setting reads from its request. A waiter that a stale entry can answer (the
//! leader's answer being a failure, see below) gets it at once instead of waiting; a
//! request arriving meanwhile, whose own call has not failed, waits all the same.
//!
//! # Stale-if-error
//!
//! With [`stale_if_error`](CacheLayerBuilder::stale_if_error), an expired entry is kept
//! for that grace period. A request that finds one calls the inner service; if the call
//! fails, answers with a server error (`5xx`), a gRPC failure, or answers degraded, the
//! stale entry is served instead, marked `x-cache: STALE`. Whether it is still within
//! its grace is judged when it would be served, not when the request arrived: a slow
//! refill does not stretch the grace. To be able to fall back, such a refill reads a
//! failed answer's body (or a gRPC answer's, whose status comes in the trailers) before
//! answering; a body that fails after its head was returned cannot be replaced.
//!
//! # Headers and counts
//!
//! Responses carry `x-cache: HIT | MISS | STALE | BYPASS` (a coalesced answer waited for
//! an upstream call: `MISS`), and `age` (seconds since stored) on answers replayed from
//! an entry. Request `Cache-Control` is ignored: clients cannot force upstream calls or
//! bypass the cache. A [`CacheHandle`] gives a serializable
//! [`CacheSnapshot`] (hits, misses, stale, coalesced, bypassed, entries, hit rate) and
//! invalidation; metrics [`CACHE_REQUESTS_TOTAL`] and [`CACHE_ENTRIES`] are recorded
//! through handles resolved when the layer is built, so **install the `metrics`
//! recorder before building the layer**.
//!
//! # Readiness
//!
//! The services are always ready: a hit never waits for the inner service's capacity. A
//! miss or a bypass drives its own clone of the inner service to readiness before
//! calling it, so backpressure from inside still applies to the requests that need it.
//!
//! # Refusals as errors, or as answers
//!
//! The cache's own failures are errors (a boxed [`CacheError`]: a request body that
//! could not be read, an upstream body that failed while being cached, a failed call
//! shared with coalesced requests), for stacks that shape their own answers. The
//! inner service's errors pass through unchanged. [`CacheLayer::answer_refusals`] gives
//! the other form: the cache answers its own failures itself, per [`Refusal`] (400 or
//! 502 with a short JSON body, or a gRPC trailers-only answer), and keeps the inner
//! service's error type. On an axum route, whose handlers never fail, it attaches with
//! `.layer(...)` as it is:
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use http::Request;
//! use tower::ServiceExt;
//! use tower_lru_cache::CacheLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache = CacheLayer::builder().name("report").build();
//! let handle = cache.handle();
//! let app: Router = Router::new().route(
//!     "/report",
//!     get(|| async { "an expensive report" }).layer(cache.answer_refusals()),
//! );
//!
//! for expected in ["MISS", "HIT"] {
//!     let response = app.clone().oneshot(Request::get("/report").body(Body::empty()).unwrap()).await.unwrap();
//!     assert_eq!(response.headers()["x-cache"], expected);
//! }
//! assert_eq!(handle.snapshot().hits, 1);
//! # }
//! ```
//!
//! # Other request types
//!
//! [`FnCacheLayer`] caches any service whose response is `Clone` (an AI SDK call, for
//! example), keyed by a function returning a [`CacheKey`] built with a [`KeyHasher`].
//!
//! # Storage
//!
//! Entries live in a [`CacheStore`]; [`MokaStore`] is the in-process default. Lookups
//! are asynchronous so that a shared store (Redis) can implement the trait; the moka
//! store answers with a ready future, so the seam costs nothing on the hit path.
//!
//! With the `redis` feature, [`RedisStore`] puts a Redis level shared by every instance
//! behind the in-process LRU: an answer paid for once is served by all instances and
//! survives restarts; invalidations reach every instance; Redis down means L1 only,
//! never a failed request. Its docs say exactly what is written to Redis (the answers
//! themselves: Redis must be as private as they are).
//!
//! ## Time
//!
//! Entries' ages are read from the CPU's time-stamp counter ([`Clock::Monotonic`], about
//! 10 ns a read), which does not follow tokio's paused test clock. A test that pauses
//! tokio's time and advances it to see entries go stale builds its cache with
//! [`Clock::Tokio`] ([`CacheLayerBuilder::clock`], [`FnCacheLayerBuilder::clock`]).
//!
//! [tower]: https://docs.rs/tower
//! [RFC 9111]: https://www.rfc-editor.org/rfc/rfc9111
//! [moka]: https://docs.rs/moka
//!
#![cfg_attr(feature = "redis", doc = "[`RedisStore`]: crate::RedisStore")]
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`RedisStore`]: https://docs.rs/tower-lru-cache/latest/tower_lru_cache/struct.RedisStore.html"
)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "http")]
mod body;
#[cfg(feature = "http")]
mod cached;
mod clock;
mod core;
mod error;
#[cfg(feature = "http")]
mod future;
mod generic;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
mod http_key;
mod key;
#[cfg(feature = "http")]
mod late;
#[cfg(feature = "http")]
mod layer;
mod metrics;
#[cfg(feature = "http")]
mod miss;
mod policy;
#[cfg(feature = "redis")]
mod redis_store;
#[cfg(feature = "http")]
mod service;
#[cfg(feature = "http")]
mod shared;
mod stats;
mod store;

#[cfg(feature = "http")]
pub use crate::body::CacheBody;
#[cfg(feature = "http")]
pub use crate::cached::{CachedResponse, X_CACHE};
pub use crate::clock::Clock;
pub use crate::error::{BoxError, CacheError};
#[cfg(feature = "http")]
pub use crate::future::ResponseFuture;
pub use crate::generic::{FnCacheFuture, FnCacheLayer, FnCacheLayerBuilder, FnCacheService};
#[cfg(feature = "http")]
pub use crate::http_key::{KeyBuilder, Partition, Plan, RequestKey};
pub use crate::key::{CacheKey, KeyHasher};
#[cfg(feature = "http")]
pub use crate::late::LateAnswer;
#[cfg(feature = "http")]
pub use crate::layer::{
    CacheLayer, CacheLayerBuilder, DEFAULT_BODY_WAIT, DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_MAX_RESPONSE_BODY,
};
pub use crate::metrics::{
    CACHE_BACKEND_ERRORS_TOTAL, CACHE_ENTRIES, CACHE_REQUESTS_TOTAL, DEFAULT_MAX_ENTRIES,
    DEFAULT_NAME, DEFAULT_TTL,
};
#[cfg(feature = "redis")]
pub use crate::redis_store::{
    DEFAULT_MAX_VALUE_BYTES, DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_TIMEOUT, RedisGet, RedisStore,
    RedisStoreBuilder,
};
#[cfg(feature = "http")]
pub use crate::service::CacheService;
pub use crate::stats::{CacheHandle, CacheSnapshot};
pub use crate::store::{CacheStore, Entry, MokaStore};
/// The refusal foundation's trait and answering layer (feature `http`).
#[cfg(feature = "http")]
pub use tower_refusal::{AnswerRefusalsLayer, Refusal};
