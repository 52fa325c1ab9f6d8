//! `AnswerRefusalsLayer`: refusals become their answers, the inner service's errors come
//! out unchanged and typed.

use std::borrow::Cow;
use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_refusal::{AnswerRefusalsLayer, BoxError, InnerError, Refusal};

#[derive(Debug)]
struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused")
    }
}

impl std::error::Error for Refused {}

impl Refusal for Refused {
    fn status_code(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
    }
    fn grpc_code(&self) -> i32 {
        8
    }
    fn message(&self) -> Cow<'_, str> {
        Cow::Borrowed("refused")
    }
}

/// The inner service's own error type, which must come out unchanged.
#[derive(Debug, PartialEq)]
struct Upstream(u32);

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream failed: {}", self.0)
    }
}

/// A refusing layer in the suite's style: refuses requests with `x-refuse`, passes the
/// others on, and boxes every error. Its inner errors are looked at on the way back, as
/// a breaker's classifier would.
#[derive(Clone)]
struct RefuseLayer;

#[derive(Clone)]
struct Refuse<S> {
    inner: S,
    refuse_when_ready: bool,
}

impl<S> Layer<S> for RefuseLayer {
    type Service = Refuse<S>;
    fn layer(&self, inner: S) -> Refuse<S> {
        Refuse {
            inner,
            refuse_when_ready: false,
        }
    }
}

impl<S, B> Service<Request<B>> for Refuse<S>
where
    S: Service<Request<B>, Response = Response<Bytes>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Bytes>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Bytes>, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.refuse_when_ready {
            return Poll::Ready(Err(Box::new(Refused)));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.headers().contains_key("x-refuse") {
            return Box::pin(async { Err::<_, BoxError>(Box::new(Refused)) });
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            if let Err(error) = &result {
                // What a classifier sees: the inner error, carried.
                assert!(error.is::<InnerError<Upstream>>(), "{error}");
            }
            result
        })
    }
}

fn inner() -> impl Service<
    Request<Bytes>,
    Response = Response<Bytes>,
    Error = Upstream,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(|request: Request<Bytes>| async move {
        match request.headers().get("x-fail") {
            Some(code) => Err(Upstream(code.to_str().unwrap_or("0").parse().unwrap_or(0))),
            None => Ok(Response::new(Bytes::from_static(b"ok"))),
        }
    })
}

#[tokio::test]
async fn refusals_are_answered_and_inner_errors_keep_their_type() {
    let service = AnswerRefusalsLayer::<_, Refused>::new(RefuseLayer).layer(inner());

    let ok = service.clone().oneshot(Request::new(Bytes::new())).await;
    assert_eq!(ok.map(Response::into_body), Ok(Bytes::from_static(b"ok")));

    let mut refused = Request::new(Bytes::new());
    refused
        .headers_mut()
        .insert("x-refuse", HeaderValue::from_static("1"));
    let answer = service.clone().oneshot(refused).await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.body(), r#"{"error":"refused"}"#);

    let mut grpc = Request::new(Bytes::new());
    grpc.headers_mut()
        .insert("x-refuse", HeaderValue::from_static("1"));
    grpc.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    let answer = service.clone().oneshot(grpc).await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["grpc-status"], "8");

    let mut failing = Request::new(Bytes::new());
    failing
        .headers_mut()
        .insert("x-fail", HeaderValue::from_static("7"));
    let error = service.oneshot(failing).await.expect_err("the inner error");
    assert_eq!(error, Upstream(7));
}

#[tokio::test]
async fn a_refusal_while_getting_ready_is_answered_at_the_call() {
    let layer = AnswerRefusalsLayer::<_, Refused>::new(tower::layer::layer_fn(|inner| Refuse {
        inner,
        refuse_when_ready: true,
    }));
    let mut service = layer.layer(inner());
    let ready = service
        .ready()
        .await
        .expect("ready: the refusal waits for the call");
    let answer = ready
        .call(Request::new(Bytes::new()))
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
}
