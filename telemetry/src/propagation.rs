//! Incoming trace context: a request that arrives with a W3C `traceparent`
//! (and `tracestate`) header, from an edge cache, an ingress or a client's
//! own trace, is served in a span that continues the caller's trace instead
//! of starting a new one.
//!
//! Flow, per request, and only when spans are exported and
//! `OTEL_PROPAGATORS` allows it ([`reads_trace_context`]): the headers are
//! read by the SDK's [`TraceContextPropagator`] through [`HeaderExtractor`];
//! a valid remote span context becomes the parent of the request's span
//! ([`continue_trace`]). Anything the propagator cannot parse (a malformed
//! or all-zero id, upper-case hex, a repeated `traceparent`) is ignored: the
//! span is a new root and the request is served as it would have been
//! without the header; a context never makes a request fail.
//!
//! Trust. The headers come from whoever sent the request, and the app's
//! redirects are public. We continue them anyway, which is what
//! OpenTelemetry's HTTP server instrumentations do by default, because
//! joining the caller's trace is the point (behind the edge, Varnish passes
//! the header through). What a caller can do with it: pick the trace id its
//! request's span is filed under, and choose whether that span is sampled.
//! The SDK's sampler is parent-based by default (`ParentBased(AlwaysOn)`
//! when `OTEL_TRACES_SAMPLER` is unset; the operator renders
//! `parentbased_traceidratio`), so a caller's sampled flag is followed in
//! both directions: `-01` is exported whatever the ratio, `-00` is not. The
//! cost of a caller forcing every request to be sampled is bounded by the
//! batch processor: spans beyond `OTEL_BSP_MAX_QUEUE_SIZE` are dropped, and
//! exporting never slows a request. An app that should not take trace
//! context from outside sets `OTEL_PROPAGATORS=none` (every request then
//! starts its own trace, sampled by the ratio alone).

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The standard variable naming the propagators, comma-separated; the
/// OpenTelemetry default is `tracecontext,baggage`.
pub const PROPAGATORS_ENV: &str = "OTEL_PROPAGATORS";

/// The W3C header a parent span travels in.
const TRACEPARENT: &str = "traceparent";

/// Whether incoming W3C trace context is read, from the value of
/// `OTEL_PROPAGATORS`: unset or blank means the specification's default
/// (`tracecontext,baggage`), so yes; otherwise only if the list names
/// `tracecontext` (`none` turns it off). Also returns the names this crate
/// does not read (`b3`, `jaeger`, ...; `baggage` is accepted and not read:
/// no Ladder binary uses baggage), for the caller to warn about.
pub fn reads_trace_context(propagators: Option<&str>) -> (bool, Vec<String>) {
    let Some(list) = propagators.filter(|v| !v.trim().is_empty()) else {
        return (true, Vec::new());
    };
    let mut reads = false;
    let mut unread = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "tracecontext" => reads = true,
            "baggage" | "none" => {}
            other => unread.push(other.to_owned()),
        }
    }
    (reads, unread)
}

/// The request's headers as the propagator's carrier. Header names are
/// case-insensitive and `HeaderMap` stores them lower-case, as the
/// propagator asks for them. A value that is not visible ASCII is absent.
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self
            .0
            .get_all(key)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

/// The caller's span as a parent context, when the headers carry a valid
/// one. A repeated `traceparent` is ambiguous (which one is the caller?) and
/// is ignored, as a malformed one is. `tracestate` is the SDK's to validate:
/// it keeps at most the 32 list members W3C allows and drops an invalid
/// header (the parent stays, with an empty state); of repeated `tracestate`
/// lines only the first is read.
pub fn remote_parent(headers: &HeaderMap) -> Option<Context> {
    let mut traceparents = headers.get_all(TRACEPARENT).iter();
    traceparents.next()?;
    if traceparents.next().is_some() {
        return None;
    }
    // A fresh context, not `Context::current()`: nothing the task happens to
    // run in may leak into the parent of a request.
    let cx = TraceContextPropagator::new()
        .extract_with_context(&Context::new(), &HeaderExtractor(headers));
    let valid = cx.span().span_context().is_valid();
    valid.then_some(cx)
}

