//! What a shared cache may store and share (RFC 9111 for shared caches), and how
//! single-flight follows the same rules. Each test drives the cache as a user would.
#![cfg(feature = "http")]

use std::{
    convert::Infallible,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_lru_cache::Clock;
use tower_lru_cache::{
    CacheBody, CacheLayer, CacheLayerBuilder, CacheService, Partition, RequestKey,
};

type TestBody = BoxBody<Bytes, Infallible>;
type Answer = Arc<dyn Fn(&http::request::Parts, usize) -> Response<TestBody> + Send + Sync>;

#[derive(Debug)]
struct UpstreamError;

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream failed")
    }
}

impl std::error::Error for UpstreamError {}

/// A scripted upstream: counts its calls and how many run at once.
#[derive(Clone)]
struct Up {
    calls: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    delay: Duration,
    answer: Answer,
}

impl Up {
    fn new(
        delay: Duration,
        answer: impl Fn(&http::request::Parts, usize) -> Response<TestBody> + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            active: Arc::default(),
            max_active: Arc::default(),
            fail: Arc::default(),
            delay,
            answer: Arc::new(answer),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<TestBody>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let this = self.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, SeqCst) + 1;
                let now = this.active.fetch_add(1, SeqCst) + 1;
                this.max_active.fetch_max(now, SeqCst);
                tokio::time::sleep(this.delay).await;
                this.active.fetch_sub(1, SeqCst);
                if this.fail.load(SeqCst) {
                    return Err(Box::new(UpstreamError) as BoxError);
                }
                let (parts, _) = req.into_parts();
                Ok((this.answer)(&parts, n))
            }
        })
    }
}

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).boxed()
}

fn ok(n: usize) -> Response<TestBody> {
    Response::new(full(format!("answer {n}")))
}

fn with_header(name: &'static str, value: &'static str, n: usize) -> Response<TestBody> {
    let mut res = ok(n);
    res.headers_mut()
        .insert(name, HeaderValue::from_static(value));
    res
}

fn builder() -> CacheLayerBuilder {
    CacheLayer::builder().clock(Clock::Tokio).name("sharing")
}

type Svc<S> = CacheService<S>;

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

/// `x-cache`, the body, and the trailers.
async fn send<S>(
    svc: &Svc<S>,
    req: Request<Full<Bytes>>,
) -> Result<(String, String, Option<HeaderMap>), BoxError>
where
    Svc<S>: Service<Request<Full<Bytes>>, Response = Response<CacheBody<TestBody>>, Error = BoxError>
        + Clone,
{
    send_owned(svc.clone(), req).await
}

async fn send_owned<S>(
    svc: Svc<S>,
    req: Request<Full<Bytes>>,
) -> Result<(String, String, Option<HeaderMap>), BoxError>
where
    Svc<S>:
        Service<Request<Full<Bytes>>, Response = Response<CacheBody<TestBody>>, Error = BoxError>,
{
    let res = svc.oneshot(req).await?;
    let x_cache = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let collected = res.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    Ok((
        x_cache,
        String::from_utf8_lossy(&body).into_owned(),
        trailers,
    ))
}

async fn send_many<S>(
    svc: &Svc<S>,
    reqs: Vec<Request<Full<Bytes>>>,
) -> Vec<Result<String, BoxError>>
where
    Svc<S>: Service<Request<Full<Bytes>>, Response = Response<CacheBody<TestBody>>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    <Svc<S> as Service<Request<Full<Bytes>>>>::Future: Send,
{
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|req| {
            let svc = svc.clone();
            tokio::spawn(async move { send_owned(svc, req).await.map(|(_, body, _)| body) })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

fn grpc(
    n: usize,
    header_status: Option<&'static str>,
    trailer_status: Option<&'static str>,
) -> Response<TestBody> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(Bytes::from(format!("answer {n}"))))];
    if let Some(status) = trailer_status {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let mut res = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Some(status) = header_status {
        res.headers_mut()
            .insert("grpc-status", HeaderValue::from_static(status));
    }
    res
}

fn grpc_req() -> Request<Full<Bytes>> {
    Request::post("/pkg.Svc/Get")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"q")))
        .unwrap()
}

// Item 1: gRPC failures are HTTP 200 with `grpc-status` != 0.

