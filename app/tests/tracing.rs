//! OTLP trace export of the app: the real binary, configured through the
//! standard OTEL_* variables exactly as the operator renders them (plus the
//! endpoint a user adds in `spec.app.env`), sends one span per request to a
//! loopback OTLP/HTTP receiver, with the store tier as an attribute, and
//! flushes what it buffered on SIGTERM.

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
