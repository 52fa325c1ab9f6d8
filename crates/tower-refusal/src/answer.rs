//! [`AnswerRefusalsLayer`]: a refusing layer that answers its refusals itself and keeps
//! the inner service's error type.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Refusal, SimpleRefusal, is_grpc, response};

/// `Box<dyn Error + Send + Sync>`, the same type as `tower::BoxError`: the error type of
/// the suite's error-returning services.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Wraps a layer whose services refuse with a boxed `R` (and pass the inner service's
/// errors on, boxed) so that its refusals become their answers, per [`Refusal`], and the
/// service keeps the inner service's error type.
///
/// Around an axum handler, whose error type is `Infallible`, the result is again
/// infallible: the layer attaches to a route with `.layer(...)` and no
/// `HandleErrorLayer`. Each crate of the suite offers it as its layers'
/// `answer_refusals()` method.
///
/// How: the inner service's errors are carried through the wrapped layer inside an
/// [`InnerError`] and taken out again on the way back, so nothing is lost; a refusal `R`
/// becomes its HTTP JSON answer, or its gRPC trailers-only answer when the request's
/// `content-type` is `application/grpc*`. An error of the wrapped layer that is neither
/// (none of the suite's layers makes one) is answered `500` (gRPC 13 `INTERNAL`).
///
/// A classifier inside the wrapped layer that inspects the inner service's errors sees
/// them as an [`InnerError`]; downcast to it, then look at [`InnerError::get_ref`].
///
/// ```
/// use std::borrow::Cow;
/// use std::convert::Infallible;
/// use std::fmt;
///
/// use axum::{Router, body::Body, routing::get};
/// use http::{Request, Response, StatusCode};
/// use tower::{BoxError, ServiceExt, service_fn};
/// use tower_refusal::{AnswerRefusalsLayer, Refusal};
///
/// /// A refusal of a layer of our own.
/// #[derive(Debug)]
/// struct Closed;
/// impl fmt::Display for Closed {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         f.write_str("closed for the night")
///     }
/// }
/// impl std::error::Error for Closed {}
/// impl Refusal for Closed {
///     fn status_code(&self) -> StatusCode {
///         StatusCode::SERVICE_UNAVAILABLE
///     }
///     fn grpc_code(&self) -> i32 {
///         14
///     }
///     fn message(&self) -> Cow<'_, str> {
///         Cow::Owned(self.to_string())
///     }
/// }
///
/// /// The error-returning layer: refuses every request with a boxed `Closed`.
/// #[derive(Clone)]
/// struct CloseLayer;
/// impl<S> tower::Layer<S> for CloseLayer {
///     type Service = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;
///     fn layer(&self, _inner: S) -> Self::Service {
///         tower::util::BoxCloneSyncService::new(service_fn(|_req: Request<Body>| async {
///             Err::<Response<Body>, BoxError>(Box::new(Closed))
///         }))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let app: Router = Router::new().route(
///     "/",
///     get(|| async { "open" }).layer(AnswerRefusalsLayer::<_, Closed>::new(CloseLayer)),
/// );
/// let response = app.oneshot(Request::new(Body::empty())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// # }
/// ```
pub struct AnswerRefusalsLayer<L, R> {
    layer: L,
    _refusal: PhantomData<fn() -> R>,
}

impl<L, R> AnswerRefusalsLayer<L, R> {
    /// Answers the refusals (`R`) of `layer`'s services.
    #[must_use]
    pub fn new(layer: L) -> Self {
        Self {
            layer,
            _refusal: PhantomData,
        }
    }

    /// The wrapped layer.
    pub fn get_ref(&self) -> &L {
        &self.layer
    }

    /// Consumes `self`, returning the wrapped layer (the error-returning form).
    pub fn into_inner(self) -> L {
        self.layer
    }
}

impl<L: Clone, R> Clone for AnswerRefusalsLayer<L, R> {
    fn clone(&self) -> Self {
        Self::new(self.layer.clone())
    }
}

impl<L: fmt::Debug, R> fmt::Debug for AnswerRefusalsLayer<L, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerRefusalsLayer")
            .field("layer", &self.layer)
            .field("refusal", &std::any::type_name::<R>())
            .finish()
    }
}

impl<L, R, S> Layer<S> for AnswerRefusalsLayer<L, R>
where
    L: Layer<CarryErrors<S>>,
{
    type Service = AnswerRefusals<L::Service, S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AnswerRefusals {
            inner: self.layer.layer(CarryErrors { inner }),
            pending: None,
            _types: PhantomData,
        }
    }
}

/// The service of [`AnswerRefusalsLayer`]: `T` is the refusing service (around
/// [`CarryErrors<S>`]), `S` the inner service whose error type it keeps, `R` the
/// refusal it answers.
pub struct AnswerRefusals<T, S, R> {
    inner: T,
    /// A refusal made while getting ready, answered at the next call.
    pending: Option<BoxError>,
    _types: PhantomData<fn() -> (S, R)>,
}

