//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
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
