//! Shared test upstream: answers with a configurable status, error or hang, and counts
//! how often it is polled and called.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::BoxError;
use tower::Service;

/// The upstream answers with this status (`HANG` never answers, `REFUSE` fails with
/// [`LocalRefusal`], `BROKEN` fails with [`UpstreamDown`]).
pub const HANG: u16 = 0;
pub const REFUSE: u16 = 1;
pub const BROKEN: u16 = 2;

#[derive(Debug)]
pub struct LocalRefusal;
impl std::fmt::Display for LocalRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused locally")
    }
}
impl std::error::Error for LocalRefusal {}

#[derive(Debug)]
pub struct UpstreamDown;
impl std::fmt::Display for UpstreamDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream down")
    }
}
impl std::error::Error for UpstreamDown {}

#[derive(Clone, Debug, Default)]
pub struct Upstream {
    pub status: Arc<AtomicU16>,
    pub polls: Arc<AtomicUsize>,
    pub calls: Arc<AtomicUsize>,
    /// How long each call takes, in milliseconds.
    pub latency_ms: Arc<AtomicU64>,
}

impl Upstream {
    pub fn answering(status: u16) -> Self {
        let upstream = Self::default();
        upstream.set(status);
        upstream
    }

    pub fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }
}

impl Service<Request<Bytes>> for Upstream {
    type Response = Response<Bytes>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Bytes>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let status = self.status.load(Ordering::SeqCst);
        let latency = Duration::from_millis(self.latency_ms.load(Ordering::SeqCst));
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            match status {
                HANG => std::future::pending().await,
                REFUSE => Err(LocalRefusal.into()),
                BROKEN => Err(UpstreamDown.into()),
                code => {
                    let mut response = Response::new(Bytes::from_static(b"upstream"));
                    *response.status_mut() = StatusCode::from_u16(code)?;
                    Ok(response)
                }
            }
        })
    }
}

pub fn request() -> Request<Bytes> {
    Request::new(Bytes::new())
}

/// Polls a future once.
pub async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

pub fn infallible<T>(value: T) -> Result<T, Infallible> {
    Ok(value)
}

type Cells = Vec<(metrics::Key, Arc<AtomicU64>)>;

/// A metrics recorder that keeps every value (the debugging recorder resets on read).
#[derive(Clone, Debug, Default)]
pub struct TestRecorder {
    values: Arc<std::sync::Mutex<Cells>>,
}

impl TestRecorder {
    fn cell(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        let mut values = self.values.lock().unwrap();
        if let Some((_, cell)) = values.iter().find(|(k, _)| k == key) {
            return Arc::clone(cell);
        }
        let cell = Arc::new(AtomicU64::new(0));
        values.push((key.clone(), Arc::clone(&cell)));
        cell
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let values = self.values.lock().unwrap();
        values
            .iter()
            .find(|(key, _)| {
                key.name() == name
                    && labels.iter().all(|(k, v)| {
                        key.labels()
                            .any(|label| label.key() == *k && label.value() == *v)
                    })
            })
            .map(|(_, cell)| cell.load(Ordering::SeqCst))
    }

    /// A counter's value (0 if never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.find(name, labels).unwrap_or(0)
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).map(f64::from_bits)
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.cell(key))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.cell(key))
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