/// Makes `span` (not yet entered) a child of the caller's span named by the
/// request's headers; returns whether it did. Nothing happens, and the span
/// stays a root, when the headers carry no valid context, when no
/// OpenTelemetry layer is installed, or when `span` is filtered out.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) -> bool {
    // A span the filter dropped (`RUST_LOG=warn`) is not worth parsing headers for.
    if span.is_disabled() {
        return false;
    }
    match remote_parent(headers) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT: &str = "b7ad6b7169203331";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_the_parent_with_its_state_and_flag() {
        let cx = remote_parent(&headers(&[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            (
                "tracestate",
                "ladder=t61rcWkgMzE,congo=lZWRzIHRoNhcm5hbCBwbGVhc3VyZS4",
            ),
        ]))
        .expect("a parent");
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(sc.trace_id(), TraceId::from_hex(TRACE).expect("hex"));
        assert_eq!(sc.span_id(), SpanId::from_hex(PARENT).expect("hex"));
        assert!(sc.is_remote());
        assert_eq!(sc.trace_flags(), TraceFlags::SAMPLED);
        assert_eq!(sc.trace_state().get("ladder"), Some("t61rcWkgMzE"));
        // An unsampled caller stays unsampled.
        let unsampled = remote_parent(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-{PARENT}-00"),
        )]))
        .expect("a parent");
        assert!(!unsampled.span().span_context().is_sampled());
    }

    #[test]
    fn a_malformed_or_missing_traceparent_is_no_parent() {
        let zeros = "0".repeat(32);
        for bad in [
            "",
            "hello",
            &format!("00-{TRACE}-{PARENT}"),
            &format!("00-{zeros}-{PARENT}-01"),
            &format!("00-{TRACE}-0000000000000000-01"),
            &format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            &format!("ff-{TRACE}-{PARENT}-01"),
            &format!("00-{TRACE}-{PARENT}-01-extra"),
            &format!("00-{TRACE}x-{PARENT}-01"),
        ] {
            assert!(
                remote_parent(&headers(&[("traceparent", bad)])).is_none(),
                "{bad:?}"
            );
        }
        assert!(remote_parent(&HeaderMap::new()).is_none());
        assert!(
            remote_parent(&headers(&[("tracestate", "ladder=1")])).is_none(),
            "a state without a parent"
        );
        let mut not_ascii = HeaderMap::new();
        not_ascii.insert(
            "traceparent",
            HeaderValue::from_bytes("00-\u{e9}".as_bytes()).expect("opaque bytes"),
        );
        assert!(remote_parent(&not_ascii).is_none());
    }

    #[test]
    fn a_repeated_traceparent_is_ignored() {
        let one = format!("00-{TRACE}-{PARENT}-01");
        let other = format!("00-{TRACE}-00f067aa0ba902b7-01");
        assert!(
            remote_parent(&headers(&[("traceparent", &one), ("traceparent", &other)])).is_none()
        );
    }

    #[test]
    fn an_invalid_tracestate_keeps_the_parent() {
        let cx = remote_parent(&headers(&[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "not a list member"),
        ]))
        .expect("a parent");
        assert_eq!(cx.span().span_context().trace_state().header(), "");
    }

    #[test]
    fn propagators_from_the_environment() {
        assert_eq!(reads_trace_context(None), (true, vec![]));
        assert_eq!(reads_trace_context(Some(" ")), (true, vec![]));
        assert_eq!(
            reads_trace_context(Some("tracecontext,baggage")),
            (true, vec![])
        );
        assert_eq!(reads_trace_context(Some("none")), (false, vec![]));
        assert_eq!(
            reads_trace_context(Some("b3, tracecontext")),
            (true, vec!["b3".to_owned()])
        );
        assert_eq!(
            reads_trace_context(Some("baggage,jaeger")),
            (false, vec!["jaeger".to_owned()])
        );
    }
}
