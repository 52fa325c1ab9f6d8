//! Hostile input through the whole preset, in process: arbitrary values for every header
//! the stack reads (`x-user-id`, `x-priority`, `x-forwarded-for`, `forwarded`,
//! `content-length`, `cache-control`, `authorization`, `grpc-timeout`,
//! `x-request-timeout`), arbitrary bodies cut into arbitrary chunks (some cut off
//! mid-way, some declaring a length they do not have), arbitrary paths, methods and
//! HTTP versions.
//!
//! Properties, for every case (a fresh stack, then a sequence of requests on paused time):
//!
//! - no panic, and never a 5xx: the upstream is healthy, so every answer is a 200 (real,
//!   cached or degraded), or a 4xx;
//! - malformed input (an unreadable, oversized or non-JSON body, a malformed `x-priority`)
//!   gets a 4xx, and never reaches the upstream;
//! - partitions hold: an answer from the upstream is always the asking user's own, and
//!   forwarding headers change nothing (the preset keys on the peer, not on them);
//! - limits hold: per limiter key, admitted requests never exceed the burst plus the rate
//!   times the time elapsed; upstream calls never exceed the global pace's;
//! - the metrics count every request, and nothing stays queued or in flight.
//!
//! The number of cases is printed (`cargo test --test fuzz -- --nocapture`); set
//! `FUZZ_CASES` to run more.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_health_ai::Clock;
use tower_health_ai::token_bucket::Quota;
use tower_health_ai::{HealthAiStack, RequestRejected, UpstreamRequest};

/// The body limit of the fuzzed stack: small, so that oversized bodies are cheap.
const MAX_BODY: usize = 2048;
/// The per-user quota (the preset's default: 5 a second, burst 5).
const PER_USER_RATE: f64 = 5.0;
const PER_USER_BURST: f64 = 5.0;
/// The global pace (the preset's default: 2 a second, burst 2).
const GLOBAL_RATE: f64 = 2.0;
const GLOBAL_BURST: f64 = 2.0;

/// A request body as hyper would hand it over from the wire: chunks, the length declared
/// by `content-length` as its size hint, an error when the data does not match it, and
/// perhaps an error mid-way (the connection reset).
struct FuzzBody {
    chunks: VecDeque<Bytes>,
    declared: Option<u64>,
    fail_after: Option<usize>,
    sent: usize,
    mismatch: bool,
}

impl http_body::Body for FuzzBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.fail_after == Some(self.sent) {
            self.fail_after = None;
            return Poll::Ready(Some(Err("connection reset mid-body".into())));
        }
        match self.chunks.pop_front() {
            Some(chunk) => {
                self.sent += 1;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            None if self.mismatch => {
                self.mismatch = false;
                Poll::Ready(Some(Err(
                    "the body's length differs from its content-length".into(),
                )))
            }
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.declared
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// One generated request.
#[derive(Debug, Clone)]
struct Input {
    method: Method,
    version: Version,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
    cuts: Vec<usize>,
    fail_at_chunk: Option<usize>,
}

fn header_value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

/// Values a client could send in header `name`: none, interesting ones, arbitrary bytes
/// (those `HeaderValue` accepts), and long ones.
fn value_for(name: &'static str) -> BoxedStrategy<Option<HeaderValue>> {
    let known: &'static [&'static str] = match name {
        "x-user-id" => &["ada", "grace", "", " ", "ADA", "ada\t", "u-1"],
        "x-priority" => &[
            "urgent",
            "HIGH",
            " normal ",
            "low",
            "Low",
            "lowest",
            "",
            "urgent,low",
            "1",
            "\u{fc}rgent",
        ],
        "x-forwarded-for" => &[
            "1.2.3.4",
            "1.2.3.4, 10.0.0.1",
            "::1",
            "garbage",
            "",
            "unknown",
        ],
        "forwarded" => &[
            "for=1.2.3.4",
            "for=\"[::1]:80\"",
            "for=",
            "by=;;;",
            "for=_hidden",
        ],
        "content-length" => &[
            "0",
            "5",
            "2048",
            "2049",
            "18446744073709551616",
            "-1",
            "abc",
            "1, 2",
        ],
        "cache-control" => &[
            "no-store",
            "no-cache",
            "max-age=0",
            "private",
            "only-if-cached",
            "max-age=99999999999999999999",
            "max-age=\"",
            "public, s-maxage=1",
        ],
        "authorization" => &["Bearer abc", "Basic Zm9vOmJhcg==", "", "Bearer"],
        "grpc-timeout" => &["1S", "0n", "100m", "99999999H", "123456789S", "1X", "S", ""],
        "x-request-timeout" => &[
            "0",
            "0.001",
            "2.5",
            "1e9",
            "NaN",
            "-1",
            "99999999999999999999999999999",
            ".",
            "",
        ],
        _ => &[],
    };
    prop_oneof![
        2 => Just(None),
        3 => proptest::sample::select(known).prop_map(|v| header_value(v.as_bytes())),
        2 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| header_value(&v)),
        1 => proptest::collection::vec(any::<u8>(), 250..300).prop_map(|v| header_value(&v)),
    ]
    .boxed()
}

