//! Resident memory of stored entries whose bodies were sliced from large read buffers
//! (as bodies read from the network are). Ignored by default (it measures the process,
//! and allocates): `cargo test -p tower-lru-cache --test memory -- --ignored --nocapture`,
//! with `ENTRIES` (default 1,000) entries of 10-byte bodies, each sliced from its own
//! 1 MiB buffer.
#![cfg(feature = "http")]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_lru_cache::CacheLayer;
use tower_lru_cache::Clock;

/// Resident set size in KiB, from `/proc/self/statm` (Linux).
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

#[tokio::test]
#[ignore = "measures the process's resident memory; run on its own"]
async fn resident_memory_of_entries_sliced_from_large_buffers() {
    let entries: usize = std::env::var("ENTRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    let layer = CacheLayer::builder()
        .clock(Clock::Tokio)
        .max_entries(entries as u64 * 2)
        .build();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
        // A fresh 1 MiB buffer, every page touched, of which the body is 10 bytes.
        let buffer = Bytes::from(vec![1u8; 1 << 20]);
        Ok::<_, Infallible>(Response::new(Full::new(buffer.slice(0..10))))
    }));
    let before = rss_kib().unwrap_or_default();
    for n in 0..entries {
        let req = Request::get(format!("/{n}")).body(Full::default()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 10);
    }
    let after = rss_kib().unwrap_or_default();
    let stored = handle.snapshot().entries;
    println!(
        "{stored} entries of 10-byte bodies sliced from 1 MiB buffers: +{} KiB resident ({} B per entry)",
        after.saturating_sub(before),
        after.saturating_sub(before) * 1024 / stored.max(1)
    );
    assert_eq!(stored, entries as u64);
}
