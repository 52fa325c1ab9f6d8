//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// A body that yields the given frames, one per poll.
#[derive(Debug, Default)]
pub struct Frames(pub VecDeque<Frame<Bytes>>);

impl Frames {
    pub fn grpc(message: &'static str, status: Option<&'static str>) -> Self {
        let mut frames = VecDeque::from([Frame::data(Bytes::from_static(message.as_bytes()))]);
        if let Some(status) = status {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", status.parse().unwrap());
            frames.push_back(Frame::trailers(trailers));
        }
        Self(frames)
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// A debugging recorder and its snapshotter.
pub fn recorder() -> (DebuggingRecorder, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    (recorder, snapshotter)
}

/// One snapshot of a debugging recorder (taking it resets the recorder's values).
#[derive(Debug)]
pub struct Taken(Vec<(String, Labels, DebugValue)>);

/// Sorted label pairs.
pub type Labels = Vec<(String, String)>;

impl Taken {
    pub fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let mut labels: Vec<_> = key
                        .key()
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    labels.sort();
                    (key.key().name().to_owned(), labels, value)
                })
                .collect(),
        )
    }

    /// Every series of `name`: its sorted labels and value.
    pub fn series(&self, name: &str) -> Vec<(&[(String, String)], &DebugValue)> {
        self.0
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, labels, value)| (labels.as_slice(), value))
            .collect()
    }

    /// The value of counter `name` with exactly `labels`, 0 when absent.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut wanted: Vec<_> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.series(name)
            .into_iter()
            .find(|(labels, _)| *labels == wanted.as_slice())
            .map_or(0, |(_, value)| match value {
                DebugValue::Counter(v) => *v,
                other => panic!("{name} is not a counter: {other:?}"),
            })
    }

    /// The sum of every counter `name`.
    pub fn counter_sum(&self, name: &str) -> u64 {
        self.series(name)
            .into_iter()
            .map(|(_, value)| match value {
                DebugValue::Counter(v) => *v,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    /// The sum of gauge `name` over all its label sets.
    pub fn gauge_sum(&self, name: &str) -> f64 {
        self.series(name)
            .into_iter()
            .map(|(_, value)| match value {
                DebugValue::Gauge(v) => v.into_inner(),
                other => panic!("{name} is not a gauge: {other:?}"),
            })
            .sum()
    }
}

/// A recorder that keeps only gauges, each with its value and how many times it moved:
/// shows when a gauge is left untouched, which a value alone cannot.
#[derive(Debug, Default, Clone)]
pub struct Gauges(Arc<Mutex<Vec<NamedProbe>>>);

/// A gauge's name and its probe.
type NamedProbe = (String, Arc<GaugeProbe>);

/// One gauge of [`Gauges`].
#[derive(Debug, Default)]
pub struct GaugeProbe {
    value: Mutex<f64>,
    moves: AtomicUsize,
}

impl GaugeFn for GaugeProbe {
    fn increment(&self, value: f64) {
        *self.value.lock().unwrap() += value;
        self.moves.fetch_add(1, Ordering::SeqCst);
    }

    fn decrement(&self, value: f64) {
        self.increment(-value);
    }

    fn set(&self, value: f64) {
        *self.value.lock().unwrap() = value;
        self.moves.fetch_add(1, Ordering::SeqCst);
    }
}

impl Gauges {
    fn probes(&self, name: &str) -> Vec<Arc<GaugeProbe>> {
        let gauges = self.0.lock().unwrap();
        gauges
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, probe)| Arc::clone(probe))
            .collect()
    }

    /// The sum of the values of every gauge named `name`.
    pub fn value(&self, name: &str) -> f64 {
        self.probes(name)
            .iter()
            .map(|probe| *probe.value.lock().unwrap())
            .sum()
    }

    /// How many times the gauges named `name` moved, in all.
    pub fn moves(&self, name: &str) -> usize {
        self.probes(name)
            .iter()
            .map(|probe| probe.moves.load(Ordering::SeqCst))
            .sum()
    }
}

impl Recorder for Gauges {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let probe = Arc::new(GaugeProbe::default());
        self.0
            .lock()
            .unwrap()
            .push((key.name().to_owned(), Arc::clone(&probe)));
        Gauge::from_arc(probe)
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
