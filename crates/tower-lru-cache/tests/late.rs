//! A call's answer that comes after its request was answered otherwise: handed back to
//! the cache through the [`LateAnswer`] the cache puts on a miss's request, and stored by
//! the rules an answer in time meets.
#![cfg(feature = "http")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_lru_cache::{CacheBody, CacheHandle, CacheLayer, CacheLayerBuilder, Clock, LateAnswer};

/// An upstream that gives up at once (503), keeping each call's `LateAnswer` for the
/// test to hand the real answer to later, as a layer below the cache that lets a call
/// run on past its caller's deadline would.
#[derive(Clone, Default)]
struct GivesUp {
    late: Arc<Mutex<Vec<Option<LateAnswer>>>>,
}

impl GivesUp {
    fn calls(&self) -> usize {
        self.late.lock().unwrap().len()
    }

    fn last(&self) -> LateAnswer {
        let late = self.late.lock().unwrap();
        late.last()
            .cloned()
            .flatten()
            .expect("the miss's request carries a LateAnswer")
    }
}

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<CacheBody<Full<Bytes>>>, BoxError>;

/// The cache in front of [`GivesUp`], the upstream, and the cache's handle.
struct Setup {
    svc: Svc,
    upstream: GivesUp,
    handle: CacheHandle,
}

fn cache(max_response_body: usize) -> Setup {
    cache_with(CacheLayer::builder().max_response_body(max_response_body))
}

fn cache_with(builder: CacheLayerBuilder) -> Setup {
    let upstream = GivesUp::default();
    let late = Arc::clone(&upstream.late);
    let inner = service_fn(move |req: Request<Full<Bytes>>| {
        late.lock()
            .unwrap()
            .push(req.extensions().get::<LateAnswer>().cloned());
        let mut res = Response::new(Full::new(Bytes::from_static(b"not now")));
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        std::future::ready(Ok::<_, BoxError>(res))
    });
    let layer = builder.build();
    let handle = layer.handle();
    Setup {
        svc: BoxCloneService::new(layer.layer(inner)),
        upstream,
        handle,
    }
}

fn ask() -> Request<Full<Bytes>> {
    Request::get("/analysis/7").body(Full::default()).unwrap()
}

fn answer(body: &'static str, cache_control: Option<&'static str>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    if let Some(value) = cache_control {
        res.headers_mut()
            .insert(header::CACHE_CONTROL, value.parse().unwrap());
    }
    res
}

async fn body(res: Response<impl http_body::Body<Data = Bytes, Error = BoxError>>) -> Bytes {
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn a_late_answer_is_stored_and_answers_the_next_request() {
    let Setup { svc, upstream, .. } = cache(1024);
    let first = svc.clone().oneshot(ask()).await.unwrap();
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.calls(), 1);

    assert!(upstream.last().store(answer("the analysis", None)).await);

    let next = svc.clone().oneshot(ask()).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(next.headers()["x-cache"], "HIT");
    assert_eq!(body(next).await, "the analysis");
    assert_eq!(upstream.calls(), 1, "no second call");
}