const HEADERS: [&str; 9] = [
    "x-user-id",
    "x-priority",
    "x-forwarded-for",
    "forwarded",
    "content-length",
    "cache-control",
    "authorization",
    "grpc-timeout",
    "x-request-timeout",
];

fn headers() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    HEADERS
        .map(|name| {
            value_for(name).prop_map(move |v| v.map(|v| (HeaderName::from_static(name), v)))
        })
        .prop_map(|values| values.into_iter().flatten().collect())
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::POST),
        1 => proptest::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::TRACE,
            Method::CONNECT,
        ]),
        1 => "[A-Za-z!#$%&'*+.^_`|~-]{1,12}"
            .prop_filter_map("a method token", |m| Method::from_bytes(m.as_bytes()).ok()),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    proptest::sample::select(vec![
        Version::HTTP_09,
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_2,
        Version::HTTP_3,
    ])
}

fn uri() -> impl Strategy<Value = Uri> {
    prop_oneof![
        Just("/api/health-records/r1/analyze".to_owned()),
        "/api/health-records/[a-z0-9%._~-]{0,20}/analyze",
        "/[A-Za-z0-9%._~!$&'()*+,;=:@/-]{0,60}(\\?[A-Za-z0-9=&%]{0,20})?",
        "https?://[a-z.]{1,15}(:[0-9]{1,5})?/[a-z/]{0,20}",
        Just("*".to_owned()),
    ]
    .prop_map(|u| Uri::try_from(u).unwrap_or_else(|_| Uri::from_static("/")))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        3 => (0u32..4, "[a-z]{0,8}")
            .prop_map(|(n, s)| format!(r#"{{"k{n}":"{s}"}}"#).into_bytes()),
        2 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => Just(b"[1,2,3]".to_vec()),
        1 => (MAX_BODY + 1..MAX_BODY + 64).prop_map(|n| {
            let mut body = b"{\"k\":\"".to_vec();
            body.resize(n - 2, b'x');
            body.extend_from_slice(b"\"}");
            body
        }),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    (
        method(),
        version(),
        uri(),
        headers(),
        body(),
        proptest::collection::vec(any::<usize>(), 0..6),
        proptest::option::weighted(0.1, 0usize..6),
    )
        .prop_map(
            |(method, version, uri, headers, body, cuts, fail_at_chunk)| Input {
                method,
                version,
                uri,
                headers,
                body,
                cuts,
                fail_at_chunk,
            },
        )
}

/// What the test knows about a request before sending it.
#[derive(Debug)]
struct Expect {
    /// The body cannot be read, declares more than the limit, is over the limit, or is
    /// neither empty nor a JSON object: a 4xx, never the upstream.
    bad_body: bool,
    /// `x-priority` is present and is none of the four levels.
    bad_priority: bool,
    /// The per-user limiter's key: the user header when 1 to 256 bytes, else the one key
    /// shared by callers that cannot be told apart.
    limiter_key: Option<Vec<u8>>,
    /// What the upstream must echo as the user.
    user: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header<'a>(input: &'a Input, name: &str) -> Option<&'a HeaderValue> {
    input
        .headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v)
}

fn valid_priority(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    ["urgent", "high", "normal", "low"]
        .iter()
        .any(|level| value.eq_ignore_ascii_case(level.as_bytes()))
}

fn json_object_or_empty(body: &[u8]) -> bool {
    body.is_empty()
        || serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.is_object())
}

