//! The queue over inner services whose readiness is a reservation (tower's
//! `ConcurrencyLimit` and `Buffer`, tonic's `Channel`): the instance that was polled ready
//! is the one that is called, and a request whose inner service never becomes ready gives
//! its slot back after its level's maximum wait.

#![cfg(feature = "http")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::buffer::Buffer;
use tower::limit::ConcurrencyLimit;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_priority_queue::{Priority, PriorityQueueLayer, QueueError};

type Request = http::Request<&'static str>;

fn request() -> Request {
    http::Request::new("call")
}

/// An upstream that answers after `work`.
fn upstream(
    work: Duration,
) -> impl Service<Request, Response = &'static str, Error = Infallible, Future: Send>
+ Clone
+ Send
+ use<> {
    service_fn(move |request: Request| async move {
        tokio::time::sleep(work).await;
        Ok::<_, Infallible>(*request.body())
    })
}

/// Every call made through one long-lived service instance completes, one after the other.
async fn both_complete<S>(mut service: S)
where
    S: Service<Request, Response = &'static str, Error = BoxError>,
    S::Future: Send + 'static,
{
    let first = tokio::spawn(service.ready().await.expect("ready").call(request()));
    let second = tokio::spawn(service.ready().await.expect("ready").call(request()));
    let both = async {
        (
            first.await.expect("no panic"),
            second.await.expect("no panic"),
        )
    };
    let (first, second) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("both calls complete, one after the other, well within 10 s");
    assert_eq!(first.expect("answered"), "call");
    assert_eq!(second.expect("answered"), "call");
}

#[tokio::test(start_paused = true)]
async fn over_a_concurrency_limit_the_second_call_completes() {
    let inner = ConcurrencyLimit::new(upstream(Duration::from_millis(100)), 1);
    let service = PriorityQueueLayer::builder()
        .max_in_flight(2)
        .build()
        .layer(inner);
    both_complete(service).await;
}

#[tokio::test(start_paused = true)]
async fn over_a_one_slot_buffer_back_to_back_calls_complete() {
    let inner = Buffer::new(upstream(Duration::from_millis(100)), 1);
    let service = PriorityQueueLayer::builder()
        .max_in_flight(2)
        .build()
        .layer(inner);
    both_complete(service).await;
}

#[tokio::test(start_paused = true)]
async fn tower_concurrency_limit_in_the_queues_place_passes_the_same_test() {
    let inner = ConcurrencyLimit::new(upstream(Duration::from_millis(100)), 1);
    let service = ConcurrencyLimit::new(inner, 2).map_err(BoxError::from);
    both_complete(service).await;
}

/// An inner service that is never ready.
#[derive(Clone, Debug)]
struct NeverReady;

impl Service<Request> for NeverReady {
    type Response = &'static str;
    type Error = Infallible;
    type Future = std::future::Ready<Result<&'static str, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }

