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
//! - **Response bodies** of any `http_body::Body<Data = Bytes>` are collected into
//!   `Bytes` once (with their trailers, so unary gRPC answers replay whole) and replayed
//!   as [`CacheBody`]. A body larger than [`CacheLayerBuilder::max_response_body`] is
//!   streamed through uncached after at most that many bytes were buffered.
//!
//! # What is stored
//!
//! Only answers the [`cacheable`](CacheLayerBuilder::cacheable) predicate accepts (`2xx`
//! by default), that are not [degraded](CacheLayerBuilder::degraded_if), and that their
//! `Cache-Control` allows: `no-store` and `no-cache` are never stored; `private` only
//! when the key is partitioned; `s-maxage`, else `max-age`, shortens the TTL (never
//! lengthens it); `Vary: *` is never stored. Errors are never stored.
//!
//! Entries are bounded by [`max_entries`](CacheLayerBuilder::max_entries) (100 by default)
//! or by [`max_bytes`](CacheLayerBuilder::max_bytes), evicted least-recently-used, fresh
//! for the [`ttl`](CacheLayerBuilder::ttl) (one hour by default).
//!
//! # Single-flight
//!
//! Concurrent misses for one key make exactly one inner call, through moka's
//! `try_get_with` coalescing: the others wait and get the same answer (counted as
//! `coalesced`). If the leading request is dropped, a waiting one takes over with its
//! own inner call. If the inner call fails, the leader gets the inner error unchanged and
//! each waiter gets a [`CacheError::Coalesced`] carrying its message (no request hangs,
//! and a failing upstream is not hit again by every waiter). An uncacheable answer (a
//! `404`, a degraded one) is shared with the waiters as well.
//!
//! # Stale-if-error
//!
//! With [`stale_if_error`](CacheLayerBuilder::stale_if_error), an expired entry is kept
//! for that grace period. A request that finds one calls the inner service; if the call
//! fails, answers with a server error (`5xx`), or answers degraded, the stale entry is
//! served instead, marked `x-cache: STALE`.
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
//! [tower]: https://docs.rs/tower
//! [moka]: https://docs.rs/moka
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "http")]
mod body;
#[cfg(feature = "http")]
mod cached;
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
mod layer;
mod metrics;
#[cfg(feature = "http")]
mod miss;
mod policy;
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
pub use crate::error::{BoxError, CacheError};
#[cfg(feature = "http")]
pub use crate::future::ResponseFuture;
pub use crate::generic::{FnCacheFuture, FnCacheLayer, FnCacheLayerBuilder, FnCacheService};
#[cfg(feature = "http")]
pub use crate::http_key::{KeyBuilder, Partition, Plan, RequestKey};
pub use crate::key::{CacheKey, KeyHasher};
#[cfg(feature = "http")]
pub use crate::layer::{
    CacheLayer, CacheLayerBuilder, DEFAULT_BODY_WAIT, DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_MAX_RESPONSE_BODY,
};
pub use crate::metrics::{
    CACHE_ENTRIES, CACHE_REQUESTS_TOTAL, DEFAULT_MAX_ENTRIES, DEFAULT_NAME, DEFAULT_TTL,
};
#[cfg(feature = "http")]
pub use crate::service::CacheService;
pub use crate::stats::{CacheHandle, CacheSnapshot};
pub use crate::store::{CacheStore, Entry, MokaStore};
