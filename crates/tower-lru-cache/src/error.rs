//! The cache's own errors. Errors of the inner service pass through unchanged, boxed.

use std::{error::Error, fmt, sync::Arc, time::Duration};

/// The error type of this crate's services: `Box<dyn Error + Send + Sync>`, the same type
/// as `tower::BoxError`.
///
/// Errors of the inner service arrive unchanged inside it (downcast them to their own
/// type); the cache's own failures are a boxed [`CacheError`].
pub type BoxError = Box<dyn Error + Send + Sync>;

/// What the cache itself failed at. Recognise it with
/// `err.downcast_ref::<CacheError>()`.
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheError {
    /// The request body could not be read (the client's stream failed, or it carried
    /// more bytes than its declared size). A client error.
    RequestBody(BoxError),
    /// The inner service's response body failed while it was being read for caching.
    ResponseBody(BoxError),
    /// This request was coalesced with an identical one whose inner call failed; the
    /// failure is shared rather than repeated. The leading request got the original error.
    Coalesced {
        /// The failed call's error message.
        message: Arc<str>,
    },
}

impl CacheError {
    /// When a retry may succeed. The cache never asks a client to wait, so always `None`.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RequestBody(e) => write!(f, "request body could not be read: {e}"),
            Self::ResponseBody(e) => write!(f, "response body failed while caching: {e}"),
            Self::Coalesced { message } => {
                write!(f, "coalesced request's inner call failed: {message}")
            }
        }
    }
}

impl Error for CacheError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::RequestBody(e) | Self::ResponseBody(e) => Some(&**e),
            Self::Coalesced { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static_and_boxes() {
        fn assert_bounds<E: Error + Send + Sync + 'static>() {}
        assert_bounds::<CacheError>();
        let boxed: BoxError = Box::new(CacheError::Coalesced {
            message: "boom".into(),
        });
        let err = boxed.downcast_ref::<CacheError>().map(ToString::to_string);
        assert_eq!(
            err.as_deref(),
            Some("coalesced request's inner call failed: boom")
        );
        assert_eq!(CacheError::RequestBody("x".into()).retry_after(), None);
    }
}
