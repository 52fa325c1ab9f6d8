//! HTTP cache keys: the [`KeyBuilder`] trait, the default [`RequestKey`], and
//! [`Partition`], which keeps one user's answers from another.

use std::{fmt, hash::Hash, sync::Arc};

use http::{HeaderName, Method, header::HOST, request::Parts};

use crate::key::{CacheKey, KeyHasher};

/// What the cache needs to read from a request before it can build the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not cacheable: pass it straight to the inner service (counted as bypassed).
    Bypass,
    /// The key does not depend on the body: the body is not read.
    WithoutBody,
    /// The key includes the body: read it (within the cache's limit), then build the key.
    WithBody,
}

/// Builds the cache key of an HTTP request. Replace [`RequestKey`] with your own to key on
/// anything else.
pub trait KeyBuilder: Send + Sync + 'static {
    /// Whether and how this request can be cached, from its head alone.
    fn plan(&self, parts: &Parts) -> Plan;

    /// The key, given the request's head and, when [`plan`](Self::plan) said
    /// [`Plan::WithBody`], its body. `None` bypasses the cache.
    fn key(&self, parts: &Parts, body: Option<&[u8]>) -> Option<CacheKey>;

    /// Whether every key identifies one user's requests only. Responses marked
    /// `Cache-Control: private` are stored only by a partitioned cache.
    fn is_partitioned(&self) -> bool {
        false
    }
}

type PartitionFn = dyn Fn(&Parts, &mut KeyHasher) -> bool + Send + Sync;

/// Which user a request belongs to, so that cached answers are never shared across users.
///
/// A request whose partition cannot be found (for example, no user-id header and no
/// fallback) bypasses the cache.
#[derive(Clone)]
pub struct Partition {
    write: Arc<PartitionFn>,
}

const TAG_PARTITION: u8 = 6;

impl Partition {
    /// Partitions by the value(s) of one request header, such as `x-user-id`. A missing
    /// or empty header means no partition.
    #[must_use]
    pub fn header(name: HeaderName) -> Self {
        Self::from_writer(move |parts, key| {
            let values = || {
                parts
                    .headers
                    .get_all(&name)
                    .into_iter()
                    .filter(|v| !v.is_empty())
            };
            let n = values().count();
            if n == 0 {
                return false;
            }
            key.count(TAG_PARTITION, n);
            for value in values() {
                key.field(TAG_PARTITION, value.as_bytes());
            }
            true
        })
    }

    /// Partitions by what `f` returns for the request, for example a user id from a typed
    /// extension or the client's IP address. `None` means no partition.
    #[must_use]
    pub fn from_fn<F, T>(f: F) -> Self
    where
        F: Fn(&Parts) -> Option<T> + Send + Sync + 'static,
        T: AsRef<[u8]>,
    {
        Self::from_writer(move |parts, key| match f(parts) {
            Some(value) => {
                key.field(TAG_PARTITION, value.as_ref());
                true
            }
            None => false,
        })
    }

    /// Partitions by a typed request extension, through its [`Hash`] implementation (for
    /// example a `UserId` inserted by an authentication layer, or a `SocketAddr`). Its
    /// absence means no partition.
    #[must_use]
    pub fn extension<T: Hash + Send + Sync + 'static>() -> Self {
        Self::from_writer(|parts, key| match parts.extensions.get::<T>() {
            Some(value) => {
                let mut bytes = ByteHasher(Vec::with_capacity(16));
                value.hash(&mut bytes);
                key.field(TAG_PARTITION, &bytes.0);
                true
            }
            None => false,
        })
    }

    /// This partition, or `other` when this one finds nothing (the two never collide).
    #[must_use]
    pub fn or(self, other: Partition) -> Self {
        Self::from_writer(move |parts, key| {
            let mut first = key.clone();
            first.count(TAG_PARTITION, 1);
            if self.write(parts, &mut first) {
                *key = first;
                true
            } else {
                key.count(TAG_PARTITION, 2);
                other.write(parts, key)
            }
        })
    }

    fn from_writer(f: impl Fn(&Parts, &mut KeyHasher) -> bool + Send + Sync + 'static) -> Self {
        Self { write: Arc::new(f) }
    }

    /// Writes the partition into `key`; `false` when the request has none.
    fn write(&self, parts: &Parts, key: &mut KeyHasher) -> bool {
        (self.write)(parts, key)
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition").finish_non_exhaustive()
    }
}