#[tokio::test(start_paused = true)]
async fn grpc_failures_are_never_stored() {
    for (header_status, trailer_status) in [(Some("5"), None), (None, Some("13")), (None, None)] {
        let up = Up::new(Duration::ZERO, move |_, n| {
            grpc(n, header_status, trailer_status)
        });
        let svc = builder().build().layer(up.service());
        for n in 1..=2 {
            let (x_cache, body, _) = send(&svc, grpc_req()).await.unwrap();
            assert_eq!(
                (x_cache.as_str(), body),
                ("MISS", format!("answer {n}")),
                "{header_status:?} {trailer_status:?}"
            );
        }
    }
    // A success is stored, trailers and all.
    let up = Up::new(Duration::ZERO, |_, n| grpc(n, None, Some("0")));
    let svc = builder().build().layer(up.service());
    assert_eq!(send(&svc, grpc_req()).await.unwrap().0, "MISS");
    let (x_cache, _, trailers) = send(&svc, grpc_req()).await.unwrap();
    assert_eq!(x_cache, "HIT");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test(start_paused = true)]
async fn grpc_failures_fall_back_to_a_stale_entry() {
    let failing = Arc::new(AtomicUsize::new(0));
    let up = Up::new(Duration::ZERO, {
        let failing = failing.clone();
        move |_, n| match failing.load(SeqCst) {
            0 => grpc(n, None, Some("0")),
            1 => grpc(n, Some("14"), None),
            _ => grpc(n, None, Some("14")),
        }
    });
    let svc = builder()
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(60))
        .build()
        .layer(up.service());
    assert_eq!(send(&svc, grpc_req()).await.unwrap().0, "MISS");
    tokio::time::advance(Duration::from_secs(20)).await;
    for mode in [1, 2] {
        failing.store(mode, SeqCst);
        let (x_cache, body, trailers) = send(&svc, grpc_req()).await.unwrap();
        assert_eq!(
            (x_cache.as_str(), body.as_str()),
            ("STALE", "answer 1"),
            "{mode}"
        );
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }
}

// Item 3: what single-flight shares follows the rules of what may be stored.

#[tokio::test(start_paused = true)]
async fn answers_that_may_not_be_stored_are_not_shared() {
    for cc in ["private", "no-store", "no-cache"] {
        let up = Up::new(Duration::from_secs(5), move |_, n| {
            with_header("cache-control", cc, n)
        });
        let svc = builder().build().layer(up.service());
        let mut bodies: Vec<String> = send_many(&svc, (0..4).map(|_| get("/me")).collect())
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        bodies.sort();
        assert_eq!(
            bodies,
            ["answer 1", "answer 2", "answer 3", "answer 4"],
            "{cc}"
        );
        assert_eq!(up.calls(), 4, "{cc}");
    }
}

// Item 4: RFC 9111 §3.5, requests with `Authorization`.

#[tokio::test(start_paused = true)]
async fn authorized_answers_are_not_replayed_to_others() {
    let authorized = |uri: &str| {
        Request::get(uri)
            .header(header::AUTHORIZATION, "Bearer ada")
            .body(Full::default())
            .unwrap()
    };
    let up = Up::new(Duration::ZERO, |parts, n| match parts.uri.query() {
        Some(cc) => with_header(
            "cache-control",
            if cc == "public" {
                "public"
            } else {
                "s-maxage=60"
            },
            n,
        ),
        None => ok(n),
    });
    let svc = builder().build().layer(up.service());
    assert_eq!(send(&svc, authorized("/me")).await.unwrap().1, "answer 1");
    assert_eq!(
        send(&svc, get("/me")).await.unwrap().1,
        "answer 2",
        "an anonymous request must not get Ada's answer"
    );
    // Unless the answer says it may be shared.
    for q in ["/pub?public", "/pub?s-maxage"] {
        send(&svc, authorized(q)).await.unwrap();
        assert_eq!(send(&svc, get(q)).await.unwrap().0, "HIT", "{q}");
    }
    // Concurrent anonymous requests are not handed the authorized answer either.
    let up = Up::new(Duration::from_secs(5), |_, n| ok(n));
    let svc = builder().build().layer(up.service());
    let mut bodies: Vec<String> = send_many(&svc, vec![authorized("/me"), get("/me")])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["answer 1", "answer 2"]);
    // A cache partitioned by user stores it for that user.
    let up = Up::new(Duration::ZERO, |_, n| ok(n));
    let svc = builder()
        .partition(Partition::header(header::AUTHORIZATION))
        .build()
        .layer(up.service());
    send(&svc, authorized("/me")).await.unwrap();
    assert_eq!(send(&svc, authorized("/me")).await.unwrap().0, "HIT");
}

