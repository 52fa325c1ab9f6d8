//! The call timeout.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use support::{UpstreamDown, request};
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_breaker::{BreakerError, TimeoutLayer};

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_times_out_and_is_cancelled() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let slow = service_fn(move |_: Request<Bytes>| {
        let guard = SetOnDrop(Arc::clone(&flag));
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(300)).await;
            Ok::<_, BoxError>(Response::new(Bytes::new()))
        }
    });
    let service = TimeoutLayer::new(Duration::from_secs(120)).layer(slow);
    let started = tokio::time::Instant::now();
    let error = service.oneshot(request()).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(120));
    assert_eq!(
        error.downcast_ref::<BreakerError>(),
        Some(&BreakerError::Timeout {
            after: Duration::from_secs(120)
        })
    );
    assert!(dropped.load(Ordering::SeqCst), "the inner call was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_call_within_the_timeout_and_inner_errors_pass_unchanged() {
    let quick = service_fn(|_: Request<Bytes>| async {
        tokio::time::sleep(Duration::from_secs(119)).await;
        Ok::<_, BoxError>(Response::new(Bytes::from_static(b"ok")))
    });
    let response = TimeoutLayer::default()
        .layer(quick)
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.body(), "ok");

    let failing = service_fn(|_: Request<Bytes>| async {
        Err::<Response<Bytes>, BoxError>(UpstreamDown.into())
    });
    let error = TimeoutLayer::default()
        .layer(failing)
        .oneshot(request())
        .await
        .unwrap_err();
    assert!(error.is::<UpstreamDown>());
}
