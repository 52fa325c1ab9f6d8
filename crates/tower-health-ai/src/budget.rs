//! Not starting a call that cannot end in time.
//!
//! An AI call takes tens of seconds, and a provider bills a call once it runs, whether or
//! not anyone still waits for its answer. A request whose deadline leaves less time than
//! the upstream's calls take would spend a slot and a billed call on an answer that comes
//! too late, while requests behind it wait. So the preset learns how long the upstream's
//! successful calls take ([`CallTimes`]: the median of the last 64), and starts a call
//! only when it is more likely than not to end in time:
//!
//! - [`StartInTime`], just above the call timeout, does not start a call with less time
//!   left than the median; the request gets [`DeadlineExceeded`] at once, which the
//!   fallback answers as degraded (reason `deadline`). The same check runs once more
//!   above the global pace, so that such a request takes no token of the pace either;
//! - the queue stops a request waiting at the point where its call could no longer end
//!   in time ([`PresetPriority`](crate::PresetPriority)'s
//!   [`max_wait`](tower_priority_queue::PriorityExtractor::max_wait)), so that it is
//!   answered then rather than at its deadline: as the queue's timeout (reason
//!   `queue_timeout`, or 503 without a fallback).
//!
//! Until ten calls have succeeded nothing is known and every call starts. An estimate
//! with no new success for five minutes (or four times the estimate, if longer) is
//! forgotten, window and all, so a deadline shorter than every call cannot lock the
//! upstream out for good: calls start again until ten new successes teach a new
//! estimate. The estimate is capped at half the request budget, so that a run of slow
//! calls (one user's enormous prompts, say) cannot stop every other request from
//! waiting; a run of instant answers only turns the check off.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project::pin_project;
use tokio::time::Instant;
use tower::BoxError;
use tower_service::Service;

use crate::deadline::{Deadline, DeadlineExceeded};

/// How many successful calls the estimate remembers.
const WINDOW: usize = 64;
/// How many it needs before it says anything.
const MIN_SAMPLES: usize = 10;
/// The estimate is the time within which `1 / QUANTILE` of the calls ended: the median.
const QUANTILE: usize = 2;
/// An estimate with no new success for this long (or four times the estimate) is
/// forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// How long the upstream's successful calls take: the median of the last 64, once ten
/// are known.
#[derive(Debug)]
pub(crate) struct CallTimes {
    recent: Mutex<Recent>,
    /// The estimate never exceeds this (half the request budget): a run of slow calls,
    /// one user's enormous prompts say, cannot stop every other request from waiting.
    cap: Duration,
    /// The estimate in nanoseconds, 0 while unknown.
    estimate: AtomicU64,
    /// When the last success was recorded, in nanoseconds since `born`.
    last: AtomicU64,
    born: Instant,
}

#[derive(Debug, Default)]
struct Recent {
    times: Vec<Duration>,
    next: usize,
}

impl Default for CallTimes {
    fn default() -> Self {
        Self::capped(Duration::MAX)
    }
}

impl CallTimes {
    /// An estimate that never exceeds `cap`.
    pub(crate) fn capped(cap: Duration) -> Self {
        Self {
            recent: Mutex::default(),
            cap,
            estimate: AtomicU64::new(0),
            last: AtomicU64::new(0),
            born: Instant::now(),
        }
    }
}

/// How long an estimate lasts with no new success.
fn forget_after(estimate: Duration) -> Duration {
    FORGET_AFTER.max(estimate.saturating_mul(4))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl CallTimes {
    /// Records a successful call that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if self.forgotten() {
            // A forgotten estimate starts again from nothing: the old window must not
            // come back with the first new success.
            recent.times.clear();
            recent.next = 0;
            self.estimate.store(0, Ordering::Relaxed);
        }
        let next = recent.next;
        if recent.times.len() < WINDOW {
            recent.times.push(took);
        } else {
            recent.times[next] = took;
        }
        recent.next = (next + 1) % WINDOW;
        if recent.times.len() >= MIN_SAMPLES {
            let mut sorted = [Duration::ZERO; WINDOW];
            let sorted = &mut sorted[..recent.times.len()];
            sorted.copy_from_slice(&recent.times);
            let k = sorted.len() / QUANTILE;
            let (_, quantile, _) = sorted.select_nth_unstable(k);
            self.estimate
                .store(nanos(*quantile).max(1), Ordering::Relaxed);
        }
        self.last
            .store(nanos(self.born.elapsed()), Ordering::Relaxed);
    }

    /// The time a call is likely to need (at most the cap); `None` while unknown or
    /// forgotten.
    pub(crate) fn likely_need(&self) -> Option<Duration> {
        let estimate = self.estimate()?;
        (!self.forgotten()).then_some(estimate.min(self.cap))
    }

    fn estimate(&self) -> Option<Duration> {
        match self.estimate.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// Whether the estimate went too long without a new success.
    fn forgotten(&self) -> bool {
        let Some(estimate) = self.estimate() else {
            return false;
        };
        let since = self
            .born
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.last.load(Ordering::Relaxed)));
        since >= forget_after(estimate)
    }

    /// How much longer a request with `deadline` may wait before its call starts, and
    /// still end in time; `None` while nothing is known.
    pub(crate) fn slack(&self, deadline: Deadline) -> Option<Duration> {
        self.likely_need()
            .map(|need| deadline.remaining().saturating_sub(need))
    }
}

