//! Every duration setting at its extremes, `Duration::ZERO` and `Duration::MAX`: sane
//! behaviour and never a panic on the request path (paused tokio time).
#![cfg(feature = "http")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_lru_cache::Clock;
use tower_lru_cache::{CacheKey, CacheLayer, FnCacheLayer, KeyHasher};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// An upstream that counts its calls and fails while `failing` is set.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Upstream {
    fn http(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let this = self.clone();
        service_fn(move |_: Request<Full<Bytes>>| {
            let n = this.calls.fetch_add(1, SeqCst) + 1;
            let failing = this.failing.load(SeqCst);
            async move {
                if failing {
                    return Err::<_, BoxError>("upstream down".into());
                }
                Ok(Response::new(Full::new(Bytes::from(format!("answer {n}")))))
            }
        })
    }

    fn sdk(
        &self,
    ) -> impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let this = self.clone();
        service_fn(move |prompt: String| {
            let n = this.calls.fetch_add(1, SeqCst) + 1;
            let failing = this.failing.load(SeqCst);
            async move {
                if failing {
                    return Err::<String, BoxError>("sdk unavailable".into());
                }
                Ok(format!("{prompt}#{n}"))
            }
        })
    }
}

fn post() -> Request<Full<Bytes>> {
    Request::post("/analyze")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request")
}

/// The `x-cache` header of an HTTP answer, or the error.
async fn x_cache<S, B>(svc: &S) -> Result<String, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError> + Clone,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let response = svc.clone().oneshot(post()).await?;
    let x_cache = response
        .headers()
        .get("x-cache")
        .map(|value| value.to_str().unwrap_or("?").to_owned())
        .unwrap_or_default();
    response.into_body().collect().await.map_err(Into::into)?;
    Ok(x_cache)
}

async fn call<S>(svc: &S) -> Result<String, BoxError>
where
    S: Service<String, Response = String, Error = BoxError> + Clone,
{
    svc.clone().oneshot("a".to_owned()).await
}

fn key_of(prompt: &String) -> Option<CacheKey> {
    let mut key = KeyHasher::new();
    key.field(0, prompt.as_bytes());
    Some(key.finish())
}

#[tokio::test(start_paused = true)]
async fn http_ttl_zero_stores_nothing() {
    let upstream = Upstream::default();
    let svc = CacheLayer::builder()
        .clock(Clock::Tokio)
        .ttl(Duration::ZERO)
        .build()
        .layer(upstream.http());
    assert_eq!(x_cache(&svc).await.expect("answer"), "MISS");
    assert_eq!(x_cache(&svc).await.expect("answer"), "MISS");
    assert_eq!(upstream.calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn http_ttl_and_grace_max_keep_entries() {
    let upstream = Upstream::default();
    let svc = CacheLayer::builder()
        .clock(Clock::Tokio)
        .ttl(Duration::MAX)
        .stale_if_error(Duration::MAX)
        .build()
        .layer(upstream.http());
    assert_eq!(x_cache(&svc).await.expect("answer"), "MISS");
    tokio::time::advance(10 * YEAR).await;
    assert_eq!(x_cache(&svc).await.expect("answer"), "HIT");
    assert_eq!(upstream.calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn http_grace_max_and_zero_after_the_ttl() {
    for (grace, stale) in [(Duration::MAX, true), (Duration::ZERO, false)] {
        let upstream = Upstream::default();
        let svc = CacheLayer::builder()
            .clock(Clock::Tokio)
            .ttl(Duration::from_secs(1))
            .stale_if_error(grace)
            .build()
            .layer(upstream.http());
        assert_eq!(x_cache(&svc).await.expect("answer"), "MISS");
        tokio::time::advance(YEAR).await;
        upstream.failing.store(true, SeqCst);
        let answer = x_cache(&svc).await;
        if stale {
            assert_eq!(answer.expect("stale answer"), "STALE");
        } else {
            assert!(answer.is_err());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn generic_ttl_and_grace_extremes() {
    // TTL zero: nothing is stored.
    let upstream = Upstream::default();
    let svc = FnCacheLayer::builder(key_of)
        .clock(Clock::Tokio)
        .ttl(Duration::ZERO)
        .build()
        .layer(upstream.sdk());
    assert_eq!(call(&svc).await.expect("answer"), "a#1");
    assert_eq!(call(&svc).await.expect("answer"), "a#2");
    // TTL and grace MAX: kept, and served stale on failure (never expired).
    let upstream = Upstream::default();
    let svc = FnCacheLayer::builder(key_of)
        .clock(Clock::Tokio)
        .ttl(Duration::MAX)
        .stale_if_error(Duration::MAX)
        .build()
        .layer(upstream.sdk());
    assert_eq!(call(&svc).await.expect("answer"), "a#1");
    tokio::time::advance(10 * YEAR).await;
    assert_eq!(call(&svc).await.expect("answer"), "a#1");
    // A short TTL with grace MAX: stale on failure a year later; grace zero: the error.
    for (grace, stale) in [(Duration::MAX, true), (Duration::ZERO, false)] {
        let upstream = Upstream::default();
        let svc = FnCacheLayer::builder(key_of)
            .clock(Clock::Tokio)
            .ttl(Duration::from_secs(1))
            .stale_if_error(grace)
            .build()
            .layer(upstream.sdk());
        assert_eq!(call(&svc).await.expect("answer"), "a#1");
        tokio::time::advance(YEAR).await;
        upstream.failing.store(true, SeqCst);
        assert_eq!(call(&svc).await.ok(), stale.then(|| "a#1".to_owned()));
    }
}
