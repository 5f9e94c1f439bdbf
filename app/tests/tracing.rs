//! OTLP trace export of the app: the real binary, configured through the
//! standard OTEL_* variables exactly as the operator renders them (plus the
//! endpoint a user adds in `spec.app.env`), sends one span per request to a
//! loopback OTLP/HTTP receiver, with the store tier as an attribute, and
//! flushes what it buffered on SIGTERM. A request that carries a W3C
//! `traceparent` is served in a child of the caller's span; a malformed one
//! is ignored; `OTEL_PROPAGATORS=none` ignores them all.

mod common;

use std::time::Duration;

use common::{eventually, free_port, http, temp_sqlite};
use ladder_telemetry::receiver::{ReceivedSpan, Receiver};

/// Starts `ladder-app serve` on SQLite with `otel` in its environment and
/// waits until it listens; returns the child and its base URL.
async fn serve(otel: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let port = free_port();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ladder-app"));
    cmd.arg("serve")
        .env_clear()
        .env("LADDER_LISTEN", format!("127.0.0.1:{port}"))
        .env("LADDER_STORE", format!("sqlite:{}", temp_sqlite()))
        .envs(otel.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn ladder-app");
    let base = format!("http://127.0.0.1:{port}");
    let c = http();
    eventually("the app to listen", Duration::from_secs(20), || async {
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    (child, base)
}

/// SIGTERM, then the exit and the app's log.
async fn stop(child: tokio::process::Child) -> String {
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the app to exit after SIGTERM")
        .expect("output");
    assert!(out.status.success(), "exit status {:?}", out.status);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn find<'a>(spans: &'a [ReceivedSpan], name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.name == name)
}

/// Lower-case hex of `len` digits, not all zero: a valid W3C id.
fn is_id(id: &str, len: usize) -> bool {
    id.len() == len
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b != b'0')
}

/// The caller's trace and span (examples of the W3C specification).
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// What the operator renders, every root sampled, nothing exported before
/// the flush at SIGTERM; `extra` added.
fn otel_env<'a>(endpoint: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "shop-app"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ];
    env.extend_from_slice(extra);
    env
}

