//! Priority admission and retry for [tower] services.
//!
//! [`PriorityQueueLayer`] lets at most N requests (default 2) into the inner service at
//! once. The others wait in a bounded room with four levels, [`Priority::Urgent`],
//! `High`, `Normal` and `Low`: the next free slot goes to the highest level waiting, FIFO
//! within a level, with aging so that low-priority work is never starved. When the room is
//! full a higher-priority arrival displaces the newest waiter of the lowest level below
//! it; every level has a maximum wait. Refusals are a [`QueueError`] (503 with
//! `Retry-After`, or 400 for a malformed priority, over HTTP).
//!
//! The in-flight limit is fixed ([`Limit::Fixed`], the default) or adaptive
//! ([`AdaptiveLimit`]): loss-based AIMD that finds the upstream's real capacity from its
//! overload signals (429, 503, call timeouts, read by a swappable
//! [`OverloadClassifier`] such as [`HttpOverload`]), probes past it only rarely, and
//! pauses admission for the upstream's `Retry-After` (a capped cool-down).
//!
//! [`RetryLayer`] retries failed calls on tower's [`retry`](tower::retry) machinery:
//! `max_attempts` calls in all, full-jitter exponential backoff, the upstream's
//! `Retry-After`, an optional overall deadline, and a retry budget.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//! use tower_priority_queue::{
//!     classify_fn, Classify, HttpClassifier, Priority, PriorityQueueLayer, QueueError,
//!     Refusal, RetryDecision, RetryLayer,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let queue = PriorityQueueLayer::builder()
//!     .name("upstream")
//!     .max_in_flight(2)
//!     .capacity(64)
//!     .max_wait(Priority::Low, Duration::from_secs(30))
//!     .build();
//! let queue_state = queue.handle();
//!
//! let retry = RetryLayer::builder()
//!     .max_attempts(3)
//!     .backoff(Duration::from_millis(500), Duration::from_secs(10))
//!     // Never retry refusals of other layers; the default handles the rest.
//!     .classifier(classify_fn(|result: &Result<http::Response<Full<Bytes>>, BoxError>| {
//!         match result {
//!             Err(error) if error.is::<std::io::Error>() => RetryDecision::Return,
//!             other => HttpClassifier::new().classify(other),
//!         }
//!     }))
//!     .build();
//!
//! let service = ServiceBuilder::new()
//!     .layer(retry)
//!     .layer(queue)
//!     .service_fn(|_request: http::Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
//!     });
//!
//! let request = http::Request::builder()
//!     .header("x-priority", "urgent")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//!
//! // A malformed priority is refused before it is queued; the error knows its response.
//! let request = http::Request::builder()
//!     .header("x-priority", "asap")
//!     .body(Full::new(Bytes::new()))?;
//! let error = service.clone().oneshot(request).await.unwrap_err();
//! let refusal = error.downcast_ref::<QueueError>().expect("a queue refusal");
//! assert_eq!(refusal.status_code(), 400);
//!
//! assert_eq!(queue_state.snapshot().processing, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Where the layers go
//!
//! - **Retry outside the queue** (and outside a circuit breaker): a request that backs off
//!   between attempts then holds no slot, and an open circuit stops retries at once.
//! - **The classifier decides what is retried, and only what is safe to repeat.** The
//!   defaults ([`HttpClassifier`], [`RetryErrors`]) retry any request the upstream did not
//!   process (a refused connection, 429, 503); after a timeout, a 5xx or another error,
//!   where the upstream may have processed it, only idempotent requests (by method, an
//!   `Idempotency-Key` header, or [`RetryLayerBuilder::idempotent`]); never other 4xx, and
//!   never this crate's [`QueueError`]. They cannot know the refusal types
//!   of other layers: when a circuit breaker or a rate limiter sits below the retry layer,
//!   wrap the default with [`classify_fn`] and return [`RetryDecision::Return`] for their
//!   errors, as the example above does for `std::io::Error`.
//! - **The queue outside whatever paces or times the upstream call.** A slot is held from
//!   admission until the inner response future completes or is dropped (like tower's
//!   `ConcurrencyLimit`; a streaming response body is not covered), and that includes
//!   waiting for the inner service's readiness: a rate limiter in wait mode below the
//!   queue paces the requests that hold slots, in priority order. A request waiting in the
//!   queue holds no slot, and a call timeout below the queue does not count queueing time.
//!
//! # Refusals as errors, or as answers
//!
//! The queue refuses with an error (a boxed [`QueueError`]), for stacks that shape their
//! own answers and for the retry layer, which must see the refusal to leave it alone.
//! With the `http` feature, [`PriorityQueueLayer::answer_refusals`] gives the other form:
//! the queue answers its refusals itself, per [`Refusal`] (503 with `Retry-After`, or
//! 400 for a malformed priority, or the gRPC trailers-only `UNAVAILABLE` /
//! `INVALID_ARGUMENT`), and keeps the inner service's error type. On an axum route,
//! whose handlers never fail, it attaches with `.layer(...)` as it is:
//!
//! ```
//! use axum::{Router, body::Body, routing::post};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_priority_queue::PriorityQueueLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let queue = PriorityQueueLayer::builder().name("analyze").max_in_flight(2).build();
//! let app: Router = Router::new().route(
//!     "/analyze",
//!     post(|| async { "analysed" }).layer(queue.answer_refusals()),
//! );
//!
//! let request = |priority| {
//!     Request::post("/analyze").header("x-priority", priority).body(Body::empty()).unwrap()
//! };
//! let answered = app.clone().oneshot(request("urgent")).await.unwrap();
//! assert_eq!(answered.status(), StatusCode::OK);
//! let refused = app.oneshot(request("asap")).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
//! # }
//! ```
//!
//! # Finding the upstream's capacity
//!
//! A fixed limit is a guess, and wrong one way or the other: too low and requests are
//! refused while the upstream idles, too high and the upstream answers 429. An adaptive
//! limit finds it:
//!
//! ```
//! use std::time::Duration;
//! use tower_priority_queue::{HttpOverload, Limit, PriorityQueueLayer};
//!
//! let queue = PriorityQueueLayer::builder()
//!     .limit(
//!         Limit::adaptive()
//!             .initial(2)
//!             .max(32)
//!             .max_cooldown(Duration::from_secs(60)),
//!     )
//!     // Reads 429 and 503 (and their Retry-After) and call timeouts as overload.
//!     .overload_classifier(HttpOverload::new())
//!     .build();
//! assert_eq!(queue.handle().snapshot().limit, 2);
//! ```
//!
//! It is driven by loss (the upstream's overload signals), not by latency: at 45-90 s a
//! call, a latency-based limiter gets too few samples to move, and an AI call's latency
//! follows the length of its answer, not queueing. Every attempt counts: the queue sits
//! below the retry layer, so a 429 that a retry turns into a success still lowers the
//! limit. [`AdaptiveLimit`] gives the algorithm, the steady-state band for a hidden
//! capacity and the number of calls it takes to recover after an outage.
//!
//! With calls of a minute, growth on completions is slow: a window of calls takes a
//! minute. Against an upstream that refuses excess calls at once (an AI provider's 429),
//! [`AdaptiveLimit::accepted_after`] also grows the limit on calls the upstream holds
//! without a refusal, bounded by what successful calls have confirmed, so that a hung
//! upstream cannot drive it up.
//!
//! # Starvation
//!
//! Priorities age: each level counts `aging` (default 10 s) earlier than the one below
//! it, so an urgent request is served before a low one that arrived less than
//! `3 × aging` before it, but not before one that has waited longer. Under any amount of
//! urgent traffic, a low request's wait is bounded by `3 × aging` plus the work already
//! ahead of it (and by its level's maximum wait). [`PriorityQueueLayerBuilder::aging`] sets it;
//! `Duration::MAX` gives strict priority.
//!
//! # Features
//!
//! - `http` (default): [`HeaderPriority`], [`ExtensionPriority`], the HTTP and gRPC
//!   responses of [`QueueError`] and [`PriorityQueueLayer::answer_refusals`],
//!   [`HttpClassifier`], [`HttpReplay`] and [`HttpOverload`].
//!
//! # Metrics
//!
//! See [`metrics`]. The recorder must be installed before the layers are built.
//!
//! # Time
//!
//! The queue and the retry layer wait on tokio's timers (maximum waits, aging, backoff,
//! cool-downs, deadlines), so they read tokio's clock, with no option: tests pause it
//! (`#[tokio::test(start_paused = true)]`) and advance it. The suite's crates that only
//! measure time (the limiter, the cache, the RED layer) read a faster monotonic clock by
//! default and take tokio's as an option.
//!
//! [tower]: https://docs.rs/tower

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod core;
mod error;
mod future;
mod handle;
#[cfg(feature = "http")]
mod http;
mod layer;
mod limit;
pub mod metrics;
mod overload;
mod priority;
pub mod retry;
mod service;
mod shared;

