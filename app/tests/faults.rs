//! The app under faults (issue 11): a database that accepts connections and never answers
//! (blackholed through a loopback proxy in front of the real PostgreSQL), load shedding at the
//! concurrency limit, and a SIGTERM that must not lose buffered clicks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use ladder_app::metrics::Metrics;
use ladder_app::store::{self, StoreOptions, StoreSpec};

const REQUEST_TIMEOUT_MS: u64 = 1500;

/// A client whose own deadline is the app's request timeout plus slack for a loaded machine:
/// an app that hangs fails the test with a timeout instead of an answer.
fn bounded() -> reqwest::Client {
    ladder_app::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS + 2500))
        .build()
        .expect("client")
}

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("a JSON error body");
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn blackholed_database_answers_503_in_time_and_cached_redirects_are_served() {
    let db = fresh_db("blackhole").await;
    let primary = url::Url::parse(&env("LADDER_PG_PRIMARY_URL")).expect("url");
    let proxy = Proxy::start(format!("127.0.0.1:{}", primary.port().expect("port"))).await;
    let mut via = url::Url::parse(&primary_url(&db)).expect("url");
    via.set_port(Some(proxy.addr.port())).expect("port");
    let mut a = args(StoreSpec::Postgres {
        url: via.to_string(),
    });
    a.request_timeout_ms = REQUEST_TIMEOUT_MS;
    a.db_acquire_timeout_ms = 1000;
    a.max_in_flight = 4;
    let app = start(&a).await;
    let (c, base) = (bounded(), app.url());
    let hot = create(&c, &base, "https://example.com/hot", None).await;
    assert_eq!(
        status(&c, &format!("{base}/{hot}")).await,
        302,
        "now cached"
    );
    let cold = create(&c, &base, "https://example.com/cold", None).await;

    proxy.blackhole();

    // A redirect the cache does not hold, and a write: 503 + Retry-After, within the timeout.
    let r = c
        .get(format!("{base}/{cold}"))
        .send()
        .await
        .expect("an answer within the request timeout");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let code = error_code(r).await;
    assert!(code == "timeout" || code == "unavailable", "{code}");
    let r = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({"url": "https://example.com/new"}))
        .send()
        .await
        .expect("an answer within the request timeout");
    assert_eq!(r.status(), 503);

    // The cached redirect is still served.
    let r = c
        .get(format!("{base}/{hot}"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(r.status(), 302);
    assert_eq!(header(&r, "location"), "https://example.com/hot");
    assert_eq!(header(&r, "x-ladder-cache"), "hit");

    // Ready but degraded: the instance stays in rotation for what it can serve.
    let (s, ready) = get_json(&c, &format!("{base}/readyz")).await;
    assert_eq!((s, ready["status"].as_str()), (200, Some("degraded")));
    let (_, load) = get_json(&c, &format!("{base}/load")).await;
    assert_eq!(load["degraded"], true, "{load}");
    assert_eq!(load["storeUp"], false, "{load}");
    assert_eq!(metric(&c, &base, "ladder_degraded", "").await, 1.0);
    assert_eq!(metric(&c, &base, "ladder_store_up", "").await, 0.0);

    // Load shedding: with the in-flight budget (4) taken by requests waiting on the database,
    // one more request is refused at once instead of queueing behind them.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), format!("{base}/{cold}"));
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    eventually(
        "four requests in flight",
        Duration::from_secs(5),
        || async {
            (metric(&c, &base, "ladder_http_requests_in_flight", "").await >= 4.0).then_some(())
        },
    )
    .await;
    let r = c
        .get(format!("{base}/{hot}"))
        .send()
        .await
        .expect("refused at once");
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "overloaded");
    for w in waiting {
        assert_eq!(w.await.expect("task").expect("answered in time"), 503);
    }
    // Probes are not counted against the budget.
    assert_eq!(status(&c, &format!("{base}/healthz")).await, 200);

    // The database comes back: ready again, writes work.
    proxy.restore().await;
    poll_json(
        &c,
        &format!("{base}/readyz"),
        "ready again",
        Duration::from_secs(20),
        |_, v| v["status"] == "ready",
    )
    .await;
    poll_json(
        &c,
        &format!("{base}/api/v1/links/{cold}"),
        "reads after the outage",
        Duration::from_secs(20),
        |s, _| s == 200,
    )
    .await;
    create(&c, &base, "https://example.com/after", None).await;
    assert_eq!(metric(&c, &base, "ladder_degraded", "").await, 0.0);
}

/// The real binary, stopped with SIGTERM while clicks wait in its buffer (the flush interval
/// is an hour, so only the shutdown flush can store them).
#[tokio::test]
async fn buffered_clicks_are_flushed_on_sigterm() {
    let path = temp_sqlite();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ladder-app"))
        .arg("serve")
        .env_clear()
        .env("LADDER_LISTEN", format!("127.0.0.1:{port}"))
        .env("LADDER_STORE", format!("sqlite:{path}"))
        .env("LADDER_CLICK_FLUSH_MS", "3600000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ladder-app");
    let (c, base) = (http(), format!("http://127.0.0.1:{port}"));
    eventually("the app to listen", Duration::from_secs(20), || async {
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let code = create(&c, &base, "https://example.com/", None).await;
    for _ in 0..5 {
        assert_eq!(status(&c, &format!("{base}/{code}")).await, 302);
    }
    let (_, stats) = get_json(&c, &format!("{base}/api/v1/links/{code}/stats")).await;
    assert_eq!(stats["total"], 0, "nothing flushed before the signal");

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the app exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "{exit}");

    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let s = store::open(
        &StoreSpec::Sqlite { path },
        &StoreOptions::default(),
        metrics,
    )
    .await
    .expect("open the database again");
    let rows = s.click_stats(&code).await.expect("stats");
    assert_eq!(rows.iter().map(|r| r.clicks).sum::<i64>(), 5, "{rows:?}");
}

/// Every PostgreSQL session the app opens carries the statement timeout, so the server cancels
/// what runs too long (behind PgBouncer the bouncer's `query_timeout` does; see `store::pg`).
#[tokio::test]
async fn postgres_sessions_carry_the_statement_timeout() {
    use ladder_app::store::pg::{PgMode, PgStore};
    let db = fresh_db("stmt").await;
    let mut a = args(StoreSpec::Postgres {
        url: primary_url(&db),
    });
    a.db_statement_timeout_ms = 1234;
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    for mode in [PgMode::Direct, PgMode::Distributed] {
        let s = PgStore::connect(
            &primary_url(&db),
            mode,
            &a.store_options(),
            metrics.clone(),
            "postgres",
        )
        .expect("pool");
        let shown: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(s.pool())
            .await
            .expect("show");
        assert_eq!(shown, "1234ms", "{mode:?}");
        let slow = sqlx::query("SELECT pg_sleep(5)").execute(s.pool()).await;
        assert!(
            matches!(&slow, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("57014")),
            "cancelled by the statement timeout: {slow:?}"
        );
    }
}
