//! Behaviour of the HTTP cache, driven as users drive it: clone, ready, call.

use std::{
    convert::Infallible,
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Service, ServiceExt, service_fn};
use tower_lru_cache::Clock;
use tower_lru_cache::{
    CacheError, CacheLayer, CacheLayerBuilder, CacheSnapshot, Partition, Refusal, RequestKey,
};

/// Marks an answer as degraded, as a fallback layer would.
#[derive(Clone, Debug)]
struct Degraded;

#[derive(Debug)]
struct UpstreamError;

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream failed")
    }
}

impl std::error::Error for UpstreamError {}

/// What the fake upstream does next.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    Fail,
    Status(u16),
    Degraded,
}

#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    delay: Duration,
}

impl Upstream {
    fn new() -> Self {
        Self {
            calls: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            delay: Duration::ZERO,
        }
    }

    fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::new()
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    fn service<B>(
        &self,
    ) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: fmt::Debug,
    {
        let this = self.clone();
        service_fn(move |req: Request<B>| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, SeqCst) + 1;
                if !this.delay.is_zero() {
                    tokio::time::sleep(this.delay).await;
                }
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("{e:?}"))?
                    .to_bytes();
                let mode = *this.mode.lock().unwrap();
                let mut res = Response::new(Full::new(Bytes::from(format!(
                    "answer {n} to {}",
                    String::from_utf8_lossy(&body)
                ))));
                match mode {
                    Mode::Ok => {}
                    Mode::Fail => return Err(Box::new(UpstreamError) as BoxError),
                    Mode::Status(s) => *res.status_mut() = StatusCode::from_u16(s).unwrap(),
                    Mode::Degraded => {
                        res.extensions_mut().insert(Degraded);
                    }
                }
                Ok(res)
            }
        })
    }
}

fn builder() -> CacheLayerBuilder {
    CacheLayer::builder()
        .clock(Clock::Tokio)
        .name("test")
        .degraded_if(|res| res.extensions.get::<Degraded>().is_some())
}

