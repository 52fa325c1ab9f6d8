//! A provider that misbehaves in every way a real one does, for soak tests:
//! `POST /v1/analyze` (the [simulator](crate::simulator)'s contract) served with latency
//! spikes, hangs past the call timeout, connections reset mid-body, bursts of 429 with
//! `Retry-After`, 500s, and bodies that drip slowly. Select it with the gateway's
//! `--sim-chaos` flag.
//!
//! # The model
//!
//! Time runs in cycles of [`ChaosConfig::cycle`] from the provider's start:
//!
//! - the first 60% of a cycle is a **bad day**: each admitted call draws one fate (below);
//! - the next 20% is an **outage**: every call fails with 500 after a short latency (so a
//!   gateway's circuit opens, then closes once the outage ends);
//! - the next 10% is a **429 burst**: every call is refused at once with `429` and
//!   `Retry-After` (not billed, as a provider's rate limit);
//! - the last 10% is a bad day again.
//!
//! At most [`ChaosConfig::capacity`] calls run at once; above it, 429 with `Retry-After`
//! at once. On a bad day, an admitted call, drawn from one seeded generator:
//!
//! | share | fate |
//! |---|---|
//! | 4% | hangs for twice the caller's call timeout, then answers |
//! | 4% | a latency spike: 1.3 × the longest latency |
//! | 4% | answers 200, sends half its body, then resets the connection |
//! | 5% | fails with 500 after its latency |
//! | 5% | answers 200 and drips its body in 8 pieces over its latency |
//! | 78% | answers 200 after its latency |

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use hyper::body::Frame;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio::time::{Instant, Sleep};

use crate::simulator::{LatencyRange, RETRY_AFTER_MS};

/// The chaos provider's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChaosConfig {
    /// An ordinary call's latency, drawn uniformly from this range.
    pub latency: LatencyRange,
    /// The calls served at once (0: unlimited); above it, 429 at once.
    pub capacity: usize,
    /// The wait a 429 asks for.
    pub retry_after: Duration,
    /// The caller's call timeout: a hang lasts twice as long.
    pub call_timeout: Duration,
    /// The length of one cycle of bad day, outage, 429 burst.
    pub cycle: Duration,
    /// The random seed.
    pub seed: u64,
}

/// The length of a cycle, unscaled: twenty minutes (twelve of bad day, four of outage,
/// two of 429 burst, two of bad day).
pub const DEFAULT_CYCLE: Duration = Duration::from_secs(1200);

impl ChaosConfig {
    /// The gateway's simulator flags, on its time scale: latency, capacity, seed, call
    /// timeout, and a cycle of [`DEFAULT_CYCLE`].
    #[must_use]
    pub fn from_args(args: &crate::cli::GatewayArgs) -> Self {
        let simulator = args.simulator_config();
        Self {
            latency: simulator.latency,
            capacity: simulator.capacity,
            retry_after: simulator.retry_after,
            call_timeout: args.scaled_secs(args.call_timeout_secs),
            cycle: args.scaled(DEFAULT_CYCLE),
            seed: simulator.seed,
        }
    }
}

/// Starts a chaos provider on an ephemeral loopback port, serving until the process
/// ends; returns it and its base URL.
///
/// # Errors
///
/// Binding the port.
pub async fn start(config: ChaosConfig) -> std::io::Result<(Arc<Chaos>, String)> {
    let chaos = Chaos::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = chaos.router();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the chaos provider stopped");
        }
    });
    tracing::info!(%url, ?config, "chaos provider started");
    Ok((chaos, url))
}

/// What the chaos provider did, by fate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ChaosSnapshot {
    /// Calls received.
    pub calls: u64,
    /// 429s: over capacity or in a burst.
    pub refused: u64,
    /// 500s, in an outage or on a bad day.
    pub failed: u64,
    /// Calls that hung past the call timeout.
    pub hung: u64,
    /// Latency spikes.
    pub spikes: u64,
    /// Connections reset mid-body.
    pub resets: u64,
    /// Bodies dripped slowly.
    pub drips: u64,
    /// Calls running now.
    pub in_flight: usize,
}

