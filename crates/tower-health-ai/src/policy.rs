//! How the preset's layers judge each other's outcomes: which errors are local refusals
//! (not upstream failures), what the breaker counts, what the retry layer retries, and
//! what the fallback answers.

use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};
use tower::BoxError;
use tower_breaker::fallback::{FallbackCause, FallbackPolicy, FallbackRequest};
use tower_breaker::{BreakerError, DefaultClassifier, NotDegraded, Verdict};
use tower_lru_cache::CacheError;
use tower_priority_queue::{
    HttpClassifier, HttpOverload, OverloadClassifier, QueueError, RetryDecision, Signal,
};
use tower_service::Service;
use tower_token_bucket::RateLimitError;

use crate::body::RequestRejected;
use crate::deadline::DeadlineExceeded;
use crate::degraded::{DegradeReason, DegradedCounters, Uncounted};

/// Whether an error is a refusal made by this suite's own layers (rate limited, queue
/// full or timed out, deadline passed, malformed input): about local load or the client,
/// never about the upstream.
#[must_use]
pub fn is_local_refusal(error: &BoxError) -> bool {
    error.is::<QueueError>()
        || error.is::<RateLimitError>()
        || error.is::<RequestRejected>()
        || error.is::<CacheError>()
        || error.is::<DeadlineExceeded>()
}

/// Whether an error says that our capacity could not give a real answer in time: the
/// queue's refusals (waiting room full, displaced, its level's maximum wait passed), the
/// global pace's maximum wait passed, or the request's deadline passed. Not the per-user
/// limit (that is the client's excess) nor a malformed priority (the client's error).
#[must_use]
pub fn is_capacity_refusal(error: &BoxError) -> bool {
    DegradeReason::of(error).is_capacity()
}

/// The preset breaker's classifier: local refusals are ignored (they say nothing about
/// the upstream), and so is the upstream's own backpressure (a `429`, or a `503` with
/// `Retry-After`: the upstream is busy, not broken; the retry layer waits as it asks);
/// everything else as [`DefaultClassifier`] (5xx, errors and the call timeout are
/// failures, 4xx successes).
#[derive(Debug, Clone, Copy, Default)]
pub struct BreakerClassifier {
    default: DefaultClassifier,
}

impl<B> tower_breaker::Classify<Response<B>> for BreakerClassifier {
    fn classify(&self, result: &Result<Response<B>, BoxError>) -> Verdict {
        match result {
            Err(error) if is_local_refusal(error) => Verdict::Ignored,
            Ok(response) if is_backpressure(response) => Verdict::Ignored,
            other => self.default.classify(other),
        }
    }
}

/// Whether the upstream answered "not now": a `429`, or a `503` that says when to come
/// back (a valid `Retry-After` or `retry-after-ms`, read as the queue and the retry layer
/// read them). A `503` without one is an outage like any other 5xx.
fn is_backpressure<B>(response: &Response<B>) -> bool {
    let status = response.status();
    status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE
            && tower_priority_queue::retry::retry_after(
                response.headers(),
                std::time::SystemTime::now(),
            )
            .is_some())
}

/// Whether a trailers-only gRPC answer carries a failure (`grpc-status` other than 0).
fn is_grpc_failure<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() != b"0")
}

/// The preset retry classifier: never retries a local refusal or an open circuit (an open
/// circuit stops retries at once); the breaker's call timeout
/// ([`BreakerError::Timeout`]) is a timed-out attempt
/// ([`RetryDecision::RetryIfIdempotentTimedOut`]: retried only where the layer retries
/// timeouts); everything else as [`HttpClassifier`]: a refused connection, `429` and
/// `503` are retried for any request (after their `Retry-After`), other errors and 5xx
/// only for idempotent requests, a `504` like a timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryClassifier {
    http: HttpClassifier,
}

impl<B> tower_priority_queue::Classify<Response<B>> for RetryClassifier {
    fn classify(&self, result: &Result<Response<B>, BoxError>) -> RetryDecision {
        match result {
            Err(error) if is_local_refusal(error) => RetryDecision::Return,
            Err(error) => match error.downcast_ref::<BreakerError>() {
                Some(breaker) if breaker.is_circuit_open() => RetryDecision::Return,
                Some(breaker) if breaker.is_timeout() => RetryDecision::RetryIfIdempotentTimedOut,
                _ => self.http.classify(result),
            },
            Ok(_) => self.http.classify(result),
        }
    }
}

/// The preset fallback policy: the fallback answers upstream failures (after retries), an
/// open circuit and call timeouts, and, unless degradation is off, the
/// [capacity refusals](is_capacity_refusal); other local refusals reach the client as
/// refusals, with their status and `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct FallbackOnUpstreamFailure {
    degrade_on_overload: bool,
}

