//! The state every clone of one HTTP cache layer and its services share.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

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
    pub(crate) streams: Pending,
    /// Until when a request may wait for a call that runs on after its leader was
    /// answered (see [`LateAnswer`](crate::LateAnswer)); `None`: it does not wait.
    pub(crate) late_wait: Option<LateWait>,
    /// The calls running on after their leader was answered, by key: what they store is
    /// sent on the channel, which closes when they end without storing. Bounded by the
    /// number of calls in flight; each entry leaves when its answer is stored (the store
    /// has it from then on) or its call ends.
    pub(crate) running_on: Pending,
}

/// Reads, from a request's extensions, until when it may wait for a late answer.
pub(crate) type LateWait = Arc<dyn Fn(&http::Extensions) -> Option<Instant> + Send + Sync>;

/// Answers still to come, by key: the channel a request waits on for each.
#[derive(Default)]
pub(crate) struct Pending(Mutex<HashMap<CacheKey, StreamBody<CachedResponse>>>);

impl Pending {
    /// The answer still to come for `key`, if any.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<StreamBody<CachedResponse>> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned()
    }

    /// Registers `body` as the answer to come for `key`.
    pub(crate) fn start(&self, key: CacheKey, body: StreamBody<CachedResponse>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(key, body);
    }

    /// Registers `body` as the answer to come for `key` if it is still to come (its
    /// channel open, nothing sent on it), so that it never stays registered once closed
    /// or answered: whoever closes or answers it then ends it.
    pub(crate) fn start_if_open(&self, key: CacheKey, body: &StreamBody<CachedResponse>) {
        let to_come = |body: &StreamBody<CachedResponse>| {
            body.has_changed().is_ok() && body.borrow().is_none()
        };
        if to_come(body) {
            self.start(key, body.clone());
            // Closed or answered meanwhile, its `end` perhaps run already.
            if !to_come(body) {
                self.end(&key, body);
            }
        }
    }

    /// Forgets `key`'s answer to come, if it is still `body`.
    pub(crate) fn end(&self, key: &CacheKey, body: &StreamBody<CachedResponse>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(|b| b.same_channel(body)) {
            map.remove(key);
        }
    }
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
        if !tower_refusal::is_grpc(&parts.headers) {
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

impl Asked {
    /// This request's values of the headers an answer with `answer` (its headers)
    /// varies on, stored with it; `None` when it varies on none.
    pub(crate) fn vary_of(
        &self,
        answer: &HeaderMap,
    ) -> Option<Vec<(HeaderName, Vec<HeaderValue>)>> {
        vary_names(answer)
            .filter(|names| !names.is_empty())
            .map(|names| vary_values(names, &self.headers))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheLayer, Partition};
    use proptest::prelude::*;

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut res = http::Response::new(());
        *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        for (name, value) in headers {
            res.headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        res.into_parts().0
    }

    #[test]
    fn an_answer_to_come_is_registered_only_while_its_channel_is_open() {
        let pending = Pending::default();
        let key = CacheKey::from_bytes([7; 32]);
        let (tx, rx) = tokio::sync::watch::channel(None);
        pending.start_if_open(key, &rx);
        assert!(pending.get(&key).is_some_and(|body| body.same_channel(&rx)));
        // Closed, then ended as its owner does: gone.
        drop(tx);
        pending.end(&key, &rx);
        assert!(pending.get(&key).is_none());
        // Already closed: never registered, so nothing is left for nobody to end.
        pending.start_if_open(key, &rx);
        assert!(pending.get(&key).is_none());
        // Already answered (and ended by whoever answered): never registered either.
        let (answered, rx) = tokio::sync::watch::channel(None);
        answered.send_replace(Some(Arc::new(crate::core::Flight::Alone)));
        pending.start_if_open(key, &rx);
        assert!(pending.get(&key).is_none());
        // Another channel's end leaves this one's entry alone.
        let (_tx, open) = tokio::sync::watch::channel(None);
        pending.start_if_open(key, &open);
        pending.end(&key, &rx);
        assert!(pending.get(&key).is_some());
    }

    const CACHE_CONTROL: [&str; 7] = [
        "",
        "private",
        "no-store",
        "no-cache",
        "public",
        "max-age=0",
        "s-maxage=10",
    ];
    const VARY: [&str; 4] = ["", "*", "accept-language", "accept, *"];
    const CONTENT_TYPE: [&str; 4] = ["", "application/grpc", "text/event-stream", "text/plain"];
    const GRPC_STATUS: [&str; 3] = ["", "0", "14"];

    proptest! {
        /// What may not be stored is neither stored nor shared, whatever the mix of
        /// headers; what is stored is a `2xx`, non-failed answer.
        #[test]
        fn sharing_never_exceeds_storage(
            status in prop::sample::select(vec![200u16, 203, 206, 404, 500, 503]),
            cc in 0..CACHE_CONTROL.len(),
            vary in 0..VARY.len(),
            content_type in 0..CONTENT_TYPE.len(),
            grpc_status in 0..GRPC_STATUS.len(),
            set_cookie: bool,
            authorized: bool,
            partitioned: bool,
            degraded: bool,
        ) {
            let builder = CacheLayer::builder().clock(crate::Clock::Tokio);
            let layer = if partitioned {
                builder.partition(Partition::header(header::AUTHORIZATION)).build()
            } else {
                builder.build()
            };
            let mut headers = Vec::new();
            for (name, value) in [
                ("cache-control", CACHE_CONTROL[cc]),
                ("vary", VARY[vary]),
                ("content-type", CONTENT_TYPE[content_type]),
                ("grpc-status", GRPC_STATUS[grpc_status]),
                ("set-cookie", if set_cookie { "id=1" } else { "" }),
            ] {
                if !value.is_empty() {
                    headers.push((name, value));
                }
            }
            let parts = head(status, &headers);
            let asked = Asked { authorized, headers: HeaderMap::new() };
            let (verdict, failed) = layer.shared().judge(&asked, &parts, degraded);

            let cc = CACHE_CONTROL[cc];
            let private = cc == "private" && !partitioned;
            let forbidden = status == 206
                || set_cookie
                || private
                || matches!(cc, "no-store" | "no-cache" | "max-age=0")
                || VARY[vary].contains('*')
                || CONTENT_TYPE[content_type] == "text/event-stream"
                || (authorized && !partitioned && !matches!(cc, "public" | "s-maxage=10"));
            if forbidden {
                prop_assert_eq!(verdict, Verdict::Alone);
            } else {
                prop_assert_ne!(verdict, Verdict::Alone);
            }
            let grpc_failed = CONTENT_TYPE[content_type] == "application/grpc"
                && GRPC_STATUS[grpc_status] == "14";
            prop_assert_eq!(failed, degraded || status >= 500 || grpc_failed);
            if let Verdict::Store(ttl) = verdict {
                prop_assert!((200..300).contains(&status) && !failed);
                prop_assert!(!ttl.is_zero());
            }
        }
    }

    #[test]
    fn grpc_status_comes_from_the_head_or_the_trailers() {
        let grpc = |status: &'static str| {
            head(
                200,
                &[
                    ("content-type", "application/grpc+proto"),
                    ("grpc-status", status),
                ],
            )
        };
        assert_eq!(Grpc::of(&grpc("0")), Grpc::Ok);
        assert_eq!(Grpc::of(&grpc("2")), Grpc::Failed);
        assert_eq!(Grpc::of(&head(200, &[])), Grpc::No);
        let pending = Grpc::of(&head(200, &[("content-type", "application/grpc")]));
        assert_eq!(pending, Grpc::Pending);
        let mut trailers = HeaderMap::new();
        assert_eq!(pending.with_trailers(Some(&trailers)), Grpc::Failed);
        assert_eq!(pending.with_trailers(None), Grpc::Failed);
        trailers.insert(super::GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(pending.with_trailers(Some(&trailers)), Grpc::Ok);
        assert_eq!(Grpc::Failed.with_trailers(Some(&trailers)), Grpc::Failed);
    }

    #[test]
    fn vary_names_are_parsed_and_star_refused() {
        let names = |v: &'static str| vary_names(&head(200, &[("vary", v)]).headers);
        assert_eq!(
            names("Accept-Language, accept-encoding,,accept-language"),
            Some(vec![header::ACCEPT_LANGUAGE, header::ACCEPT_ENCODING])
        );
        assert_eq!(names("accept, *"), None);
        assert_eq!(names("bad name"), None);
        assert_eq!(vary_names(&HeaderMap::new()), Some(Vec::new()));
    }
}