fn post(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/analyze")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn send<S>(svc: &S, req: Request<Full<Bytes>>) -> Result<(String, String), BoxError>
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<tower_lru_cache::CacheBody<Full<Bytes>>>,
            Error = BoxError,
        > + Clone,
{
    let res = svc.clone().ready().await?.call(req).await?;
    let x_cache = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((x_cache, String::from_utf8_lossy(&body).into_owned()))
}

fn counts(s: &CacheSnapshot) -> [u64; 5] {
    [s.hits, s.misses, s.stale, s.coalesced, s.bypassed]
}

#[tokio::test(start_paused = true)]
async fn hit_after_miss_with_identical_body() {
    let up = Upstream::new();
    let layer = builder().build();
    let handle = layer.handle();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(up.service());

    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("MISS".into(), "answer 1 to a".into())
    );
    let res = svc.clone().oneshot(post("a")).await.unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT");
    assert_eq!(res.headers()["age"], "0");
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "answer 1 to a"
    );
    // A different body is a different key; the inner service still got the body.
    assert_eq!(
        send(&svc, post("b")).await.unwrap(),
        ("MISS".into(), "answer 2 to b".into())
    );
    assert_eq!(up.calls(), 2);
    let snap = handle.snapshot();
    assert_eq!(counts(&snap), [1, 2, 0, 0, 0]);
    assert_eq!(snap.entries, 2);
    assert!((snap.hit_rate_percent - 100.0 / 3.0).abs() < 1e-9);

    tokio::time::advance(Duration::from_secs(42)).await;
    let res = svc.clone().oneshot(post("a")).await.unwrap();
    assert_eq!(res.headers()["age"], "42");
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_ttl() {
    let up = Upstream::new();
    let svc = builder()
        .ttl(Duration::from_secs(60))
        .build()
        .layer_service(up.service());
    assert_eq!(send(&svc, post("a")).await.unwrap().0, "MISS");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(send(&svc, post("a")).await.unwrap().0, "HIT");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("MISS".into(), "answer 2 to a".into())
    );
    assert_eq!(up.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn partitions_isolate_users() {
    let up = Upstream::new();
    let layer = builder()
        .partition(Partition::header(HeaderName::from_static("x-user-id")))
        .build();
    let handle = layer.handle();
    let svc = layer.layer_service(up.service());
    let as_user = |user: &'static str| {
        Request::post("/analyze")
            .header("x-user-id", user)
            .body(Full::new(Bytes::from_static(b"same")))
            .unwrap()
    };
    assert_eq!(
        send(&svc, as_user("a")).await.unwrap(),
        ("MISS".into(), "answer 1 to same".into())
    );
    assert_eq!(
        send(&svc, as_user("b")).await.unwrap(),
        ("MISS".into(), "answer 2 to same".into())
    );
    assert_eq!(
        send(&svc, as_user("a")).await.unwrap(),
        ("HIT".into(), "answer 1 to same".into())
    );
    assert_eq!(
        send(&svc, as_user("b")).await.unwrap(),
        ("HIT".into(), "answer 2 to same".into())
    );
    // No partition: never cached, never shared.
    assert_eq!(
        send(&svc, post("same")).await.unwrap(),
        ("BYPASS".into(), "answer 3 to same".into())
    );
    assert_eq!(counts(&handle.snapshot()), [2, 2, 0, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn concurrent_identical_misses_make_one_inner_call() {
    let up = Upstream::slow(Duration::from_secs(45));
    let layer = builder().build();
    let handle = layer.handle();
    let svc = layer.layer_service(up.service());
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, post("a")).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().1, "answer 1 to a");
    }
    assert_eq!(up.calls(), 1);
    assert_eq!(counts(&handle.snapshot()), [0, 1, 0, 99, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_follower_takes_over_when_the_leader_is_dropped() {
    let up = Upstream::slow(Duration::from_secs(10));
    let svc = builder().build().layer_service(up.service());
    let leader = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("a")).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(up.calls(), 1);
    let follower = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("a")).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    let (x_cache, body) = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((x_cache.as_str(), body.as_str()), ("MISS", "answer 2 to a"));
    assert_eq!(up.calls(), 2);
    // Nothing is left stuck: the next request hits.
    assert_eq!(send(&svc, post("a")).await.unwrap().0, "HIT");
}

#[tokio::test(start_paused = true)]
async fn errors_and_failures_are_not_cached() {
    let up = Upstream::new();
    let layer = builder().build();
    let handle = layer.handle();
    let svc = layer.layer_service(up.service());

    up.set(Mode::Fail);
    let err = send(&svc, post("a")).await.unwrap_err();
    assert!(
        err.downcast_ref::<UpstreamError>().is_some(),
        "inner error passes through unchanged: {err}"
    );
    up.set(Mode::Status(500));
    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("MISS".into(), "answer 2 to a".into())
    );
    up.set(Mode::Status(404));
    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("MISS".into(), "answer 3 to a".into())
    );
    up.set(Mode::Degraded);
    let res = svc.clone().oneshot(post("a")).await.unwrap();
    assert!(
        res.extensions().get::<Degraded>().is_some(),
        "extensions reach the caller"
    );
    up.set(Mode::Ok);
    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("MISS".into(), "answer 5 to a".into())
    );
    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("HIT".into(), "answer 5 to a".into())
    );
    assert_eq!(up.calls(), 5);
    assert_eq!(handle.snapshot().entries, 1);
}

#[tokio::test(start_paused = true)]
async fn cache_control_is_honoured() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let n = calls.fetch_add(1, SeqCst);
            let cc = req
                .uri()
                .query()
                .unwrap_or_default()
                .replace("cc=", "")
                .replace('_', " ");
            async move {
                let res = Response::builder()
                    .header("cache-control", cc)
                    .body(Full::new(Bytes::from(n.to_string())))?;
                Ok::<_, BoxError>(res)
            }
        })
    };
    let svc = builder().build().layer_service(inner);
    let get = |q: &str| {
        Request::get(format!("/?cc={q}"))
            .body(Full::default())
            .unwrap()
    };
    for (cc, cached) in [
        ("no-store", false),
        ("private", false),
        ("no-cache", false),
        ("max-age=0", false),
        ("max-age=10", true),
    ] {
        send(&svc, get(cc)).await.unwrap();
        assert_eq!(
            send(&svc, get(cc)).await.unwrap().0 == "HIT",
            cached,
            "{cc}"
        );
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(send(&svc, get("max-age=10")).await.unwrap().0, "MISS");
}

