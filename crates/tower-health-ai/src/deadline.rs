//! One deadline per request, from its arrival: it covers the cache's wait for an identical
//! call, queueing, pacing, every attempt and every backoff.
//!
//! [`RequestDeadline`], just inside the RED metrics layer, stamps each request with its
//! [`Deadline`] (the builder's budget, shortened, never lengthened, by the client's
//! `grpc-timeout` or `x-request-timeout`, or by a [`Deadline`] the application put in the
//! extensions) and answers by it whatever happens below. [`EnforceDeadline`], just below
//! the fallback, ends the wait at the deadline with [`DeadlineExceeded`], which the
//! fallback answers (degraded) or the preset turns into 504 (gRPC 4 `DEADLINE_EXCEEDED`).
//! A miss's call already running at the upstream then runs on to its end, and its answer
//! goes to the cache.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use pin_project::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower::BoxError;
use tower_breaker::fallback::Capture;
use tower_breaker::{CaptureHead, MarkDegraded};
use tower_lru_cache::LateAnswer;
use tower_service::Service;

use crate::degraded::{DegradeReason, DegradedCounters, Uncounted};
use crate::policy::FallbackFn;
use crate::refusal::{is_grpc, refusal_response};

/// The header in which an HTTP client may shorten its deadline, in seconds (`2.5`).
pub const X_REQUEST_TIMEOUT: &str = "x-request-timeout";
/// The gRPC deadline header (`<at most 8 digits><H|M|S|m|u|n>`).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

// Looked up by name, not by string: a string is parsed into a name on every lookup.
const X_REQUEST_TIMEOUT_NAME: http::HeaderName = http::HeaderName::from_static(X_REQUEST_TIMEOUT);
const GRPC_TIMEOUT_NAME: http::HeaderName = http::HeaderName::from_static(GRPC_TIMEOUT);

/// The instant by which the preset answers a request, in the request's extensions.
///
/// The preset puts it there on arrival, so the upstream service can read it (for instance
/// to give its own client call a timeout that ends in time). An application may insert
/// one before the preset, to shorten a request's budget; it never lengthens it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    #[must_use]
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// The instant.
    #[must_use]
    pub fn instant(self) -> Instant {
        self.0
    }

    /// The time left until it, zero once passed.
    #[must_use]
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// The request's deadline passed before a real answer: 504 (gRPC 4
/// `DEADLINE_EXCEEDED`), or the fallback's answer, marked degraded, when one is
/// configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline exceeded: no answer within the request's deadline")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// A request's deadline: `now + budget`, shortened by the client's headers and by an
/// application's [`Deadline`] extension. The second value says whether anything
/// shortened it. `None` when the budget is too large to add to `now` (no deadline).
pub(crate) fn deadline_of(
    headers: &HeaderMap,
    extensions: &http::Extensions,
    budget: Duration,
    now: Instant,
) -> (Option<Instant>, bool) {
    let mut shortest = budget;
    if !headers.is_empty() {
        for asked in [
            headers.get(&X_REQUEST_TIMEOUT_NAME).and_then(parse_seconds),
            headers.get(&GRPC_TIMEOUT_NAME).and_then(parse_grpc_timeout),
        ]
        .into_iter()
        .flatten()
        {
            shortest = shortest.min(asked);
        }
    }
    let mut shortened = shortest < budget;
    let mut deadline = now.checked_add(shortest);
    if let Some(Deadline(set)) = extensions.get::<Deadline>()
        && deadline.is_none_or(|deadline| *set < deadline)
    {
        deadline = Some(*set);
        shortened = true;
    }
    (deadline, shortened)
}

/// `x-request-timeout`: seconds, digits with an optional fraction. Anything else
/// (signs, exponents, `NaN`, more than 32 characters, more seconds than a `Duration`
/// holds) is ignored.
fn parse_seconds(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return None;
    }
    let seconds: f64 = text.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// `grpc-timeout` as the gRPC spec writes it: 1 to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`). Anything else is ignored.
fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let (unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0_u64, |n, digit| n * 10 + u64::from(digit - b'0'));
    match unit {
        b'H' => Some(Duration::from_secs(amount * 3600)),
        b'M' => Some(Duration::from_secs(amount * 60)),
        b'S' => Some(Duration::from_secs(amount)),
        b'm' => Some(Duration::from_millis(amount)),
        b'u' => Some(Duration::from_micros(amount)),
        b'n' => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

/// How long after a request's deadline [`RequestDeadline`] answers it itself, when it
/// cannot answer from the fallback: the time the fallback below has to answer at the
/// deadline first (for the request whose call is running, and, through the cache, for
/// the identical requests waiting on it).
pub const DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// What the outermost deadline needs to answer a request itself.
#[derive(Clone)]
pub(crate) struct OnDeadline {
    /// The request budget.
    pub(crate) budget: Duration,
    /// The fallback, when degraded answers are on and one is configured.
    pub(crate) fallback: Option<FallbackFn>,
    pub(crate) counters: Arc<DegradedCounters>,
}

/// Stamps each request with its [`Deadline`] and answers by it, whatever the layers
/// below are doing (for example waiting for an identical request's call in the cache):
/// with the fallback's answer, marked degraded, when one is configured, else 504. A
/// request whose deadline the client (or the application) shortened is answered at its
/// deadline; any other at most [`DEADLINE_GRACE`] after it, as the layers below
/// answer it at the deadline first.
///
/// Built by the preset, just inside the RED metrics layer.
#[derive(Clone)]
pub struct RequestDeadline<S> {
    inner: S,
    on_deadline: OnDeadline,
}

impl<S> RequestDeadline<S> {
    pub(crate) fn new(inner: S, on_deadline: OnDeadline) -> Self {
        Self { inner, on_deadline }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for RequestDeadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestDeadline")
            .field("budget", &self.on_deadline.budget)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestDeadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<Either<ResBody, Full<Bytes>>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestDeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let (deadline, shortened) = deadline_of(
            request.headers(),
            request.extensions(),
            self.on_deadline.budget,
            Instant::now(),
        );
        let mut answer = None;
        if let Some(deadline) = deadline {
            request.extensions_mut().insert(Deadline(deadline));
            // Below, the fallback answers at the deadline of the request whose call is
            // running. Only a request whose own deadline is earlier than the one it may
            // be waiting behind (an identical request that arrived first, without a
            // shorter deadline) can need an answer from here: keep its head for the
            // fallback.
            if shortened && let Some(fallback) = &self.on_deadline.fallback {
                let checked = HeadSlot::new(deadline);
                request.extensions_mut().insert(checked.clone());
                answer = Some(Box::new(DeadlineAnswer {
                    parts: CaptureHead.capture(&request),
                    checked,
                    fallback: Arc::clone(fallback),
                    counters: Arc::clone(&self.on_deadline.counters),
                }));
            }
        }
        // With the head kept, answer at the deadline; else leave the fallback below
        // (which answers at the deadline of the call being waited on) a moment first.
        let deadline = match answer {
            Some(_) => deadline,
            None => {
                deadline.map(|deadline| deadline.checked_add(DEADLINE_GRACE).unwrap_or(deadline))
            }
        };
        RequestDeadlineFuture {
            grpc: is_grpc(request.headers()),
            inner: self.inner.call(request),
            deadline,
            sleep: None,
            answer,
        }
    }
}

/// What [`RequestDeadline`] answers with at the deadline, when a fallback may answer.
struct DeadlineAnswer {
    /// The head as it arrived.
    parts: http::request::Parts,
    /// The head once the request check has run (with the extensions it added), when the
    /// request got that far.
    checked: HeadSlot,
    fallback: FallbackFn,
    counters: Arc<DegradedCounters>,
}

/// Where the body layer leaves the request head once the request check has run, for
/// [`RequestDeadline`]'s fallback: a request extension, only on requests that
/// [`RequestDeadline`] answers itself at their deadline.
#[derive(Clone)]
pub(crate) struct HeadSlot {
    head: Arc<std::sync::OnceLock<http::request::Parts>>,
    /// The deadline at which [`RequestDeadline`] answers.
    answered_at: Instant,
}

impl HeadSlot {
    fn new(answered_at: Instant) -> Self {
        Self {
            head: Arc::default(),
            answered_at,
        }
    }

    /// Keeps a copy of `parts` (the first one only).
    pub(crate) fn fill(&self, parts: &http::request::Parts) {
        let _ = self.head.get_or_init(|| {
            let mut copy = parts.clone();
            copy.extensions.remove::<HeadSlot>();
            copy
        });
    }
}

/// The future of [`RequestDeadline`].
#[pin_project]
pub struct RequestDeadlineFuture<F> {
    #[pin]
    inner: F,
    deadline: Option<Instant>,
    /// Set when the inner future first waits: an answer ready at once (a cache hit)
    /// costs no timer. Boxed, as the answer is, to keep this future small: every layer
    /// above moves it, and a cache hit needs neither.
    sleep: Option<Pin<Box<Sleep>>>,
    answer: Option<Box<DeadlineAnswer>>,
    grpc: bool,
}

impl<F> fmt::Debug for RequestDeadlineFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestDeadlineFuture")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for RequestDeadlineFuture<F>
where
    F: Future<Output = Result<Response<Either<ResBody, Full<Bytes>>>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(mut output) = this.inner.poll(cx) {
            if let Ok(response) = &mut output {
                Uncounted::count(response);
            }
            return Poll::Ready(output);
        }
        std::task::ready!(poll_timer(this.sleep, *this.deadline, cx));
        *this.deadline = None;
        tracing::info!("request deadline passed while waiting below the stack");
        let error: BoxError = Box::new(DeadlineExceeded);
        if let Some(answer) = this.answer.take()
            && let DeadlineAnswer {
                parts,
                checked,
                fallback,
                counters,
            } = *answer
            && let Some(response) = fallback(checked.head.get().unwrap_or(&parts), &error)
        {
            counters.record(DegradeReason::Deadline);
            let mut response = response.map(|body| Either::Right(Full::new(body)));
            crate::policy::set_retry_after(&mut response, &error);
            response.mark_degraded();
            return Poll::Ready(Ok(response));
        }
        Poll::Ready(Ok(
            refusal_response::<Full<Bytes>>(&error, *this.grpc).map(Either::Right)
        ))
    }
}