/// A provider that misbehaves; see the [module docs](self).
#[derive(Debug)]
pub struct Chaos {
    config: ChaosConfig,
    started: Instant,
    rng: Mutex<SmallRng>,
    in_flight: AtomicUsize,
    counts: [AtomicU64; 7],
}

const CALLS: usize = 0;
const REFUSED: usize = 1;
const FAILED: usize = 2;
const HUNG: usize = 3;
const SPIKES: usize = 4;
const RESETS: usize = 5;
const DRIPS: usize = 6;

/// A running call's place in the capacity.
struct Slot(Arc<Chaos>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What an admitted call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Hang,
    Spike,
    Reset,
    Fail,
    Drip,
    Answer,
}

impl Chaos {
    /// A chaos provider with these settings, its cycles starting now.
    #[must_use]
    pub fn new(config: ChaosConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            started: Instant::now(),
            rng: Mutex::new(SmallRng::seed_from_u64(config.seed)),
            in_flight: AtomicUsize::new(0),
            counts: Default::default(),
        })
    }

    /// The counts so far.
    #[must_use]
    pub fn snapshot(&self) -> ChaosSnapshot {
        let count = |i: usize| self.counts[i].load(Ordering::Relaxed);
        ChaosSnapshot {
            calls: count(CALLS),
            refused: count(REFUSED),
            failed: count(FAILED),
            hung: count(HUNG),
            spikes: count(SPIKES),
            resets: count(RESETS),
            drips: count(DRIPS),
            in_flight: self.in_flight.load(Ordering::Acquire),
        }
    }

    /// The provider's HTTP face: `POST /v1/analyze`, and `GET /v1/chaos` (the counts).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/analyze", post(analyze))
            .route(
                "/v1/chaos",
                axum::routing::get(|State(chaos): State<Arc<Self>>| async move {
                    axum::Json(chaos.snapshot())
                }),
            )
            .with_state(Arc::clone(self))
    }

    fn count(&self, which: usize) {
        self.counts[which].fetch_add(1, Ordering::Relaxed);
    }

    /// Where in its cycle the provider is, in `[0, 1)`.
    fn phase(&self) -> f64 {
        let cycle = self.config.cycle.as_secs_f64();
        if cycle <= 0.0 {
            return 0.0;
        }
        (self.started.elapsed().as_secs_f64() % cycle) / cycle
    }

    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut running = self.in_flight.load(Ordering::Acquire);
        loop {
            if self.config.capacity != 0 && running >= self.config.capacity {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                running,
                running + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Slot(Arc::clone(self))),
                Err(now) => running = now,
            }
        }
    }

    /// This call's latency and fate.
    fn draw(&self) -> (Duration, Fate) {
        // A poisoned lock only means another call panicked while drawing; the
        // generator's state is still valid.
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let LatencyRange { min, max } = self.config.latency;
        let latency = if min == max {
            min
        } else {
            rng.random_range(min..=max)
        };
        let fate = match rng.random_range(0..100_u32) {
            0..4 => Fate::Hang,
            4..8 => Fate::Spike,
            8..12 => Fate::Reset,
            12..17 => Fate::Fail,
            17..22 => Fate::Drip,
            _ => Fate::Answer,
        };
        (latency, fate)
    }

    fn too_many(&self) -> Response {
        self.count(REFUSED);
        let wait = self.config.retry_after;
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "error": "rate limited", "retryAfter": secs })),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        headers.insert(
            RETRY_AFTER_MS,
            HeaderValue::from(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        );
        response
    }
}

fn failure() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({ "error": "the model crashed" })),
    )
        .into_response()
}

fn analysis() -> Bytes {
    Bytes::from(
        json!({
            "summary": "Chaos-provider analysis.",
            "riskLevel": "low",
            "recommendations": ["Discuss the results at the next routine visit."],
            "model": "chaos-provider",
        })
        .to_string(),
    )
}

