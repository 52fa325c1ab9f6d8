//! The state every clone of one HTTP cache layer and its services share.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, response::Parts};

use crate::{
    cached::CachedResponse,
    core::{Body as StreamBody, Core},
    http_key::KeyBuilder,
    key::CacheKey,
    policy::Directives,
    stats::{CacheSnapshot, HandleOps},
    store::CacheStore,
};

pub(crate) type ResponsePredicate = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

pub(crate) struct HttpShared<St> {
    pub(crate) core: Core<CachedResponse, St>,
    pub(crate) key: Arc<dyn KeyBuilder>,
    pub(crate) max_request_body: u64,
    pub(crate) max_response_body: usize,
    pub(crate) cacheable: ResponsePredicate,
    pub(crate) degraded: ResponsePredicate,
    pub(crate) cache_control: bool,
    /// Whether waiters behind a failed leader get its failure (else they call).
    pub(crate) share_failures: bool,
    /// How long a request waits for an answer whose body is streaming to another
    /// request before it makes its own call.
    pub(crate) body_wait: Duration,
    /// The answers whose body is streaming to the request that called for them, by key:
    /// requests arriving meanwhile wait for the complete copy instead of calling. Bounded
    /// by the number of calls in flight; each entry leaves when its body ends or is
    /// abandoned.
    pub(crate) streams: Mutex<HashMap<CacheKey, StreamBody<CachedResponse>>>,
}

impl<St> fmt::Debug for HttpShared<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpShared")
            .field("core", &self.core)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("cache_control", &self.cache_control)
            .finish_non_exhaustive()
    }
}

/// What may be done with one answer. Single-flight shares no more than storage allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store it for this long, and share it with the requests coalesced onto its call.
    Store(Duration),
    /// Not stored (not `2xx`, degraded, a failure), but the same answer for every
    /// request coalesced onto its call.
    Share,
    /// Neither stored nor shared: it belongs to the request that asked (private, sets a
    /// cookie, answers an authorized request, partial, or a stream). Waiters make their
    /// own calls.
    Alone,
}

/// The gRPC status of an answer, from its headers (trailers-only) or trailers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grpc {
    /// Not a gRPC answer.
    No,
    /// `grpc-status: 0`.
    Ok,
    /// Any other status.
    Failed,
    /// A gRPC answer whose status is not known yet (it comes in the trailers).
    Pending,
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

impl Grpc {
    /// From the response head.
    pub(crate) fn of(parts: &Parts) -> Self {
        let grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return Self::No;
        }
        match parts.headers.get(GRPC_STATUS) {
            Some(status) if status.as_bytes() == b"0" => Self::Ok,
            Some(_) => Self::Failed,
            None => Self::Pending,
        }
    }

    /// Once the body has ended: a pending status is read from the trailers; no status
    /// at all is a failure.
    pub(crate) fn with_trailers(self, trailers: Option<&HeaderMap>) -> Self {
        match self {
            Self::Pending => match trailers.and_then(|t| t.get(GRPC_STATUS)) {
                Some(status) if status.as_bytes() == b"0" => Self::Ok,
                _ => Self::Failed,
            },
            done => done,
        }
    }
}

/// What the cache keeps of a request to judge its answer: whether it carried
/// credentials, and its headers (for the response's `Vary`).
pub(crate) struct Asked {
    pub(crate) authorized: bool,
    pub(crate) headers: HeaderMap,
}

impl<St> HttpShared<St> {
    /// The streaming answer for `key`, if a call's body is still streaming.
    pub(crate) fn streaming(&self, key: &CacheKey) -> Option<StreamBody<CachedResponse>> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.get(key).cloned()
    }

    /// Registers a streaming answer for `key`.
    pub(crate) fn start_stream(&self, key: CacheKey, body: StreamBody<CachedResponse>) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.insert(key, body);
    }

    /// Forgets `key`'s streaming answer, if it is still `body`.
    pub(crate) fn end_stream(&self, key: &CacheKey, body: &StreamBody<CachedResponse>) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if streams.get(key).is_some_and(|b| b.same_channel(body)) {
            streams.remove(key);
        }
    }
}

impl<St: CacheStore<CachedResponse>> HttpShared<St> {
    /// What may be done with an answer, from its head, and whether it is a failure for
    /// stale-if-error (degraded, a server error, a gRPC failure in the head). See the
    /// crate docs, "What is stored and what is shared".
    pub(crate) fn judge(&self, asked: &Asked, parts: &Parts, degraded: bool) -> (Verdict, bool) {
        let grpc = Grpc::of(parts);
        let failed = degraded || parts.status.is_server_error() || grpc == Grpc::Failed;
        let headers = &parts.headers;
        let directives = Directives::parse(
            headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        let partitioned = self.key.is_partitioned();
        let ttl = if self.cache_control {
            directives.storable_for(self.core.ttl, partitioned)
        } else {
            Some(self.core.ttl)
        };
        let alone = ttl.is_none()
            || parts.status == StatusCode::PARTIAL_CONTENT
            || headers.contains_key(header::SET_COOKIE)
            || (asked.authorized && !partitioned && !directives.allows_authorized())
            || is_event_stream(headers)
            || vary_names(headers).is_none();
        match ttl {
            _ if alone => (Verdict::Alone, failed),
            Some(ttl) if !failed && grpc != Grpc::Failed && (self.cacheable)(parts) => {
                (Verdict::Store(ttl), failed)
            }
            _ => (Verdict::Share, failed),
        }
    }
}

/// `text/event-stream`: a stream of events, passed through and never stored.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
        ct.as_bytes()
            .get(..17)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
    })
}

/// The request headers named by the response's `Vary`, or `None` when they cannot be
/// honoured (`*`, or a name that is not a header name).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        for name in value.as_bytes().split(|b| *b == b',') {
            let name = name.trim_ascii();
            if name.is_empty() {
                continue;
            }
            if name == b"*" {
                return None;
            }
            let name = HeaderName::from_bytes(name).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// The values the varying request headers had, to keep with the answer.
pub(crate) fn vary_values(
    names: Vec<HeaderName>,
    request: &HeaderMap,
) -> Vec<(HeaderName, Vec<HeaderValue>)> {
    names
        .into_iter()
        .map(|name| {
            let values = request.get_all(&name).iter().cloned().collect();
            (name, values)
        })
        .collect()
}

impl<St: CacheStore<CachedResponse>> HandleOps for HttpShared<St> {
    fn snapshot(&self) -> CacheSnapshot {
        self.core.snapshot()
    }

    fn remove(&self, key: &CacheKey) {
        self.core.remove(key);
    }

    fn clear(&self) {
        self.core.clear();
    }

    fn key_for(&self, parts: &http::request::Parts, body: &[u8]) -> Option<CacheKey> {
        match self.key.plan(parts) {
            crate::http_key::Plan::Bypass => None,
            crate::http_key::Plan::WithoutBody => self.key.key(parts, None),
            crate::http_key::Plan::WithBody => self.key.key(parts, Some(body)),
        }
    }
}