/// Creates a link and returns its code.
/// GET `url` with `headers` (a name given twice is sent as two lines); the status.
async fn get_with(c: &reqwest::Client, url: String, headers: &[(&str, &str)]) -> u16 {
    let mut req = c.get(&url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

async fn create_link(c: &reqwest::Client, base: &str) -> String {
    let created: serde_json::Value = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({"url": "https://example.com/traced"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    created["code"].as_str().expect("code").to_owned()
}

#[tokio::test]
async fn request_spans_reach_an_otlp_receiver_with_the_store_tier() {
    let receiver = Receiver::start().await.expect("receiver");
    let endpoint = receiver.endpoint();
    let (child, base) = serve(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // What the operator renders (operator/src/render/app.rs), the ratio
        // raised to 1 so that every request is sampled.
        ("OTEL_SERVICE_NAME", "shop-app"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "ladder.scalingphase=shop,ladder.phase=0",
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
        // No scheduled export within the test: whatever arrives was flushed
        // at shutdown.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ])
    .await;
    let c = http();
    let created: serde_json::Value = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({"url": "https://example.com/traced"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let code = created["code"].as_str().expect("code").to_owned();
    let r = c
        .get(format!("{base}/{code}"))
        .send()
        .await
        .expect("redirect");
    assert!(r.status().is_redirection(), "{}", r.status());
    let ready: serde_json::Value = c
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    let tier = ready["store"]["tier"]
        .as_str()
        .expect("store.tier")
        .to_owned();
    assert_eq!(tier, "sqlite");
    let missing = c
        .get(format!("{base}/api/v1/links/nope-{code}"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    let log = stop(child).await;
    assert!(
        log.contains("exporting traces over OTLP/HTTP"),
        "the app says where it exports: {log}"
    );

    let spans = receiver.spans();
    let context = || {
        format!(
            "spans {spans:#?}\nrequests {:?}\nlog {log}",
            receiver.requests()
        )
    };
    let create = find(&spans, "POST /api/v1/links").unwrap_or_else(|| panic!("{}", context()));
    assert_eq!(create.service.as_deref(), Some("shop-app"), "{}", context());
    assert!(
        create
            .resource
            .contains(&("ladder.scalingphase".into(), "shop".into()))
            && create
                .resource
                .contains(&("ladder.phase".into(), "0".into())),
        "{}",
        context()
    );
    assert_eq!(create.attribute("http.request.method"), Some("POST"));
    assert_eq!(create.attribute("http.route"), Some("/api/v1/links"));
    assert_eq!(create.attribute("http.response.status_code"), Some("201"));
    assert_eq!(create.attribute("ladder.store.tier"), Some(tier.as_str()));
    // No `traceparent`: a root span of a trace of its own, as before.
    assert!(create.parent_span_id.is_empty(), "{}", context());
    assert!(is_id(&create.trace_id, 32), "{}", context());
    let redirect = find(&spans, "GET /{code}").unwrap_or_else(|| panic!("{}", context()));
    assert_eq!(
        redirect.attribute("http.route"),
        Some("/{code}"),
        "the template, not the path"
    );
    assert_eq!(redirect.attribute("ladder.store.tier"), Some("sqlite"));
    let not_found =
        find(&spans, "GET /api/v1/links/{code}").unwrap_or_else(|| panic!("{}", context()));
    assert_eq!(
        not_found.attribute("http.response.status_code"),
        Some("404")
    );
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.content_type.as_deref() == Some("application/x-protobuf") && r.bytes > 0),
        "{}",
        context()
    );
}

/// OTEL_TRACES_SAMPLER is the SDK's to honour: with `always_off` the
/// receiver gets no request span, though the same requests are made.
#[tokio::test]
async fn the_sampler_from_the_environment_is_honoured() {
    let receiver = Receiver::start().await.expect("receiver");
    let endpoint = receiver.endpoint();
    let (child, base) = serve(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "always_off"),
    ])
    .await;
    let c = http();
    for _ in 0..5 {
        let r = c
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(r.status(), 200);
    }
    let log = stop(child).await;
    assert!(log.contains("exporting traces over OTLP/HTTP"), "{log}");
    assert!(
        receiver.spans().is_empty(),
        "sampled out: {:#?}",
        receiver.spans()
    );
}

/// Without an endpoint nothing is exported and the app says nothing about it.
#[tokio::test]
async fn no_endpoint_no_export() {
    let (child, base) = serve(&[("OTEL_SERVICE_NAME", "shop-app")]).await;
    let r = http()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let log = stop(child).await;
    assert!(!log.contains("exporting traces"), "{log}");
}

/// A redirect requested with the caller's `traceparent` and `tracestate` is
/// served in a child of the caller's span: same trace id, the caller's span
/// as parent (remote), the state carried on. Malformed headers are ignored:
/// normal answers, root spans. The caller's sampled flag decides (the
/// sampler is parent-based): `-00` is not exported though every root is.
#[tokio::test]
async fn a_callers_trace_context_is_continued() {
    let receiver = Receiver::start().await.expect("receiver");
    let endpoint = receiver.endpoint();
    let (child, base) = serve(&otel_env(&endpoint, &[])).await;
    let c = http();
    let code = create_link(&c, &base).await;

    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let status = get_with(
        &c,
        format!("{base}/{code}"),
        &[
            ("traceparent", &caller),
            ("tracestate", "ladder=t61rcWkgMzE,congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(status, 302);

    let zeros = "0".repeat(32);
    let malformed = [
        "hello".to_owned(),
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}"),
        format!("00-{zeros}-{CALLER_SPAN}-01"),
        format!("00-{}-{CALLER_SPAN}-01", CALLER_TRACE.to_uppercase()),
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra"),
        format!("00-{CALLER_TRACE}{CALLER_TRACE}-{CALLER_SPAN}-01"),
    ];
    for bad in &malformed {
        let status = get_with(
            &c,
            format!("{base}/api/v1/links/{code}"),
            &[("traceparent", bad), ("tracestate", "ladder=t61rcWkgMzE")],
        )
        .await;
        assert_eq!(status, 200, "traceparent {bad:?}");
    }
    // Two `traceparent` lines: which one is the caller? Ignored too.
    let other = format!("00-{CALLER_TRACE}-00f067aa0ba902b7-01");
    let status = get_with(
        &c,
        format!("{base}/api/v1/links/{code}"),
        &[("traceparent", &caller), ("traceparent", &other)],
    )
    .await;
    assert_eq!(status, 200);

    let unsampled_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let unsampled = format!("00-{unsampled_trace}-{CALLER_SPAN}-00");
    let status = get_with(&c, format!("{base}/readyz"), &[("traceparent", &unsampled)]).await;
    assert_eq!(status, 200);

    let log = stop(child).await;
    assert!(
        log.contains(r#""continue_incoming_trace_context":true"#),
        "{log}"
    );
    let spans = receiver.spans();
    let context = || format!("spans {spans:#?}\nlog {log}");

    let redirect = find(&spans, "GET /{code}").unwrap_or_else(|| panic!("{}", context()));
    assert_eq!(redirect.trace_id, CALLER_TRACE, "{}", context());
    assert_eq!(redirect.parent_span_id, CALLER_SPAN, "{}", context());
    assert!(is_id(&redirect.span_id, 16), "{}", context());
    assert_ne!(redirect.span_id, CALLER_SPAN, "a span of its own");
    assert_eq!(redirect.parent_is_remote(), Some(true), "{}", context());
    assert_eq!(
        redirect.trace_state,
        "ladder=t61rcWkgMzE,congo=t61rcWkgMzE",
        "{}",
        context()
    );
    assert_eq!(redirect.attribute("http.response.status_code"), Some("302"));
    assert_eq!(redirect.attribute("ladder.store.tier"), Some("sqlite"));

    let ignored: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "GET /api/v1/links/{code}")
        .collect();
    assert_eq!(ignored.len(), malformed.len() + 1, "{}", context());
    for s in &ignored {
        assert!(s.parent_span_id.is_empty(), "a root: {s:#?}");
        assert_eq!(s.parent_is_remote(), Some(false), "{s:#?}");
        assert!(is_id(&s.trace_id, 32), "{s:#?}");
        assert_ne!(s.trace_id, CALLER_TRACE, "{s:#?}");
        assert_eq!(s.trace_state, "", "no state without a parent: {s:#?}");
        assert_eq!(s.attribute("http.response.status_code"), Some("200"));
    }
    let mut traces: Vec<&str> = ignored.iter().map(|s| s.trace_id.as_str()).collect();
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(
        traces.len(),
        ignored.len(),
        "a new trace each: {}",
        context()
    );

    assert!(
        !spans
            .iter()
            .any(|s| s.trace_id == unsampled_trace || s.name == "GET /readyz"),
        "the caller did not sample its trace: {}",
        context()
    );
}

/// The other half of a parent-based sampler: a caller's sampled flag is
/// followed even where the ratio would sample nothing (the trade-off
/// `ladder_telemetry::propagation` documents).
#[tokio::test]
async fn a_sampled_caller_is_exported_whatever_the_ratio() {
    let receiver = Receiver::start().await.expect("receiver");
    let endpoint = receiver.endpoint();
    let (child, base) = serve(&otel_env(&endpoint, &[("OTEL_TRACES_SAMPLER_ARG", "0")])).await;
    let c = http();
    for traced in [true, false, false] {
        let mut req = c.get(format!("{base}/readyz"));
        if traced {
            req = req.header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"));
        }
        assert_eq!(req.send().await.expect("readyz").status(), 200);
    }
    let log = stop(child).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "only the caller's: {spans:#?}\n{log}");
    assert_eq!(spans[0].name, "GET /readyz");
    assert_eq!(spans[0].trace_id, CALLER_TRACE);
    assert_eq!(spans[0].parent_span_id, CALLER_SPAN);
}

/// `OTEL_PROPAGATORS=none` (settable in `spec.app.env`): the app takes no
/// trace context from outside; every request is a root, sampled by the
/// app's own sampler whatever the caller's flag.
#[tokio::test]
async fn otel_propagators_none_ignores_a_callers_trace_context() {
    let receiver = Receiver::start().await.expect("receiver");
    let endpoint = receiver.endpoint();
    let (child, base) = serve(&otel_env(&endpoint, &[("OTEL_PROPAGATORS", "none")])).await;
    let c = http();
    for flags in ["01", "00"] {
        let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}");
        let status = get_with(&c, format!("{base}/readyz"), &[("traceparent", &caller)]).await;
        assert_eq!(status, 200);
    }
    let log = stop(child).await;
    assert!(
        log.contains(r#""continue_incoming_trace_context":false"#),
        "{log}"
    );
    let spans = receiver.spans();
    let ready: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "GET /readyz").collect();
    assert_eq!(ready.len(), 2, "{spans:#?}");
    for s in ready {
        assert!(s.parent_span_id.is_empty(), "{s:#?}");
        assert_ne!(s.trace_id, CALLER_TRACE, "{s:#?}");
    }
}
