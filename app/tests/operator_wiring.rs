//! The operator's wiring, run for real: for each phase, render a ScalingPhase with the operator's
//! own renderer, take the app Deployment's container (env, volume mounts), and start the
//! `ladder-app` binary with exactly that environment against the real local services.
//!
//! What a cluster would do, the test does, and nothing more:
//! - DNS: the Service names the operator renders are mapped to the local services on loopback
//!   (`<sp>-pgbouncer.<ns>.svc:6432` → `localhost:<pgbouncer port>`, ...), inside env values and inside
//!   mounted files (the shard map). TLS is verified against the local CA with the name
//!   `localhost`, as the app verifies the operator's CA with Service names in a cluster.
//! - The kubelet: `secretKeyRef`s get the local services' passwords, `fieldRef`s a pod name
//!   and namespace, `$(VAR)` references are expanded, and every volume mount becomes a
//!   directory holding what the volume would hold (ConfigMap data as rendered, the local
//!   certificates for TLS Secrets, an empty directory for a claim).
//! - The pod network: the listen address becomes a free loopback port.
//!
//! Anything else in the rendered environment the app does not understand makes it fail to
//! start, and every request below must succeed through the tier the operator chose.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{create, crud_round_with, env, eventually, free_port, metric, oidc, unique};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar};
use ladder_crds::contract::{self, ShardMap};
use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};
use ladder_operator::render::{self, Desired};
use ladder_operator::validate::{self, World};

const SP: &str = "wired";
const NS: &str = "wiring";

fn render(yaml: &str) -> Desired {
    let spec: ScalingPhaseSpec = serde_yaml::from_str(yaml).expect("spec parses");
    let mut sp = ScalingPhase::new(SP, spec);
    sp.metadata.namespace = Some(NS.into());
    sp.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    let world = World {
        node_regions: vec!["ap-south".into(), "eu-west".into(), "us-east".into()],
        integrations: Default::default(),
    };
    let (v, profile) = validate::validate(&sp, &world).expect("spec is valid");
    render::render(&v, &profile)
}

fn app_deployment(d: &Desired) -> &Deployment {
    d.deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(&format!("{SP}-app")))
        .expect("an app Deployment is rendered")
}

fn app_container(dep: &Deployment) -> &Container {
    let pod = dep.spec.template.spec.as_ref().expect("pod spec");
    pod.containers
        .iter()
        .find(|c| c.name == "app")
        .expect("app container")
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url)
        .expect("service URL")
        .port()
        .expect("service URL has a port")
}

/// In-cluster `host:port` → the local service, as DNS would resolve it.
fn dns() -> Vec<(String, String)> {
    let primary = port_of(&env("LADDER_PG_PRIMARY_URL"));
    let replica = port_of(&env("LADDER_PG_REPLICA_URL"));
    let bouncer = port_of(&env("LADDER_PGBOUNCER_URL"));
    let redis = port_of(&env("LADDER_REDIS_TLS_URL"));
    let clickhouse = port_of(&env("LADDER_CLICKHOUSE_HTTPS_URL"));
    let varnish = port_of(&env("LADDER_VARNISH_URL"));
    let mut map = vec![
        (
            format!("{SP}-pgbouncer.{NS}.svc:6432"),
            format!("localhost:{bouncer}"),
        ),
        (
            format!("{SP}-postgres.{NS}.svc:5432"),
            format!("localhost:{primary}"),
        ),
        (
            format!("{SP}-redis.{NS}.svc:6379"),
            format!("localhost:{redis}"),
        ),
        (
            format!("{SP}-clickhouse.{NS}.svc:8443"),
            format!("localhost:{clickhouse}"),
        ),
        (
            format!("{SP}-varnish-pods.{NS}.svc:8080"),
            format!("127.0.0.1:{varnish}"),
        ),
        // CockroachDB is not available here: its wire protocol goes to PostgreSQL (see
        // docs/storage.md), with the same TLS settings.
        (
            format!("{SP}-cockroach-public.{NS}.svc:26257"),
            format!("localhost:{primary}"),
        ),
    ];
    for i in 0..8 {
        let set = format!("{SP}-postgres-replica");
        map.push((
            format!("{set}-{i}.{set}.{NS}.svc:5432"),
            format!("localhost:{replica}"),
        ));
    }
    map
}