/// A body that declares a size and records whether anyone read it.
struct Tracked {
    polled: Arc<AtomicBool>,
    hint: SizeHint,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polled.store(true, SeqCst);
        Poll::Ready(None)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl From<Bytes> for Tracked {
    fn from(_: Bytes) -> Self {
        Self {
            polled: Arc::default(),
            hint: SizeHint::with_exact(0),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn oversized_or_unknown_bodies_bypass_unread() {
    let layer = builder().max_request_body(1024).build();
    let handle = layer.handle();
    let inner = service_fn(|req: Request<Tracked>| async move {
        // The inner service gets the original, unread body.
        assert!(!req.body().polled.load(SeqCst));
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let svc = layer.layer_service(inner);
    let mut unknown = SizeHint::new();
    unknown.set_lower(10);
    for hint in [SizeHint::with_exact(1025), unknown] {
        let polled = Arc::new(AtomicBool::new(false));
        let req = Request::post("/")
            .body(Tracked {
                polled: polled.clone(),
                hint,
            })
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.headers()["x-cache"], "BYPASS");
        assert!(!polled.load(SeqCst));
    }
    assert_eq!(counts(&handle.snapshot()), [0, 0, 0, 0, 2]);
}

#[tokio::test(start_paused = true)]
async fn stale_is_served_on_failure_within_grace_only() {
    let up = Upstream::new();
    let layer = builder()
        .ttl(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(30))
        .build();
    let handle = layer.handle();
    let svc = layer.layer_service(up.service());
    assert_eq!(send(&svc, post("a")).await.unwrap().0, "MISS");

    tokio::time::advance(Duration::from_secs(70)).await;
    for mode in [Mode::Fail, Mode::Status(503), Mode::Degraded] {
        up.set(mode);
        let res = svc.clone().oneshot(post("a")).await.unwrap();
        assert_eq!(res.headers()["x-cache"], "STALE", "{mode:?}");
        assert_eq!(res.headers()["age"], "70");
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "answer 1 to a"
        );
    }
    // A stale entry is not a hit: a success refreshes it.
    up.set(Mode::Ok);
    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("MISS".into(), "answer 5 to a".into())
    );

    tokio::time::advance(Duration::from_secs(91)).await;
    up.set(Mode::Fail);
    let err = send(&svc, post("a")).await.unwrap_err();
    assert!(err.downcast_ref::<UpstreamError>().is_some());
    assert_eq!(counts(&handle.snapshot()), [0, 3, 3, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn coalesced_requests_share_a_failure_without_hanging() {
    let up = Upstream::slow(Duration::from_secs(5));
    up.set(Mode::Fail);
    let svc = builder().build().layer_service(up.service());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, post("a")).await })
        })
        .collect();
    let mut original = 0;
    let mut shared = 0;
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        if err.downcast_ref::<UpstreamError>().is_some() {
            original += 1;
        } else {
            let err = err.downcast_ref::<CacheError>().unwrap();
            assert!(matches!(err, CacheError::Coalesced { .. }));
            assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
            shared += 1;
        }
    }
    assert_eq!((original, shared, up.calls()), (1, 9, 1));
}