impl FallbackOnUpstreamFailure {
    /// The policy; `degrade_on_overload` says whether capacity refusals fall back too.
    #[must_use]
    pub const fn new(degrade_on_overload: bool) -> Self {
        Self {
            degrade_on_overload,
        }
    }
}

impl Default for FallbackOnUpstreamFailure {
    /// Capacity refusals fall back.
    fn default() -> Self {
        Self::new(true)
    }
}

impl<B> FallbackPolicy<Response<B>> for FallbackOnUpstreamFailure {
    fn should_fall_back(&self, result: &Result<Response<B>, BoxError>) -> bool {
        match result {
            // A final 5xx answer, or the upstream still overloaded after the retries.
            Ok(response) => {
                response.status().is_server_error()
                    || is_backpressure(response)
                    || is_grpc_failure(response)
            }
            Err(error) if is_capacity_refusal(error) => self.degrade_on_overload,
            Err(error) => !is_local_refusal(error),
        }
    }
}

/// How long before a real answer is likely, for a degraded answer's `Retry-After`, when
/// the cause does not say: a deadline that passed.
pub(crate) const DEGRADED_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The longest `Retry-After` a degraded answer carries, whatever the upstream asked for.
pub(crate) const MAX_DEGRADED_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Gives a degraded answer a `Retry-After` (whole seconds, rounded up, at least 1) when
/// its cause says when a real answer is likely (the queue's and the pace's estimates, the
/// time the circuit stays open, or [`DEGRADED_RETRY_AFTER`] for a deadline), at most
/// 5 minutes, unless the fallback set one itself.
pub(crate) fn set_retry_after<B>(response: &mut Response<B>, error: &BoxError) {
    if response.headers().contains_key(RETRY_AFTER) {
        return;
    }
    let after = if let Some(error) = error.downcast_ref::<QueueError>() {
        error.retry_after()
    } else if let Some(error) = error.downcast_ref::<RateLimitError>() {
        error.retry_after()
    } else if let Some(error) = error.downcast_ref::<BreakerError>() {
        error.retry_after()
    } else if error.is::<DeadlineExceeded>() {
        Some(DEGRADED_RETRY_AFTER)
    } else if let Some(error) = error.downcast_ref::<UpstreamAnswered>() {
        error.retry_after.or(Some(DEGRADED_RETRY_AFTER))
    } else {
        None
    };
    if let Some(after) = after {
        // A broken or hostile upstream's wait is not passed on as it is.
        let after = after.min(MAX_DEGRADED_RETRY_AFTER);
        let secs = after
            .as_secs()
            .saturating_add(u64::from(after.subsec_nanos() > 0))
            .max(1);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// The function that answers for a failed upstream call: it sees the request's head and
/// the error, and answers with a response, or `None` to let the error through.
pub type FallbackFn =
    Arc<dyn Fn(&http::request::Parts, &BoxError) -> Option<Response<Bytes>> + Send + Sync>;

/// The preset's fallback service: calls the user's [`FallbackFn`], or hands the error
/// back when there is none or it declines.
#[derive(Clone)]
pub struct PresetFallback {
    answer: Option<FallbackFn>,
    counters: Arc<DegradedCounters>,
}

impl PresetFallback {
    pub(crate) fn new(answer: Option<FallbackFn>, counters: Arc<DegradedCounters>) -> Self {
        Self { answer, counters }
    }
}

impl fmt::Debug for PresetFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresetFallback")
            .field("answer", &self.answer.is_some())
            .finish()
    }
}

impl<B> Service<FallbackRequest<http::request::Parts, Response<B>>> for PresetFallback
where
    B: From<Bytes>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Ready<Result<Response<B>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(
        &mut self,
        request: FallbackRequest<http::request::Parts, Response<B>>,
    ) -> Self::Future {
        let (error, answered): (BoxError, _) = match request.cause {
            FallbackCause::Error(error) => (error, None),
            FallbackCause::Response(response) => {
                (Box::new(UpstreamAnswered::of(&response)), Some(response))
            }
            _ => (Box::new(UnknownCause), None),
        };
        let answer = self
            .answer
            .as_ref()
            .and_then(|answer| answer(&request.context, &error));
        ready(match (answer, answered) {
            (Some(response), _) => {
                let mut response = response.map(B::from);
                set_retry_after(&mut response, &error);
                // Counted as it leaves the stack, once per client that gets it.
                response.extensions_mut().insert(Uncounted::new(
                    DegradeReason::of(&error),
                    Arc::clone(&self.counters),
                ));
                Ok(response)
            }
            // No fallback answer: the upstream's own answer goes through, unmarked.
            (None, Some(mut response)) => {
                response.extensions_mut().insert(NotDegraded);
                Ok(response)
            }
            (None, None) => Err(error),
        })
    }
}