#[tokio::test]
async fn a_late_answer_the_rules_refuse_is_not_stored() {
    let Setup { svc, upstream, .. } = cache(1024);
    svc.clone().oneshot(ask()).await.unwrap();
    assert!(
        !upstream
            .last()
            .store(answer("private", Some("no-store")))
            .await
    );
    let mut failed = answer("boom", None);
    *failed.status_mut() = StatusCode::BAD_GATEWAY;
    assert!(!upstream.last().store(failed).await);

    let next = svc.clone().oneshot(ask()).await.unwrap();
    assert_eq!(next.headers()["x-cache"], "MISS");
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn a_late_answer_larger_than_the_limit_is_not_stored() {
    let Setup { svc, upstream, .. } = cache(8);
    svc.clone().oneshot(ask()).await.unwrap();
    assert!(!upstream.last().store(answer("more than eight", None)).await);
    svc.clone().oneshot(ask()).await.unwrap();
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn an_invalidation_since_the_call_started_keeps_a_late_answer_out() {
    let Setup {
        svc,
        upstream,
        handle,
    } = cache(1024);
    svc.clone().oneshot(ask()).await.unwrap();
    handle.invalidate_all();
    assert!(!upstream.last().store(answer("stale by now", None)).await);
    svc.clone().oneshot(ask()).await.unwrap();
    assert_eq!(upstream.calls(), 2);
}

/// A late answer comes after a newer call for the same key has stored its own: the
/// newer entry stays.
#[tokio::test(start_paused = true)]
async fn a_late_answer_does_not_overwrite_an_entry_stored_since_its_call_started() {
    let late = Arc::new(Mutex::new(None::<LateAnswer>));
    let calls = Arc::new(Mutex::new(0_usize));
    let inner = {
        let late = Arc::clone(&late);
        let calls = Arc::clone(&calls);
        service_fn(move |req: Request<Full<Bytes>>| {
            let mut calls = calls.lock().unwrap();
            *calls += 1;
            let res = if *calls == 1 {
                // The first call gives up on its caller; its answer comes later.
                *late.lock().unwrap() = req.extensions().get::<LateAnswer>().cloned();
                let mut res = Response::new(Full::new(Bytes::from_static(b"not now")));
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res
            } else {
                answer("newer", None)
            };
            std::future::ready(Ok::<_, BoxError>(res))
        })
    };
    let svc = CacheLayer::builder().build().layer(inner);
    svc.clone().oneshot(ask()).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = svc.clone().oneshot(ask()).await.unwrap();
    assert_eq!(body(second).await, "newer");

    tokio::time::advance(Duration::from_secs(1)).await;
    let first_call = late.lock().unwrap().take().expect("a LateAnswer");
    assert!(!first_call.store(answer("older", None)).await);

    let next = svc.clone().oneshot(ask()).await.unwrap();
    assert_eq!(next.headers()["x-cache"], "HIT");
    assert_eq!(body(next).await, "newer");
    assert_eq!(*calls.lock().unwrap(), 2);
}

/// Until when a request may wait for a late answer, as a layer above the cache would
/// set it.
#[derive(Clone, Copy)]
struct WaitUntil(tokio::time::Instant);

/// The cache in front of [`GivesUp`], its requests waiting for late answers until their
/// [`WaitUntil`].
fn waiting_cache() -> Setup {
    cache_with(
        CacheLayer::builder()
            .wait_for_late_answers(|extensions| extensions.get::<WaitUntil>().map(|until| until.0)),
    )
}

fn ask_waiting(for_: Duration) -> Request<Full<Bytes>> {
    let mut req = ask();
    req.extensions_mut()
        .insert(WaitUntil(tokio::time::Instant::now() + for_));
    req
}

#[tokio::test(start_paused = true)]
async fn a_request_for_a_key_whose_call_runs_on_waits_for_its_answer() {
    let Setup { svc, upstream, .. } = waiting_cache();
    // The first call gives up on its caller and runs on (its LateAnswer is kept).
    svc.clone().oneshot(ask()).await.unwrap();
    let next = tokio::spawn(svc.clone().oneshot(ask_waiting(Duration::from_secs(60))));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!next.is_finished(), "waits for the call");
    assert!(upstream.last().store(answer("the analysis", None)).await);
    let next = next.await.unwrap().unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(next.headers()["x-cache"], "MISS");
    assert_eq!(body(next).await, "the analysis");
    assert_eq!(upstream.calls(), 1, "no second call");
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_a_call_that_runs_on_no_longer_than_it_may() {
    let Setup { svc, upstream, .. } = waiting_cache();
    svc.clone().oneshot(ask()).await.unwrap();
    let start = tokio::time::Instant::now();
    // Until 10 s: then it makes its own call.
    svc.clone()
        .oneshot(ask_waiting(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(upstream.calls(), 2);
    // Without a bound, no wait at all.
    svc.clone().oneshot(ask()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_ends_without_an_answer_releases_the_requests_waiting_for_it() {
    let Setup { svc, upstream, .. } = waiting_cache();
    svc.clone().oneshot(ask()).await.unwrap();
    let next = tokio::spawn(svc.clone().oneshot(ask_waiting(Duration::from_secs(60))));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The call running on ends with nothing stored: every copy of its LateAnswer is
    // dropped.
    upstream.late.lock().unwrap().clear();
    let start = tokio::time::Instant::now();
    let next = next.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "told at once");
    assert_eq!(next.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        upstream.calls(),
        1,
        "its own call, the only one since the clear"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stored_late_answer_is_not_served_once_invalidated_or_expired() {
    let Setup {
        svc,
        upstream,
        handle,
    } = cache_with(
        CacheLayer::builder()
            .clock(Clock::Tokio)
            .ttl(Duration::from_secs(10))
            .wait_for_late_answers(|extensions| extensions.get::<WaitUntil>().map(|until| until.0)),
    );
    svc.clone().oneshot(ask()).await.unwrap();
    // Stored through a copy of the call's LateAnswer; the upstream keeps another.
    assert!(upstream.last().store(answer("old", None)).await);
    handle.invalidate_all();
    // A miss: a call of its own, not the invalidated answer.
    let next = svc
        .clone()
        .oneshot(ask_waiting(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.calls(), 2);

    // The same once the entry has expired.
    assert!(upstream.last().store(answer("older", None)).await);
    tokio::time::advance(Duration::from_secs(11)).await;
    let next = svc
        .clone()
        .oneshot(ask_waiting(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.calls(), 3);
}

/// Each call's [`LateAnswer`], as an upstream that lets calls run on keeps them.
type Kept = Arc<Mutex<Vec<Option<LateAnswer>>>>;

/// A waiting cache in front of an upstream that gives up after 1 s with a 503 (with
/// `cache_control`), keeping each call's [`LateAnswer`].
fn slow_cache(cache_control: Option<&'static str>) -> (Svc, Kept) {
    slow_cache_with(CacheLayer::builder(), cache_control)
}

/// [`slow_cache`], built from `builder`.
fn slow_cache_with(builder: CacheLayerBuilder, cache_control: Option<&'static str>) -> (Svc, Kept) {
    let late = Kept::default();
    let inner = service_fn({
        let late = Arc::clone(&late);
        move |req: Request<Full<Bytes>>| {
            late.lock()
                .unwrap()
                .push(req.extensions().get::<LateAnswer>().cloned());
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut res = answer("not now", cache_control);
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, BoxError>(res)
            }
        }
    });
    let svc = builder
        .wait_for_late_answers(|extensions| extensions.get::<WaitUntil>().map(|until| until.0))
        .build()
        .layer(inner);
    (BoxCloneService::new(svc), late)
}

/// The [`LateAnswer`] of the `n`th call.
fn call(late: &Kept, n: usize) -> LateAnswer {
    late.lock().unwrap()[n].clone().expect("a LateAnswer")
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_a_call_whose_early_answer_is_not_shared_waits_for_the_call() {
    // An early answer of the caller's own (`no-store`: neither stored nor shared).
    let (svc, late) = slow_cache(Some("no-store"));
    let first = tokio::spawn(svc.clone().oneshot(ask()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(svc.clone().oneshot(ask_waiting(Duration::from_secs(60))));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(first.is_finished());
    assert!(!second.is_finished(), "waits for the call");
    assert!(call(&late, 0).store(answer("the analysis", None)).await);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(body(second).await, "the analysis");
    assert_eq!(late.lock().unwrap().len(), 1, "no second call");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_waited_for_one_call_running_on_waits_for_the_next_one_it_waits_on() {
    let (svc, late) = slow_cache(None);
    // The first call gives up at 1 s and runs on.
    svc.clone().oneshot(ask()).await.unwrap();
    // Two requests arrive meanwhile and wait for it, with a minute to wait.
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(ask_waiting(Duration::from_secs(60)))))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // It ends without an answer: one of them calls, the other waits on its call, which
    // gives up on its caller at once (a second later) and runs on in turn.
    late.lock().unwrap()[0] = None;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(late.lock().unwrap().len(), 2);
    assert!(call(&late, 1).store(answer("the analysis", None)).await);
    let mut statuses = Vec::new();
    for request in waiting {
        statuses.push(request.await.unwrap().unwrap().status());
    }
    statuses.sort();
    // The caller had its early answer; the other, with time left, the call's.
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE],
        "{statuses:?}"
    );
    assert_eq!(late.lock().unwrap().len(), 2, "no third call");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_leader_failed_gets_a_stale_entry_and_a_request_arriving_waits() {
    let (svc, late) = slow_cache_with(
        CacheLayer::builder()
            .clock(Clock::Tokio)
            .ttl(Duration::from_secs(10))
            .stale_if_error(Duration::from_secs(600)),
        None,
    );
    svc.clone().oneshot(ask()).await.unwrap();
    assert!(call(&late, 0).store(answer("old", None)).await);
    tokio::time::advance(Duration::from_secs(11)).await;

    // The refill fails at once for its caller and runs on; the request waiting on it
    // is answered with the stale entry then, rather than wait for the call.
    let leader = tokio::spawn(svc.clone().oneshot(ask()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = svc
        .clone()
        .oneshot(ask_waiting(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(waiter.headers()["x-cache"], "STALE");
    assert_eq!(body(waiter).await, "old");
    assert_eq!(leader.await.unwrap().unwrap().headers()["x-cache"], "STALE");

    // A request arriving while the call runs on has no failure of its own: it waits.
    let arriving = tokio::spawn(svc.clone().oneshot(ask_waiting(Duration::from_secs(60))));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!arriving.is_finished(), "waits for the call");
    assert!(call(&late, 1).store(answer("new", None)).await);
    let arriving = arriving.await.unwrap().unwrap();
    assert_eq!(arriving.headers()["x-cache"], "MISS");
    assert_eq!(body(arriving).await, "new");
    assert_eq!(late.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_answered_by_a_call_running_on_counts_as_coalesced_once() {
    let Setup {
        svc,
        upstream,
        handle,
    } = waiting_cache();
    svc.clone().oneshot(ask()).await.unwrap();
    let next = tokio::spawn(svc.clone().oneshot(ask_waiting(Duration::from_secs(60))));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(upstream.last().store(answer("the analysis", None)).await);
    next.await.unwrap().unwrap();
    svc.clone().oneshot(ask()).await.unwrap();
    let snapshot = handle.snapshot();
    assert_eq!(
        (snapshot.misses, snapshot.coalesced, snapshot.hits),
        (1, 1, 1),
        "{snapshot:?}"
    );

    // A request that waited, then found nothing stored, counts once too: as its own call.
    handle.invalidate_all();
    svc.clone().oneshot(ask()).await.unwrap();
    let next = tokio::spawn(svc.clone().oneshot(ask_waiting(Duration::from_secs(60))));
    tokio::time::sleep(Duration::from_secs(1)).await;
    upstream.late.lock().unwrap().clear();
    next.await.unwrap().unwrap();
    let snapshot = handle.snapshot();
    assert_eq!(
        (snapshot.misses, snapshot.coalesced, snapshot.hits),
        (3, 1, 1),
        "{snapshot:?}"
    );
    assert_eq!(
        upstream.calls(),
        1,
        "its own call, the only one since the clear"
    );
}