impl<T, S, R> AnswerRefusals<T, S, R> {
    /// The refusing service.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The refusing service, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Consumes `self`, returning the refusing service.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Clone, S, R> Clone for AnswerRefusals<T, S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            pending: None,
            _types: PhantomData,
        }
    }
}

impl<T: fmt::Debug, S, R> fmt::Debug for AnswerRefusals<T, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerRefusals")
            .field("inner", &self.inner)
            .field("refusal", &std::any::type_name::<R>())
            .finish_non_exhaustive()
    }
}

impl<T, S, R, ReqB, ResB> Service<Request<ReqB>> for AnswerRefusals<T, S, R>
where
    T: Service<Request<ReqB>, Response = Response<ResB>>,
    T::Error: Into<BoxError>,
    S: Service<Request<ReqB>>,
    S::Error: fmt::Debug + fmt::Display + Send + Sync + 'static,
    R: Refusal + Error + 'static,
    ResB: Default + From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = AnswerFuture<T::Future, S::Error, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.pending.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) => match error.into().downcast::<InnerError<S::Error>>() {
                Ok(inner) => Poll::Ready(Err(inner.0)),
                Err(refusal) => {
                    self.pending = Some(refusal);
                    Poll::Ready(Ok(()))
                }
            },
        }
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let grpc = is_grpc(request.headers());
        let kind = match self.pending.take() {
            Some(refusal) => Kind::Refused {
                refusal: Some(refusal),
            },
            None => Kind::Called {
                future: self.inner.call(request),
            },
        };
        AnswerFuture {
            kind,
            grpc,
            _types: PhantomData,
        }
    }
}

/// The future of [`AnswerRefusals`].
#[pin_project]
pub struct AnswerFuture<F, E, R> {
    #[pin]
    kind: Kind<F>,
    grpc: bool,
    _types: PhantomData<fn() -> (E, R)>,
}

#[pin_project(project = KindProj)]
enum Kind<F> {
    Called {
        #[pin]
        future: F,
    },
    Refused {
        refusal: Option<BoxError>,
    },
}

impl<F, E, R> fmt::Debug for AnswerFuture<F, E, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerFuture")
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl<F, E, R, TE, ResB> Future for AnswerFuture<F, E, R>
where
    F: Future<Output = Result<Response<ResB>, TE>>,
    TE: Into<BoxError>,
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
    R: Refusal + Error + 'static,
    ResB: Default + From<Bytes>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let error = match this.kind.project() {
            KindProj::Called { future } => match ready!(future.poll(cx)) {
                Ok(response) => return Poll::Ready(Ok(response)),
                Err(error) => error.into(),
            },
            KindProj::Refused { refusal } => match refusal.take() {
                Some(refusal) => refusal,
                None => panic!("AnswerFuture polled after completion"),
            },
        };
        Poll::Ready(settle::<E, R, ResB>(error, *this.grpc))
    }
}

/// The inner service's error, or the answer to a refusal.
fn settle<E, R, B>(error: BoxError, grpc: bool) -> Result<Response<B>, E>
where
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
    R: Refusal + Error + 'static,
    B: Default + From<Bytes>,
{
    let error = match error.downcast::<InnerError<E>>() {
        Ok(inner) => return Err(inner.0),
        Err(error) => error,
    };
    Ok(match error.downcast_ref::<R>() {
        Some(refusal) => response(refusal, grpc),
        None => response(
            &SimpleRefusal::new(StatusCode::INTERNAL_SERVER_ERROR, 13, "internal error"),
            grpc,
        ),
    })
}

/// Passes the inner service's errors on as a boxed [`InnerError`], so that they cross
/// an error-boxing layer and come out unchanged (see [`AnswerRefusalsLayer`]).
#[derive(Clone, Debug)]
pub struct CarryErrors<S> {
    inner: S,
}

impl<S> CarryErrors<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for CarryErrors<S>
where
    S: Service<Req>,
    S::Error: fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = CarryFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(InnerError::boxed)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        CarryFuture {
            inner: self.inner.call(request),
        }
    }
}

/// The future of [`CarryErrors`].
#[pin_project]
#[derive(Debug)]
pub struct CarryFuture<F> {
    #[pin]
    inner: F,
}

impl<F, T, E> Future for CarryFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(InnerError::boxed)
    }
}

/// An error of the inner service on its way through a refusing layer under
/// [`AnswerRefusalsLayer`], which takes it out again unchanged. Its `Display` is the
/// inner error's.
#[derive(Debug)]
pub struct InnerError<E>(E);

impl<E> InnerError<E> {
    /// The inner service's error.
    pub fn get_ref(&self) -> &E {
        &self.0
    }

    /// Consumes `self`, returning the inner service's error.
    pub fn into_inner(self) -> E {
        self.0
    }
}

impl<E: fmt::Debug + fmt::Display + Send + Sync + 'static> InnerError<E> {
    fn boxed(error: E) -> BoxError {
        Box::new(InnerError(error))
    }
}

impl<E: fmt::Display> fmt::Display for InnerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: fmt::Debug + fmt::Display> Error for InnerError<E> {}
