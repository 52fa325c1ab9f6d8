//! The state every clone of one HTTP cache layer and its services share.

use std::{fmt, sync::Arc};

use http::response::Parts;

use crate::{
    cached::CachedResponse,
    core::Core,
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

impl<St: CacheStore<CachedResponse>> HttpShared<St> {
    /// How long this response may be stored, or `None` if it must not be: degraded
    /// answers, answers the `cacheable` predicate refuses, `Vary: *`, and what
    /// `Cache-Control` forbids (when honoured).
    pub(crate) fn storable_for(
        &self,
        parts: &Parts,
        degraded: bool,
    ) -> Option<std::time::Duration> {
        if degraded || !(self.cacheable)(parts) {
            return None;
        }
        if !self.cache_control {
            return Some(self.core.ttl);
        }
        let vary_any = parts.headers.get_all(http::header::VARY).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii() == b"*")
        });
        if vary_any {
            return None;
        }
        Directives::parse(
            parts
                .headers
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .map(http::HeaderValue::as_bytes),
        )
        .storable_for(self.core.ttl, self.key.is_partitioned())
    }
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
