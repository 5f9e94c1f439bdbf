//! Shared helpers of the integration tests. The services are the real ones from
//! `make services-up`; their addresses come from `.ladder/services.env` (exported by
//! `make test-integration`). Every test isolates itself: its own PostgreSQL database(s), its own
//! Redis key prefix, its own ClickHouse database, its own SQLite file.
#![allow(dead_code)]

pub mod oidc;
pub mod proxy;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ladder_app::config::{ClickSinkKind, ServeArgs};
use ladder_app::server::{self, Running};
use ladder_app::store::StoreSpec;
use rand::Rng;

/// A service address from the environment, else from the env file so `cargo test` works
/// without `make`.
pub fn env_opt(name: &str) -> Option<String> {
    std::env::var(name).ok().or_else(|| {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ladder/services.env");
        let text = std::fs::read_to_string(file).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            // Values with shell metacharacters (`&`) are single-quoted in the file.
            .map(|v| v.trim_matches('\'').to_owned())
    })
}

/// A required service address; fails the test (rather than skipping it) when missing.
pub fn env(name: &str) -> String {
    env_opt(name).unwrap_or_else(|| {
        panic!("{name} is not set: run `make services-up` / `make test-integration`")
    })
}

/// The local PostgreSQL password, when the services are configured.
pub fn local_pg_password() -> Option<String> {
    let url = env_opt("LADDER_PG_PRIMARY_URL")?;
    url::Url::parse(&url).ok()?.password().map(str::to_owned)
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}_{:x}_{}", n & 0xffff_ffff, std::process::id())
}

/// Replaces the database of a PostgreSQL URL.
pub fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("valid url");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// Creates a fresh database on the primary; returns its name.
pub async fn fresh_db(prefix: &str) -> String {
    let name = unique(&format!("t_{prefix}"));
    let admin = env("LADDER_PG_PRIMARY_URL");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect to the primary");
    drop_stale_dbs(&mut conn).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .expect("create database");
    name
}

/// Fails unless the local primary writes durably (fsync, full-page writes, synchronous
/// commit): a test that claims an acknowledged write survives calls it first, so the claim
/// never rests on a setting production does not have.
pub async fn assert_durable_primary() {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&env("LADDER_PG_PRIMARY_URL"))
        .await
        .expect("connect to the primary");
    let (fsync, fpw, commit): (String, String, String) = sqlx::query_as(
        "select current_setting('fsync'), current_setting('full_page_writes'), \
         current_setting('synchronous_commit')",
    )
    .fetch_one(&mut conn)
    .await
    .expect("settings");
    assert_eq!(
        (fsync.as_str(), fpw.as_str(), commit.as_str()),
        ("on", "on", "on"),
        "the test PostgreSQL must be durable (hack/services.sh up sets it)"
    );
}

pub fn primary_url(db: &str) -> String {
    with_db(&env("LADDER_PG_PRIMARY_URL"), db)
}

pub fn replica_url(db: &str) -> String {
    with_db(&env("LADDER_PG_REPLICA_URL"), db)
}

pub fn bouncer_url(db: &str) -> String {
    with_db(&env("LADDER_PGBOUNCER_URL"), db)
}