/// Hyper's reading of `content-length`: one decimal number that fits a u64.
fn declared_length(input: &Input) -> Option<u64> {
    let value = header(input, "content-length")?.to_str().ok()?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn build(input: &Input) -> (Request<FuzzBody>, Expect) {
    let declared = declared_length(input);
    let mismatch = declared.is_some_and(|n| n != input.body.len() as u64);
    // Cut the body at the generated points.
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|c| c.checked_rem(input.body.len()).unwrap_or(0))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = VecDeque::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain(std::iter::once(input.body.len())) {
        if cut > from {
            chunks.push_back(Bytes::copy_from_slice(&input.body[from..cut]));
            from = cut;
        }
    }
    let fails = input.fail_at_chunk.filter(|at| *at <= chunks.len());
    let body = FuzzBody {
        chunks,
        declared,
        fail_after: fails,
        sent: 0,
        mismatch,
    };
    let mut request = Request::new(body);
    *request.method_mut() = input.method.clone();
    *request.version_mut() = input.version;
    *request.uri_mut() = input.uri.clone();
    for (name, value) in &input.headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let user_header = header(input, "x-user-id").map(HeaderValue::as_bytes);
    let bad_body = fails.is_some()
        || mismatch
        || declared.is_some_and(|n| n > MAX_BODY as u64)
        || input.body.len() > MAX_BODY
        || !json_object_or_empty(&input.body);
    let expect = Expect {
        bad_body,
        bad_priority: header(input, "x-priority").is_some_and(|v| !valid_priority(v.as_bytes())),
        limiter_key: user_header
            .filter(|u| !u.is_empty() && u.len() <= 256)
            .map(<[u8]>::to_vec),
        user: user_header.map_or_else(|| "-".to_owned(), hex),
    };
    (request, expect)
}

/// The request check of the fuzzed stack: the body is empty or a JSON object.
fn check(_parts: &mut http::request::Parts, body: &Bytes) -> Result<(), RequestRejected> {
    if json_object_or_empty(body) {
        Ok(())
    } else {
        Err(RequestRejected::bad_request(
            "the body must be a JSON object",
        ))
    }
}

/// What the upstream received, and what it received that it never should have.
#[derive(Default)]
struct Seen {
    calls: AtomicU64,
    malformed: Mutex<Vec<String>>,
}

fn upstream(
    seen: Arc<Seen>,
) -> impl tower::Service<
    UpstreamRequest,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |request: UpstreamRequest| {
        let seen = Arc::clone(&seen);
        async move {
            seen.calls.fetch_add(1, Ordering::SeqCst);
            let user = request
                .headers()
                .get("x-user-id")
                .map_or_else(|| "-".to_owned(), |u| hex(u.as_bytes()));
            if let Some(priority) = request.headers().get("x-priority")
                && !valid_priority(priority.as_bytes())
            {
                seen.malformed
                    .lock()
                    .unwrap()
                    .push(format!("x-priority {priority:?}"));
            }
            let body = request.into_body().collect().await?.to_bytes();
            if body.len() > MAX_BODY || !json_object_or_empty(&body) {
                seen.malformed
                    .lock()
                    .unwrap()
                    .push(format!("a body of {} bytes", body.len()));
            }
            Ok(Response::new(Body::from(format!("ai user={user}"))))
        }
    })
}

fn stack() -> HealthAiStack {
    HealthAiStack::builder()
        .clock(Clock::Tokio)
        .max_body_bytes(MAX_BODY)
        .request_check(check)
        .per_user_quota(Quota::per_second(5))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
}

/// What a run's requests were and got, to show that the properties were exercised.
#[derive(Debug, Default)]
struct Tally {
    bad_bodies: AtomicU64,
    bad_priorities: AtomicU64,
    by_status: Mutex<std::collections::BTreeMap<u16, u64>>,
}