/// Ends the call below at the request's [`Deadline`] with [`DeadlineExceeded`]: below the
/// fallback, so that the fallback answers it; above the retries, so that it covers every
/// attempt and backoff, the breaker, the queue and the pace.
///
/// A call that is running at the upstream when the deadline passes, for a request the
/// cache missed, is not thrown away: it has been billed, and its answer is the one the
/// next identical request needs. Its caller is answered at the deadline all the same,
/// and the call runs on in a task of its own, its slot of the in-flight limit still
/// held, for at most the call timeout from the deadline, its answer's body included (the
/// timeout itself ends a call at its head); a success is stored in the cache
/// ([`LateAnswer`]). No attempt starts after the deadline: a retry is refused at once,
/// without waiting for a slot ([`StartInTime`](crate::budget::StartInTime) and the
/// queue's wait).
///
/// A request that [`RequestDeadline`] answers itself at its deadline (a deadline the
/// client shortened, with a fallback) is left to it: the call such a request leads may be
/// shared, through the cache, with identical requests that have longer to wait.
#[derive(Clone, Debug)]
pub struct EnforceDeadline<S> {
    inner: S,
    /// How long a call may run on past its request's deadline, its answer's body
    /// included: the call timeout.
    run_on_for: Duration,
}

impl<S> EnforceDeadline<S> {
    pub(crate) fn new(inner: S, run_on_for: Duration) -> Self {
        Self { inner, run_on_for }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for EnforceDeadline<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<ResB>>;
    type Error = BoxError;
    type Future = EnforceDeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let deadline = request.extensions().get::<Deadline>().copied();
        // A request that `RequestDeadline` answers itself at its deadline (one the client
        // shortened, with a fallback) is not cut here: the call it leads may be shared,
        // through the cache, with identical requests whose deadlines are later, and must
        // not end at this one's. It ends when this request is answered and dropped, and
        // a request waiting on it then makes its own call.
        let answered_above = request
            .extensions()
            .get::<HeadSlot>()
            .is_some_and(|slot| deadline.is_some_and(|deadline| deadline.0 == slot.answered_at));
        // A request whose deadline has already passed is not sent: its call could not
        // answer in time, and might be billed. It is answered at once, by its timer.
        let passed = deadline.is_some_and(|deadline| deadline.0 <= Instant::now());
        let cut_here = deadline.filter(|_| passed || !answered_above);
        // A miss's call may outlive its caller: count its attempts at the upstream.
        let late = cut_here
            .filter(|_| !passed)
            .and_then(|_| request.extensions().get::<LateAnswer>().cloned())
            .map(|late| {
                let running = Running::default();
                request.extensions_mut().insert(running.clone());
                (late, running)
            });
        EnforceDeadlineFuture {
            inner: (!passed).then(|| Box::pin(self.inner.call(request))),
            deadline: deadline.map(Deadline::instant),
            late,
            run_on_for: self.run_on_for,
            sleep: cut_here.map(|deadline| Box::pin(sleep_until(deadline.0))),
        }
    }
}

