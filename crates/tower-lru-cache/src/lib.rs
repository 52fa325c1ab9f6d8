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
    CacheLayer, CacheLayerBuilder, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY,
};
pub use crate::metrics::{
    CACHE_ENTRIES, CACHE_REQUESTS_TOTAL, DEFAULT_MAX_ENTRIES, DEFAULT_NAME, DEFAULT_TTL,
};
#[cfg(feature = "http")]
pub use crate::service::CacheService;
pub use crate::stats::{CacheHandle, CacheSnapshot};
pub use crate::store::{CacheStore, Entry, MokaStore};