    fn call(&mut self, _request: Request) -> Self::Future {
        std::future::ready(Ok("never"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_inner_readiness_gives_the_slot_back_after_the_max_wait() {
    let layer = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .max_wait_all(Duration::from_secs(5))
        .build();
    let service = layer.layer(NeverReady);
    let handle = service.handle();
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(3600),
        service.clone().oneshot(request()),
    )
    .await
    .expect("refused within the max wait, not held forever")
    .expect_err("the inner service never became ready");
    let error = error
        .downcast_ref::<QueueError>()
        .unwrap_or_else(|| panic!("a queue refusal, not {error}"));
    assert!(
        matches!(
            error,
            QueueError::QueueTimeout {
                priority: Priority::Normal,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(handle.snapshot().processing, 0, "the slot is free again");
    // A request that waited in the room for the slot has its whole wait bounded too.
    let first = tokio::spawn(service.clone().oneshot(request()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second_started = Instant::now();
    let second = service.clone().oneshot(request()).await;
    assert!(second.is_err());
    assert!(first.await.expect("no panic").is_err());
    assert!(second_started.elapsed() <= Duration::from_secs(5));
    assert_eq!(handle.snapshot().processing, 0);
}

/// A reservation-style inner service: `poll_ready` reserves one of `capacity` permits for
/// this instance after a delay chosen by the test, and `call` spends the reservation.
struct Reserving {
    semaphore: Arc<Semaphore>,
    delays: Arc<Vec<u64>>,
    next_delay: Arc<AtomicUsize>,
    acquiring: Option<Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>>,
    reserved: Option<OwnedSemaphorePermit>,
}

impl Clone for Reserving {
    fn clone(&self) -> Self {
        // A clone has no reservation of its own, as with tower's ConcurrencyLimit.
        Reserving {
            semaphore: Arc::clone(&self.semaphore),
            delays: Arc::clone(&self.delays),
            next_delay: Arc::clone(&self.next_delay),
            acquiring: None,
            reserved: None,
        }
    }
}

impl Service<Request> for Reserving {
    type Response = &'static str;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.reserved.is_some() {
            return Poll::Ready(Ok(()));
        }
        let acquiring = self.acquiring.get_or_insert_with(|| {
            let index = self.next_delay.fetch_add(1, Ordering::Relaxed);
            let delay = self.delays[index % self.delays.len()];
            let semaphore = Arc::clone(&self.semaphore);
            Box::pin(async move {
                // Queued for a permit from the first poll on, like tower's
                // ConcurrencyLimit; the permit then takes a while to be ready to use.
                let permit = semaphore.acquire_owned().await.expect("never closed");
                tokio::time::sleep(Duration::from_millis(delay)).await;
                permit
            })
        });
        let permit = std::task::ready!(acquiring.as_mut().poll(cx));
        self.acquiring = None;
        self.reserved = Some(permit);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let permit = self.reserved.take();
        assert!(permit.is_some(), "called without a reservation");
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(permit);
            Ok(*request.body())
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random readiness delays and random cancellation: every request completes, is refused
    /// or is cancelled, and no slot and no reservation is held afterwards.
    #[test]
    fn reservations_are_never_stranded(
        capacity in 1_usize..4,
        max_in_flight in 1_usize..5,
        delays in prop::collection::vec(0_u64..300, 1..16),
        cancel_after in prop::collection::vec(prop::option::of(0_u64..400), 1..24),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let semaphore = Arc::new(Semaphore::new(capacity));
            let inner = Reserving {
                semaphore: Arc::clone(&semaphore),
                delays: Arc::new(delays),
                next_delay: Arc::new(AtomicUsize::new(0)),
                acquiring: None,
                reserved: None,
            };
            let mut service = PriorityQueueLayer::builder()
                .max_in_flight(max_in_flight)
                .capacity(64)
                .max_wait_all(Duration::from_secs(30))
                .build()
                .layer(inner);
            let handle = service.handle();
            let mut tasks = Vec::new();
            for cancel in &cancel_after {
                let future: Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>> =
                    Box::pin(service.ready().await.expect("ready").call(request()));
                let cancel = *cancel;
                tasks.push(tokio::spawn(async move {
                    match cancel {
                        Some(after) => tokio::time::timeout(Duration::from_millis(after), future)
                            .await
                            .ok(),
                        None => Some(future.await),
                    }
                }));
            }
            let results = tokio::time::timeout(Duration::from_secs(60), async {
                let mut results = Vec::new();
                for task in tasks {
                    results.push(task.await.expect("no panic"));
                }
                results
            })
            .await
            .expect("every request ends well within its max wait");
            for (result, cancel) in results.iter().zip(&cancel_after) {
                if cancel.is_none() {
                    let result = result.as_ref().expect("not cancelled");
                    if let Err(error) = result {
                        assert!(error.downcast_ref::<QueueError>().is_some(), "{error}");
                    }
                }
            }
            drop(service);
            let snapshot = handle.snapshot();
            assert_eq!(snapshot.processing, 0, "no slot is held");
            assert_eq!(snapshot.queue_size, 0, "nobody waits");
            assert_eq!(semaphore.available_permits(), capacity, "no reservation is held");
        });
    }
}
