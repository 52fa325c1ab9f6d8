//! Where the preset's priority comes from: a trusted request extension, and the
//! client's `x-priority` header only as far as the builder trusts it.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tower_priority_queue::{HeaderPriority, Priority, PriorityExtractor, QueueError};

use crate::budget::CallTimes;
use crate::deadline::Deadline;

/// How far the preset trusts the client's `x-priority` header; see
/// [`HealthAiStackBuilder::priority_header`](crate::HealthAiStackBuilder::priority_header).
///
/// Whatever the choice, a [`Priority`] in the request's extensions wins: the application
/// puts it there (from the user's plan, after authentication), and a client cannot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PriorityHeader {
    /// The header is not read: only the extension sets a priority; every other request is
    /// normal.
    Ignored,
    /// The default: a client may lower its own requests (`low`, `normal`), never raise
    /// them: `high` and `urgent` count as `normal`. A malformed value is still a 400.
    #[default]
    LowerOnly,
    /// The header is believed as sent, `urgent` included. Only for a demo or a private
    /// network of trusted callers: on a public deployment any client could put every
    /// request of its own ahead of everyone else's, and displace their waiting requests.
    Trusted,
}

/// The preset's [`PriorityExtractor`]: the [`Priority`] extension if the application set
/// one, else the `x-priority` header as far as [`PriorityHeader`] allows, else normal.
#[derive(Clone, Debug, Default)]
pub struct PresetPriority {
    header: PriorityHeader,
    reader: HeaderPriority,
    /// With it, a request waits only while its [`Deadline`] leaves time for a call.
    call_times: Option<Arc<CallTimes>>,
}

impl PresetPriority {
    /// Trusts the header as `header` says.
    #[must_use]
    pub fn new(header: PriorityHeader) -> Self {
        Self {
            header,
            reader: HeaderPriority::new(),
            call_times: None,
        }
    }

    /// Bounds each request's wait by its deadline less the time a call is likely to need.
    pub(crate) fn waiting_in_time(mut self, call_times: Option<Arc<CallTimes>>) -> Self {
        self.call_times = call_times;
        self
    }
}

impl<B> PriorityExtractor<Request<B>> for PresetPriority {
    #[inline]
    fn extract(&self, request: &Request<B>) -> Result<Priority, QueueError> {
        self.priority(request)
    }

    /// A request with a [`Deadline`] waits for a slot only while its call could still end
    /// by it, once the stack knows how long calls take (see
    /// [`start_calls_in_time`](crate::HealthAiStackBuilder::start_calls_in_time)).
    fn max_wait(&self, request: &Request<B>) -> Option<Duration> {
        let deadline = request.extensions().get::<Deadline>()?;
        // Past its deadline (a retry of a call that ran on after its caller was
        // answered): no wait at all.
        if deadline.remaining().is_zero() {
            return Some(Duration::ZERO);
        }
        self.call_times.as_ref()?.slack(*deadline)
    }
}

impl PresetPriority {
    fn priority<B>(&self, request: &Request<B>) -> Result<Priority, QueueError> {
        if let Some(priority) = request.extensions().get::<Priority>() {
            return Ok(*priority);
        }
        match self.header {
            PriorityHeader::Ignored => Ok(Priority::Normal),
            PriorityHeader::LowerOnly => self
                .reader
                .from_headers(request.headers())
                .map(|claimed| claimed.min(Priority::Normal)),
            PriorityHeader::Trusted => self.reader.from_headers(request.headers()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(header: Option<&str>, extension: Option<Priority>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request
                .headers_mut()
                .insert("x-priority", value.parse().unwrap());
        }
        if let Some(priority) = extension {
            request.extensions_mut().insert(priority);
        }
        request
    }

    #[test]
    fn the_extension_wins_and_the_header_only_lowers_by_default() {
        let default = PresetPriority::default();
        let get = |h, e| default.extract(&request(h, e));
        assert_eq!(get(Some("urgent"), None), Ok(Priority::Normal));
        assert_eq!(get(Some("high"), None), Ok(Priority::Normal));
        assert_eq!(get(Some("low"), None), Ok(Priority::Low));
        assert_eq!(get(None, None), Ok(Priority::Normal));
        assert_eq!(get(Some("asap"), None), Err(QueueError::InvalidPriority));
        assert_eq!(
            get(Some("low"), Some(Priority::Urgent)),
            Ok(Priority::Urgent)
        );
    }

    #[test]
    fn trusted_and_ignored_headers() {
        let trusted = PresetPriority::new(PriorityHeader::Trusted);
        assert_eq!(
            trusted.extract(&request(Some("urgent"), None)),
            Ok(Priority::Urgent)
        );
        let ignored = PresetPriority::new(PriorityHeader::Ignored);
        assert_eq!(
            ignored.extract(&request(Some("low"), None)),
            Ok(Priority::Normal)
        );
        assert_eq!(
            ignored.extract(&request(Some("asap"), None)),
            Ok(Priority::Normal)
        );
        assert_eq!(
            ignored.extract(&request(None, Some(Priority::High))),
            Ok(Priority::High)
        );
    }
}
