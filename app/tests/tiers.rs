//! Every tier end to end through the HTTP API, bad input, database outages, and the
//! serialization-failure retry path (phase 4) against real PostgreSQL at SERIALIZABLE.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ladder_app::metrics::Metrics;
use ladder_app::store::{self, ClickRow, StoreOptions, StoreSpec};

#[tokio::test]
async fn sqlite_tier_end_to_end() {
    let app = start(&args(StoreSpec::Sqlite {
        path: temp_sqlite(),
    }))
    .await;
    crud_round(&app.url()).await;
}

#[tokio::test]
async fn postgres_tier_end_to_end() {
    let db = fresh_db("pg").await;
    let app = start(&args(StoreSpec::Postgres {
        url: primary_url(&db),
    }))
    .await;
    crud_round(&app.url()).await;
}

#[tokio::test]
async fn pgbouncer_tier_end_to_end_under_concurrency() {
    let db = fresh_db("bouncer").await;
    let mut a = args(StoreSpec::PgBouncer {
        url: bouncer_url(&db),
    });
    a.db_max_connections = 32;
    // This test is about statement handling under transaction pooling, not latency: every new
    // server connection costs two SCRAM handshakes (client and server side of PgBouncer), which
    // on a loaded 2-core CI machine can take longer than the default 2 s acquire timeout.
    a.db_acquire_timeout_ms = 10_000;
    let app = start(&a).await;
    crud_round(&app.url()).await;
    // Many concurrent clients through transaction pooling: with reused named statements this
    // fails with "prepared statement … does not exist / already exists".
    let c = http();
    let base = app.url();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (c, base) = (c.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let code = create(&c, &base, &format!("https://example.com/{t}/{i}"), None).await;
                let r = c
                    .get(format!("{base}/api/v1/links/{code}"))
                    .send()
                    .await
                    .expect("get");
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test]
async fn dsql_tier_end_to_end() {
    let db = fresh_db("dsql").await;
    let app = start(&args(StoreSpec::Dsql {
        url: primary_url(&db),
    }))
    .await;
    crud_round(&app.url()).await;
}

/// CockroachDB is not available here: the phase-4 retry path runs against PostgreSQL at
/// SERIALIZABLE. Concurrent read-modify-write transactions on one row really conflict
/// (SQLSTATE 40001); every one must still commit exactly once.
#[tokio::test]
async fn dsql_retries_serialization_failures() {
    let db = fresh_db("conflict").await;
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let opts = StoreOptions {
        max_connections: 16,
        ..StoreOptions::default()
    };
    let s = store::open(
        &StoreSpec::Dsql {
            url: primary_url(&db),
        },
        &opts,
        metrics.clone(),
    )
    .await
    .expect("open");
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                s.add_clicks(&[ClickRow {
                    code: "hot".into(),
                    day: "2026-01-01".into(),
                    clicks: 1,
                }])
                .await
                .expect("committed");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let rows = s.click_stats("hot").await.expect("stats");
    assert_eq!(
        rows.iter().map(|r| r.clicks).sum::<i64>(),
        120,
        "every increment committed exactly once"
    );
    assert!(
        metrics.tx_retries.get() > 0,
        "expected real 40001 conflicts and retries"
    );
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let path = temp_sqlite();
    let app = start(&args(StoreSpec::Sqlite { path: path.clone() })).await;
    let (c, base) = (http(), app.url());
    let post = |body: String| {
        let c = c.clone();
        let url = format!("{base}/api/v1/links");
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("post");
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.expect("json error body");
            assert!(v["error"]["code"].is_string(), "{v}");
            status
        }
    };
    assert_eq!(post("{not json".into()).await, 400);
    assert_eq!(
        post(r#"{"target": "https://x.org"}"#.into()).await,
        400,
        "unknown field / missing url"
    );
    assert_eq!(post(r#"{"url": "ftp://x.org/file"}"#.into()).await, 422);
    assert_eq!(post(r#"{"url": "javascript:alert(1)"}"#.into()).await, 422);
    assert_eq!(post(r#"{"url": "not a url"}"#.into()).await, 422);
    assert_eq!(
        post(format!(
            r#"{{"url": "https://x.org/{}"}}"#,
            "a".repeat(3000)
        ))
        .await,
        422,
        "url too long"
    );
    assert_eq!(
        post(format!(
            r#"{{"url": "https://x.org/", "pad": "{}"}}"#,
            "a".repeat(20_000)
        ))
        .await,
        413
    );
    assert_eq!(
        post(r#"{"url": "https://x.org/", "code": "no spaces"}"#.into()).await,
        422
    );
    assert_eq!(
        post(r#"{"url": "https://x.org/", "code": "metrics"}"#.into()).await,
        422
    );
    assert_eq!(
        c.get(format!("{base}/unknowncode"))
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    assert_eq!(
        c.get(format!("{base}/api/v1/links/nope123"))
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    assert_eq!(
        c.get(format!("{base}/api/v1/links/nope123/stats"))
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    // Nothing was written.
    let mut conn =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{path}"))
            .await
            .expect("open sqlite");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM links")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(n, 0);
}

#[tokio::test]
async fn operational_endpoints() {
    let app = start(&args(StoreSpec::Sqlite {
        path: temp_sqlite(),
    }))
    .await;
    let (c, base) = (http(), app.url());
    assert_eq!(status(&c, &format!("{base}/healthz")).await, 200);
    assert_eq!(ready(&c, &base).await["status"], "ready");
    let (_, doc) = get_json(&c, &format!("{base}/api/v1/openapi.json")).await;
    assert_eq!(doc["openapi"], "3.1.0");
    for _ in 0..5 {
        create(&c, &base, "https://example.com/", None).await;
    }
    let (_, load) = get_json(&c, &format!("{base}/load")).await;
    assert!(
        load["requestsPerSecond"].as_f64().expect("rps") > 0.0,
        "{load}"
    );
    assert!(
        load["transactionsPerSecond"].as_f64().expect("tps") > 0.0,
        "{load}"
    );
    assert_eq!(load["tier"], "sqlite");
    assert!(metric(&c, &base, "ladder_http_requests_total", "status=\"201\"").await >= 5.0);
    assert!(metric(&c, &base, "ladder_db_transactions_total", "").await >= 5.0);
    assert!(metric(&c, &base, "ladder_load_requests_per_second", "").await > 0.0);
}

#[tokio::test]
async fn database_down_answers_503_and_recovers() {
    let db = fresh_db("down").await;
    let primary = url::Url::parse(&env("LADDER_PG_PRIMARY_URL")).expect("url");
    let proxy =
        common::proxy::Proxy::start(format!("127.0.0.1:{}", primary.port().expect("port"))).await;
    let mut via_proxy = url::Url::parse(&primary_url(&db)).expect("url");
    via_proxy.set_port(Some(proxy.addr.port())).expect("port");
    let app = start(&args(StoreSpec::Postgres {
        url: via_proxy.to_string(),
    }))
    .await;
    let (c, base) = (http(), app.url());
    let code = create(&c, &base, "https://example.com/", None).await;

    proxy.cut().await;
    let r = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({"url": "https://example.com/x"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body = r.text().await.expect("body");
    assert!(
        !body.contains("ladder:ladder") && !body.contains("password"),
        "no internals leak: {body}"
    );
    // Still ready: the in-process cache can serve the redirects it holds (see faults.rs).
    let (status, ready) = get_json(&c, &format!("{base}/readyz")).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("degraded")));

    proxy.restore().await;
    poll_json(
        &c,
        &format!("{base}/api/v1/links/{code}"),
        "the pool to recover",
        Duration::from_secs(15),
        |s, _| s == 200,
    )
    .await;
    create(&c, &base, "https://example.com/after", None).await;
}

/// The real binary, configured through the environment like the operator does it, with a
/// database that is down: requests fail with 503 and the error is logged, but the password in
/// the connection string never reaches the log.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let dead = free_port();
    let port = free_port();
    let secret = "s3cret-pw-do-not-log";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ladder-app"))
        .arg("serve")
        .env_clear()
        .env("LADDER_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "LADDER_STORE",
            format!("postgres:postgres://ladder:{secret}@127.0.0.1:{dead}/ladder"),
        )
        .env("LADDER_DB_ACQUIRE_TIMEOUT_MS", "300")
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ladder-app");
    let c = http();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the app to listen", Duration::from_secs(20), || async {
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let r = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({"url": "https://example.com/"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503);
    assert!(!r.text().await.expect("body").contains(secret));
    child.start_kill().expect("kill");
    let out = child.wait_with_output().await.expect("output");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("request failed"), "the 503 is logged: {log}");
    assert!(
        log.contains("ladder:***@"),
        "the store is logged redacted: {log}"
    );
    assert!(!log.contains(secret), "the password leaked into the log");
}

/// A renewed serving certificate (files swapped the way the kubelet updates a mounted Secret) is
/// presented to new connections without a restart; a broken pair is ignored.
#[tokio::test]
async fn the_serving_certificate_is_reloaded_when_renewed() {
    let dir = std::env::temp_dir().join(unique("tls-reload"));
    std::fs::create_dir_all(&dir).expect("dir");
    let make = || rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (a, b) = (make(), make());
    let install = |pem: &str, key: &str| {
        for (name, text) in [("tls.crt", pem), ("tls.key", key)] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, dir.join(name)).expect("swap");
        }
    };
    install(&a.cert.pem(), &a.signing_key.serialize_pem());
    let mut args = args(StoreSpec::Sqlite {
        path: temp_sqlite(),
    });
    args.tls_cert = Some(dir.join("tls.crt"));
    args.tls_key = Some(dir.join("tls.key"));
    args.tls_reload_ms = 200;
    let app = start(&args).await;
    assert!(app.url().starts_with("https://"));
    let url = format!("https://localhost:{}/healthz", app.addr.port());
    let roots = format!("{}{}", a.cert.pem(), b.cert.pem());
    let presented = || {
        let (url, roots) = (url.clone(), roots.clone());
        async move {
            // A new client per call: a new connection, a new handshake.
            ladder_app::tls::install_crypto_provider();
            let c = reqwest::Client::builder()
                .tls_certs_only(reqwest::Certificate::from_pem_bundle(roots.as_bytes()).ok()?)
                .tls_info(true)
                .build()
                .ok()?;
            let r = c.get(url).send().await.ok()?;
            let info = r.extensions().get::<reqwest::tls::TlsInfo>()?;
            info.peer_certificate().map(<[u8]>::to_vec)
        }
    };
    assert_eq!(presented().await.as_deref(), Some(a.cert.der().as_ref()));

    install(&b.cert.pem(), &b.signing_key.serialize_pem());
    eventually(
        "the renewed certificate",
        Duration::from_secs(10),
        || async { (presented().await.as_deref() == Some(b.cert.der().as_ref())).then_some(()) },
    )
    .await;

    // A half-written or broken pair is not taken: the server keeps presenting b.
    install(&a.cert.pem(), "not a key");
    ladder_app::tls::install_crypto_provider();
    let c = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(roots.as_bytes()).expect("PEM"))
        .build()
        .expect("client");
    let base = format!("https://localhost:{}", app.addr.port());
    eventually(
        "the broken pair to be refused",
        Duration::from_secs(10),
        || async {
            let refused = metric(
                &c,
                &base,
                "ladder_config_reloads_total",
                "outcome=\"refused\"",
            )
            .await;
            (refused >= 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(presented().await.as_deref(), Some(b.cert.der().as_ref()));
}