fn json_response(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn analyze(State(chaos): State<Arc<Chaos>>) -> Response {
    chaos.count(CALLS);
    let phase = chaos.phase();
    if (0.8..0.9).contains(&phase) {
        return chaos.too_many();
    }
    let Some(slot) = chaos.admit() else {
        return chaos.too_many();
    };
    let (latency, fate) = chaos.draw();
    if (0.6..0.8).contains(&phase) {
        tokio::time::sleep(latency / 4).await;
        chaos.count(FAILED);
        return failure();
    }
    match fate {
        Fate::Hang => {
            chaos.count(HUNG);
            tokio::time::sleep(chaos.config.call_timeout * 2).await;
        }
        Fate::Spike => {
            chaos.count(SPIKES);
            tokio::time::sleep(chaos.config.latency.max.mul_f64(1.3)).await;
        }
        Fate::Fail => {
            tokio::time::sleep(latency).await;
            chaos.count(FAILED);
            return failure();
        }
        Fate::Reset => {
            tokio::time::sleep(latency).await;
            chaos.count(RESETS);
            return json_response(Body::new(Pieces::new(
                analysis(),
                2,
                Duration::ZERO,
                true,
                slot,
            )));
        }
        Fate::Drip => {
            chaos.count(DRIPS);
            return json_response(Body::new(Pieces::new(
                analysis(),
                8,
                latency / 8,
                false,
                slot,
            )));
        }
        Fate::Answer => tokio::time::sleep(latency).await,
    }
    drop(slot);
    json_response(Body::from(analysis()))
}

/// A body sent in pieces, a pause before each; with `reset`, an error instead of its
/// last piece (the server then cuts the connection mid-body). Holds the call's slot
/// until it ends.
struct Pieces {
    pieces: std::collections::VecDeque<Bytes>,
    pause: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    reset: bool,
    _slot: Slot,
}

impl Pieces {
    fn new(body: Bytes, count: usize, pause: Duration, reset: bool, slot: Slot) -> Self {
        let size = body.len().div_ceil(count.max(1)).max(1);
        let mut pieces = std::collections::VecDeque::new();
        let mut rest = body;
        while !rest.is_empty() {
            pieces.push_back(rest.split_to(size.min(rest.len())));
        }
        Self {
            pieces,
            pause,
            sleep: None,
            reset,
            _slot: slot,
        }
    }
}

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.reset && self.pieces.len() == 1 {
            self.pieces.clear();
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the chaos provider resets the connection mid-body",
            ))));
        }
        if self.pieces.is_empty() {
            return Poll::Ready(None);
        }
        if !self.pause.is_zero() {
            let pause = self.pause;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        Poll::Ready(self.pieces.pop_front().map(|piece| Ok(Frame::data(piece))))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn config() -> ChaosConfig {
        ChaosConfig {
            latency: LatencyRange::fixed(Duration::from_millis(100)),
            capacity: 2,
            retry_after: Duration::from_secs(1),
            call_timeout: Duration::from_secs(1),
            cycle: Duration::from_secs(100),
            seed: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_body_sends_part_then_fails_and_frees_its_slot() {
        let chaos = Chaos::new(config());
        let slot = chaos.admit().unwrap();
        assert_eq!(chaos.snapshot().in_flight, 1);
        let body = Body::new(Pieces::new(analysis(), 2, Duration::ZERO, true, slot));
        assert!(body.collect().await.is_err());
        assert_eq!(chaos.snapshot().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dripped_body_arrives_whole_over_its_pauses() {
        let chaos = Chaos::new(config());
        let slot = chaos.admit().unwrap();
        let start = Instant::now();
        let body = Body::new(Pieces::new(
            analysis(),
            8,
            Duration::from_millis(10),
            false,
            slot,
        ));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, analysis());
        assert_eq!(start.elapsed(), Duration::from_millis(80));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cycle_has_an_outage_then_a_429_burst() {
        let chaos = Chaos::new(config());
        tokio::time::advance(Duration::from_secs(70)).await;
        let response = analyze(State(Arc::clone(&chaos))).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        tokio::time::advance(Duration::from_secs(15)).await;
        let response = analyze(State(Arc::clone(&chaos))).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        // Over capacity: 429 at once.
        let _a = chaos.admit().unwrap();
        let _b = chaos.admit().unwrap();
        assert!(chaos.admit().is_none());
    }
}
