//! Redis cache-aside (including Redis killed mid-test), rate limits shared across two instances
//! through Redis, reloadable rules, and Varnish purges.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use ladder_app::store::StoreSpec;
use tokio::process::{Child, Command};

/// A private redis-server on a free loopback port (never the shared one: we kill this one).
async fn own_redis(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (Debian package redis-server) must be installed");
    eventually("own redis up", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    child
}

async fn cache_header(c: &reqwest::Client, base: &str, code: &str) -> (u16, String, String) {
    let r = c
        .get(format!("{base}/{code}"))
        .send()
        .await
        .expect("redirect");
    (
        r.status().as_u16(),
        header(&r, "x-ladder-cache"),
        header(&r, "location"),
    )
}

#[tokio::test]
async fn redis_cache_aside_survives_redis_dying() {
    let port = free_port();
    let mut redis = own_redis(port).await;
    let db = fresh_db("redis").await;
    let mut a = args(StoreSpec::Postgres {
        url: primary_url(&db),
    });
    a.redis_url = Some(format!("redis://127.0.0.1:{port}"));
    let app = start(&a).await;
    let (c, base) = (http(), app.url());

    let code = create(&c, &base, "https://example.com/one", None).await;
    assert_eq!(
        cache_header(&c, &base, &code).await,
        (302, "miss".into(), "https://example.com/one".into())
    );
    assert_eq!(
        cache_header(&c, &base, &code).await,
        (302, "hit".into(), "https://example.com/one".into())
    );
    // The entry really is in Redis under the instance's prefix.
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let cached: Option<String> =
        redis::AsyncCommands::get(&mut conn, format!("{}link:{code}", a.redis_prefix))
            .await
            .expect("get");
    assert_eq!(cached.as_deref(), Some("https://example.com/one"));

    // Update invalidates: the next redirect is a miss with the new target.
    let r = c
        .put(format!("{base}/api/v1/links/{code}"))
        .json(&serde_json::json!({"url": "https://example.com/two"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_header(&c, &base, &code).await,
        (302, "miss".into(), "https://example.com/two".into())
    );

    // Kill Redis mid-test: redirects, creates and deletes keep working from the database.
    redis.kill().await.expect("kill redis");
    let started = Instant::now();
    for _ in 0..20 {
        let (status, _, location) = cache_header(&c, &base, &code).await;
        assert_eq!(
            (status, location.as_str()),
            (302, "https://example.com/two")
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a dead Redis must not stall redirects: {:?}",
        started.elapsed()
    );
    let other = create(&c, &base, "https://example.com/three", None).await;
    assert_eq!(cache_header(&c, &base, &other).await.0, 302);
    assert_eq!(
        c.delete(format!("{base}/api/v1/links/{other}"))
            .send()
            .await
            .expect("delete")
            .status(),
        204
    );
    assert_eq!(cache_header(&c, &base, &other).await.0, 404);
    assert!(metric(&c, &base, "ladder_cache_lookups_total", "error").await > 0.0);

    // Redis back: hits resume.
    let _redis = own_redis(port).await;
    eventually(
        "cache hits after Redis returns",
        Duration::from_secs(15),
        || async { (cache_header(&c, &base, &code).await.1 == "hit").then_some(()) },
    )
    .await;
}

/// The near cache in front of Redis: a hot redirect is served without Redis, an update on one
/// instance reaches the other's near cache through pub/sub (the near TTL here is a minute, so
/// nothing else could explain it), and a Redis outage turns the near cache off and empties it,
/// so an invalidation lost during the outage never leaves a stale redirect behind.
#[tokio::test]
async fn near_cache_stays_coherent_across_instances() {
    let port = free_port();
    let mut redis = own_redis(port).await;
    let db = fresh_db("near").await;
    let mut a = args(StoreSpec::Postgres {
        url: primary_url(&db),
    });
    a.redis_url = Some(format!("redis://127.0.0.1:{port}"));
    a.near_cache_ttl_ms = 60_000;
    let mut b = a.clone();
    b.listen = "127.0.0.1:0".parse().expect("addr");
    let (app_a, app_b) = (start(&a).await, start(&b).await);
    let (c, base_a, base_b) = (http(), app_a.url(), app_b.url());
    let key = |code: &str| format!("{}link:{code}", a.redis_prefix);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");

    let code = create(&c, &base_a, "https://example.com/one", None).await;
    // miss (fills Redis), Redis hit (fills B's near cache)...
    for _ in 0..2 {
        assert_eq!(cache_header(&c, &base_b, &code).await.0, 302);
    }
    // ...then B serves it with the Redis entry gone behind its back: from its near cache.
    eventually(
        "B's near cache is live",
        Duration::from_secs(10),
        || async {
            let _: () = redis::AsyncCommands::del(&mut conn.clone(), key(&code))
                .await
                .expect("del");
            (cache_header(&c, &base_b, &code).await.1 == "hit").then_some(())
        },
    )
    .await;

    // An update through A reaches B's near cache.
    let r = c
        .put(format!("{base_a}/api/v1/links/{code}"))
        .json(&serde_json::json!({"url": "https://example.com/two"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    eventually("B follows the update", Duration::from_secs(5), || async {
        (cache_header(&c, &base_b, &code).await.2 == "https://example.com/two").then_some(())
    })
    .await;
    // Warm B's near cache with the new target again.
    for _ in 0..3 {
        cache_header(&c, &base_b, &code).await;
    }

    // Redis dies; an update made meanwhile cannot be published; B must still never serve the
    // old target (its near cache went off with the subscription).
    redis.kill().await.expect("kill redis");
    let r = c
        .put(format!("{base_a}/api/v1/links/{code}"))
        .json(&serde_json::json!({"url": "https://example.com/three"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    eventually(
        "B serves the update during the outage",
        Duration::from_secs(5),
        || async {
            (cache_header(&c, &base_b, &code).await.2 == "https://example.com/three").then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            cache_header(&c, &base_b, &code).await.2,
            "https://example.com/three"
        );
    }
    let _redis = own_redis(port).await;
    for _ in 0..20 {
        assert_eq!(
            cache_header(&c, &base_b, &code).await.2,
            "https://example.com/three",
            "no stale redirect after Redis returns"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conn);
}

#[tokio::test]
async fn rate_limit_is_shared_across_instances_and_reloadable() {
    let dir = std::env::temp_dir().join(unique("rules"));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("rules.json");
    std::fs::write(&rules, r#"{"ratePerSecond": 0.5, "burst": 6}"#).expect("rules");
    let db = fresh_db("rl").await;
    let mut a = args(StoreSpec::Postgres {
        url: primary_url(&db),
    });
    a.redis_url = Some(env("LADDER_REDIS_URL"));
    a.rules_file = Some(rules.clone());
    let (app1, app2) = (start(&a).await, start(&a).await);
    let c = http();
    let (mut allowed, mut limited) = (0, 0);
    for i in 0..16 {
        let base = if i % 2 == 0 { app1.url() } else { app2.url() };
        let r = c
            .get(format!("{base}/nosuchcode"))
            .send()
            .await
            .expect("get");
        match r.status().as_u16() {
            404 => allowed += 1,
            429 => {
                limited += 1;
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                assert!((1..=3).contains(&retry), "retry-after {retry}");
                let v: serde_json::Value = r.json().await.expect("json");
                assert_eq!(v["error"]["code"], "rate_limited");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    // One bucket of 6 shared by both instances (two local buckets would allow 12).
    assert!(
        (6..=7).contains(&allowed),
        "allowed {allowed}, limited {limited}"
    );
    // Operational endpoints are never limited.
    assert_eq!(status(&c, &format!("{}/healthz", app1.url())).await, 200);

    // Reload: rate limiting off.
    std::fs::write(&rules, r#"{"ratePerSecond": 0}"#).expect("rules");
    for app in [&app1, &app2] {
        poll_json(
            &c,
            &format!("{}/nosuchcode", app.url()),
            "rules reloaded",
            Duration::from_secs(10),
            |s, _| s == 404,
        )
        .await;
    }
    // WAF rules reload too: a blocked target host.
    std::fs::write(
        &rules,
        r#"{"blockedHosts": ["evil.example"], "maxUrlLength": 64}"#,
    )
    .expect("rules");
    // Each instance watches the file on its own: wait for both before asserting on either.
    for app in [&app1, &app2] {
        eventually("waf rules reloaded", Duration::from_secs(10), || async {
            let r = c
                .post(format!("{}/api/v1/links", app.url()))
                .json(&serde_json::json!({"url": "https://www.evil.example/x"}))
                .send()
                .await
                .ok()?;
            (r.status() == 422).then_some(())
        })
        .await;
    }
    let long = format!("https://example.com/{}", "a".repeat(80));
    let r = c
        .post(format!("{}/api/v1/links", app1.url()))
        .json(&serde_json::json!({ "url": long }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422);
}

/// A private varnishd (the project's VCL, `hack/services/default.vcl`) in front of `origin`:
/// the shared Varnish's origin port (18080) may be taken by another process, and a private edge
/// keeps this test independent of everyone else's cache entries.
async fn own_varnish(origin: u16) -> (Child, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(unique("varnish"));
    std::fs::create_dir_all(&dir).expect("dir");
    let vcl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../hack/services/default.vcl"
    ))
    .expect("hack/services/default.vcl")
    .replace("@ORIGIN_PORT@", &origin.to_string());
    std::fs::write(dir.join("default.vcl"), vcl).expect("vcl");
    let (port, admin) = (free_port(), free_port());
    let child = Command::new("/usr/sbin/varnishd")
        .arg("-F")
        .args([
            "-a",
            &format!("127.0.0.1:{port}"),
            "-T",
            &format!("127.0.0.1:{admin}"),
        ])
        .arg("-f")
        .arg(dir.join("default.vcl"))
        .arg("-n")
        .arg(dir.join("work"))
        .args(["-s", "malloc,16m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("varnishd (Debian package varnish) must be installed");
    let url = format!("http://127.0.0.1:{port}");
    eventually("own varnish up", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    (child, url, dir)
}

#[tokio::test]
async fn varnish_is_purged_on_update_and_delete() {
    let origin = free_port();
    let (_varnishd, varnish, dir) = own_varnish(origin).await;
    let mut a = args(StoreSpec::Sqlite {
        path: temp_sqlite(),
    });
    a.listen = format!("127.0.0.1:{origin}").parse().expect("addr");
    a.varnish_url = Some(varnish.clone());
    let app = start(&a).await;
    let (c, base) = (http(), app.url());
    let code = create(&c, &base, "https://example.com/v1", None).await;

    let edge = |code: String| {
        let (c, varnish) = (c.clone(), varnish.clone());
        async move {
            let r = c
                .get(format!("{varnish}/{code}"))
                .send()
                .await
                .expect("via varnish");
            let h = |n: &str| {
                r.headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap_or("").to_owned())
                    .unwrap_or_default()
            };
            (r.status().as_u16(), h("x-cache"), h("location"))
        }
    };
    assert_eq!(
        edge(code.clone()).await,
        (302, "MISS".into(), "https://example.com/v1".into())
    );
    assert_eq!(
        edge(code.clone()).await,
        (302, "HIT".into(), "https://example.com/v1".into())
    );

    let r = c
        .put(format!("{base}/api/v1/links/{code}"))
        .json(&serde_json::json!({"url": "https://example.com/v2"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    // Purged: the edge fetches the new target instead of serving the stale redirect.
    assert_eq!(
        edge(code.clone()).await,
        (302, "MISS".into(), "https://example.com/v2".into())
    );
    assert_eq!(edge(code.clone()).await.1, "HIT");

    assert_eq!(
        c.delete(format!("{base}/api/v1/links/{code}"))
            .send()
            .await
            .expect("delete")
            .status(),
        204
    );
    assert_eq!(edge(code.clone()).await.0, 404);
    assert!(metric(&c, &base, "ladder_edge_purges_total", "ok").await >= 2.0);
    let _ = std::fs::remove_dir_all(dir);
}