pub fn temp_sqlite() -> String {
    let dir: PathBuf = std::env::temp_dir().join(unique("ladder-test"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("ladder.db").display().to_string()
}

/// `serve` defaults with every optional service off, a free loopback port, fast polling.
pub fn args(store: StoreSpec) -> ServeArgs {
    let mut a = ServeArgs::defaults();
    a.listen = "127.0.0.1:0".parse().expect("addr");
    a.store = store;
    a.redis_url = None;
    a.redis_prefix = format!("{}:", unique("ladder-test"));
    a.clickhouse_url = None;
    a.clicks = ClickSinkKind::Db;
    a.varnish_url = None;
    a.rules_file = None;
    a.poll_interval_ms = 100;
    a.click_flush_ms = 100;
    // Generous: 2 shared cores, SCRAM handshakes through PgBouncer, tests in parallel.
    a.db_acquire_timeout_ms = 5000;
    a.db_max_connections = 8;
    a.report_load = false;
    a.kubeconfig = None;
    a.public_url = None;
    // As the operator does: the password in its own variable, used for URLs without one
    // (cut-over pointers never carry a password).
    a.db_password = local_pg_password();
    a.redis_password = None;
    a.clickhouse_password = None;
    a.tls_ca = None;
    a.tls_cert = None;
    a.tls_key = None;
    a.edge_client_name = None;
    a.trusted_proxies = Vec::new();
    a
}

pub async fn start(args: &ServeArgs) -> Running {
    server::start(args).await.expect("app starts")
}

pub fn http() -> reqwest::Client {
    ladder_app::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Creates a link and returns its code (asserting 201).
pub async fn create(c: &reqwest::Client, base: &str, url: &str, code: Option<&str>) -> String {
    let mut body = serde_json::json!({ "url": url });
    if let Some(code) = code {
        body["code"] = code.into();
    }
    let resp = c
        .post(format!("{base}/api/v1/links"))
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(status, 201, "create failed: {v}");
    v["code"].as_str().expect("code").to_owned()
}

/// GET `url`: its status and its body as JSON (`Null` when the body is not JSON).
pub async fn get_json(c: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let body = r
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// The status of GET `url`.
pub async fn status(c: &reqwest::Client, url: &str) -> u16 {
    get_json(c, url).await.0
}

/// The body of an app's `/readyz` (whatever its status).
pub async fn ready(c: &reqwest::Client, base: &str) -> serde_json::Value {
    get_json(c, &format!("{base}/readyz")).await.1
}

/// Polls GET `url` until `done(status, body)` holds; returns the body. Connection errors count
/// as "not yet".
pub async fn poll_json(
    c: &reqwest::Client,
    url: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(what, timeout, || async {
        let r = c.get(url).send().await.ok()?;
        let status = r.status().as_u16();
        let body = r.bytes().await.ok()?;
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        done(status, &v).then_some(v)
    })
    .await
}

/// A response header as text ("" when absent).
pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A metric's value from `/metrics` text (sum over label sets containing `filter`).
pub async fn metric(c: &reqwest::Client, base: &str, name: &str, filter: &str) -> f64 {
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client that trusts only the local services' CA (`hack/services.sh` makes it).
pub fn https(ca_file: &str) -> reqwest::Client {
    let pem = std::fs::read(ca_file).expect("read the local CA");
    ladder_app::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("CA is PEM"))
        .build()
        .expect("client")
}

/// Asserts one full CRUD + redirect + stats round through the HTTP API.
pub async fn crud_round(base: &str) {
    crud_round_with(&http(), base).await;
}

/// [`crud_round`] with a given client (HTTPS).
pub async fn crud_round_with(c: &reqwest::Client, base: &str) {
    let c = c.clone();
    let code = create(&c, base, "https://example.com/a?b=c", None).await;
    // show
    let (_, v) = get_json(&c, &format!("{base}/api/v1/links/{code}")).await;
    assert_eq!(v["url"], "https://example.com/a?b=c");
    // redirect, cacheable
    let r = c
        .get(format!("{base}/{code}"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://example.com/a?b=c");
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .expect("ascii")
            .contains("max-age=")
    );
    let etag = r.headers()["etag"].clone();
    let r = c
        .get(format!("{base}/{code}"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("conditional");
    assert_eq!(r.status(), 304);
    // custom code + duplicate
    let custom = unique("c").replace('_', "-");
    let custom = &custom[..custom.len().min(30)];
    create(&c, base, "http://example.org/", Some(custom)).await;
    let dup = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({"url": "http://x.org/", "code": custom}))
        .send()
        .await
        .expect("dup");
    assert_eq!(dup.status(), 409);
    // update, then the redirect follows the new target
    let r = c
        .put(format!("{base}/api/v1/links/{custom}"))
        .json(&serde_json::json!({"url": "https://example.net/new"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{base}/{custom}"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(r.headers()["location"], "https://example.net/new");
    // stats count the redirects (flushed in the background)
    poll_json(
        &c,
        &format!("{base}/api/v1/links/{code}/stats"),
        "clicks in stats",
        Duration::from_secs(10),
        |_, v| v["total"].as_i64() == Some(2),
    )
    .await;
    // delete
    let r = c
        .delete(format!("{base}/api/v1/links/{code}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(status(&c, &format!("{base}/{code}")).await, 404);
    assert_eq!(
        c.delete(format!("{base}/api/v1/links/{code}"))
            .send()
            .await
            .expect("again")
            .status(),
        404
    );
}

/// Test databases are named `t_<prefix>_<random>_<pid>`: drop those whose test process is gone,
/// so repeated runs do not pile databases up (best effort).
async fn drop_stale_dbs(conn: &mut sqlx::PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for name in names {
        let Some(pid) = name.rsplit('_').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(&mut *conn)
            .await;
    }
}
