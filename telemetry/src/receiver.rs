//! A loopback OTLP/HTTP trace receiver for tests: serves `POST /v1/traces`
//! on 127.0.0.1, decodes every `ExportTraceServiceRequest` (protobuf) and
//! keeps what it saw. Feature `receiver`, dev-dependencies only.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// One span as the receiver saw it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of its resource.
    pub service: Option<String>,
    /// Every attribute of its resource, values as text.
    pub resource: Vec<(String, String)>,
    pub name: String,
    /// Its attributes, values as text.
    pub attributes: Vec<(String, String)>,
    /// Lower-case hex, as in a `traceparent` header.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The W3C `tracestate` it carries, as a header value.
    pub trace_state: String,
    /// OTLP span flags: the W3C trace flags in the low byte, then whether
    /// the parent is known to be remote (bit 8) and is remote (bit 9).
    pub flags: u32,
}

impl ReceivedSpan {
    /// The value of the attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the exporter said the parent is remote (`None`: it did not say).
    pub fn parent_is_remote(&self) -> Option<bool> {
        (self.flags & 0x100 != 0).then_some(self.flags & 0x200 != 0)
    }
}

/// One POST as the receiver saw it: content type and body size.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub content_type: Option<String>,
    pub bytes: usize,
}

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<ReceivedRequest>>>,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

/// The running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen").finish_non_exhaustive()
    }
}

impl Receiver {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start() -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Seen::default();
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(seen.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { addr, seen, task })
    }

    /// The base URL to export to (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.seen.spans).clone()
    }

    /// Every export request received so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.seen.requests).clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pairs(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// `POST /v1/traces`: records the content type and every decoded span.
async fn traces(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    lock(&seen.requests).push(ReceivedRequest {
        content_type,
        bytes: body.len(),
    });
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut spans = lock(&seen.spans);
    for rs in request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| pairs(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone());
        for ss in rs.scope_spans {
            for span in ss.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    name: span.name.clone(),
                    attributes: pairs(&span.attributes),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    trace_state: span.trace_state.clone(),
                    flags: span.flags,
                });
            }
        }
    }
    StatusCode::OK
}
