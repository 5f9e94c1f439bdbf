//! OTLP trace export: the operator, run with `--otlp-endpoint`, sends its
//! reconcile spans over OTLP/HTTP (protobuf) to a tiny receiver this test
//! serves on 127.0.0.1, which decodes every request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ladder_e2e::{Operator, TestNamespace, client, install_crds, operator_bin};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// One span as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    service: Option<String>,
    name: String,
    attributes: Vec<(String, String)>,
}

/// One POST as the receiver saw it: content type and body size.
#[derive(Clone, Debug)]
struct Request {
    content_type: Option<String>,
    bytes: usize,
}

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<Request>>>,
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn pairs(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// `POST /v1/traces`: records the content type and every decoded span.
async fn traces(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    r.requests.lock().expect("lock").push(Request {
        content_type,
        bytes: body.len(),
    });
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut spans = r.spans.lock().expect("lock");
    for rs in request.resource_spans {
        let service = rs.resource.as_ref().and_then(|res| {
            res.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
        });
        for ss in rs.scope_spans {
            for span in ss.spans {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name.clone(),
                    attributes: pairs(&span.attributes),
                });
            }
        }
    }
    StatusCode::OK
}

#[tokio::test]
async fn reconcile_spans_reach_an_otlp_receiver() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(receiver.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-tracing").await?;
    let endpoint = format!("http://{addr}");
    let op = Operator::start_with(
        &ns.name,
        &operator_bin()?,
        &["--otlp-endpoint", &endpoint],
        // Export every 200 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    )
    .await?;
    op.wait_log("exporting traces over OTLP/HTTP", Duration::from_secs(10))
        .await?;
    ns.apply_sp("apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop}\nspec: {phase: 0}\n")
        .await?;
    ns.wait_ready("shop", 0, Duration::from_secs(120)).await?;

    let start = Instant::now();
    let reconcile = loop {
        let found = receiver
            .spans
            .lock()
            .expect("lock")
            .iter()
            .find(|s| {
                s.name == "reconcile"
                    && s.attributes.contains(&("name".into(), "shop".into()))
                    && s.attributes
                        .contains(&("namespace".into(), ns.name.clone()))
            })
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no reconcile span of shop after 30 s; requests {:?}; spans {:?}\noperator log:\n{}",
            receiver.requests.lock().expect("lock"),
            receiver.spans.lock().expect("lock"),
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(reconcile.service.as_deref(), Some("ladder-operator"));
    let requests = receiver.requests.lock().expect("lock").clone();
    assert!(
        requests
            .iter()
            .all(|r| r.content_type.as_deref() == Some("application/x-protobuf") && r.bytes > 0),
        "{requests:?}"
    );
    ns.delete().await;
    server.abort();
    Ok(())
}