/// Collects what a [`Hash`] implementation writes.
struct ByteHasher(Vec<u8>);

impl std::hash::Hasher for ByteHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// The default key: SHA-256 over the method, path, query, the chosen `vary` headers, the
/// body and the partition, each length-prefixed so that no two requests encode alike.
///
/// **Without a [`Partition`], cached answers are shared between all users**: user B may
/// be served the answer to user A's identical request. Partition by user whenever answers
/// depend on who asks.
///
/// By default `GET`, `HEAD` and `POST` requests are cached (POST because an analysis
/// request is a lookup with a body); other methods bypass the cache. Add `host` to the
/// vary list when one service answers for several hosts: the URI's authority counts as
/// the host when there is one (HTTP/2 requests carry the host there, not in a `Host`
/// header), so `https://a.example/x` over HTTP/2 and `Host: a.example` over HTTP/1.1
/// share one key.
#[derive(Clone, Debug)]
pub struct RequestKey {
    methods: Vec<Method>,
    vary: Vec<HeaderName>,
    partition: Option<Partition>,
    include_body: bool,
}

impl Default for RequestKey {
    fn default() -> Self {
        Self {
            methods: vec![Method::GET, Method::HEAD, Method::POST],
            vary: Vec::new(),
            partition: None,
            include_body: true,
        }
    }
}

const TAG_VERSION: u8 = 0;
const TAG_METHOD: u8 = 1;
const TAG_PATH: u8 = 2;
const TAG_QUERY: u8 = 3;
const TAG_HEADER: u8 = 4;
const TAG_BODY: u8 = 5;

impl RequestKey {
    /// The default key: `GET`, `HEAD`, `POST`; no vary headers; body included; no partition.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Caches only these methods; others bypass.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Adds a request header whose values become part of the key (like `Vary`).
    #[must_use]
    pub fn vary(mut self, header: HeaderName) -> Self {
        self.vary.push(header);
        self
    }

    /// Partitions entries by user. Requests without a partition then bypass the cache.
    #[must_use]
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Whether the body is part of the key (default `true`). Without it, the body is
    /// never read.
    #[must_use]
    pub fn include_body(mut self, include: bool) -> Self {
        self.include_body = include;
        self
    }
}

impl KeyBuilder for RequestKey {
    fn plan(&self, parts: &Parts) -> Plan {
        if !self.methods.contains(&parts.method) {
            Plan::Bypass
        } else if self.include_body {
            Plan::WithBody
        } else {
            Plan::WithoutBody
        }
    }

    fn key(&self, parts: &Parts, body: Option<&[u8]>) -> Option<CacheKey> {
        let mut key = KeyHasher::new();
        // Encoding version: bump when the encoding changes, so old shared entries miss.
        key.count(TAG_VERSION, 1);
        key.field(TAG_METHOD, parts.method.as_str().as_bytes());
        key.field(TAG_PATH, parts.uri.path().as_bytes());
        key.optional(TAG_QUERY, parts.uri.query().map(str::as_bytes));
        key.count(TAG_HEADER, self.vary.len());
        for name in &self.vary {
            // Over HTTP/2 (and in HTTP/1.1's absolute form) the host is the URI's
            // authority, and there may be no `Host` header: key the authority, encoded
            // as a `Host` header with that value would be.
            if *name == HOST
                && let Some(authority) = parts.uri.authority()
            {
                let host = authority.as_str();
                let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
                key.field(TAG_HEADER, name.as_str().as_bytes());
                key.count(TAG_HEADER, 1);
                key.field(TAG_HEADER, host.as_bytes());
                continue;
            }
            let values = parts.headers.get_all(name);
            key.field(TAG_HEADER, name.as_str().as_bytes());
            key.count(TAG_HEADER, values.iter().count());
            for value in values {
                key.field(TAG_HEADER, value.as_bytes());
            }
        }
        key.optional(TAG_BODY, if self.include_body { body } else { None });
        if let Some(partition) = &self.partition
            && !partition.write(parts, &mut key)
        {
            return None;
        }
        Some(key.digest())
    }