/// Does not start a call that cannot end by the request's [`Deadline`]: when the time left
/// is shorter than the upstream's median call (see [not starting what cannot
/// end](crate::HealthAiStack#not-starting-what-cannot-end)), it answers
/// [`DeadlineExceeded`] at once; it learns from every call that succeeds (`2xx`).
pub struct StartInTime<S> {
    inner: S,
    times: Arc<CallTimes>,
    enabled: bool,
    /// Whether this one times the calls (the one next to the upstream) or only checks
    /// (the one above the global pace, so that a call that cannot end takes no token).
    learn: bool,
}

impl<S: Clone> Clone for StartInTime<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            times: Arc::clone(&self.times),
            enabled: self.enabled,
            learn: self.learn,
        }
    }
}

impl<S> fmt::Debug for StartInTime<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartInTime")
            .field("likely_need", &self.times.likely_need())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl<S> StartInTime<S> {
    pub(crate) fn new(inner: S, times: Arc<CallTimes>, enabled: bool, learn: bool) -> Self {
        Self {
            inner,
            times,
            enabled,
            learn,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for StartInTime<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = StartInTimeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let deadline = request.extensions().get::<Deadline>().copied();
        // Past its deadline (a retry of a call that ran on after its caller was
        // answered), nothing starts, whatever is known of the upstream.
        if deadline.is_some_and(|deadline| deadline.remaining().is_zero()) {
            return StartInTimeFuture {
                inner: None,
                started: Instant::now(),
                times: None,
            };
        }
        if self.enabled
            && let Some(deadline) = deadline
            && let Some(need) = self.times.likely_need()
        {
            let left = deadline.remaining();
            // Not calling after `poll_ready` is allowed: a reservation the inner service
            // made (a `ConcurrencyLimit` permit, a `Buffer` slot) stays with this
            // instance, for its next call or until it is dropped with the request.
            if left < need {
                tracing::info!(
                    reason = "deadline",
                    left_secs = left.as_secs_f64(),
                    need_secs = need.as_secs_f64(),
                    "call not started: the deadline leaves less time than a call needs"
                );
                return StartInTimeFuture {
                    inner: None,
                    started: Instant::now(),
                    times: None,
                };
            }
        }
        StartInTimeFuture {
            inner: Some(self.inner.call(request)),
            started: Instant::now(),
            times: self.learn.then(|| Arc::clone(&self.times)),
        }
    }
}

/// The future of [`StartInTime`].
#[pin_project]
pub struct StartInTimeFuture<F> {
    /// `None` when the call was not started.
    #[pin]
    inner: Option<F>,
    started: Instant,
    times: Option<Arc<CallTimes>>,
}

impl<F> fmt::Debug for StartInTimeFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartInTimeFuture")
            .field("started", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for StartInTimeFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Box::new(DeadlineExceeded)));
        };
        let result = ready!(inner.poll(cx));
        if let (Ok(response), Some(times)) = (&result, this.times.take())
            && response.status().is_success()
        {
            times.record(this.started.elapsed());
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_known_before_ten_successes() {
        let times = CallTimes::default();
        for _ in 0..9 {
            times.record(secs(60));
        }
        assert_eq!(times.likely_need(), None);
        times.record(secs(60));
        assert_eq!(times.likely_need(), Some(secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_is_the_median_of_the_last_64() {
        let times = CallTimes::default();
        // 100 calls of 1..=100 s: the window holds 37..=100, whose median is 69 s.
        for s in 1..=100 {
            times.record(secs(s));
        }
        assert_eq!(times.likely_need(), Some(secs(69)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_estimate_with_no_new_success_is_forgotten() {
        let times = CallTimes::default();
        for _ in 0..10 {
            times.record(secs(100));
        }
        tokio::time::advance(secs(399)).await;
        assert_eq!(times.likely_need(), Some(secs(100)));
        tokio::time::advance(secs(1)).await;
        assert_eq!(times.likely_need(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_estimate_starts_again_from_nothing() {
        let times = CallTimes::default();
        for _ in 0..64 {
            times.record(secs(100));
        }
        tokio::time::advance(secs(400)).await;
        assert_eq!(times.likely_need(), None);
        // The old window does not come back with the first new success: nine quick
        // calls are not ten, the tenth is the new median.
        for _ in 0..9 {
            times.record(secs(5));
        }
        assert_eq!(times.likely_need(), None);
        times.record(secs(5));
        assert_eq!(times.likely_need(), Some(secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_never_exceeds_its_cap() {
        let times = CallTimes::capped(secs(75));
        for _ in 0..10 {
            times.record(secs(140));
        }
        assert_eq!(times.likely_need(), Some(secs(75)));
    }

    #[tokio::test(start_paused = true)]
    async fn slack_is_the_time_left_less_a_call() {
        let times = CallTimes::default();
        let deadline = Deadline::at(Instant::now() + secs(150));
        assert_eq!(times.slack(deadline), None);
        for _ in 0..10 {
            times.record(secs(50));
        }
        assert_eq!(times.slack(deadline), Some(secs(100)));
        tokio::time::advance(secs(120)).await;
        assert_eq!(times.slack(deadline), Some(Duration::ZERO));
    }
}
