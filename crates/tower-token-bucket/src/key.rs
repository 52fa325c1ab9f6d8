//! What a request is limited by: its key, and what it costs.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::num::NonZeroU32;

use crate::KeyError;

/// Names the key type of an extractor. Every [`ExtractKey`] implements it.
///
/// The key is stored per tracked client, so keep it small: a `u64`, an `IpAddr`, a
/// short byte string.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key requests are limited by. Requests with equal keys share a bucket.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;
}

/// Takes the rate-limit key (and the cost) from a request of type `R`.
///
/// Provided: [`GlobalKey`] (one bucket for everything), [`key_fn`] (a closure), and with
/// the `http` feature a header value, a typed request extension, and the peer IP with or
/// without trusted proxies. Combine them with [`or`](ExtractKeyExt::or) ("this, else
/// that") and [`with_cost`](ExtractKeyExt::with_cost).
///
/// ```
/// use tower_token_bucket::{ExtractKey, KeyError, KeyExtractor};
///
/// struct AnalyzeRequest { tenant: u64, tokens: u32 }
///
/// struct ByTenant;
/// impl KeyExtractor for ByTenant { type Key = u64; }
/// impl ExtractKey<AnalyzeRequest> for ByTenant {
///     fn extract_key(&self, req: &AnalyzeRequest) -> Result<u64, KeyError> {
///         Ok(req.tenant)
///     }
/// }
/// # let _ = ByTenant.extract_key(&AnalyzeRequest { tenant: 1, tokens: 2 });
/// ```
pub trait ExtractKey<R>: KeyExtractor {
    /// The key of `request`, or why it has none (the request is then refused with a
    /// 400- or 401-class error, never a 500).
    ///
    /// # Errors
    ///
    /// When the request carries no usable key.
    fn extract_key(&self, request: &R) -> Result<Self::Key, KeyError>;

    /// How many tokens `request` spends. One by default.
    fn cost(&self, request: &R) -> NonZeroU32 {
        let _ = request;
        NonZeroU32::MIN
    }
}

/// Combinators on every extractor.
pub trait ExtractKeyExt: KeyExtractor + Sized {
    /// Use `self`'s key, or `other`'s when `self` finds none.
    ///
    /// The keys of the two never collide: they are [`EitherKey::First`] and
    /// [`EitherKey::Second`]. The cost is `self`'s.
    fn or<B: KeyExtractor>(self, other: B) -> Or<Self, B> {
        Or {
            first: self,
            second: other,
        }
    }

    /// Charge `cost(request)` tokens per request instead of one.
    fn with_cost<F>(self, cost: F) -> WithCost<Self, F> {
        WithCost { inner: self, cost }
    }
}

impl<X: KeyExtractor> ExtractKeyExt for X {}

/// One bucket for every request: a global limit.
///
/// Its key is `()`, which the in-process backend keeps without any map lookup.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalKey;

impl KeyExtractor for GlobalKey {
    type Key = ();
}

impl<R> ExtractKey<R> for GlobalKey {
    #[inline]
    fn extract_key(&self, _: &R) -> Result<(), KeyError> {
        Ok(())
    }
}

/// A key from a closure `Fn(&R) -> Result<K, KeyError>`; see [`key_fn`].
pub struct FnKey<F, R, K> {
    f: F,
    _marker: PhantomData<fn(&R) -> K>,
}

/// A key from a closure, for any request type.
///
/// ```
/// use tower_token_bucket::{key_fn, ExtractKey, KeyError};
///
/// struct Job { owner: u64 }
/// let by_owner = key_fn(|job: &Job| Ok::<_, KeyError>(job.owner));
/// assert_eq!(by_owner.extract_key(&Job { owner: 7 }), Ok(7));
/// ```
pub fn key_fn<R, K, F>(f: F) -> FnKey<F, R, K>
where
    F: Fn(&R) -> Result<K, KeyError>,
{
    FnKey {
        f,
        _marker: PhantomData,
    }
}

impl<F: Clone, R, K> Clone for FnKey<F, R, K> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _marker: PhantomData,
        }
    }
}

impl<F, R, K> fmt::Debug for FnKey<F, R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnKey").finish_non_exhaustive()
    }
}

impl<F, R, K> KeyExtractor for FnKey<F, R, K>
where
    F: Send + Sync + 'static,
    R: 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;
}

impl<F, R, K> ExtractKey<R> for FnKey<F, R, K>
where
    F: Fn(&R) -> Result<K, KeyError> + Send + Sync + 'static,
    R: 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    #[inline]
    fn extract_key(&self, request: &R) -> Result<K, KeyError> {
        (self.f)(request)
    }
}

/// "This extractor, else that one"; see [`ExtractKeyExt::or`].
#[derive(Clone, Copy, Debug)]
pub struct Or<A, B> {
    first: A,
    second: B,
}

/// The key of an [`Or`]: which extractor found it, and the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EitherKey<A, B> {
    /// Found by the first extractor.
    First(A),
    /// Found by the second extractor.
    Second(B),
}

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Or<A, B> {
    type Key = EitherKey<A::Key, B::Key>;
}

impl<R, A: ExtractKey<R>, B: ExtractKey<R>> ExtractKey<R> for Or<A, B> {
    #[inline]
    fn extract_key(&self, request: &R) -> Result<Self::Key, KeyError> {
        match self.first.extract_key(request) {
            Ok(key) => Ok(EitherKey::First(key)),
            Err(_) => self.second.extract_key(request).map(EitherKey::Second),
        }
    }

    fn cost(&self, request: &R) -> NonZeroU32 {
        self.first.cost(request)
    }
}

/// An extractor with a per-request cost; see [`ExtractKeyExt::with_cost`].
#[derive(Clone, Copy, Debug)]
pub struct WithCost<X, F> {
    inner: X,
    cost: F,
}

impl<X: KeyExtractor, F: Send + Sync + 'static> KeyExtractor for WithCost<X, F> {
    type Key = X::Key;
}

impl<R, X, F> ExtractKey<R> for WithCost<X, F>
where
    X: ExtractKey<R>,
    F: Fn(&R) -> NonZeroU32 + Send + Sync + 'static,
{
    #[inline]
    fn extract_key(&self, request: &R) -> Result<X::Key, KeyError> {
        self.inner.extract_key(request)
    }

    #[inline]
    fn cost(&self, request: &R) -> NonZeroU32 {
        (self.cost)(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_falls_back_and_keeps_keys_apart() {
        let first = key_fn(|n: &u32| {
            if *n > 10 {
                Ok(*n)
            } else {
                Err(KeyError::invalid("small"))
            }
        });
        let second = key_fn(|n: &u32| Ok::<_, KeyError>(*n));
        let x = first.or(second);
        assert_eq!(x.extract_key(&11), Ok(EitherKey::First(11)));
        assert_eq!(x.extract_key(&3), Ok(EitherKey::Second(3)));
    }

    #[test]
    fn with_cost_charges_the_cost() {
        let x = GlobalKey.with_cost(|n: &u32| NonZeroU32::new(*n).unwrap_or(NonZeroU32::MIN));
        assert_eq!(x.cost(&7).get(), 7);
        assert_eq!(x.cost(&0).get(), 1);
        assert_eq!(GlobalKey.cost(&7).get(), 1);
    }
}
