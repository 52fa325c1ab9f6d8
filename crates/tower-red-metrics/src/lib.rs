//! RED metrics (rate, errors, duration) for any [tower] service, through [metrics].
//!
//! Every request is recorded exactly once, when its response body ends (so that gRPC
//! trailers count), with bounded labels: the matched route template, never the raw path.
//! An in-process snapshot gives totals, error rate and duration quantiles as JSON, and a
//! Prometheus builder installs the recorder without panicking when one already exists.
//!
//! Public shape: a `RedMetricsLayer` and its service, future and body, a snapshot type
//! that derives `Serialize`, and a Prometheus installer with an axum `/metrics` handler.
//!
//! [tower]: https://docs.rs/tower
//! [metrics]: https://docs.rs/metrics
