//! Counting the calls that really reach the upstream and are billed, for the cost figures.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use pin_project::pin_project;
use tower_service::Service;

use crate::deadline::{Running, RunningGuard};

/// Counts the calls made to the inner service (the upstream) that a provider bills: every
/// call except those it turned away with `429 Too Many Requests` (a provider over its
/// capacity refuses at once and does not bill). A call is counted when it ends, whether
/// with an answer or an error (a call that failed or timed out may have run, and been
/// billed); a call dropped before it ends is counted too, unless it was never polled:
/// an HTTP client's future (hyper's, reqwest's, tonic's) sends nothing before it is
/// polled. An upstream service that sends from `call` itself, before its future is
/// polled, is undercounted by the calls dropped that early.
#[derive(Debug, Clone)]
pub struct CountCalls<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

impl<S> CountCalls<S> {
    pub(crate) fn new(inner: S, calls: Arc<AtomicU64>) -> Self {
        Self { inner, calls }
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

impl<S, ReqB, B> Service<Request<ReqB>> for CountCalls<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CountCallsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let running = request.extensions().get::<Running>().map(Running::start);
        CountCallsFuture {
            inner: self.inner.call(request),
            calls: Some(Arc::clone(&self.calls)),
            polled: false,
            running,
        }
    }
}

/// The response future of [`CountCalls`].
#[pin_project(PinnedDrop)]
#[derive(Debug)]
pub struct CountCallsFuture<F> {
    #[pin]
    inner: F,
    /// Taken when the call is counted (or found not billed).
    calls: Option<Arc<AtomicU64>>,
    /// Whether the call was polled: until then nothing was sent.
    polled: bool,
    /// Held while the call runs, for [`EnforceDeadline`](crate::deadline::EnforceDeadline).
    running: Option<RunningGuard>,
}

impl<F, B, E> Future for CountCallsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        *this.polled = true;
        let output = ready!(this.inner.poll(cx));
        this.running.take();
        if let Some(calls) = this.calls.take() {
            let refused = matches!(&output, Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS);
            if !refused {
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }
        Poll::Ready(output)
    }
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for CountCallsFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        // Dropped before it ended: once polled, the call may have run.
        let this = self.project();
        if let Some(calls) = this.calls.take()
            && *this.polled
        {
            calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    /// Answers `status`, or never when `hang`.
    #[derive(Clone, Copy)]
    struct Upstream {
        status: StatusCode,
        hang: bool,
    }

    impl Service<Request<()>> for Upstream {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<()>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let Self { status, hang } = *self;
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                let mut response = Response::new(());
                *response.status_mut() = status;
                Ok(response)
            })
        }
    }

    fn counted(status: StatusCode, hang: bool) -> (CountCalls<Upstream>, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let svc = CountCalls::new(Upstream { status, hang }, Arc::clone(&calls));
        (svc, calls)
    }

    #[tokio::test]
    async fn answered_calls_count_and_429s_do_not() {
        let (svc, calls) = counted(StatusCode::OK, false);
        svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let (svc, calls) = counted(StatusCode::TOO_MANY_REQUESTS, false);
        svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_call_dropped_unpolled_sent_nothing_and_one_dropped_running_may_have_run() {
        let (mut svc, calls) = counted(StatusCode::OK, true);
        drop(svc.call(Request::new(())));
        assert_eq!(calls.load(Ordering::Relaxed), 0, "never polled");
        let mut running = Box::pin(svc.call(Request::new(())));
        let polled = std::future::poll_fn(|cx| Poll::Ready(running.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        drop(running);
        assert_eq!(calls.load(Ordering::Relaxed), 1, "polled, then given up");
    }

    #[tokio::test]
    async fn a_request_that_asks_is_told_while_its_call_runs() {
        let (mut svc, _) = counted(StatusCode::OK, true);
        let running = Running::default();
        let mut request = Request::new(());
        request.extensions_mut().insert(running.clone());
        let call = svc.call(request);
        assert!(running.any(), "from the call on");
        drop(call);
        assert!(!running.any(), "until it is dropped");
        let (mut svc, _) = counted(StatusCode::OK, false);
        let mut request = Request::new(());
        request.extensions_mut().insert(running.clone());
        let call = svc.call(request);
        assert!(running.any());
        call.await.unwrap();
        assert!(!running.any(), "or ends");
    }
}