#[tokio::test(start_paused = true)]
async fn unshared_failures_let_each_waiter_call_for_itself() {
    let up = Upstream::slow(Duration::from_secs(5));
    up.set(Mode::Fail);
    let svc = builder()
        .share_failures(false)
        .build()
        .layer_service(up.service());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, post("a")).await })
        })
        .collect();
    for task in tasks {
        // Every waiter gets the inner service's own error, with its own type.
        let err = task.await.unwrap().unwrap_err();
        assert!(err.downcast_ref::<UpstreamError>().is_some(), "{err}");
    }
    // The leader's call, then one call per waiter.
    assert_eq!(up.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn methods_vary_and_body_less_keys() {
    let up = Upstream::new();
    let key = RequestKey::new()
        .vary(http::header::ACCEPT_LANGUAGE)
        .include_body(false);
    let svc = builder().key(key).build().layer_service(up.service());
    let get = |lang: &'static str| {
        Request::get("/r")
            .header("accept-language", lang)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(send(&svc, get("en")).await.unwrap().0, "MISS");
    assert_eq!(send(&svc, get("fr")).await.unwrap().0, "MISS");
    assert_eq!(send(&svc, get("en")).await.unwrap().0, "HIT");
    let delete = Request::delete("/r").body(Full::default()).unwrap();
    assert_eq!(send(&svc, delete).await.unwrap().0, "BYPASS");
}

#[tokio::test(start_paused = true)]
async fn handle_invalidates_and_serializes() {
    let up = Upstream::new();
    let layer = builder().build();
    let handle = layer.handle();
    let svc = layer.layer_service(up.service());
    send(&svc, post("a")).await.unwrap();
    send(&svc, post("b")).await.unwrap();
    let (parts, ()) = Request::post("/analyze").body(()).unwrap().into_parts();
    assert!(handle.invalidate_request(&parts, b"a").is_some());
    assert_eq!(send(&svc, post("a")).await.unwrap().0, "MISS");
    assert_eq!(send(&svc, post("b")).await.unwrap().0, "HIT");
    handle.invalidate_all();
    assert_eq!(send(&svc, post("b")).await.unwrap().0, "MISS");

    let json = serde_json::to_value(handle.snapshot()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "test", "hits": 1, "misses": 4, "stale": 0, "coalesced": 0,
            "bypassed": 0, "entries": 1, "hitRate": 20.0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn capacity_bounds_entries() {
    let up = Upstream::new();
    let layer = builder().max_entries(3).build();
    let handle = layer.handle();
    let svc = layer.layer_service(up.service());
    for body in ["a", "b", "c", "d", "e", "f"] {
        send(&svc, post(body)).await.unwrap();
    }
    assert!(handle.snapshot().entries <= 3);
}

#[tokio::test(start_paused = true)]
async fn bad_request_body_is_a_client_error() {
    struct Broken;
    impl Body for Broken {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Err("connection reset".into())))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(4)
        }
    }
    impl From<Bytes> for Broken {
        fn from(_: Bytes) -> Self {
            Self
        }
    }
    let inner = service_fn(|_: Request<Broken>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    });
    let svc = builder().build().layer_service(inner);
    let err = svc
        .oneshot(Request::post("/").body(Broken).unwrap())
        .await
        .unwrap_err();
    let err = err.downcast_ref::<CacheError>().unwrap();
    assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    let res: Response<Full<Bytes>> = err.to_http_response();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

/// `layer.layer(inner)` under a shorter name.
trait LayerService {
    fn layer_service<S>(&self, inner: S) -> tower_lru_cache::CacheService<S>;
}

impl LayerService for CacheLayer {
    fn layer_service<S>(&self, inner: S) -> tower_lru_cache::CacheService<S> {
        tower::Layer::layer(self, inner)
    }
}

/// A response body that yields its chunks one by one, sleeping before each.
fn slow_body(
    chunks: &'static [&'static [u8]],
    pause: Duration,
) -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send,
> {
    use futures_util::StreamExt;
    http_body_util::StreamBody::new(futures_util::stream::iter(chunks.iter()).then(
        move |chunk| async move {
            tokio::time::sleep(pause).await;
            Ok(Frame::data(Bytes::from_static(chunk)))
        },
    ))
}