fn resolve(text: &str, dns: &[(String, String)], mounts: &[(String, PathBuf)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in dns {
        out = out.replace(from.as_str(), to);
    }
    // One pass, longest mount path first, whole path components only: a replaced path is never
    // matched again (`/data` inside the directory that replaced `/tmp`, say).
    let part = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    let mut result = String::with_capacity(out.len());
    let mut i = 0;
    'scan: while i < out.len() {
        let prev = out[..i].chars().next_back();
        if prev.is_none_or(|c| !part(c)) {
            for (path, dir) in mounts {
                let rest = &out[i..];
                if rest.starts_with(path.as_str())
                    && rest[path.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| c == '/' || !part(c))
                {
                    result.push_str(&dir.display().to_string());
                    i += path.len();
                    continue 'scan;
                }
            }
        }
        let c = out[i..].chars().next().expect("in bounds");
        result.push(c);
        i += c.len_utf8();
    }
    result
}

/// Kubelet-style `$(VAR)` expansion against the variables defined before.
fn expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match defined.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &tail[end + 3..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The management API key the wired apps get (the operator generates a
/// random one into `<sp>-api-key`; the app holds only its hash).
const WIRING_KEY: &str = "wiring-test-management-api-key";

/// `sha256:<hex>` of [`WIRING_KEY`], as the operator writes `api-key-hash`.
fn wiring_key_hash() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(WIRING_KEY.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A client that presents the wired apps' API key.
fn with_key(builder: reqwest::ClientBuilder) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {WIRING_KEY}").parse().expect("header"),
    );
    builder
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The local services' password for a rendered credentials Secret.
fn secret_value(secret: &str, key: &str) -> String {
    if secret.ends_with("-api-key") {
        assert_eq!(key, "api-key-hash", "the app reads only the key's hash");
        return wiring_key_hash();
    }
    assert_eq!(key, "password", "unexpected key {key} of Secret {secret}");
    if secret.ends_with("-postgres-credentials") || secret.ends_with("-clickhouse-credentials") {
        "ladder".into()
    } else if secret.ends_with("-redis-credentials") {
        // Local Redis' default user has `nopass`: any password is accepted.
        "local-redis-accepts-any".into()
    } else {
        panic!("the app references Secret {secret} that this test does not know")
    }
}

/// The app, started from the rendered container; killed on drop.
struct WiredApp {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: PathBuf,
}

impl Drop for WiredApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WiredApp {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start(d: &Desired, extra_env: &[(&str, &str)]) -> WiredApp {
    let dep = app_deployment(d);
    let container = app_container(dep);
    let pod = dep.spec.template.spec.as_ref().expect("pod spec");
    let dir = std::env::temp_dir().join(unique("ladder-wired"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dns = dns();
    let tls_dir = Path::new(&env("LADDER_TLS_CA_FILE"))
        .parent()
        .expect("tls dir")
        .to_owned();

    // Volumes → directories.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut files: Vec<(PathBuf, &ConfigMap)> = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let vol = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .expect("mount names a volume");
        let target = dir.join(&m.name);
        std::fs::create_dir_all(&target).expect("mount dir");
        if let Some(cm) = &vol.config_map {
            let found: &ConfigMap = d
                .config_maps
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(cm.name.as_str()))
                .expect("mounted ConfigMap is rendered");
            files.push((target.clone(), found));
        } else if vol.secret.is_some() {
            // TLS Secrets: the local CA, and its server certificate (for `localhost`) as both
            // the serving and the client certificate.
            for (to, from) in [
                ("ca.crt", "ca.crt"),
                ("tls.crt", "server.crt"),
                ("tls.key", "server.key"),
            ] {
                std::fs::copy(tls_dir.join(from), target.join(to)).expect("copy cert");
            }
        } else {
            assert!(
                vol.persistent_volume_claim.is_some() || vol.empty_dir.is_some(),
                "volume {} of an unexpected kind",
                vol.name
            );
        }
        mounts.push((m.mount_path.clone(), target));
    }
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    // ConfigMap files, with the names and paths they contain resolved like the env.
    for (target, cm) in files {
        for (k, v) in cm.data.iter().flatten() {
            std::fs::write(target.join(k), resolve(v, &dns, &mounts)).expect("write file");
        }
    }

    // The environment, as the kubelet would build it.
    let port = free_port();
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let v = if let Some(v) = value {
            expand(v, &defined)
        } else {
            let from = value_from.as_ref().expect("value or valueFrom");
            if let Some(s) = &from.secret_key_ref {
                secret_value(&s.name, &s.key)
            } else if let Some(f) = &from.field_ref {
                match f.field_path.as_str() {
                    "metadata.name" => format!("{SP}-app-7d9f-x2k4q"),
                    "metadata.namespace" => NS.to_owned(),
                    other => panic!("unexpected fieldRef {other}"),
                }
            } else {
                panic!("unexpected valueFrom on {name}")
            }
        };
        defined.insert(name.clone(), resolve(&v, &dns, &mounts));
    }
    assert!(
        defined.contains_key(contract::env::STORE),
        "the operator names the data tier"
    );
    defined.insert(contract::env::LISTEN.into(), format!("127.0.0.1:{port}"));
    for (k, v) in extra_env {
        defined.insert((*k).to_owned(), (*v).to_owned());
    }
    let tls = defined.contains_key(contract::env::TLS_CERT);
    let log = dir.join("app.log");
    let child = Command::new(env!("CARGO_BIN_EXE_ladder-app"))
        .args(container.args.iter().flatten())
        .env_clear()
        .envs(&defined)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.join("app.err")).expect("log"))
        .spawn()
        .expect("start ladder-app");
    let scheme = if tls { "https" } else { "http" };
    WiredApp {
        child,
        base: format!("{scheme}://localhost:{port}"),
        log,
        _dir: dir,
    }
}

