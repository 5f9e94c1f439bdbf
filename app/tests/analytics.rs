//! Phase 3 analytics: clicks into the real ClickHouse (18.16) and stats out of it; a ClickHouse
//! outage never fails a redirect (bounded buffer, then drop and count).

mod common;

use std::time::{Duration, Instant};

use common::*;
use ladder_app::config::ClickSinkKind;
use ladder_app::store::StoreSpec;

#[tokio::test]
async fn clicks_go_to_clickhouse_and_back_as_stats() {
    let mut a = args(StoreSpec::Sqlite {
        path: temp_sqlite(),
    });
    a.phase = 3;
    a.clicks = ClickSinkKind::Auto;
    a.clickhouse_url = Some(env("LADDER_CLICKHOUSE_URL"));
    a.clickhouse_database = unique("ladder_test");
    let app = start(&a).await;
    let (c, base) = (http(), app.url());
    assert_eq!(
        ready(&c, &base).await["clicks"],
        "clickhouse",
        "phase 3 with a ClickHouse URL sends clicks there"
    );
    let code = create(&c, &base, "https://example.com/", None).await;
    let other = create(&c, &base, "https://example.org/", None).await;
    for _ in 0..7 {
        assert_eq!(status(&c, &format!("{base}/{code}")).await, 302);
    }
    assert_eq!(status(&c, &format!("{base}/{other}")).await, 302);
    let stats = poll_json(
        &c,
        &format!("{base}/api/v1/links/{code}/stats"),
        "clicks in ClickHouse",
        Duration::from_secs(15),
        |_, v| v["total"] == 7,
    )
    .await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(stats["days"][0]["day"], today);
    // The rows really are in ClickHouse (not the SQL database).
    let count = http()
        .post(env("LADDER_CLICKHOUSE_URL"))
        .body(format!(
            "SELECT count() FROM {}.clicks WHERE code = '{code}'",
            a.clickhouse_database
        ))
        .send()
        .await
        .expect("clickhouse")
        .text()
        .await
        .expect("text");
    assert_eq!(count.trim(), "7");
}

#[tokio::test]
async fn clickhouse_outage_never_fails_a_redirect() {
    let dead = free_port();
    let mut a = args(StoreSpec::Sqlite {
        path: temp_sqlite(),
    });
    a.clicks = ClickSinkKind::Clickhouse;
    a.clickhouse_url = Some(format!("http://127.0.0.1:{dead}"));
    a.clickhouse_database = unique("ladder_test");
    a.click_buffer = 5;
    let app = start(&a).await;
    let (c, base) = (http(), app.url());
    let code = create(&c, &base, "https://example.com/", None).await;
    let started = Instant::now();
    for _ in 0..30 {
        assert_eq!(status(&c, &format!("{base}/{code}")).await, 302);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "redirects must not wait for ClickHouse"
    );
    // Stats cannot be answered without ClickHouse: 503 + Retry-After, not a 500.
    let r = c
        .get(format!("{base}/api/v1/links/{code}/stats"))
        .send()
        .await
        .expect("stats");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // 30 clicks, 5 buffered: the rest are dropped and counted.
    eventually(
        "dropped clicks counted",
        Duration::from_secs(10),
        || async {
            (metric(&c, &base, "ladder_clicks_total", "dropped").await >= 25.0).then_some(())
        },
    )
    .await;
}
