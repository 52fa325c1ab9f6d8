//! Token-bucket rate limiting for [tower] services, on [governor]'s GCRA.
//!
//! One limiter holds one timestamp per key: per user, per client IP, or a single global
//! bucket. A request that finds no token is refused at once (`429 Too Many Requests` with
//! `Retry-After`) or, in wait mode, delayed until its tokens are there, up to a maximum
//! wait. State is shared by every clone of the service and every `Layer::layer` call, and
//! idle per-key state is pruned, so memory stays bounded under any number of keys.
//!
//! Public shape: a `RateLimitLayer` and its service and future, `Quota` (rate, burst,
//! cost), a `KeyExtractor` trait with provided extractors (global, header, typed
//! extension, peer IP with trusted proxies), a `RateLimitError` enum with `retry_after`,
//! and a cheap handle for snapshots.
//!
//! [tower]: https://docs.rs/tower
//! [governor]: https://docs.rs/governor
