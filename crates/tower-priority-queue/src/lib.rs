//! Priority admission and retry for [tower] services.
//!
//! Four priority levels (urgent, high, normal, low), at most N requests in flight, a
//! bounded waiting room that sheds the lowest priority first, a maximum wait per level,
//! and aging so that low-priority work is never starved. Retries with exponential backoff
//! and jitter are built on tower's `retry` machinery and bounded by a retry budget.
//!
//! Public shape: `Priority`, a `PriorityExtractor` trait with provided extractors
//! (`x-priority` header, typed extension, closure), a `PriorityQueueLayer` and its
//! service and future, a `QueueError` enum, a handle with a snapshot, and a `RetryLayer`.
//!
//! [tower]: https://docs.rs/tower
