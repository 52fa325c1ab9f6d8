//! [`LateAnswer`]: a call's answer that comes after its request was answered otherwise,
//! stored for the next identical request.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Response, response::Parts};
use http_body::Body;
use tokio::{sync::watch, time::Instant};

use crate::{
    body::{Collected, collect},
    cached::CachedResponse,
    core::{Body as Pending, Flight},
    error::BoxError,
    key::CacheKey,
    miss::{Finished, Publish},
    shared::{Asked, Grpc, HttpShared},
    store::CacheStore,
};

/// A miss's way back into the cache for an answer that comes too late for its request.
///
/// On a miss, the cache puts a `LateAnswer` in the extensions of the request it passes
/// to the inner service. A layer below the cache that stops waiting for a call it has
/// started (a deadline that lets a fallback answer the caller, say) may let the call run
/// on and hand its answer to [`store`](Self::store) when it comes. The answer is judged
/// by the rules an answer in time meets (its status, `Cache-Control`, `Vary`, the
/// response-size limit, and no invalidation since the call started) and stored if they
/// allow, so that the next identical request is a hit rather than another call. With
/// [`wait_for_late_answers`](crate::CacheLayerBuilder::wait_for_late_answers), the
/// requests waiting on the call, and those arriving for the same key meanwhile, wait for
/// it too. Dropping every copy of a `LateAnswer` without storing tells them that no
/// answer will come: keep one only while the call it belongs to runs.
///
/// ```
/// use http::{Request, Response};
/// use tower_lru_cache::LateAnswer;
///
/// // In a layer below the cache, on giving up waiting for a call it lets run on:
/// async fn when_the_call_ends(request: &Request<()>, answer: Response<String>) {
///     if let Some(late) = request.extensions().get::<LateAnswer>().cloned() {
///         let stored = late.store(answer).await;
///         # let _ = stored;
///     }
/// }
/// ```
#[derive(Clone)]
pub struct LateAnswer {
    sink: Arc<dyn Sink>,
}

impl fmt::Debug for LateAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LateAnswer").finish_non_exhaustive()
    }
}

/// Where a late answer goes: the cache that missed, for the key it missed.
trait Sink: Send + Sync {
    /// The largest body the cache keeps.
    fn limit(&self) -> usize;
    /// Whether an entry has been stored for the key since the call started (by a call
    /// that began after it): a late answer must not replace it.
    fn newer_stored(&self) -> Pin<Box<dyn Future<Output = bool> + Send>>;
    /// Stores the answer if the cache's rules allow; whether it did.
    fn store(&self, parts: Parts, data: Bytes, trailers: Option<HeaderMap>) -> bool;
}

struct Late<St> {
    shared: Arc<HttpShared<St>>,
    key: CacheKey,
    /// The cache's generation when the call started: an invalidation since keeps the
    /// answer out.
    generation: u64,
    /// When the call started, on the cache's clock.
    started: Instant,
    asked: Arc<Asked>,
    /// Tells the requests waiting for this answer that it was stored; dropped with the
    /// last copy of the [`LateAnswer`], which tells them none will come.
    stored: Option<watch::Sender<Option<Arc<Flight<CachedResponse>>>>>,
    /// The same channel, as the cache's running-on map has it.
    waiting: Pending<CachedResponse>,
}

impl<St> Late<St> {
    /// Takes this call out of the cache's running-on map: the requests arriving from
    /// now on do not wait for it.
    fn end_waiting(&self) {
        if self.shared.late_wait.is_some() {
            self.shared.running_on.end(&self.key, &self.waiting);
        }
    }
}

impl<St> Drop for Late<St> {
    fn drop(&mut self) {
        // Closed first: a request that finds the entry after this sees it closed.
        drop(self.stored.take());
        self.end_waiting();
    }
}

impl<St: CacheStore<CachedResponse>> Sink for Late<St> {
    fn limit(&self) -> usize {
        self.shared.max_response_body
    }

    fn newer_stored(&self) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let lookup = self.shared.core.store.get_recent(&self.key);
        let started = self.started;
        Box::pin(async move {
            lookup
                .await
                .is_some_and(|entry| entry.stored_at() >= started)
        })
    }

    fn store(&self, parts: Parts, data: Bytes, trailers: Option<HeaderMap>) -> bool {
        // Judged and stored as an answer in time is (`lead` and `Publish`).
        let degraded = (self.shared.degraded)(&parts);
        let (verdict, failed) = self.shared.judge(&self.asked, &parts, degraded);
        let publish = Publish::new(
            &self.shared,
            self.key,
            self.generation,
            verdict,
            failed,
            Grpc::of(&parts),
        );
        let vary = self.asked.vary_of(&parts.headers);
        let mut cached = CachedResponse::from_parts(parts, data, trailers);
        if let Some(vary) = vary {
            cached = cached.with_vary(vary);
        }
        match publish.finish(cached) {
            Finished::Stored { entry, .. } => {
                if let Some(stored) = &self.stored {
                    stored.send_replace(Some(Arc::new(Flight::Stored(entry))));
                }
                // Sent first: a request that finds the entry before this gets the
                // answer. From now on the store has it, and answers for it only while
                // it is fresh and not invalidated: a copy of this `LateAnswer` kept
                // after its call must not go on answering with it.
                self.end_waiting();
                true
            }
            Finished::Shared { .. } => false,
        }
    }
}

impl LateAnswer {
    pub(crate) fn new<St: CacheStore<CachedResponse>>(
        shared: &Arc<HttpShared<St>>,
        key: CacheKey,
        generation: u64,
        started: Instant,
        asked: Arc<Asked>,
    ) -> (Self, Pending<CachedResponse>) {
        let (stored, waiting) = watch::channel(None);
        let late = Self {
            sink: Arc::new(Late {
                shared: Arc::clone(shared),
                key,
                generation,
                started,
                asked,
                stored: Some(stored),
                waiting: waiting.clone(),
            }),
        };
        (late, waiting)
    }

    /// Reads `answer`'s body (no more than the cache keeps of one) and stores the answer
    /// if the cache's rules allow. Returns whether it was stored: not when the rules
    /// refuse it, the body is larger than the limit or fails, the cache was invalidated
    /// since the call started, or an entry for the same key has been stored since then
    /// (the answer of a later call, which a late one must not replace).
    pub async fn store<B>(self, answer: Response<B>) -> bool
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = answer.into_parts();
        match collect(body, self.sink.limit()).await {
            Collected::Full { data, trailers } => {
                !self.sink.newer_stored().await && self.sink.store(parts, data, trailers)
            }
            Collected::TooBig(_) | Collected::Failed(_) => false,
        }
    }
}