/// Runs one case: a fresh stack, the requests in order, the properties checked.
async fn run_case(inputs: Vec<Input>, tally: &Tally) -> Result<(), TestCaseError> {
    let seen = Arc::new(Seen::default());
    let stack = stack();
    let handle = stack.handle();
    let service = stack.layer(upstream(Arc::clone(&seen)));
    let start = tokio::time::Instant::now();
    let mut admitted: HashMap<Option<Vec<u8>>, u64> = HashMap::new();
    let sent = inputs.len() as u64;
    for input in inputs {
        let (request, expect) = build(&input);
        let Ok(response) = service.clone().oneshot(request).await;
        let status = response.status();
        let cache = response
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        let degraded = response.headers().contains_key("x-degraded");
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| TestCaseError::fail(format!("the answer's body failed: {e}")))?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        let context = || format!("{input:?} -> {status} {cache:?} {body}");
        tally
            .bad_bodies
            .fetch_add(u64::from(expect.bad_body), Ordering::Relaxed);
        tally
            .bad_priorities
            .fetch_add(u64::from(expect.bad_priority), Ordering::Relaxed);
        *tally
            .by_status
            .lock()
            .unwrap()
            .entry(status.as_u16())
            .or_default() += 1;

        prop_assert!(
            [
                StatusCode::OK,
                StatusCode::BAD_REQUEST,
                StatusCode::PAYLOAD_TOO_LARGE,
                StatusCode::TOO_MANY_REQUESTS
            ]
            .contains(&status),
            "unexpected status: {}",
            context()
        );
        if status != StatusCode::TOO_MANY_REQUESTS {
            *admitted.entry(expect.limiter_key.clone()).or_default() += 1;
        }
        if expect.bad_body {
            prop_assert!(status.is_client_error(), "malformed body: {}", context());
        }
        if expect.bad_priority && !expect.bad_body {
            // Refused, unless answered without the upstream: from the cache, or by the
            // fallback at a deadline the client cut short.
            let without_upstream = matches!(cache.as_deref(), Some("HIT" | "STALE")) || degraded;
            prop_assert!(
                status.is_client_error() || without_upstream,
                "malformed priority: {}",
                context()
            );
        }
        if let Some(user) = body.strip_prefix("ai user=") {
            prop_assert_eq!(
                user,
                expect.user.as_str(),
                "another user's answer: {}",
                context()
            );
        }
    }

    // Limits: per limiter key, and for the upstream, never more than the burst plus the
    // rate times the time elapsed (paused time moves only while someone waits).
    let elapsed = start.elapsed().as_secs_f64();
    for (key, count) in &admitted {
        let bound = PER_USER_BURST + PER_USER_RATE * elapsed + 1.0;
        #[allow(clippy::cast_precision_loss)] // small counts
        let count = *count as f64;
        prop_assert!(
            count <= bound,
            "key {key:?}: {count} admitted in {elapsed} s (bound {bound})"
        );
    }
    let calls = seen.calls.load(Ordering::SeqCst);
    #[allow(clippy::cast_precision_loss)] // small counts
    let calls_f = calls as f64;
    prop_assert!(
        calls_f <= GLOBAL_BURST + GLOBAL_RATE * elapsed + 1.0,
        "{calls} upstream calls in {elapsed} s"
    );
    let malformed = seen.malformed.lock().unwrap().clone();
    prop_assert!(malformed.is_empty(), "the upstream saw {malformed:?}");

    let metrics = handle.metrics();
    prop_assert_eq!(metrics.requests.total, sent);
    prop_assert_eq!(metrics.queue.processing, 0);
    prop_assert_eq!(metrics.queue.queue_size, 0);
    prop_assert_eq!(metrics.circuit_breaker.probes_in_flight, 0);
    prop_assert_eq!(handle.upstream_calls(), calls);
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, TestCaseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

/// The cases to run: `FUZZ_CASES`, else 512.
fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}

#[test]
fn hostile_requests_through_the_whole_preset() {
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = AtomicU64::new(0);
    let requests = AtomicU64::new(0);
    let tally = Tally::default();
    let result = runner.run(&proptest::collection::vec(input(), 1..12), |inputs| {
        ran.fetch_add(1, Ordering::Relaxed);
        requests.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        runtime()?.block_on(run_case(inputs, &tally))
    });
    let (ran, requests) = (ran.into_inner(), requests.into_inner());
    println!(
        "fuzz: {ran} cases run ({cases} asked), {requests} requests in all: {} malformed \
         bodies, {} malformed priorities; answers by status {:?}",
        tally.bad_bodies.into_inner(),
        tally.bad_priorities.into_inner(),
        tally.by_status.into_inner().unwrap(),
    );
    if let Err(failure) = result {
        panic!("{failure}");
    }
    assert!(ran >= u64::from(cases));
}

/// The same user, whatever forwarding headers a client makes up, is one limiter key and
/// one cache partition: forged `x-forwarded-for` and `forwarded` change nothing.
#[test]
fn forwarding_headers_never_split_a_user() {
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let forged = proptest::collection::vec(
        (value_for("x-forwarded-for"), value_for("forwarded")),
        6..10,
    );
    let result = runner.run(&forged, |forged| {
        runtime()?.block_on(async move {
            let seen = Arc::new(Seen::default());
            let service = stack().layer(upstream(Arc::clone(&seen)));
            let mut statuses = Vec::new();
            for (xff, forwarded) in forged {
                let mut request = Request::post("/analyze")
                    .header("x-user-id", "ada")
                    .body(Body::from(r#"{"k":"v"}"#))
                    .unwrap();
                if let Some(v) = xff {
                    request.headers_mut().insert("x-forwarded-for", v);
                }
                if let Some(v) = forwarded {
                    request.headers_mut().insert("forwarded", v);
                }
                let Ok(response) = service.clone().oneshot(request).await;
                statuses.push(response.status());
            }
            // One call, four hits, then the user's limit: the headers split nothing.
            prop_assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
            prop_assert!(
                statuses[..5].iter().all(|s| *s == StatusCode::OK),
                "{statuses:?}"
            );
            prop_assert!(
                statuses[5..]
                    .iter()
                    .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
                "{statuses:?}"
            );
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