// Item 5: `Set-Cookie`.

#[tokio::test(start_paused = true)]
async fn set_cookie_answers_are_neither_stored_nor_shared() {
    let up = Up::new(Duration::from_secs(1), |_, n| {
        with_header("set-cookie", "session=ada", n)
    });
    let svc = builder().build().layer(up.service());
    assert_eq!(send(&svc, get("/")).await.unwrap().0, "MISS");
    assert_eq!(send(&svc, get("/")).await.unwrap().0, "MISS");
    let results = send_many(&svc, (0..3).map(|_| get("/")).collect()).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(up.calls(), 5);
}

// Item 6: the response's `Vary`.

#[tokio::test(start_paused = true)]
async fn the_response_vary_is_honoured() {
    let up = Up::new(Duration::from_secs(1), |parts, n| {
        let lang = parts
            .headers
            .get(header::ACCEPT_LANGUAGE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let mut res = Response::new(full(format!("{lang} {n}")));
        res.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept-Language"));
        res
    });
    let svc = builder().build().layer(up.service());
    let lang = |l: &'static str| {
        Request::get("/")
            .header(header::ACCEPT_LANGUAGE, l)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(send(&svc, lang("en")).await.unwrap().1, "en 1");
    assert_eq!(send(&svc, lang("fr")).await.unwrap().1, "fr 2");
    let (x_cache, body, _) = send(&svc, lang("fr")).await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_str()), ("HIT", "fr 2"));
    assert!(send(&svc, get("/")).await.unwrap().1.starts_with(' '));
    // A waiter whose header differs from the leader's is not handed the leader's answer.
    let bodies = send_many(&svc, vec![lang("de"), lang("it")]).await;
    let bodies: Vec<String> = bodies.into_iter().map(Result::unwrap).collect();
    assert!(
        bodies[0].starts_with("de ") && bodies[1].starts_with("it "),
        "{bodies:?}"
    );
}

// Item 7: ranges and partial content.

#[tokio::test(start_paused = true)]
async fn range_requests_bypass_and_partial_content_is_not_stored() {
    let up = Up::new(Duration::ZERO, |parts, n| {
        if parts.headers.contains_key(header::RANGE) || parts.uri.query() == Some("partial") {
            let mut res = Response::new(full("frag"));
            *res.status_mut() = StatusCode::PARTIAL_CONTENT;
            res
        } else {
            ok(n)
        }
    });
    let svc = builder().build().layer(up.service());
    let ranged = Request::get("/file")
        .header(header::RANGE, "bytes=0-3")
        .body(Full::default())
        .unwrap();
    let (x_cache, body, _) = send(&svc, ranged).await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_str()), ("BYPASS", "frag"));
    assert_eq!(send(&svc, get("/file")).await.unwrap().1, "answer 2");
    // A 206 to a request without `Range` is not stored either.
    send(&svc, get("/file?partial")).await.unwrap();
    assert_eq!(send(&svc, get("/file?partial")).await.unwrap().0, "MISS");
}

// Item 8: `vary(HOST)` over HTTP/2.

#[tokio::test(start_paused = true)]
async fn host_in_the_key_separates_http2_authorities() {
    let up = Up::new(Duration::ZERO, |parts, n| {
        Response::new(full(format!("{} {n}", parts.uri.host().unwrap_or("-"))))
    });
    let svc = builder()
        .key(RequestKey::new().vary(header::HOST))
        .build()
        .layer(up.service());
    let h2 = |uri: &str| {
        Request::get(uri)
            .version(Version::HTTP_2)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(
        send(&svc, h2("https://a.example/x")).await.unwrap().1,
        "a.example 1"
    );
    assert_eq!(
        send(&svc, h2("https://b.example/x")).await.unwrap().1,
        "b.example 2"
    );
    assert_eq!(
        send(&svc, h2("https://a.example/x")).await.unwrap().0,
        "HIT"
    );
    // HTTP/1.1 with a `Host` header shares the HTTP/2 entry of the same host.
    let h1 = Request::get("/x")
        .header(header::HOST, "a.example")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&svc, h1).await.unwrap().0, "HIT");
}

