//! A circuit breaker, a call timeout and a fallback for [tower] services.
//!
//! The breaker is a pure state machine (closed, open, half-open) with an injected clock,
//! wrapped in a tower layer whose closed-state fast path takes no lock. It trips on
//! consecutive failures or on a failure rate over a sliding window, fails fast while
//! open, admits a fixed number of half-open probes, and returns every probe slot even when
//! a call's future is dropped.
//!
//! Public shape: a `CircuitBreakerLayer` and its service and future, the trip policies,
//! a pluggable classifier, a `BreakerError` enum (`CircuitOpen { retry_after }`), a
//! handle whose state reads are true at the moment read, a `TimeoutLayer`, and a
//! `FallbackLayer`.
//!
//! [tower]: https://docs.rs/tower
