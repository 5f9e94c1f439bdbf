//! Phase 2 against the real streaming replica: read-your-writes, lag-based rotation, dead replicas.
//!
//! The test pauses WAL replay on the shared replica (`pg_wal_replay_pause()`) and always resumes
//! it, also when an assertion fails. Other tests keep working meanwhile: at worst their replica
//! leaves rotation and their reads go to the primary.

mod common;

use std::time::Duration;

use common::*;
use ladder_app::store::StoreSpec;

async fn replica_conn(db: &str) -> sqlx::PgConnection {
    eventually(
        "the database on the replica",
        Duration::from_secs(20),
        || async {
            <sqlx::PgConnection as sqlx::Connection>::connect(&replica_url(db))
                .await
                .ok()
        },
    )
    .await
}

async fn in_rotation(c: &reqwest::Client, base: &str) -> bool {
    ready(c, base).await["store"]["replicas"][0]["inRotation"]
        .as_bool()
        .unwrap_or(false)
}

async fn get_as(c: &reqwest::Client, base: &str, client: &str, code: &str) -> (u16, String) {
    let r = c
        .get(format!("{base}/api/v1/links/{code}"))
        .header("x-ladder-client", client)
        .send()
        .await
        .expect("get");
    (r.status().as_u16(), header(&r, "x-ladder-read-from"))
}

#[tokio::test]
async fn read_your_writes_and_lagging_replica_rotation() {
    let db = fresh_db("ryw").await;
    let mut replica = replica_conn(&db).await;
    let spec = StoreSpec::Replicas {
        primary: primary_url(&db),
        replicas: vec![replica_url(&db)],
    };
    // app1 tolerates any lag (so it keeps reading from the paused replica); app2 drops a
    // replica more than 1 MiB behind.
    let mut a1 = args(spec.clone());
    a1.max_replica_lag_bytes = 1 << 40;
    let mut a2 = args(spec);
    a2.max_replica_lag_bytes = 1 << 20;
    let (app1, app2) = (start(&a1).await, start(&a2).await);
    let (c, b1, b2) = (http(), app1.url(), app2.url());
    for base in [&b1, &b2] {
        eventually("replica in rotation", Duration::from_secs(10), || async {
            in_rotation(&c, base).await.then_some(())
        })
        .await;
    }
    // Unpaused: a write is readable at once by its writer.
    let code = create_as(&c, &b1, "alice", "https://example.com/1").await;
    assert_eq!(get_as(&c, &b1, "alice", &code).await.0, 200);

    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut replica)
        .await
        .expect("pause replay");
    let outcome = tokio::spawn({
        let (c, b1, b2, db) = (c.clone(), b1.clone(), b2.clone(), db.clone());
        async move {
            // The writer reads its own write (from the primary: the replica has not replayed it).
            let code = create_as(&c, &b1, "alice", "https://example.com/2").await;
            assert_eq!(get_as(&c, &b1, "alice", &code).await, (200, "primary".to_owned()));
            // Another client is served by the (stale) replica and does not see it yet: this is
            // what read-your-writes protects the writer from.
            assert_eq!(get_as(&c, &b1, "bob", &code).await, (404, "replica".to_owned()));
            // The token works across instances too.
            let r = c
                .get(format!("{b2}/api/v1/links/{code}"))
                .header("x-ladder-consistency", "18446744073709551615")
                .send()
                .await
                .expect("get");
            assert_eq!(r.status(), 200);

            // Push the primary > 1 MiB ahead: app2 takes the replica out of rotation.
            let mut primary = <sqlx::PgConnection as sqlx::Connection>::connect(&primary_url(&db)).await.expect("primary");
            sqlx::raw_sql("CREATE TABLE filler AS SELECT repeat('x', 1000) AS pad FROM generate_series(1, 3000)")
                .execute(&mut primary)
                .await
                .expect("filler");
            eventually("lagging replica out of rotation", Duration::from_secs(10), || async {
                (!in_rotation(&c, &b2).await).then_some(())
            })
            .await;
            assert_eq!(get_as(&c, &b2, "carol", &code).await, (200, "primary".to_owned()));
            code
        }
    })
    .await;
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut replica)
        .await
        .expect("resume replay");
    let code = match outcome {
        Ok(code) => code,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    // Caught up: back in rotation, and the replica now has the link.
    eventually(
        "replica back in rotation",
        Duration::from_secs(20),
        || async { in_rotation(&c, &b2).await.then_some(()) },
    )
    .await;
    eventually(
        "replica serves the link",
        Duration::from_secs(10),
        || async {
            (get_as(&c, &b1, "bob", &code).await == (200, "replica".to_owned())).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn dead_replica_is_out_of_rotation() {
    let db = fresh_db("dead").await;
    let free = free_port();
    let mut dead = url::Url::parse(&replica_url(&db)).expect("url");
    dead.set_port(Some(free)).expect("port");
    let app = start(&args(StoreSpec::Replicas {
        primary: primary_url(&db),
        replicas: vec![dead.to_string()],
    }))
    .await;
    let (c, base) = (http(), app.url());
    let code = create(&c, &base, "https://example.com/", None).await;
    assert!(!in_rotation(&c, &base).await);
    assert_eq!(
        get_as(&c, &base, "zed", &code).await,
        (200, "primary".to_owned())
    );
    assert_eq!(
        c.get(format!("{base}/{code}"))
            .send()
            .await
            .expect("redirect")
            .status(),
        302
    );
}

async fn create_as(c: &reqwest::Client, base: &str, client: &str, url: &str) -> String {
    let r = c
        .post(format!("{base}/api/v1/links"))
        .header("x-ladder-client", client)
        .json(&serde_json::json!({ "url": url }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert!(
        r.headers().contains_key("x-ladder-consistency"),
        "writes return a consistency token"
    );
    let v: serde_json::Value = r.json().await.expect("json");
    v["code"].as_str().expect("code").to_owned()
}