/// The upstream's final answer was a failure (a 5xx) or still an overload (a 429, or a
/// 503 with `Retry-After`) after the retries: what the fallback function sees as the
/// error in that case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamAnswered {
    /// The upstream's status.
    pub status: StatusCode,
    /// The wait it asked for, if it said.
    pub retry_after: Option<Duration>,
}

impl UpstreamAnswered {
    fn of<B>(response: &Response<B>) -> Self {
        Self {
            status: response.status(),
            retry_after: tower_priority_queue::retry::retry_after(
                response.headers(),
                std::time::SystemTime::now(),
            ),
        }
    }

    /// Whether the upstream answered "not now" (429, or 503 with a wait) rather than
    /// failed.
    #[must_use]
    pub fn is_overload(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS
            || (self.status == StatusCode::SERVICE_UNAVAILABLE && self.retry_after.is_some())
    }
}

impl fmt::Display for UpstreamAnswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_overload() {
            write!(f, "the upstream is overloaded ({})", self.status)
        } else {
            write!(f, "the upstream answered {}", self.status)
        }
    }
}

impl std::error::Error for UpstreamAnswered {}

/// The preset queue's overload classifier: the upstream's `429` and `503` (with their
/// `Retry-After` or `retry-after-ms`) as [`HttpOverload`] reads them, and the call timeout
/// ([`BreakerError::Timeout`]), lower the adaptive limit; local refusals (the global
/// pace) and other failures are ignored; other answers count as successes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PresetOverload {
    http: HttpOverload,
}

impl<B> OverloadClassifier<Response<B>> for PresetOverload {
    fn classify(&self, result: &Result<Response<B>, BoxError>) -> Signal {
        match result {
            Err(error)
                if error
                    .downcast_ref::<BreakerError>()
                    .is_some_and(BreakerError::is_timeout) =>
            {
                Signal::Overload
            }
            Err(error) if is_local_refusal(error) => Signal::Ignore,
            other => self.http.classify(other),
        }
    }
}

/// A fallback cause this version does not know.
#[derive(Debug)]
struct UnknownCause;

impl fmt::Display for UnknownCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream call failed")
    }
}

impl std::error::Error for UnknownCause {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower_breaker::Classify as _;
    use tower_priority_queue::Classify as _;

    use super::*;

    fn response(code: u16, retry_after: Option<&str>) -> Result<Response<()>, BoxError> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(code).unwrap();
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_str(after).unwrap());
        }
        Ok(response)
    }

    fn error(
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Result<Response<()>, BoxError> {
        Err(Box::new(error))
    }

    #[test]
    fn the_breakers_call_timeout_is_a_timed_out_attempt() {
        let retry = RetryClassifier::default();
        let timeout = error(BreakerError::Timeout {
            after: Duration::from_secs(120),
        });
        assert_eq!(
            retry.classify(&timeout),
            RetryDecision::RetryIfIdempotentTimedOut
        );
        let open = error(BreakerError::CircuitOpen { retry_after: None });
        assert_eq!(retry.classify(&open), RetryDecision::Return);
        assert_eq!(
            retry.classify(&error(DeadlineExceeded)),
            RetryDecision::Return
        );
        assert_eq!(
            retry.classify(&Err::<Response<()>, BoxError>("connection reset".into())),
            RetryDecision::RetryIfIdempotent
        );
        assert_eq!(
            retry.classify(&response(500, None)),
            RetryDecision::RetryIfIdempotent
        );
        assert_eq!(
            retry.classify(&response(504, None)),
            RetryDecision::RetryIfIdempotentTimedOut
        );
        assert_eq!(
            retry.classify(&response(429, Some("3"))),
            RetryDecision::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(retry.classify(&response(200, None)), RetryDecision::Return);
    }

    #[test]
    fn the_upstreams_backpressure_is_no_breaker_failure() {
        let breaker = BreakerClassifier::default();
        assert_eq!(breaker.classify(&response(429, None)), Verdict::Ignored);
        assert_eq!(
            breaker.classify(&response(429, Some("5"))),
            Verdict::Ignored
        );
        assert_eq!(
            breaker.classify(&response(503, Some("5"))),
            Verdict::Ignored
        );
        // A 503 that says nothing of when to come back is an outage.
        assert_eq!(breaker.classify(&response(503, None)), Verdict::Failure);
        assert_eq!(breaker.classify(&response(500, None)), Verdict::Failure);
        assert_eq!(breaker.classify(&response(404, None)), Verdict::Success);
        let timeout = error(BreakerError::Timeout {
            after: Duration::from_secs(120),
        });
        assert_eq!(breaker.classify(&timeout), Verdict::Failure);
        assert_eq!(breaker.classify(&error(DeadlineExceeded)), Verdict::Ignored);
    }
}
