//! A response cache for [tower] services, on [moka].
//!
//! Requests are keyed by SHA-256 over an unambiguous encoding of the method, path, query,
//! selected headers, body and an optional partition (such as the user id). Entries are
//! evicted least-recently-used past a capacity and expire after a TTL; concurrent misses
//! for one key make a single inner call (single-flight); an expired entry may answer for
//! a failed call (stale-if-error). Hit, miss, stale and coalesced counts are kept.
//!
//! Public shape: a `CacheLayer` and its service and future, a `KeyBuilder` trait with a
//! default SHA-256 builder, the cache configuration (capacity, TTL, grace, body limit,
//! cacheability predicate), and a handle with hit-rate statistics.
//!
//! [tower]: https://docs.rs/tower
//! [moka]: https://docs.rs/moka
