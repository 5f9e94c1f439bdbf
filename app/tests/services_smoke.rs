//! Smoke tests of the real data services that `make services-up` starts
//! (hack/services.sh): they prove the test bed itself works before the app's
//! own tests lean on it. Connection URLs come from `.ladder/services.env`
//! (see `common::env`).

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, raw_sql};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod common;

use common::{env, unique};

#[tokio::test]
async fn row_written_through_pgbouncer_is_read_on_the_streaming_replica() {
    let table = unique("smoke");
    let marker = unique("marker");

    // PgBouncer runs in transaction mode: sqlx must not keep named prepared
    // statements there, so everything below is sent as simple queries.
    let mut bouncer = PgConnection::connect(&env("LADDER_PGBOUNCER_URL"))
        .await
        .expect("connect through pgbouncer");
    raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, v text NOT NULL)"
    )))
    .execute(&mut bouncer)
    .await
    .expect("create table on the primary");
    raw_sql(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES (1, '{marker}')"
    )))
    .execute(&mut bouncer)
    .await
    .expect("insert on the primary");

    let mut replica = PgConnection::connect(&env("LADDER_PG_REPLICA_URL"))
        .await
        .expect("connect to the replica");
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut replica)
        .await
        .expect("ask the replica whether it is a standby");
    assert!(
        in_recovery,
        "the replica URL must point at a standby, not the primary"
    );

    // Streaming replication is asynchronous: wait for the replay, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let rows = raw_sql(AssertSqlSafe(format!("SELECT v FROM {table} WHERE id = 1")))
            .fetch_all(&mut replica)
            .await;
        match rows {
            Ok(rows) if !rows.is_empty() => break rows[0].get::<String, _>("v"),
            _ if Instant::now() > deadline => panic!("row did not reach the replica within 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(seen, marker);

    // A standby refuses writes: this is a real replica, not a second primary.
    let write = raw_sql(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES (2, 'x')"
    )))
    .execute(&mut replica)
    .await;
    assert!(write.is_err(), "a write on the streaming replica must fail");

    raw_sql(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut bouncer)
        .await
        .expect("drop table");
}

#[tokio::test]
async fn redis_stores_and_expires_keys() {
    let client = redis::Client::open(env("LADDER_REDIS_URL")).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let key = unique("smoke");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v1")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let got: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(got.as_deref(), Some("v1"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 60_000, "unexpected TTL {ttl}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn clickhouse_inserts_and_selects_over_http() {
    let base = env("LADDER_CLICKHOUSE_URL");
    ladder_app::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let table = unique("smoke");
    let run = |sql: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let resp = http
                .post(&base)
                .body(sql.clone())
                .send()
                .await
                .expect("clickhouse answers");
            let status = resp.status();
            let body = resp.text().await.expect("clickhouse body");
            assert!(
                status.is_success(),
                "clickhouse refused `{sql}`: {status} {body}"
            );
            body
        }
    };
    run(format!(
        "CREATE TABLE {table} (day Date, clicks UInt64) ENGINE = Memory"
    ))
    .await;
    run(format!(
        "INSERT INTO {table} FORMAT JSONEachRow {{\"day\":\"2026-11-25\",\"clicks\":3}} {{\"day\":\"2026-11-25\",\"clicks\":4}} {{\"day\":\"2026-11-26\",\"clicks\":5}}"
    ))
    .await;
    let body = run(format!(
        "SELECT day, sum(clicks) FROM {table} GROUP BY day ORDER BY day FORMAT TSV"
    ))
    .await;
    assert_eq!(body, "2026-11-25\t7\n2026-11-26\t5\n");
    run(format!("DROP TABLE {table}")).await;
}

/// Serves `Cache-Control: max-age=60` responses on Varnish's origin port and
/// counts the requests that reach it.
async fn start_origin(
    port: u16,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The app's Varnish test may hold the port for a moment: retry, bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(e) if Instant::now() > deadline => panic!("cannot bind origin port {port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Varnish keeps backend connections alive: one request per header block.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        let body = format!("origin response #{n}\n");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: public, max-age=60\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (hits, task)
}

#[tokio::test]
async fn varnish_serves_a_cached_response_and_honours_purge() {
    use std::sync::atomic::Ordering;
    let port: u16 = env("LADDER_VARNISH_ORIGIN_PORT")
        .parse()
        .expect("origin port");
    let (hits, origin) = start_origin(port).await;
    let url = format!("{}/{}", env("LADDER_VARNISH_URL"), unique("smoke"));
    ladder_app::tls::install_crypto_provider();
    let http = reqwest::Client::new();

    let first = http
        .get(&url)
        .send()
        .await
        .expect("first GET through varnish");
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "MISS");
    let first_body = first.text().await.expect("body");

    let second = http
        .get(&url)
        .send()
        .await
        .expect("second GET through varnish");
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(
        second.text().await.expect("body"),
        first_body,
        "a hit returns the cached body"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the cached response must not reach the origin"
    );

    let purge = http
        .request(reqwest::Method::from_bytes(b"PURGE").expect("method"), &url)
        .send()
        .await
        .expect("PURGE");
    assert_eq!(purge.status(), 200, "purge from loopback is allowed");
    let third = http.get(&url).send().await.expect("GET after purge");
    assert_eq!(third.headers()["x-cache"], "MISS");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "after a purge the origin is asked again"
    );
    origin.abort();
}