/// How many attempts of one request are running at the upstream: put in the request's
/// extensions by [`EnforceDeadline`], counted by
/// [`CountCalls`](crate::count::CountCalls), next to the upstream.
#[derive(Clone, Debug, Default)]
pub(crate) struct Running(Arc<AtomicUsize>);

impl Running {
    /// Counts one attempt as running until the guard is dropped.
    pub(crate) fn start(&self) -> RunningGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        RunningGuard(Arc::clone(&self.0))
    }

    pub(crate) fn any(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// One running attempt; see [`Running`].
#[derive(Debug)]
pub(crate) struct RunningGuard(Arc<AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The future of [`EnforceDeadline`].
///
/// The call below is boxed, so that it can be moved into a task of its own at the
/// deadline (a miss's call: the allocation is nothing next to it).
pub struct EnforceDeadlineFuture<F> {
    /// `None` when the deadline had passed before the call, or once it is handed on.
    inner: Option<Pin<Box<F>>>,
    /// The request's deadline, which the answer's body must end by too.
    deadline: Option<Instant>,
    /// For a miss: where its answer goes if it comes after the deadline, and whether an
    /// attempt is running at the upstream.
    late: Option<(LateAnswer, Running)>,
    /// How long the call may run on past the deadline, body included.
    run_on_for: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<F> fmt::Debug for EnforceDeadlineFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnforceDeadlineFuture")
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for EnforceDeadlineFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>> + Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<Response<DeadlineBody<ResB>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(inner) = &mut this.inner
            && let Poll::Ready(result) = inner.as_mut().poll(cx)
        {
            this.inner = None;
            let deadline = this.deadline;
            return Poll::Ready(match result {
                Ok(response) => Ok(response.map(|body| DeadlineBody::new(body, deadline))),
                Err(e) => Err(e.into()),
            });
        }
        match &mut this.sleep {
            Some(sleep) => {
                std::task::ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
                if let (Some(inner), Some((late, running))) = (this.inner.take(), this.late.take())
                    && running.any()
                    && let Ok(runtime) = tokio::runtime::Handle::try_current()
                {
                    tracing::debug!("deadline passed with the call running: it runs on");
                    runtime.spawn(run_on(inner, running, late, this.run_on_for));
                }
                Poll::Ready(Err(Box::new(DeadlineExceeded)))
            }
            None => Poll::Pending,
        }
    }
}

/// The body of an answer that came in time, ended at the request's [`Deadline`] if it is
/// still arriving then: an upstream that sends its head at once and then its body
/// slowly, or forever, holds the answer no longer than its request may wait. Past the
/// deadline it ends with [`DeadlineExceeded`] as its error (the connection is reset:
/// the client sees an incomplete answer, never a complete-looking one); the cache keeps
/// nothing of it. A body that is all there is read as it is, with no timer.
#[pin_project]
pub struct DeadlineBody<B> {
    #[pin]
    inner: B,
    deadline: Option<Instant>,
    /// Set when the body first has nothing ready.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Ended at the deadline.
    cut: bool,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, deadline: Option<Instant>) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
            cut: false,
        }
    }
}

/// A body made here (the fallback's answer): all there, no deadline to keep.
impl<B: From<Bytes>> From<Bytes> for DeadlineBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self::new(B::from(bytes), None)
    }
}

