//! What the layer reads from a request: its `method` and `route` labels.

use std::borrow::Cow;

/// The `method` label: the nine standard HTTP methods, everything else folded into
/// `OTHER`, so that a client sending odd methods cannot grow the number of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodLabel {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
    /// Any other method, and requests that have none.
    Other,
}

impl MethodLabel {
    /// Every label, in index order.
    pub(crate) const ALL: [Self; 10] = [
        Self::Get,
        Self::Head,
        Self::Post,
        Self::Put,
        Self::Delete,
        Self::Connect,
        Self::Options,
        Self::Trace,
        Self::Patch,
        Self::Other,
    ];

    /// The label value, e.g. `"GET"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => "OTHER",
        }
    }

    /// The position of this label in [`MethodLabel::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(feature = "http")]
impl From<&http::Method> for MethodLabel {
    fn from(method: &http::Method) -> Self {
        match method.as_str() {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "CONNECT" => Self::Connect,
            "OPTIONS" => Self::Options,
            "TRACE" => Self::Trace,
            "PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }
}

/// The labels of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLabels<'r> {
    /// The `method` label.
    pub method: MethodLabel,
    /// The `route` label: a route *template* such as `/users/{id}`, never a raw path.
    /// `None` records the request under [`UNMATCHED_ROUTE`](crate::UNMATCHED_ROUTE).
    pub route: Option<Cow<'r, str>>,
}

/// Reads the labels of a request. Implemented by [`HttpLabels`](crate::HttpLabels) for
/// `http::Request`, and by any `Fn(&Req) -> RequestLabels<'static>` closure.
///
/// Route values must come from a bounded set (route templates, RPC method names); the
/// layer caps the number of distinct routes anyway (see
/// [`RedMetricsLayerBuilder::max_routes`](crate::RedMetricsLayerBuilder::max_routes)).
///
/// It also carries the mark that keeps two RED layers from counting one request twice:
/// a layer passes through, unrecorded, a request that [`is_recorded`] says an outer RED
/// layer records already, and [`mark_recorded`]s the ones it records. The defaults never
/// find a mark (every layer records); [`HttpLabels`](crate::HttpLabels) keeps it in the
/// request's extensions ([`RedRecorded`](crate::RedRecorded)).
///
/// [`is_recorded`]: ExtractLabels::is_recorded
/// [`mark_recorded`]: ExtractLabels::mark_recorded
pub trait ExtractLabels<Req> {
    /// The labels of `request`.
    fn extract<'r>(&self, request: &'r Req) -> RequestLabels<'r>;

    /// Whether an outer RED layer records `request` already. Default: `false`.
    fn is_recorded(&self, request: &Req) -> bool {
        let _ = request;
        false
    }

    /// Marks `request` as recorded, for the RED layers inside this one. Default: nothing.
    fn mark_recorded(&self, request: &mut Req) {
        let _ = request;
    }
}

impl<Req, F> ExtractLabels<Req> for F
where
    F: Fn(&Req) -> RequestLabels<'static>,
{
    fn extract<'r>(&self, request: &'r Req) -> RequestLabels<'r> {
        self(request)
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded() {
        assert_eq!(MethodLabel::from(&http::Method::GET), MethodLabel::Get);
        assert_eq!(MethodLabel::from(&http::Method::PATCH), MethodLabel::Patch);
        let odd = http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(MethodLabel::from(&odd), MethodLabel::Other);
        for (index, label) in MethodLabel::ALL.iter().enumerate() {
            assert_eq!(label.index(), index);
        }
    }
}
