//! Logs and traces of `ladder-operator run`.
//!
//! Logs: JSON lines (or text) on stderr, filtered by `RUST_LOG`.
//! Traces: optional, exported over OTLP/HTTP (protobuf) when an endpoint is
//! given (`--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`). Every
//! `tracing` span that passes the filter becomes an OpenTelemetry span of
//! the service `ladder-operator`: one `reconcile` span per reconcile, with
//! the ScalingPhase's name and namespace as attributes.
//!
//! Spans are batched and sent from a background thread (the SDK's batch
//! processor, tuned with the standard `OTEL_BSP_*` variables); a collector
//! that is down costs dropped spans, never a slower reconcile.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `service.name` of the exported spans.
pub const SERVICE_NAME: &str = "ladder-operator";

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint is not an `http://` URL.
    #[error("OTLP endpoint {0:?}: expected http://host:port (OTLP/HTTP; use a collector for TLS)")]
    Endpoint(String),
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was already set.
    #[error("tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The URL spans are POSTed to: the endpoint is a base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is by the OpenTelemetry specification, and
/// traces go to `/v1/traces` under it.
pub fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let base = endpoint.trim().trim_end_matches('/');
    let authority = base.strip_prefix("http://").unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(TelemetryError::Endpoint(endpoint.to_owned()));
    }
    Ok(format!("{base}/v1/traces"))
}

/// Installs the global subscriber: logs in `format` (`json` or `text`),
/// and OTLP trace export when `otlp_endpoint` is set.
pub fn init(format: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if format == "text" {
        fmt.boxed()
    } else {
        fmt.json().flatten_event(true).boxed()
    };
    let provider = match otlp_endpoint.filter(|e| !e.trim().is_empty()) {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(traces_url(endpoint)?)
                .build()?;
            let resource = Resource::builder()
                .with_service_name(SERVICE_NAME)
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SERVICE_NAME))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()?;
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still buffered and stops the exporter. Blocks (the
    /// exporter has its own thread): call it off the async runtime.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_a_base_url() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").expect("valid"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector.observability:4318/").expect("valid"),
            "http://collector.observability:4318/v1/traces"
        );
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "http://",
            "http://a b",
        ] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