impl<B> fmt::Debug for DeadlineBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineBody")
            .field("deadline", &self.deadline)
            .field("cut", &self.cut)
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.cut {
            return Poll::Ready(None);
        }
        // Once the body has waited (the timer is set), the deadline is checked before
        // each frame: a body that has more ready at every poll from then on is still
        // arriving, and ends at the deadline all the same.
        let passed = this
            .sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if !passed {
            if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
                return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
            }
            std::task::ready!(poll_timer(this.sleep, *this.deadline, cx));
        }
        *this.cut = true;
        tracing::info!("request deadline passed while the answer's body was arriving");
        Poll::Ready(Some(Err(Box::new(DeadlineExceeded))))
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.cut {
            http_body::SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// Polls the timer for `deadline`, made when first polled (so that an answer ready at
/// once costs none): ready once the deadline has passed, never without one.
fn poll_timer(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let Some(deadline) = deadline else {
        return Poll::Pending;
    };
    timer
        .get_or_insert_with(|| Box::pin(sleep_until(deadline)))
        .as_mut()
        .poll(cx)
}

/// A call whose caller was answered at its deadline, run to its end, for `limit` at
/// most (its answer's body included: the call timeout ends a call only at its head): a
/// success goes to the cache.
///
/// It ends as soon as no attempt is `running` at the upstream: past the deadline none
/// starts, so a failed attempt's retry would only be refused after its backoff (or the
/// upstream's `Retry-After`), while the requests waiting for this call's answer wait.
async fn run_on<F, ResB, E>(
    mut call: Pin<Box<F>>,
    running: Running,
    late: LateAnswer,
    limit: Duration,
) where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: http_body::Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let run = async {
        let ended = std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready(result.ok()),
            Poll::Pending if !running.any() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        let Some(answer) = ended.await else {
            return false;
        };
        late.store(answer).await
    };
    match tokio::time::timeout(limit, run).await {
        Ok(stored) => tracing::debug!(stored, "a call that outlived its caller ended"),
        Err(_) => tracing::debug!("a call that outlived its caller ran out of time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    /// A body that waits once, then always has another chunk ready.
    struct Gushing {
        waited: bool,
    }

    impl http_body::Body for Gushing {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            if !self.waited {
                self.waited = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_arriving_at_the_deadline_ends_even_if_it_never_waits_again() {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut body = DeadlineBody::new(Gushing { waited: false }, Some(deadline));
        // Before the deadline, it flows.
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"x")));
        tokio::time::advance(Duration::from_secs(3)).await;
        // Past it, the body ends with the deadline's error, however fast it comes.
        let mut frames = 0;
        let error = loop {
            match body.frame().await {
                Some(Ok(_)) if frames < 1_000 => frames += 1,
                Some(Ok(_)) => panic!("still arriving 1000 frames past the deadline"),
                Some(Err(error)) => break error,
                None => panic!("ended as if complete"),
            }
        };
        assert!(error.is::<DeadlineExceeded>());
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn headers_shorten_never_lengthen_and_garbage_is_ignored() {
        let now = Instant::now();
        let budget = Duration::from_secs(150);
        let of = |pairs: &[(&'static str, &str)]| {
            deadline_of(&headers(pairs), &http::Extensions::new(), budget, now)
        };
        assert_eq!(of(&[]), (Some(now + budget), false));
        assert_eq!(
            of(&[(X_REQUEST_TIMEOUT, "2.5")]),
            (Some(now + Duration::from_millis(2500)), true)
        );
        assert_eq!(
            of(&[(X_REQUEST_TIMEOUT, "9"), (GRPC_TIMEOUT, "3S")]),
            (Some(now + Duration::from_secs(3)), true)
        );
        for garbage in [
            "",
            "-1",
            "1e3",
            "inf",
            "NaN",
            ".",
            "1.2.3",
            "9".repeat(33).as_str(),
        ] {
            assert_eq!(
                of(&[(X_REQUEST_TIMEOUT, garbage)]),
                (Some(now + budget), false)
            );
        }
        for garbage in ["S", "123456789S", "5X", "-5S", "99999999H"] {
            assert_eq!(of(&[(GRPC_TIMEOUT, garbage)]), (Some(now + budget), false));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_largest_budgets_and_headers_never_panic() {
        let now = Instant::now();
        let none = http::Extensions::new();
        assert_eq!(
            deadline_of(&HeaderMap::new(), &none, Duration::MAX, now),
            (None, false)
        );
        let (deadline, _) = deadline_of(
            &headers(&[
                (GRPC_TIMEOUT, "99999999H"),
                (X_REQUEST_TIMEOUT, "18446744073709551615"),
            ]),
            &none,
            Duration::MAX,
            now,
        );
        assert_eq!(
            deadline,
            now.checked_add(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(
            deadline_of(&HeaderMap::new(), &none, Duration::ZERO, now),
            (Some(now), false)
        );
        let mut set = http::Extensions::new();
        set.insert(Deadline::at(now + Duration::from_secs(1)));
        assert_eq!(
            deadline_of(&HeaderMap::new(), &set, Duration::MAX, now),
            (Some(now + Duration::from_secs(1)), true)
        );
        assert_eq!(
            deadline_of(&HeaderMap::new(), &set, Duration::ZERO, now),
            (Some(now), false)
        );
    }
}
