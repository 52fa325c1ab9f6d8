use crate::{BoxError, BreakerError};

/// Takes from a request, before the inner call consumes it, what the fallback will need.
///
/// Implemented for every `Fn(&Req) -> T`. For HTTP, [`CaptureHead`](crate::CaptureHead)
/// keeps the whole request head; a closure that keeps only what the fallback reads (a
/// path parameter, one header) is cheaper.
pub trait Capture<Req> {
    /// What is kept.
    type Context;

    /// Takes it from the request.
    fn capture(&self, request: &Req) -> Self::Context;
}

impl<F, Req, T> Capture<Req> for F
where
    F: Fn(&Req) -> T,
{
    type Context = T;

    fn capture(&self, request: &Req) -> T {
        self(request)
    }
}

/// Decides which results are answered by the fallback.
///
/// Implemented for every `Fn(&Result<Res, BoxError>) -> bool`.
pub trait FallbackPolicy<Res> {
    /// Whether to replace this result with the fallback's answer.
    fn should_fall_back(&self, result: &Result<Res, BoxError>) -> bool;
}

impl<F, Res> FallbackPolicy<Res> for F
where
    F: Fn(&Result<Res, BoxError>) -> bool,
{
    fn should_fall_back(&self, result: &Result<Res, BoxError>) -> bool {
        self(result)
    }
}

/// The default policy: every error falls back (an open circuit, a timeout, an upstream
/// or transport failure that the layers below gave up on); every response passes.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnError;

impl<Res> FallbackPolicy<Res> for OnError {
    fn should_fall_back(&self, result: &Result<Res, BoxError>) -> bool {
        result.is_err()
    }
}

/// Why the fallback is answering.
#[derive(Debug)]
#[non_exhaustive]
pub enum FallbackCause<Res> {
    /// The inner call failed with this error.
    Error(BoxError),
    /// The inner call answered with this response, which the policy called a failure.
    Response(Res),
}

impl<Res> FallbackCause<Res> {
    /// The error, if the inner call failed with one.
    pub fn error(&self) -> Option<&BoxError> {
        match self {
            Self::Error(error) => Some(error),
            Self::Response(_) => None,
        }
    }

    /// This crate's refusal (circuit open, timeout), if that is the cause.
    pub fn breaker_error(&self) -> Option<&BreakerError> {
        self.error().and_then(|error| error.downcast_ref())
    }
}

/// What the fallback service is called with.
#[derive(Debug)]
#[non_exhaustive]
pub struct FallbackRequest<Ctx, Res> {
    /// What the [`Capture`] took from the request.
    pub context: Ctx,
    /// Why the fallback is answering.
    pub cause: FallbackCause<Res>,
}

/// The response extension that marks a fallback answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Degraded;

/// The response extension with which a fallback service hands back the inner service's
/// own answer as it is ([`FallbackCause::Response`], when it has nothing better to give):
/// that answer is not a fallback answer, so `http::Response`'s [`MarkDegraded`] takes
/// this extension off instead of marking it [`Degraded`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NotDegraded;

/// Marks a response as a degraded (fallback) answer.
///
/// Implemented for `http::Response<B>` (feature `http`): inserts the [`Degraded`]
/// extension and the `x-degraded: true` header, unless the fallback service handed back
/// the inner service's own answer with a [`NotDegraded`] extension (which it removes).
/// Implement it for your own response type to use [`Fallback`](super::Fallback) with it.
pub trait MarkDegraded {
    /// Marks `self`.
    fn mark_degraded(&mut self);
}