async fn wait_ready(app: &mut WiredApp, c: &reqwest::Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = app.child.try_wait() {
            panic!(
                "ladder-app exited ({status}) with the rendered env:\n{}\n{}",
                app.log(),
                std::fs::read_to_string(app._dir.join("app.err")).unwrap_or_default()
            );
        }
        if let Ok(r) = c.get(format!("{}/readyz", app.base)).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ladder-app never became ready:\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a counter of the app is at least 1.
async fn metric_reaches(c: &reqwest::Client, base: &str, name: &str, filter: &str) {
    eventually(
        &format!("{name}{{{filter}}} >= 1"),
        Duration::from_secs(20),
        || {
            let (c, base) = (c.clone(), base.to_owned());
            async move { (metric(&c, &base, name, filter).await >= 1.0).then_some(()) }
        },
    )
    .await;
}

fn client() -> reqwest::Client {
    let pem = std::fs::read(env("LADDER_TLS_CA_FILE")).expect("read the local CA");
    ladder_app::tls::install_crypto_provider();
    with_key(
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("CA is PEM")),
    )
}

async fn create_databases(names: &[String]) {
    let admin = env("LADDER_PG_PRIMARY_URL");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect to the primary");
    for db in names {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(db)
                .fetch_optional(&mut conn)
                .await
                .expect("query");
        if exists.is_none() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
                .execute(&mut conn)
                .await
                .expect("create database");
        }
    }
}

fn rendered_store(d: &Desired) -> String {
    app_container(app_deployment(d))
        .env
        .iter()
        .flatten()
        .find(|e| e.name == contract::env::STORE)
        .and_then(|e| e.value.clone())
        .expect("LADDER_STORE")
}