// Item 9: staleness is judged when the stale entry would be served.

#[tokio::test(start_paused = true)]
async fn a_stale_entry_is_not_served_past_its_grace() {
    let up = Up::new(Duration::from_secs(60), |_, n| ok(n));
    let svc = builder()
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(10))
        .build()
        .layer(up.service());
    assert_eq!(send(&svc, get("/")).await.unwrap().0, "MISS");
    tokio::time::advance(Duration::from_secs(15)).await;
    up.fail.store(true, SeqCst);
    // The refill fails at age 75 s, past TTL + grace (20 s): no stale answer.
    let err = send(&svc, get("/")).await.unwrap_err();
    assert!(err.downcast_ref::<UpstreamError>().is_some(), "{err}");
}

// Item 10: `max_bytes` bounds real memory.

struct Owner {
    bytes: Vec<u8>,
    dropped: Arc<AtomicBool>,
}

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stored_answer_does_not_pin_the_buffer_it_was_read_from() {
    let body_dropped = Arc::new(AtomicBool::new(false));
    let header_dropped = Arc::new(AtomicBool::new(false));
    let up = Up::new(Duration::ZERO, {
        let (body_dropped, header_dropped) = (body_dropped.clone(), header_dropped.clone());
        move |_, _| {
            let buffer = Bytes::from_owner(Owner {
                bytes: vec![b'x'; 1 << 20],
                dropped: body_dropped.clone(),
            });
            let mut res = Response::new(full(buffer.slice(0..10)));
            let head = Bytes::from_owner(Owner {
                bytes: vec![b'y'; 1 << 20],
                dropped: header_dropped.clone(),
            });
            res.headers_mut().insert(
                HeaderName::from_static("x-note"),
                HeaderValue::from_maybe_shared(head.slice(0..4)).unwrap(),
            );
            res
        }
    });
    let layer = builder().max_bytes(1 << 20).build();
    let svc = layer.layer(up.service());
    assert_eq!(send(&svc, get("/")).await.unwrap().0, "MISS");
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT");
    assert_eq!(res.headers()["x-note"], "yyyy");
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "xxxxxxxxxx"
    );
    assert!(
        body_dropped.load(SeqCst),
        "the 1 MiB body buffer is still alive"
    );
    assert!(
        header_dropped.load(SeqCst),
        "the 1 MiB header buffer is still alive"
    );
}

// Item 11: an invalidation is not undone by a flight that started before it.

#[tokio::test(start_paused = true)]
async fn an_invalidation_during_a_flight_is_not_undone() {
    let up = Up::new(Duration::from_secs(10), |_, n| ok(n));
    let layer = builder().build();
    let handle = layer.handle();
    let svc = layer.layer(up.service());
    let flight = tokio::spawn(send_owned(svc.clone(), get("/")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle.invalidate_all();
    assert_eq!(flight.await.unwrap().unwrap().1, "answer 1");
    let (x_cache, body, _) = send(&svc, get("/")).await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_str()), ("MISS", "answer 2"));
}

// Item 12: without shared failures, the waiters behind a failed leader do not all call
// the upstream at once.

#[tokio::test(start_paused = true)]
async fn unshared_failures_reach_the_upstream_one_call_at_a_time() {
    let up = Up::new(Duration::from_secs(5), |_, n| ok(n));
    up.fail.store(true, SeqCst);
    let svc = builder().share_failures(false).build().layer(up.service());
    let results = send_many(&svc, (0..10).map(|_| get("/")).collect()).await;
    for result in results {
        let err = result.unwrap_err();
        assert!(err.downcast_ref::<UpstreamError>().is_some(), "{err}");
    }
    assert_eq!(up.max_active.load(SeqCst), 1);
    // Once the upstream recovers, one success answers every waiter.
    up.fail.store(false, SeqCst);
    let before = up.calls();
    let results = send_many(&svc, (0..10).map(|_| get("/")).collect()).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_deref().ok() == Some(&format!("answer {}", before + 1)[..]))
    );
    assert_eq!(up.calls(), before + 1);
}
