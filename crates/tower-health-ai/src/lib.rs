//! Resilience for tower services that call slow, expensive upstreams.
//!
//! This umbrella crate re-exports the suite's five concern crates and stacks them in one
//! preset layer, `HealthAiStack`, with production defaults: RED metrics, a per-user rate
//! limit, a response cache, a fallback, retries, a circuit breaker, a priority queue, a
//! global pace and a call timeout, in that order from the outside in.
//!
//! Public shape: the modules `token_bucket`, `lru_cache`, `priority_queue`, `breaker` and
//! `red_metrics`, a `prelude`, the `HealthAiStack` layer and its builder, and operator
//! handles with ready-made axum handlers for `/api/health`, `/api/metrics` and `/metrics`.