#[tokio::test(start_paused = true)]
async fn leader_dropped_while_reading_the_response_body() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |_: Request<Full<Bytes>>| {
            calls.fetch_add(1, SeqCst);
            async move {
                Ok::<_, Infallible>(Response::new(slow_body(
                    &[b"ab", b"cd"],
                    Duration::from_secs(5),
                )))
            }
        })
    };
    let svc = builder().build().layer_service(inner);
    let collect = |svc: tower_lru_cache::CacheService<_>| async move {
        let res = svc.oneshot(post("a")).await?;
        let x_cache = res.headers()["x-cache"].clone();
        Ok::<_, BoxError>((x_cache, res.into_body().collect().await?.to_bytes()))
    };
    let leader = tokio::spawn(collect(svc.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let follower = tokio::spawn(collect(svc.clone()));
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The leader has the first chunk buffered when it is dropped.
    leader.abort();
    let (x_cache, body) = follower.await.unwrap().unwrap();
    assert_eq!(
        (x_cache.to_str().unwrap(), &body[..]),
        ("MISS", &b"abcd"[..])
    );
    assert_eq!(calls.load(SeqCst), 2);
    let (x_cache, body) = collect(svc.clone()).await.unwrap();
    assert_eq!(
        (x_cache.to_str().unwrap(), &body[..]),
        ("HIT", &b"abcd"[..])
    );
}

#[tokio::test(start_paused = true)]
async fn large_responses_stream_through_uncached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |_: Request<Full<Bytes>>| {
            calls.fetch_add(1, SeqCst);
            async move {
                Ok::<_, Infallible>(Response::new(slow_body(
                    &[b"0123", b"4567", b"89"],
                    Duration::from_millis(1),
                )))
            }
        })
    };
    let svc = builder().max_response_body(5).build().layer_service(inner);
    for _ in 0..2 {
        let res = svc.clone().oneshot(post("a")).await.unwrap();
        assert_eq!(res.headers()["x-cache"], "MISS");
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "0123456789"
        );
    }
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn grpc_answers_replay_with_trailers() {
    let inner = service_fn(|_: Request<Full<Bytes>>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
            Ok(Frame::trailers(trailers)),
        ];
        let res = Response::builder()
            .header("content-type", "application/grpc")
            .body(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames,
            )))?;
        Ok::<_, BoxError>(res)
    });
    let svc = builder().build().layer_service(inner);
    let req = || {
        Request::post("/pkg.Svc/Get")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"q")))
            .unwrap()
    };
    for expected in ["MISS", "HIT"] {
        let res = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.headers()["x-cache"], expected);
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(
            collected.trailers().map(|t| t["grpc-status"].clone()),
            Some(http::HeaderValue::from_static("0"))
        );
        assert_eq!(collected.to_bytes(), &b"\0\0\0\0\x01x"[..]);
    }
}

/// A request body that declares 10 bytes and sends about 6 KiB.
struct Liar(u8);

impl Body for Liar {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0 += 1;
        Poll::Ready((self.0 < 100).then(|| Ok(Frame::data(Bytes::from_static(&[0; 64])))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(10)
    }
}

impl From<Bytes> for Liar {
    fn from(_: Bytes) -> Self {
        Self(100)
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_longer_than_declared_is_refused() {
    let inner = service_fn(|_: Request<Liar>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    });
    let svc = builder().max_request_body(100).build().layer_service(inner);
    let err = svc
        .oneshot(Request::post("/").body(Liar(0)).unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<CacheError>()
            .map(CacheError::status_code),
        Some(StatusCode::BAD_REQUEST)
    );
}

/// In the answering form the same refusal is the cache's 400 answer, the service keeps
/// the inner service's error type, and the inner service's own errors come out as they
/// were.
#[tokio::test]
async fn the_answering_form_answers_refusals_and_keeps_inner_errors() {
    #[derive(Debug, PartialEq)]
    struct Upstream;
    impl std::fmt::Display for Upstream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("upstream")
        }
    }
    let inner = service_fn(|request: Request<Liar>| async move {
        if request.uri().path() == "/fail" {
            Err(Upstream)
        } else {
            Ok(Response::new(Full::<Bytes>::default()))
        }
    });
    let svc = builder().max_request_body(100).build().answer_refusals();
    let svc = tower::Layer::layer(&svc, inner);
    let answer: Result<Response<_>, Upstream> = svc
        .clone()
        .oneshot(Request::post("/").body(Liar(0)).unwrap())
        .await;
    let answer = answer.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(answer.headers()["content-type"], "application/json");
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, r#"{"error":"request body could not be read"}"#);

    let failed = svc
        .oneshot(Request::post("/fail").body(Liar(100)).unwrap())
        .await;
    assert_eq!(failed.err(), Some(Upstream));
}