pub use crate::error::QueueError;
pub use crate::future::ResponseFuture;
pub use crate::handle::{QueueHandle, QueueSnapshot};
#[cfg(feature = "http")]
pub use crate::http::{ExtensionPriority, HeaderPriority, HttpOverload};
#[allow(deprecated)]
pub use crate::layer::QueueBuilder;
pub use crate::layer::{PriorityQueueLayer, PriorityQueueLayerBuilder};
pub use crate::limit::{AdaptiveLimit, Limit};
pub use crate::overload::{OverloadClassifier, OverloadFn, Signal, TimeoutOverload, overload_fn};
pub use crate::priority::{Priority, PriorityExtractor, PriorityFn, priority_fn};
#[allow(deprecated)]
pub use crate::retry::RetryBuilder;
pub use crate::retry::{
    Classify, ClassifyFn, CloneReplay, IdempotentIf, Replay, Retry, RetryDecision, RetryErrors,
    RetryHandle, RetryLayer, RetryLayerBuilder, RetryPolicy, RetrySnapshot, classify_fn,
};
#[cfg(feature = "http")]
pub use crate::retry::{HttpClassifier, HttpReplay};
pub use crate::service::PriorityQueue;
/// The refusal foundation's trait and answering layer (feature `http`).
#[cfg(feature = "http")]
pub use tower_refusal::{AnswerRefusalsLayer, Refusal};
