//! Every duration setting of the queue's builder at `Duration::ZERO` and `Duration::MAX`:
//! sane behaviour, never a panic, on paused time.

#![cfg(feature = "http")]

use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_priority_queue::{
    HttpOverload, Limit, Priority, PriorityQueueLayer, QueueError, Refusal,
};

type Request = http::Request<()>;

fn status(code: u16, retry_after: &str) -> http::Response<()> {
    http::Response::builder()
        .status(code)
        .header("retry-after", retry_after)
        .body(())
        .expect("response")
}

#[tokio::test(start_paused = true)]
async fn retry_after_hints_of_zero_and_max_render() {
    for hint in [Duration::ZERO, Duration::MAX] {
        let layer = PriorityQueueLayer::builder()
            .max_in_flight(1)
            .capacity(0)
            .retry_after(hint)
            .build();
        let service = layer.layer(service_fn(|_: Request| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(())
        }));
        let busy = tokio::spawn(service.clone().oneshot(http::Request::new(())));
        tokio::task::yield_now().await;
        let error = service
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .expect_err("the room holds nobody");
        let refusal = error.downcast_ref::<QueueError>().expect("a queue refusal");
        let response: http::Response<bytes::Bytes> = refusal.to_http_response();
        assert_eq!(response.status(), 503);
        let header = response.headers()["retry-after"].to_str().expect("ascii");
        let expected = if hint.is_zero() {
            "0"
        } else {
            "18446744073709551615"
        };
        assert_eq!(header, expected);
        busy.await.expect("no panic").expect("answered");
    }
}

#[tokio::test(start_paused = true)]
async fn max_waits_and_aging_of_zero_and_max() {
    for wait in [Duration::ZERO, Duration::MAX] {
        for aging in [Duration::ZERO, Duration::MAX] {
            let layer = PriorityQueueLayer::builder()
                .max_in_flight(1)
                .max_wait(Priority::Low, wait)
                .aging(aging)
                .build();
            let service = layer.layer(service_fn(|_: Request| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, BoxError>(())
            }));
            let busy = tokio::spawn(service.clone().oneshot(http::Request::new(())));
            tokio::task::yield_now().await;
            let low = http::Request::builder()
                .header("x-priority", "low")
                .body(())
                .expect("request");
            let started = Instant::now();
            let result = service.clone().oneshot(low).await;
            if wait.is_zero() {
                assert!(result.is_err(), "no wait allowed");
                assert_eq!(started.elapsed(), Duration::ZERO);
            } else {
                assert!(result.is_ok(), "no limit on the wait");
                assert_eq!(started.elapsed(), Duration::from_secs(2));
            }
            busy.await.expect("no panic").expect("answered");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cool_down_caps_of_zero_and_max() {
    for cap in [Duration::ZERO, Duration::MAX] {
        let upstream = service_fn(|_: Request| async {
            // An upstream asking for a pause far too long to represent.
            Ok::<_, BoxError>(status(429, "99999999999999999999999"))
        });
        let layer = PriorityQueueLayer::builder()
            .limit(Limit::adaptive().initial(4).max_cooldown(cap))
            .overload_classifier(HttpOverload::new())
            .max_wait_all(Duration::from_secs(10))
            .build();
        let handle = layer.handle();
        let service = layer.layer(upstream);
        service
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .expect("answered");
        let snapshot = handle.snapshot();
        if cap.is_zero() {
            assert_eq!(snapshot.cooling_down_secs, 0, "cool-downs are off");
            service
                .clone()
                .oneshot(http::Request::new(()))
                .await
                .expect("admitted at once");
        } else {
            assert!(snapshot.cooling_down_secs > 300 * 24 * 3600, "{snapshot:?}");
            let error = service
                .clone()
                .oneshot(http::Request::new(()))
                .await
                .expect_err("refused: the pause outlasts the wait");
            assert!(matches!(
                error.downcast_ref::<QueueError>(),
                Some(QueueError::CoolingDown { .. })
            ));
        }
    }
}
