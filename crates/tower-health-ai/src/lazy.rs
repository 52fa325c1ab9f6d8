//! [`CloneOnDrive`]: a service whose clones share one prototype until a clone is
//! driven, so that cloning the preset per request (as axum and hyper do) does not copy
//! the layers below the cache for a request the cache answers.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tower_service::Service;

/// A service whose clones share one prototype until a clone is driven.
///
/// The preset wraps the part of its stack below the cache in it. A clone is one
/// reference count; the inner service is cloned from the shared prototype only when the
/// clone is first made ready (or, against the `Service` contract, called without being
/// made ready). The cache answers a hit without touching its inner service, so a hit
/// clones nothing below it; a miss clones it once, as it would without this.
///
/// The prototype is never driven itself: every driven copy starts from a service that
/// was never made ready, which is what cloning a tower service gives.
///
/// The prototype is shared behind an `Arc`, so a `CloneOnDrive<S>` is `Send` only when
/// `S` is `Send + Sync`.
pub struct CloneOnDrive<S> {
    /// Shared with the other clones; never driven.
    proto: Arc<S>,
    /// This clone's own copy, from its first `poll_ready` (or `call`) on.
    own: Option<S>,
}

impl<S> fmt::Debug for CloneOnDrive<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloneOnDrive")
            .field("driven", &self.own.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> CloneOnDrive<S> {
    /// Shares `inner` as the prototype of every clone.
    pub fn new(inner: S) -> Self {
        Self {
            proto: Arc::new(inner),
            own: None,
        }
    }

    /// The inner service (the prototype until this clone is driven).
    pub fn get_ref(&self) -> &S {
        self.own.as_ref().unwrap_or(&self.proto)
    }
}

impl<S: Clone> CloneOnDrive<S> {
    /// The inner service: this clone's own copy, or the prototype itself when no other
    /// clone shares it, else a copy of it.
    pub fn into_inner(self) -> S {
        match self.own {
            Some(inner) => inner,
            None => Arc::try_unwrap(self.proto).unwrap_or_else(|proto| (*proto).clone()),
        }
    }

    #[inline]
    fn owned(&mut self) -> &mut S {
        self.own.get_or_insert_with(|| S::clone(&self.proto))
    }
}

impl<S> Clone for CloneOnDrive<S> {
    /// A clone that shares the prototype. A driven clone's readiness is its own (it may
    /// hold a reservation): its clones start, as every clone does, from the prototype,
    /// unready.
    fn clone(&self) -> Self {
        Self {
            proto: Arc::clone(&self.proto),
            own: None,
        }
    }
}

impl<S, Request> Service<Request> for CloneOnDrive<S>
where
    S: Service<Request> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.owned().poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        self.owned().call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::ServiceExt;

    use super::*;

    /// Counts its clones; ready once per clone (a reservation, as a limiter's is).
    struct Counted {
        clones: Arc<AtomicUsize>,
        ready: bool,
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::Relaxed);
            Self {
                clones: Arc::clone(&self.clones),
                ready: false,
            }
        }
    }

    impl Service<u32> for Counted {
        type Response = u32;
        type Error = &'static str;
        type Future = std::future::Ready<Result<u32, &'static str>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: u32) -> Self::Future {
            let ready = std::mem::replace(&mut self.ready, false);
            std::future::ready(if ready {
                Ok(request)
            } else {
                Err("called unready")
            })
        }
    }

    fn counted() -> (CloneOnDrive<Counted>, Arc<AtomicUsize>) {
        let clones = Arc::new(AtomicUsize::new(0));
        let svc = Counted {
            clones: Arc::clone(&clones),
            ready: false,
        };
        (CloneOnDrive::new(svc), clones)
    }

    #[test]
    fn clones_that_are_not_driven_copy_nothing() {
        let (svc, clones) = counted();
        let copies: Vec<_> = (0..100).map(|_| svc.clone()).collect();
        drop(copies);
        assert_eq!(clones.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_driven_clone_copies_the_prototype_once() {
        let (svc, clones) = counted();
        let mut driven = svc.clone();
        assert_eq!(driven.ready().await.unwrap().call(7).await, Ok(7));
        assert_eq!(driven.ready().await.unwrap().call(8).await, Ok(8));
        assert_eq!(clones.load(Ordering::Relaxed), 1);
        // The prototype was never driven: another clone starts unready from it.
        let mut other = svc.clone();
        assert_eq!(other.ready().await.unwrap().call(9).await, Ok(9));
        assert_eq!(clones.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_clone_of_a_ready_clone_is_not_ready() {
        let (svc, _clones) = counted();
        let mut driven = svc.clone();
        driven.ready().await.unwrap();
        let mut copy = driven.clone();
        // The readiness (a reservation) stays with the clone that was made ready.
        assert_eq!(copy.call(1).await, Err("called unready"));
        assert_eq!(driven.call(2).await, Ok(2));
    }

    #[test]
    fn into_inner_gives_the_prototype_or_a_copy() {
        let (svc, clones) = counted();
        let other = svc.clone();
        let _inner = svc.into_inner();
        assert_eq!(clones.load(Ordering::Relaxed), 1, "shared: copied");
        let _inner = other.into_inner();
        assert_eq!(clones.load(Ordering::Relaxed), 1, "last holder: unwrapped");
    }
}