    fn is_partitioned(&self) -> bool {
        self.partition.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    fn get(uri: &str) -> Parts {
        parts(Request::get(uri).body(()).unwrap_or_default())
    }

    #[test]
    fn fields_are_distinguished() {
        let k = RequestKey::new();
        let a = k
            .key(&get("/a?b"), Some(b""))
            .unwrap_or(CacheKey::from_bytes([0; 32]));
        assert_ne!(Some(a), k.key(&get("/a?"), Some(b"b")));
        assert_ne!(Some(a), k.key(&get("/a"), Some(b"")));
        assert_ne!(Some(a), k.key(&get("/a?b"), None));
        assert_eq!(Some(a), k.key(&get("/a?b"), Some(b"")));
        let post = parts(Request::post("/a?b").body(()).unwrap_or_default());
        assert_ne!(Some(a), k.key(&post, Some(b"")));
    }

    #[test]
    fn vary_headers_count() {
        let k = RequestKey::new().vary(http::header::ACCEPT_LANGUAGE);
        let en = parts(
            Request::get("/")
                .header("accept-language", "en")
                .body(())
                .unwrap_or_default(),
        );
        let fr = parts(
            Request::get("/")
                .header("accept-language", "fr")
                .body(())
                .unwrap_or_default(),
        );
        let none = get("/");
        let empty = parts(
            Request::get("/")
                .header("accept-language", "")
                .body(())
                .unwrap_or_default(),
        );
        let keys = [&en, &fr, &none, &empty].map(|p| k.key(p, None));
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{i} vs {j}");
            }
        }
        // Without vary, the header is ignored.
        assert_eq!(
            RequestKey::new().key(&en, None),
            RequestKey::new().key(&fr, None)
        );
    }

    #[test]
    fn partition_isolates_and_bypasses() {
        let k =
            RequestKey::new().partition(Partition::header(HeaderName::from_static("x-user-id")));
        assert!(k.is_partitioned());
        let a = parts(
            Request::get("/")
                .header("x-user-id", "a")
                .body(())
                .unwrap_or_default(),
        );
        let b = parts(
            Request::get("/")
                .header("x-user-id", "b")
                .body(())
                .unwrap_or_default(),
        );
        assert_ne!(k.key(&a, None), k.key(&b, None));
        assert!(k.key(&a, None).is_some());
        assert_eq!(k.key(&get("/"), None), None);
    }

    #[test]
    fn partition_fallbacks_never_collide() {
        let p = Partition::header(HeaderName::from_static("x-user-id")).or(Partition::from_fn(
            |parts: &Parts| parts.headers.get("x-ip").map(|v| v.as_bytes().to_vec()),
        ));
        let k = RequestKey::new().partition(p);
        let user = parts(
            Request::get("/")
                .header("x-user-id", "1.2.3.4")
                .body(())
                .unwrap_or_default(),
        );
        let ip = parts(
            Request::get("/")
                .header("x-ip", "1.2.3.4")
                .body(())
                .unwrap_or_default(),
        );
        assert!(k.key(&user, None).is_some() && k.key(&ip, None).is_some());
        assert_ne!(k.key(&user, None), k.key(&ip, None));
    }

    #[test]
    fn extension_partition() {
        #[derive(Clone, Hash)]
        struct UserId(u64);
        let k = RequestKey::new().partition(Partition::extension::<UserId>());
        let mut a = get("/");
        a.extensions.insert(UserId(1));
        let mut b = get("/");
        b.extensions.insert(UserId(2));
        assert_ne!(k.key(&a, None), k.key(&b, None));
        assert_eq!(k.key(&get("/"), None), None);
    }

    #[test]
    fn plans() {
        let k = RequestKey::new();
        assert_eq!(k.plan(&get("/")), Plan::WithBody);
        assert_eq!(
            k.clone().include_body(false).plan(&get("/")),
            Plan::WithoutBody
        );
        let put = parts(Request::put("/").body(()).unwrap_or_default());
        assert_eq!(k.plan(&put), Plan::Bypass);
    }
}