#[tokio::test]
async fn phase_0_serves_from_the_rendered_volume() {
    let d = render("phase: 0");
    assert!(rendered_store(&d).starts_with("sqlite:/data/"));
    let mut app = start(&d, &[]);
    ladder_app::tls::install_crypto_provider();
    let c = with_key(reqwest::Client::builder());
    wait_ready(&mut app, &c).await;
    crud_round_with(&c, &app.base).await;
    let db = app._dir.join("data").join("ladder.db");
    assert!(db.exists(), "SQLite lives on the rendered volume");
}

#[tokio::test]
async fn phase_1_serves_through_pgbouncer_and_redis_over_tls() {
    let d = render("phase: 1");
    assert!(rendered_store(&d).starts_with("pgbouncer:"));
    let mut app = start(&d, &[]);
    let c = client();
    wait_ready(&mut app, &c).await;
    assert!(app.base.starts_with("https://"), "phase 1 serves HTTPS");
    crud_round_with(&c, &app.base).await;
    // The second redirect of a code is a Redis hit: the rediss:// wiring works.
    let code = create(&c, &app.base, "https://example.com/cached", None).await;
    for _ in 0..2 {
        let r = c
            .get(format!("{}/{code}", app.base))
            .send()
            .await
            .expect("redirect");
        assert_eq!(r.status(), 302);
    }
    let hits = metric(&c, &app.base, "ladder_cache_lookups", "hit").await;
    assert!(hits >= 1.0, "Redis cache hits: {hits}\n{}", app.log());
    let errors = metric(&c, &app.base, "ladder_cache_lookups", "error").await;
    assert_eq!(errors, 0.0, "Redis errors:\n{}", app.log());
}