/// A store that answers lookups only after a yield, as a remote store would.
struct RemoteLike(tower_lru_cache::MokaStore<tower_lru_cache::CachedResponse>);

impl tower_lru_cache::CacheStore<tower_lru_cache::CachedResponse> for RemoteLike {
    type Get = Pin<
        Box<
            dyn std::future::Future<
                    Output = Option<Arc<tower_lru_cache::Entry<tower_lru_cache::CachedResponse>>>,
                > + Send,
        >,
    >;

    fn get(&self, key: &tower_lru_cache::CacheKey) -> Self::Get {
        let found = self.0.get_now(key).flatten();
        Box::pin(async move {
            tokio::task::yield_now().await;
            found
        })
    }

    fn insert(
        &self,
        key: tower_lru_cache::CacheKey,
        entry: Arc<tower_lru_cache::Entry<tower_lru_cache::CachedResponse>>,
    ) {
        self.0.insert(key, entry);
    }

    fn remove(&self, key: &tower_lru_cache::CacheKey) {
        self.0.remove(key);
    }

    fn clear(&self) {
        self.0.clear();
    }

    fn entry_count(&self) -> u64 {
        self.0.entry_count()
    }
}

#[tokio::test(start_paused = true)]
async fn an_asynchronous_store_behaves_the_same() {
    let up = Upstream::new();
    let layer = builder()
        .ttl(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(30))
        .store(RemoteLike(tower_lru_cache::MokaStore::with_max_entries(10)))
        .build();
    let handle = layer.handle();
    let svc = tower::Layer::layer(&layer, up.service());
    let empty = || Request::get("/r").body(Full::default()).unwrap();
    assert_eq!(send(&svc, post("a")).await.unwrap().0, "MISS");
    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("HIT".into(), "answer 1 to a".into())
    );
    assert_eq!(send(&svc, empty()).await.unwrap().0, "MISS");
    assert_eq!(send(&svc, empty()).await.unwrap().0, "HIT");
    tokio::time::advance(Duration::from_secs(61)).await;
    up.set(Mode::Fail);
    assert_eq!(
        send(&svc, post("a")).await.unwrap(),
        ("STALE".into(), "answer 1 to a".into())
    );
    assert_eq!(counts(&handle.snapshot()), [2, 2, 1, 0, 0]);
}

/// A request body whose data is not there on the first poll (as a body still arriving
/// from the network): it wakes its task and answers `Pending` once, then yields its data.
struct Arriving {
    data: Option<Bytes>,
    waited: bool,
    polls: Arc<AtomicUsize>,
}

impl From<Bytes> for Arriving {
    fn from(data: Bytes) -> Self {
        Self {
            data: Some(data),
            waited: true,
            polls: Arc::default(),
        }
    }
}

impl Body for Arriving {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polls.fetch_add(1, SeqCst);
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.waited && self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |data| data.len() as u64);
        SizeHint::with_exact(len)
    }
}

#[tokio::test]
async fn a_request_body_still_arriving_is_read_then_keyed_like_a_buffered_one() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |req: Request<Arriving>| {
            calls.fetch_add(1, SeqCst);
            async move {
                // The inner service gets the body that was read, rebuilt.
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(Response::new(Full::new(body)))
            }
        })
    };
    let svc = tower::Layer::layer(&builder().build(), inner);
    let polls = Arc::new(AtomicUsize::new(0));
    let request = |waited: bool| {
        Request::post("/analyze")
            .body(Arriving {
                data: Some(Bytes::from_static(b"question")),
                waited,
                polls: polls.clone(),
            })
            .unwrap()
    };
    for (waited, expected) in [(false, "MISS"), (true, "HIT"), (false, "HIT")] {
        let res = svc.clone().oneshot(request(waited)).await.unwrap();
        assert_eq!(res.headers()["x-cache"], expected);
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "question"
        );
    }
    assert_eq!(calls.load(SeqCst), 1);
    // Each body is read to its end (data, then end: 2 polls), the arriving ones once more
    // for their `Pending`: 3 + 2 + 3.
    assert_eq!(polls.load(SeqCst), 8);
}
