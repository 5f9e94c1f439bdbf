//! Logs and traces of Ladder's binaries: `ladder-operator run` and
//! `ladder-app serve`.
//!
//! Logs: JSON lines (or text), filtered by `RUST_LOG`.
//! Traces: optional, exported over OTLP/HTTP (protobuf) when an endpoint is
//! given (the operator's `--otlp-endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! for both). Every `tracing` span that passes the filter becomes an
//! OpenTelemetry span.
//!
//! The standard variables are honoured by the SDK itself, and this crate
//! does not parse them again: `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (`Resource::builder`'s detectors),
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the tracer provider's
//! default `Config`), `OTEL_BSP_*` (the batch processor). Only when neither
//! names a service does [`Options::service_name`] apply.
//!
//! Spans are batched and sent from a background thread (the SDK's batch
//! processor); a collector that is down costs dropped spans, never a slower
//! request or reconcile.
//!
//! Incoming W3C trace context (`traceparent`, `tracestate`) is continued by
//! a server that asks for it ([`propagation`], [`Telemetry::trace_context`]).
//! The Rust SDK does not read `OTEL_PROPAGATORS`, so this crate does: it
//! decides whether that context is read (see [`propagation`]).

use opentelemetry::Key;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub mod propagation;
#[cfg(feature = "receiver")]
pub mod receiver;

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

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object a line, the event's fields at the top level.
    Json,
    /// One JSON object a line, the event's fields under `"fields"`.
    JsonNested,
}

impl LogFormat {
    /// The operator's `--log-format`: `text`, anything else is JSON.
    pub fn parse(s: &str) -> LogFormat {
        if s == "text" {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// What [`init`] installs.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor
    /// `OTEL_RESOURCE_ATTRIBUTES` names one; also the tracer's name.
    pub service_name: &'static str,
    /// `service.version` unless `OTEL_RESOURCE_ATTRIBUTES` gives one.
    pub service_version: &'static str,
    pub log_format: LogFormat,
    pub log_target: LogTarget,
    /// The filter when `RUST_LOG` is unset or invalid.
    pub default_filter: &'a str,
    /// The OTLP base URL; `None` or blank: no trace export.
    pub otlp_endpoint: Option<&'a str>,
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// `OTEL_PROPAGATORS` names `tracecontext` (or is unset).
    reads_trace_context: bool,
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

/// The resource of the exported spans: what the SDK detected from the
/// environment (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with
/// `service_name` and `service_version` filled in where it found none.
pub fn resource(detected: Resource, service_name: &str, service_version: &str) -> Resource {
    let unnamed = detected
        .get(&Key::new("service.name"))
        .is_none_or(|v| v.as_str().starts_with("unknown_service"));
    let versioned = detected.get(&Key::new("service.version")).is_some();
    let mut builder = Resource::builder_empty().with_attributes(
        detected
            .iter()
            .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
    );
    if unnamed {
        builder = builder.with_service_name(service_name.to_owned());
    }
    if !versioned {
        builder = builder.with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            service_version.to_owned(),
        ));
    }
    builder.build()
}

/// Installs the global subscriber: logs, and OTLP trace export when
/// `options.otlp_endpoint` is set.
pub fn init(options: Options<'_>) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(options.default_filter));
    let fmt = tracing_subscriber::fmt::layer();
    let logs = match (options.log_target, options.log_format) {
        (LogTarget::Stderr, LogFormat::Text) => fmt.with_writer(std::io::stderr).boxed(),
        (LogTarget::Stderr, LogFormat::Json) => fmt
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .boxed(),
        (LogTarget::Stderr, LogFormat::JsonNested) => {
            fmt.with_writer(std::io::stderr).json().boxed()
        }
        (LogTarget::Stdout, LogFormat::Text) => fmt.boxed(),
        (LogTarget::Stdout, LogFormat::Json) => fmt.json().flatten_event(true).boxed(),
        (LogTarget::Stdout, LogFormat::JsonNested) => fmt.json().boxed(),
    };
    let provider = match options.otlp_endpoint.filter(|e| !e.trim().is_empty()) {
        None => None,
        Some(endpoint) => {
            // The exporter's reqwest client uses rustls without a default
            // crypto provider; the binaries install ring first, and so does
            // this, for any other caller (a second install is a no-op).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(traces_url(endpoint)?)
                .build()?;
            Some(
                // The builder's default `Config` reads OTEL_TRACES_SAMPLER(_ARG).
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(
                        Resource::builder().build(),
                        options.service_name,
                        options.service_version,
                    ))
                    .build(),
            )
        }
    };
    let (reads_trace_context, unread) = propagation::reads_trace_context(
        std::env::var(propagation::PROPAGATORS_ENV).ok().as_deref(),
    );
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(options.service_name))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()?;
    if provider.is_some() && !unread.is_empty() {
        tracing::warn!(
            propagators = %unread.join(","),
            "OTEL_PROPAGATORS names propagators this binary does not read; only tracecontext is"
        );
    }
    Ok(Telemetry {
        provider,
        reads_trace_context,
    })
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Whether a server should continue the W3C trace context of incoming
    /// requests ([`propagation::continue_trace`]): only when spans are
    /// exported (otherwise reading the headers would cost for nothing) and
    /// `OTEL_PROPAGATORS` is unset or names `tracecontext`.
    pub fn trace_context(&self) -> bool {
        self.provider.is_some() && self.reads_trace_context
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
    use opentelemetry::KeyValue;

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

    fn get(r: &Resource, key: &'static str) -> Option<String> {
        r.get(&Key::new(key)).map(|v| v.as_str().into_owned())
    }

    #[test]
    fn a_service_named_by_the_environment_is_kept() {
        // What the detectors make of OTEL_SERVICE_NAME=shop-app and
        // OTEL_RESOURCE_ATTRIBUTES=ladder.phase=2,service.version=9.
        let detected = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "shop-app"),
                KeyValue::new("ladder.phase", "2"),
                KeyValue::new("service.version", "9"),
            ])
            .build();
        let r = resource(detected, "ladder-app", "0.1.0");
        assert_eq!(get(&r, "service.name").as_deref(), Some("shop-app"));
        assert_eq!(get(&r, "service.version").as_deref(), Some("9"));
        assert_eq!(get(&r, "ladder.phase").as_deref(), Some("2"));
    }

    #[test]
    fn an_unnamed_service_gets_the_default_name_and_version() {
        let detected = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "unknown_service:ladder-app"),
                KeyValue::new("ladder.scalingphase", "shop"),
            ])
            .build();
        let r = resource(detected, "ladder-app", "0.1.0");
        assert_eq!(get(&r, "service.name").as_deref(), Some("ladder-app"));
        assert_eq!(get(&r, "service.version").as_deref(), Some("0.1.0"));
        assert_eq!(get(&r, "ladder.scalingphase").as_deref(), Some("shop"));
        let bare = resource(Resource::builder_empty().build(), "ladder-operator", "1");
        assert_eq!(
            get(&bare, "service.name").as_deref(),
            Some("ladder-operator")
        );
    }

    #[test]
    fn log_format_flag() {
        assert_eq!(LogFormat::parse("text"), LogFormat::Text);
        assert_eq!(LogFormat::parse("json"), LogFormat::Json);
    }
}