#[tokio::test]
async fn phase_2_reads_from_the_rendered_replicas_and_enforces_the_rules() {
    let d = render("phase: 2\nedge: {blockedPaths: [/admin]}\n");
    assert!(rendered_store(&d).starts_with("replicas:"));
    let mut app = start(&d, &[]);
    let c = client();
    wait_ready(&mut app, &c).await;
    crud_round_with(&c, &app.base).await;
    // Reads without a pending write of this client go to a replica once it is in rotation.
    let code = create(&c, &app.base, "https://example.com/r", None).await;
    let from = eventually(
        "a read served by the replica",
        Duration::from_secs(20),
        || {
            let (c, url) = (c.clone(), format!("{}/api/v1/links/{code}", app.base));
            async move {
                let r = c
                    .get(url)
                    .header("x-ladder-client", unique("reader"))
                    .send()
                    .await
                    .ok()?;
                let from = r
                    .headers()
                    .get("x-ladder-read-from")?
                    .to_str()
                    .ok()?
                    .to_owned();
                (from == "replica").then_some(from)
            }
        },
    )
    .await;
    assert_eq!(from, "replica");
    // The rendered WAF rules are loaded: a blocked path and a blocked method are refused.
    let r = c
        .get(format!("{}/admin", app.base))
        .send()
        .await
        .expect("blocked path");
    assert_eq!(r.status(), 403);
    let r = c
        .request(
            reqwest::Method::from_bytes(b"TRACE").expect("method"),
            format!("{}/{code}", app.base),
        )
        .send()
        .await
        .expect("blocked method");
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn phase_3_routes_by_the_rendered_shard_map_and_sends_clicks_to_clickhouse() {
    let d = render("phase: 3\nedge: {purgeAllowedCidrs: [127.0.0.1/32], blockedPaths: [/admin]}\n");
    let map_cm = d
        .config_maps
        .iter()
        .find(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains("shard-map"))
        })
        .expect("a shard map is rendered");
    let text = &map_cm.data.as_ref().expect("data")["shard-map.json"];
    let map = ShardMap::parse(text).expect("the app's shard map format");
    let dbs: Vec<String> = map
        .shards
        .iter()
        .map(|s| {
            url::Url::parse(&s.url.replace(contract::PGBOUNCER_SCHEME, "postgres"))
                .expect("shard url")
                .path()
                .trim_start_matches('/')
                .to_owned()
        })
        .collect();
    create_databases(&dbs).await;
    let mut app = start(&d, &[]);
    let c = client();
    wait_ready(&mut app, &c).await;
    crud_round_with(&c, &app.base).await;

    // A link lands in the shard its slot names, and nowhere else.
    let code = create(&c, &app.base, "https://example.com/sharded", None).await;
    let table = map.slot_table().expect("valid");
    let owner = table[map.slot_of(&code) as usize];
    for (i, db) in dbs.iter().enumerate() {
        let url = common::with_db(&env("LADDER_PG_PRIMARY_URL"), db);
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect to a shard");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links WHERE code = $1")
            .bind(&code)
            .fetch_one(&mut conn)
            .await
            .expect("count");
        assert_eq!(n, i64::from(i == owner), "code {code} in shard {db}");
    }

    // Clicks go to ClickHouse over HTTPS.
    let r = c
        .get(format!("{}/{code}", app.base))
        .send()
        .await
        .expect("redirect");
    assert_eq!(r.status(), 302);
    let ch = format!(
        "{}/?user=ladder&password=ladder",
        env("LADDER_CLICKHOUSE_HTTPS_URL")
    );
    let query = format!("SELECT count() FROM ladder.clicks WHERE code = '{code}'");
    // ClickHouse reads an Authorization header as credentials: ask it with a
    // client that does not carry the app's API key.
    let plain = common::https(&env("LADDER_TLS_CA_FILE"));
    eventually("the click in ClickHouse", Duration::from_secs(20), || {
        let (c, ch, query) = (plain.clone(), ch.clone(), query.clone());
        async move {
            let text = c
                .post(ch)
                .body(query)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (text.trim() == "1").then_some(())
        }
    })
    .await;

    // An update purges the edge through the rendered headless name.
    let r = c
        .put(format!("{}/api/v1/links/{code}", app.base))
        .json(&serde_json::json!({"url": "https://example.com/moved"}))
        .send()
        .await
        .expect("update");
    assert_eq!(r.status(), 200);
    metric_reaches(&c, &app.base, "ladder_edge_purges", "ok").await;
}

