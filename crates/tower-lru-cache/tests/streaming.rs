//! Streamed answers: the head is returned at once, the body streams to the caller while
//! the cache keeps a copy, and no request waits without bound on another's body.
#![cfg(feature = "http")]

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderValue, Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_lru_cache::Clock;
use tower_lru_cache::{CacheBody, CacheLayer, CacheService};

type TestBody = BoxBody<Bytes, Infallible>;

/// Chunks one every `pause`, then, if `forever`, nothing ever again.
fn slow(chunks: &'static [&'static str], pause: Duration, forever: bool) -> TestBody {
    let chunks = stream::iter(chunks.iter()).then(move |chunk| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(chunk.as_bytes())))
    });
    if forever {
        BodyExt::boxed(StreamBody::new(chunks.chain(stream::pending())))
    } else {
        BodyExt::boxed(StreamBody::new(chunks))
    }
}

fn upstream(
    calls: &Arc<AtomicUsize>,
    answer: impl Fn() -> Response<TestBody> + Clone + Send + Sync + 'static,
) -> impl Service<Request<Full<Bytes>>, Response = Response<TestBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let calls = calls.clone();
    service_fn(move |_: Request<Full<Bytes>>| {
        calls.fetch_add(1, SeqCst);
        let answer = answer.clone();
        async move { Ok::<_, Infallible>(answer()) }
    })
}

fn get() -> Request<Full<Bytes>> {
    Request::get("/stream").body(Full::default()).unwrap()
}

/// The response head, within `within`.
async fn head<S>(svc: &CacheService<S>, within: Duration) -> Response<CacheBody<TestBody>>
where
    CacheService<S>: Service<Request<Full<Bytes>>, Response = Response<CacheBody<TestBody>>, Error = BoxError>
        + Clone,
{
    tokio::time::timeout(within, svc.clone().oneshot(get()))
        .await
        .expect("the head was held back")
        .unwrap()
}

async fn next_chunk(body: &mut CacheBody<TestBody>) -> Bytes {
    body.frame().await.unwrap().unwrap().into_data().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_shows_its_head_and_chunks_as_they_come() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::builder()
        .clock(Clock::Tokio)
        .build()
        .layer(upstream(&calls, || {
            Response::new(slow(&["a", "b", "c"], Duration::from_secs(10), false))
        }));
    let start = tokio::time::Instant::now();
    let res = head(&svc, Duration::from_secs(1)).await;
    assert_eq!(res.headers()["x-cache"], "MISS");
    let mut body = res.into_body();
    assert_eq!(next_chunk(&mut body).await, "a");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(10),
        "the first chunk is not held back"
    );
    assert_eq!(body.collect().await.unwrap().to_bytes(), "bc");
    // The copy was complete and within the limit: stored.
    let res = head(&svc, Duration::from_secs(1)).await;
    assert_eq!(res.headers()["x-cache"], "HIT");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "abc");
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_get_the_complete_copy_of_a_streamed_answer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::builder().clock(Clock::Tokio).build();
    let handle = layer.handle();
    let svc = layer.layer(upstream(&calls, || {
        Response::new(slow(&["a", "b", "c"], Duration::from_secs(1), false))
    }));
    let leader = head(&svc, Duration::from_secs(1)).await;
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let res = svc.oneshot(get()).await.unwrap();
                let x_cache = res.headers()["x-cache"].clone();
                (x_cache, res.into_body().collect().await.unwrap().to_bytes())
            })
        })
        .collect();
    assert_eq!(
        leader.into_body().collect().await.unwrap().to_bytes(),
        "abc"
    );
    for waiter in waiters {
        let (x_cache, body) = waiter.await.unwrap();
        assert_eq!(
            (x_cache.to_str().unwrap(), &body[..]),
            ("MISS", &b"abc"[..])
        );
    }
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(handle.snapshot().coalesced, 5);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_never_ends_holds_nobody_back() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::builder()
        .clock(Clock::Tokio)
        .build()
        .layer(upstream(&calls, || {
            Response::new(slow(&["a"], Duration::ZERO, true))
        }));
    let leader = head(&svc, Duration::from_secs(1)).await;
    let mut leader_body = leader.into_body();
    assert_eq!(next_chunk(&mut leader_body).await, "a");
    // An identical request waits a bounded time for the copy, then calls for itself.
    let waiter = head(&svc, Duration::from_secs(60)).await;
    let mut waiter_body = waiter.into_body();
    assert_eq!(next_chunk(&mut waiter_body).await, "a");
    assert_eq!(calls.load(SeqCst), 2);
    // When the leader goes away, its unfinished copy is dropped, never stored.
    drop(leader_body);
    drop(waiter_body);
    let third = head(&svc, Duration::from_secs(1)).await;
    assert_eq!(third.headers()["x-cache"], "MISS");
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn event_streams_pass_through_and_are_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::builder()
        .clock(Clock::Tokio)
        .build()
        .layer(upstream(&calls, || {
            let mut res = Response::new(slow(
                &["data: 1\n\n", "data: 2\n\n"],
                Duration::from_secs(5),
                false,
            ));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            res
        }));
    for n in 1..=2 {
        let res = head(&svc, Duration::from_secs(1)).await;
        assert_eq!(res.headers()["x-cache"], "MISS");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "data: 1\n\ndata: 2\n\n");
        assert_eq!(calls.load(SeqCst), n);
    }
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_too_large_to_keep_is_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::builder()
        .clock(Clock::Tokio)
        .max_response_body(3)
        .build()
        .layer(upstream(&calls, || {
            Response::new(slow(&["ab", "cd", "ef"], Duration::from_secs(1), false))
        }));
    for _ in 0..2 {
        let res = head(&svc, Duration::from_secs(1)).await;
        assert_eq!(res.headers()["x-cache"], "MISS");
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "abcdef"
        );
    }
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_while_the_body_streams_keeps_it_out() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::builder().clock(Clock::Tokio).build();
    let handle = layer.handle();
    let svc = layer.layer(upstream(&calls, || {
        Response::new(slow(&["a", "b"], Duration::from_secs(1), false))
    }));
    let mut body = head(&svc, Duration::from_secs(1)).await.into_body();
    assert_eq!(next_chunk(&mut body).await, "a");
    handle.invalidate_all();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "b");
    let res = head(&svc, Duration::from_secs(1)).await;
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert_eq!(calls.load(SeqCst), 2);
}