#[tokio::test]
async fn phase_4_speaks_distributed_sql_with_client_certificates_and_requires_oidc_tokens() {
    // The identity provider, over HTTPS with the local certificate for `localhost`.
    let tls_dir = Path::new(&env("LADDER_TLS_CA_FILE"))
        .parent()
        .expect("tls dir")
        .to_owned();
    let idp = oidc::issuer(Some((
        &tls_dir.join("server.crt"),
        &tls_dir.join("server.key"),
    )))
    .await;
    let key = oidc::SigningKey::new("k1");
    *idp.jwks.write().expect("lock") = serde_json::json!({"keys": [key.jwk()]});
    let d = render(&format!(
        "phase: 4\nauth: {{issuerUrl: '{}', clientId: shop-app}}\n",
        idp.url
    ));
    let store = rendered_store(&d);
    assert!(store.starts_with("dsql:"), "{store}");
    assert!(
        store.contains("sslcert="),
        "CockroachDB clients use certificates"
    );
    // CockroachDB authenticates the app by its certificate; the PostgreSQL standing in for it
    // wants a password, which only this test adds.
    let mut app = start(&d, &[(contract::env::DB_PASSWORD, "ladder")]);
    let c = client();
    wait_ready(&mut app, &c).await;
    // The rendered OIDC settings are enforced: no token, no management API.
    let r = c
        .post(format!("{}/api/v1/links", app.base))
        .json(&serde_json::json!({"url": "https://example.com/"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401, "{}", app.log());
    let token = key.sign(
        &oidc::claims(&idp.url, "shop-app", &["ladder-admins"], 600),
        None,
    );
    let ca = std::fs::read(env("LADDER_TLS_CA_FILE")).expect("CA");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    ladder_app::tls::install_crypto_provider();
    let admin = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("CA"))
        .build()
        .expect("client");
    crud_round_with(&admin, &app.base).await;
}

/// Kills a child process on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The edge tier's rendered VCL in a real varnishd: it caches redirects by path whatever the
/// Host, takes the app's PURGE, and blocks the WAF paths. Its backend is the loopback port of
/// the TLS-origination sidecar; here a plain app instance stands on that port.
#[tokio::test]
async fn phase_3_edge_vcl_runs_in_varnish() {
    let d = render("phase: 3\nedge: {purgeAllowedCidrs: [10.0.0.0/8], blockedPaths: [/admin]}\n");
    let vcl = d
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(&format!("{SP}-edge-vcl")))
        .and_then(|c| c.data.as_ref()?.get("default.vcl").cloned())
        .expect("the edge VCL is rendered");
    assert!(vcl.contains(".host = \"127.0.0.1\""), "{vcl}");
    let varnish_port = free_port();
    let mut args = common::args(ladder_app::store::StoreSpec::Sqlite {
        path: common::temp_sqlite(),
    });
    args.varnish_url = Some(format!("http://127.0.0.1:{varnish_port}"));
    let origin = common::start(&args).await;
    let vcl = vcl.replace(
        ".port = \"8081\"",
        &format!(".port = \"{}\"", origin.addr.port()),
    );
    let dir = std::env::temp_dir().join(unique("ladder-vcl"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("default.vcl"), &vcl).expect("write vcl");
    let _varnish = Killed(
        Command::new("/usr/sbin/varnishd")
            .arg("-F")
            .args(["-a", &format!("127.0.0.1:{varnish_port}")])
            .args(["-T", "127.0.0.1:0"])
            .arg("-f")
            .arg(dir.join("default.vcl"))
            .arg("-n")
            .arg(dir.join("work"))
            .args(["-s", "malloc,16m"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("varnishd.log")).expect("log"))
            .stderr(std::fs::File::create(dir.join("varnishd.err")).expect("log"))
            .spawn()
            .expect("varnishd starts"),
    );
    let edge = format!("http://127.0.0.1:{varnish_port}");
    let c = common::http();
    eventually("varnishd listening", Duration::from_secs(20), || {
        let (c, edge) = (c.clone(), edge.clone());
        async move {
            c.get(format!("{edge}/healthz"))
                .send()
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;

    let code = create(&c, &origin.url(), "https://example.com/v1", None).await;
    let get = |host: &'static str| {
        let (c, url) = (c.clone(), format!("{edge}/{code}"));
        async move {
            c.get(url)
                .header("host", host)
                .send()
                .await
                .expect("through the edge")
        }
    };
    let first = get("short.example.com").await;
    assert_eq!(first.status(), 302);
    let second = get("other.example.com").await;
    assert_eq!(second.headers()["location"], "https://example.com/v1");
    let ids = second.headers()["x-varnish"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        ids.split(' ').count(),
        2,
        "a cache hit under another Host: {ids}"
    );

    // The app's update purges the edge; the next redirect has the new target.
    let r = c
        .put(format!("{}/api/v1/links/{code}", origin.url()))
        .json(&serde_json::json!({"url": "https://example.com/v2"}))
        .send()
        .await
        .expect("update");
    assert_eq!(r.status(), 200);
    metric_reaches(&c, &origin.url(), "ladder_edge_purges", "ok").await;
    let after = get("short.example.com").await;
    assert_eq!(after.headers()["location"], "https://example.com/v2");

    // The WAF path is blocked at the edge.
    let r = c
        .get(format!("{edge}/admin/x"))
        .send()
        .await
        .expect("blocked");
    assert_eq!(r.status(), 403);
}
