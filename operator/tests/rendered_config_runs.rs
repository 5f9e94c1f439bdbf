//! The rendered configuration, run: for each phase, Debian's `postgres`
//! (primaries, and streaming replicas cloned by the rendered
//! `pg_basebackup` init container), `pgbouncer` and `redis-server` start
//! with exactly the files, arguments, certificates and passwords the
//! operator renders and generates; only paths (to a directory per volume)
//! and listen addresses (a loopback address per pod) are rewritten. See
//! `rendered/mod.rs` for what stands in for the cluster (kubelet, DNS).
//!
//! Then clients connect the way the app does: TLS verified against the
//! operator's CA for the Service names the app's rendered URLs carry (with
//! rustls, the app's TLS library, and with libpq's `verify-full`), with the
//! passwords of the generated Secrets. A server that refuses its config,
//! stops, or cannot be reached like that fails the test.
//!
//! Beside each server, its rendered exporter sidecar
//! (`render/exporters.rs`) runs too: the catalogue's version of the
//! program (`hack/build-exporters.sh`) with exactly the rendered args and
//! env (Secret values, `$(VAR)` expanded as the kubelet does), only its
//! addresses moved to the pod's loopback address like the servers'. It is
//! scraped where the pod's `prometheus.io/*` annotations point and must
//! report its server reachable (`pg_up`, `pgbouncer_up`, `redis_up` 1), what
//! only a connected exporter sees, and the catalogue's version; every
//! data-tier metric the dashboard and the alert rules query must be among
//! what they export. pgbouncer_exporter: the Go module proxy serves no
//! version of it here, so its queries run over its rendered connection
//! string by psql instead, and the run says so (`NOT RUN`).
//!
//! Not run here, and why: ClickHouse (the rendered config is for 25.8; Debian
//! ships 18.16, which needs another root element and lacks the settings) and
//! CockroachDB (no package we may use). The app's ClickHouse SQL is checked
//! against both engines by `app/tests/clickhouse_engines.rs`.
//!
//! Its own tier (`make test-rendered`, hack/test.sh): it needs root and
//! Debian's servers, so the unit tier skips it (`#[ignore]`).

mod rendered;

use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use ladder_crds::catalogue::images;
use ladder_crds::contract::{self, ShardMap};
use rendered::exporters::{Metrics, data_tier_names_used, exporter_bin, http_get};
use rendered::*;

/// The startup parameters the app's driver (sqlx 0.9) sends, besides user
/// and database (sqlx-postgres' `connection/establish.rs`; the app adds its
/// application name).
const SQLX_STARTUP: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("client_encoding", "UTF8"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "2"),
    ("application_name", "ladder-app"),
];

fn container(pod: &Pod, name: &str) -> Container {
    pod.spec
        .containers
        .iter()
        .chain(pod.spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{} has no container {name}", pod.name))
        .clone()
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in the rendered env"))
}

/// The container's command line as the image runs it (its entrypoint when
/// the container names none), paths rewritten.
fn argv(c: &Container, entrypoint: &str, mounts: &Mounts) -> Vec<String> {
    let mut out = c
        .command
        .clone()
        .unwrap_or_else(|| vec![entrypoint.to_owned()]);
    out.extend(c.args.clone().unwrap_or_default());
    mounts.rewrite_all(&out)
}

fn edit(path: &std::path::Path, f: impl FnOnce(&str) -> String) {
    let text = std::fs::read_to_string(path).expect("config file");
    std::fs::write(path, f(&text)).expect("config file");
}

/// A PostgreSQL pod of StatefulSet `set`, started as the image would: a
/// primary runs initdb, creates the database and runs the rendered init
/// script on a server without TCP (the image's entrypoint), then starts; a
/// replica runs the rendered `basebackup` init container first.
fn start_postgres(p: &mut Phase, pod: &Pod) {
    let c = container(pod, "postgres");
    let mounts = p.mount(pod, &c);
    let mut env = p.env(pod, &c, &mounts);
    let run_dir = mounts.dir("/var/run/postgresql").to_owned();
    // The listen address: this pod's own.
    edit(
        &mounts.dir("/etc/postgresql").join("postgresql.conf"),
        |t| {
            replace_setting(
                t,
                "listen_addresses",
                &format!("listen_addresses = '{}'", pod.ip),
            )
        },
    );
    let mut args = argv(&c, "postgres", &mounts);
    // The socket directory the image compiles in is the `run` mount.
    args.extend([
        "-c".into(),
        format!("unix_socket_directories={}", run_dir.display()),
    ]);
    let pgdata = get(&env, "PGDATA").to_owned();
    if pod
        .spec
        .init_containers
        .as_ref()
        .is_some_and(|i| !i.is_empty())
    {
        let init = container(pod, "basebackup");
        let init_mounts = p.mount(pod, &init);
        let init_env = p.env(pod, &init, &init_mounts);
        let out = p.run(true, &init_env, &argv(&init, "sh", &init_mounts));
        assert!(
            out.status.success(),
            "{}: the rendered basebackup failed: {}{}",
            pod.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        let user = get(&env, "POSTGRES_USER").to_owned();
        let password = get(&env, "POSTGRES_PASSWORD").to_owned();
        let pwfile = pod.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).expect("pwfile");
        let chown = p.run(
            false,
            &[],
            &[
                "chown".into(),
                "postgres".into(),
                pwfile.display().to_string(),
            ],
        );
        assert!(chown.status.success());
        let out = p.run(
            true,
            &env,
            &[
                "initdb".into(),
                format!("--username={user}"),
                format!("--pwfile={}", pwfile.display()),
                "-E".into(),
                "UTF8".into(),
                "--locale=C.UTF-8".into(),
                "-D".into(),
                pgdata.clone(),
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The entrypoint's temporary server: the rendered config, no TCP.
        let mut temp_args = args.clone();
        temp_args.extend(["-c".into(), "listen_addresses=".into()]);
        let mut temp = p.spawn(pod, "postgres-init", &env, &temp_args);
        let socket = vec![
            ("PGHOST".to_owned(), run_dir.display().to_string()),
            ("PGPORT".to_owned(), "5432".to_owned()),
            ("PGPASSWORD".to_owned(), password.clone()),
        ];
        let isready = |p: &Phase| {
            p.run(true, &socket, &["pg_isready".into(), "-q".into()])
                .status
                .success()
        };
        wait_ready(&mut temp, "initialising", || isready(p));
        let mut init_env = env.clone();
        init_env.extend(socket.iter().cloned());
        let db = get(&env, "POSTGRES_DB").to_owned();
        let out = p.run(
            true,
            &init_env,
            &[
                "psql".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "--username".into(),
                user.clone(),
                "--dbname".into(),
                "postgres".into(),
                "-c".into(),
                format!("CREATE DATABASE \"{db}\""),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let scripts = mounts.dir("/docker-entrypoint-initdb.d");
        let mut names: Vec<_> = std::fs::read_dir(scripts)
            .expect("init scripts")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        assert!(!names.is_empty(), "the rendered init scripts are mounted");
        for script in names {
            let out = p.run(
                true,
                &init_env,
                &["sh".into(), script.display().to_string()],
            );
            assert!(
                out.status.success(),
                "{}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        drop(temp);
        env.retain(|(k, _)| k != "POSTGRES_PASSWORD");
    }
    let mut server = p.spawn(pod, "postgres", &env, &args);
    let socket = [("PGHOST".to_owned(), run_dir.display().to_string())];
    wait_ready(&mut server, "postgres", || {
        listening(pod.ip, 5432)
            && p.run(true, &socket, &["pg_isready".into(), "-q".into()])
                .status
                .success()
    });
    p.keep(server);
}

fn start_pgbouncer(p: &mut Phase, pod: &Pod) {
    let c = container(pod, "pgbouncer");
    let mounts = p.mount(pod, &c);
    let env = p.env(pod, &c, &mounts);
    let tmp = mounts.dir("/tmp").display().to_string();
    edit(&mounts.dir("/etc/pgbouncer").join("pgbouncer.ini"), |t| {
        let t = replace_setting(t, "listen_addr", &format!("listen_addr = {}", pod.ip));
        // Its unix socket goes to its compiled-in /tmp: the pod's /tmp mount.
        format!("{t}unix_socket_dir = {tmp}\n")
    });
    let mut server = p.spawn(pod, "pgbouncer", &env, &argv(&c, "pgbouncer", &mounts));
    wait_ready(&mut server, "pgbouncer", || listening(pod.ip, 6432));
    p.keep(server);
}

/// Returns redis-server's pid.
fn start_redis(p: &mut Phase, pod: &Pod) -> u32 {
    let c = container(pod, "redis");
    let mounts = p.mount(pod, &c);
    let env = p.env(pod, &c, &mounts);
    // No `bind` in the rendered file: it would listen everywhere.
    edit(&mounts.dir("/etc/redis").join("redis.conf"), |t| {
        format!("{t}bind {}\n", pod.ip)
    });
    let mut server = p.spawn(pod, "redis", &env, &argv(&c, "redis-server", &mounts));
    wait_ready(&mut server, "redis", || listening(pod.ip, 6379));
    p.keep(server)
}

/// What the app's rendered container says about reaching the data tier.
struct AppWiring {
    env: Vec<(String, String)>,
    mounts: Mounts,
}

impl AppWiring {
    fn of(p: &mut Phase) -> AppWiring {
        let pod = p.pod(&format!("{SP}-app"), None);
        let c = container(&pod, "app");
        let mounts = p.mount(&pod, &c);
        AppWiring {
            env: p.env(&pod, &c, &mounts),
            mounts,
        }
    }

    fn get(&self, key: &str) -> &str {
        get(&self.env, key)
    }

    /// The PostgreSQL URLs of `LADDER_STORE` (the shard map's, for
    /// `shards:`), as libpq takes them.
    fn pg_urls(&self) -> Vec<String> {
        let store = self.get(contract::env::STORE);
        let (kind, rest) = store.split_once(':').expect("kind:spec");
        let urls: Vec<String> = match kind {
            "pgbouncer" | "postgres" => vec![rest.to_owned()],
            "replicas" => rest.split(',').map(str::to_owned).collect(),
            "shards" => {
                let text = std::fs::read_to_string(rest).expect("the mounted shard map");
                ShardMap::parse(&text)
                    .expect("the app's shard map format")
                    .shards
                    .into_iter()
                    .map(|s| s.url)
                    .collect()
            }
            other => panic!("store kind {other}"),
        };
        let scheme = format!("{}://", contract::PGBOUNCER_SCHEME);
        urls.into_iter()
            .map(|u| match u.strip_prefix(&scheme) {
                Some(rest) => format!("postgresql://{rest}"),
                None => u,
            })
            .collect()
    }

    fn db_password(&self) -> &str {
        self.get(contract::env::DB_PASSWORD)
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.mounts.dir("/etc/ladder/tls").join("ca.crt"))
            .expect("the app's CA")
    }
}

fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .expect("URL")
        .host_str()
        .expect("host")
        .to_owned()
}

/// A PostgreSQL or PgBouncer server at `name:port`: TLS verified for its
/// name by rustls (and refused for another name), the app driver's startup
/// parameters accepted up to authentication, plain text refused.
fn check_pg_endpoint(p: &Phase, name: &str, port: u16) {
    let ip = p.ip(name);
    let mut tls = tls_connect(ip, port, name, p.ca_pem(), true)
        .unwrap_or_else(|e| panic!("TLS to {name}: {e}"));
    let mut params = vec![("user", "ladder"), ("database", "ladder")];
    params.extend_from_slice(SQLX_STARTUP);
    let auth = pg_startup(&mut tls, &params)
        .unwrap_or_else(|e| panic!("{name} refused sqlx's startup parameters: {e}"));
    assert_eq!(auth, 10, "{name}: SCRAM (SASL) authentication is asked for");
    let wrong = format!("{SP}-elsewhere.{NS}.svc");
    let err = tls_connect(ip, port, &wrong, p.ca_pem(), true)
        .err()
        .unwrap_or_else(|| panic!("{name}'s certificate must not verify as {wrong}"));
    assert!(err.contains("certificate"), "{err}");
    let plain = psql(
        p,
        &format!("host={name} port={port} dbname=ladder user=ladder sslmode=disable"),
        "irrelevant",
        "select 1",
    );
    let err = plain.expect_err("plain text is refused");
    assert!(
        err.contains("reject") || err.contains("SSL required") || err.contains("no pg_hba.conf"),
        "{name} plain: {err}"
    );
}

/// Every PostgreSQL URL of the app's store answers over verify-full TLS:
/// through PgBouncer, whose own connection to PostgreSQL is TLS too.
fn check_app_urls(p: &Phase, app: &AppWiring, through_bouncer: usize) {
    let urls = app.pg_urls();
    let bouncer = svc(&format!("{SP}-pgbouncer"));
    let mut seen = 0;
    for url in &urls {
        assert!(url.contains("sslmode=verify-full"), "{url}");
        let got = psql(
            p,
            url,
            app.db_password(),
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        )
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(got, "t", "{url}: the server side of the connection is TLS");
        if host_of(url) == bouncer {
            seen += 1;
        }
    }
    assert_eq!(seen, through_bouncer, "URLs through PgBouncer in {urls:?}");
}

fn check_pgbouncer_settings(p: &Phase, app: &AppWiring) {
    let url = app.pg_urls()[0].clone();
    let admin = url
        .replacen("/ladder?", "/pgbouncer?", 1)
        .replacen("/shard_0?", "/pgbouncer?", 1);
    let config = psql(p, &admin, app.db_password(), "SHOW CONFIG")
        .unwrap_or_else(|e| panic!("PgBouncer's admin console: {e}"));
    let setting = |key: &str| {
        config
            .lines()
            .find_map(|l| {
                let mut f = l.split('|');
                (f.next() == Some(key)).then(|| f.next().unwrap_or_default().to_owned())
            })
            .unwrap_or_else(|| panic!("{key} in SHOW CONFIG:\n{config}"))
    };
    assert_eq!(setting("query_timeout"), "60");
    assert_eq!(setting("ignore_startup_parameters"), "extra_float_digits");
    assert_eq!(setting("client_tls_sslmode"), "require");
    assert_eq!(setting("server_tls_sslmode"), "verify-full");
}

/// Redis by the app's URL and password: TLS verified for the URL's host,
/// AUTH required and checked, the password nowhere in redis-server's argv.
fn check_redis(p: &Phase, app: &AppWiring, pid: u32) {
    let url = url::Url::parse(app.get(contract::env::REDIS_URL)).expect("Redis URL");
    assert_eq!(url.scheme(), "rediss");
    let (name, port) = (url.host_str().expect("host"), url.port().expect("port"));
    let password = app.get(contract::env::REDIS_PASSWORD);
    let ip = p.ip(name);
    let ca = app.ca_pem();
    let mut tls = tls_connect(ip, port, name, &ca, false).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        redis(&mut tls, &["PING"]).starts_with("-NOAUTH"),
        "AUTH is required"
    );
    assert!(redis(&mut tls, &["AUTH", url.username(), "wrong"]).starts_with("-WRONGPASS"));
    assert_eq!(redis(&mut tls, &["AUTH", url.username(), password]), "+OK");
    assert_eq!(redis(&mut tls, &["SET", "ladder:probe", "1"]), "+OK");
    assert_eq!(redis(&mut tls, &["GET", "ladder:probe"]), "1");
    assert!(tls_connect(ip, port, &format!("{SP}-elsewhere.{NS}.svc"), &ca, false).is_err());
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("redis-server's argv");
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    assert!(argv.contains("redis-server"), "{argv}");
    assert!(!argv.contains(password), "the password is in argv: {argv}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        !String::from_utf8_lossy(&environ).contains(password),
        "the password is in redis-server's environment"
    );
}

/// The replica streams from its primary over TLS and serves reads by the
/// app's replica URL.
fn check_replication(p: &Phase, app: &AppWiring, primary: &str) {
    let write = &app.pg_urls()[0];
    let pw = app.db_password();
    psql(
        p,
        write,
        pw,
        "create table if not exists rendered_probe (x int); insert into rendered_probe values (42)",
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    for url in app.pg_urls().iter().skip(1) {
        let got = eventually(
            &format!("the row on {url}"),
            Duration::from_secs(30),
            || {
                psql(
                    p,
                    url,
                    pw,
                    "select pg_is_in_recovery(), (select max(x) from rendered_probe)",
                )
                .ok()
                .filter(|v| v == "t|42")
            },
        );
        assert_eq!(got, "t|42");
    }
    let direct = format!(
        "host={primary} port=5432 dbname=ladder user=ladder sslmode=verify-full sslrootcert={}",
        app.mounts.dir("/etc/ladder/tls").join("ca.crt").display()
    );
    let streams = psql(
        p,
        &direct,
        pw,
        "select count(*) from pg_stat_replication r join pg_stat_ssl s on s.pid = r.pid \
         where s.ssl and r.state = 'streaming'",
    )
    .expect("pg_stat_replication");
    assert_eq!(
        streams,
        (app.pg_urls().len() - 1).to_string(),
        "replicas streaming over TLS"
    );
}

// ------------------------------------------------------------ exporters --

/// The program of each exporter image the operator renders: the catalogue's
/// images, and the binaries `hack/build-exporters.sh` builds from the same
/// tags.
const EXPORTER_PROGRAMS: &[(&str, &str)] = &[
    (images::POSTGRES_EXPORTER, "postgres_exporter"),
    (images::PGBOUNCER_EXPORTER, "pgbouncer_exporter"),
    (images::REDIS_EXPORTER, "redis_exporter"),
];

/// An exporter sidecar started beside its server.
struct Sidecar {
    pod: Pod,
    program: &'static str,
    /// The image's tag: the version the exporter must report.
    tag: String,
    /// Where Prometheus scrapes it: the pod's `prometheus.io/*` annotations.
    port: u16,
    path: String,
    log: std::path::PathBuf,
}

/// An exporter sidecar this machine could not run, and why.
struct NotRun {
    pod: Pod,
    program: &'static str,
    container: Container,
    why: String,
}

/// The pod's network is its own loopback address here (see rendered/mod.rs),
/// so a sidecar's `127.0.0.1` (the server beside it) and its listen address
/// without a host (`:9187`, every interface of the pod) become the pod's
/// address. Nothing else of an argument or env value changes.
fn on_pod_loopback(value: &str, ip: std::net::Ipv4Addr) -> String {
    let value = value.replace("127.0.0.1", &ip.to_string());
    let is_port = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(port) = value.strip_prefix(':').filter(|p| is_port(p)) {
        return format!("{ip}:{port}");
    }
    match value.split_once("=:") {
        Some((flag, port)) if is_port(port) => format!("{flag}={ip}:{port}"),
        _ => value,
    }
}

#[test]
fn sidecar_addresses_move_to_the_pod_and_vars_expand_as_the_kubelet_does() {
    let ip = std::net::Ipv4Addr::new(127, 9, 8, 7);
    assert_eq!(on_pod_loopback(":9121", ip), "127.9.8.7:9121");
    assert_eq!(
        on_pod_loopback("--web.listen-address=:9187", ip),
        "--web.listen-address=127.9.8.7:9187"
    );
    assert_eq!(
        on_pod_loopback("rediss://127.0.0.1:6379", ip),
        "rediss://127.9.8.7:6379"
    );
    assert_eq!(on_pod_loopback("true", ip), "true");
    assert_eq!(on_pod_loopback("a=:b", ip), "a=:b");
    let env = [
        ("P".to_owned(), "s3cr$(x)".to_owned()),
        ("P".to_owned(), "last".to_owned()),
    ];
    assert_eq!(
        expand("u:$(P)@h", &env),
        "u:last@h",
        "the last definition wins"
    );
    assert_eq!(expand("$$(P) $(Q) $( $", &env), "$(P) $(Q) $( $");
    assert_eq!(
        expand("$(P)", &env[..1]),
        "s3cr$(x)",
        "values are not expanded again"
    );
}

/// Starts every exporter sidecar of `pod` as a kubelet would: the image's
/// program (the catalogue's version) with exactly the rendered args and
/// env, env values from the generated Secrets and `$(VAR)` expanded in the
/// args; only the addresses moved to the pod's loopback address. Its
/// server must be running already.
fn start_exporters(p: &mut Phase, pod: &Pod) -> Vec<Result<Sidecar, NotRun>> {
    let mut out = Vec::new();
    for c in &pod.spec.containers {
        let image = c.image.as_deref().unwrap_or_default();
        let Some(&(_, program)) = EXPORTER_PROGRAMS.iter().find(|(i, _)| *i == image) else {
            continue;
        };
        let bin = match exporter_bin(program) {
            Ok(bin) => bin,
            Err(why) => {
                out.push(Err(NotRun {
                    pod: pod.clone(),
                    program,
                    container: c.clone(),
                    why,
                }));
                continue;
            }
        };
        assert!(
            c.command.is_none(),
            "{}: the rendered exporter keeps its image's entrypoint",
            c.name
        );
        // The image's filesystem: its program, readable by the pod's user.
        let image_dir = pod.dir.join("image");
        std::fs::create_dir_all(&image_dir).expect("image dir");
        let entrypoint = image_dir.join(program);
        if std::fs::hard_link(&bin, &entrypoint).is_err() {
            std::fs::copy(&bin, &entrypoint).expect("the exporter binary");
        }
        let mounts = p.mount(pod, c);
        let env = p.env(pod, c, &mounts);
        let mut argv = vec![entrypoint.display().to_string()];
        argv.extend(
            c.args
                .iter()
                .flatten()
                .map(|a| on_pod_loopback(&expand(&mounts.rewrite(a), &env), pod.ip)),
        );
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k, on_pod_loopback(&v, pod.ip)))
            .collect();
        let port = c
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref() == Some("metrics"))
            .unwrap_or_else(|| panic!("{}: no metrics port", c.name))
            .container_port;
        let annotation = |k: &str| {
            pod.annotations
                .get(k)
                .unwrap_or_else(|| panic!("{}: no {k} annotation", pod.name))
                .clone()
        };
        assert_eq!(annotation("prometheus.io/scrape"), "true");
        assert_eq!(
            annotation("prometheus.io/port"),
            port.to_string(),
            "{}: Prometheus scrapes the exporter's port",
            pod.name
        );
        let mut proc = p.spawn(pod, &c.name, &env, &argv);
        let log = proc.log.clone();
        wait_ready(&mut proc, program, || listening(pod.ip, port as u16));
        p.keep(proc);
        out.push(Ok(Sidecar {
            pod: pod.clone(),
            program,
            tag: image.rsplit_once(':').expect("a tagged image").1.to_owned(),
            port: port as u16,
            path: annotation("prometheus.io/path"),
            log,
        }));
    }
    out
}

/// Scrapes a sidecar the way Prometheus would (its annotations' port and
/// path). A few tries: the first scrape may race the exporter's own
/// connection set-up; one that never reaches its server keeps its `up` at 0.
fn scrape(s: &Sidecar, up: &str) -> Metrics {
    let mut last = String::new();
    for _ in 0..5 {
        match http_get(s.pod.ip, s.port, &s.path) {
            Ok(text) => {
                let m = Metrics::parse(&text);
                if m.value(up) == Some(1.0) {
                    return m;
                }
                last = text;
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!(
        "{} of {} does not report `{up} 1`: it cannot reach its server with the rendered \
         config. Its /metrics:\n{}\nIts log:\n{}",
        s.program,
        s.pod.name,
        last.lines()
            .filter(|l| l.contains("up") || l.contains("error"))
            .collect::<Vec<_>>()
            .join("\n"),
        tail(&s.log)
    );
}

/// The exporter reaches its server: its `up` is 1 and it reports what only
/// a connected exporter can (its own session in `ladder`'s row of
/// pg_stat_database; PgBouncer's pools for the app's user; Redis' clients),
/// and the version it was built as is the catalogue's. Returns its scrape.
fn check_exporter(s: &Sidecar) -> Metrics {
    let at = format!("{} of {}", s.program, s.pod.name);
    let m = match s.program {
        "postgres_exporter" => {
            let m = scrape(s, "pg_up");
            let rows: Vec<_> = m
                .find("pg_stat_database_numbackends", &[("datname", "ladder")])
                .collect();
            assert!(
                rows.iter().any(|r| r.value >= 1.0),
                "{at}: no pg_stat_database row for `ladder` with its own session: {rows:?}"
            );
            m
        }
        "pgbouncer_exporter" => {
            let m = scrape(s, "pgbouncer_up");
            let pools: Vec<_> = m
                .find(
                    "pgbouncer_pools_client_active_connections",
                    &[("user", "ladder")],
                )
                .collect();
            assert!(!pools.is_empty(), "{at}: no pool of user `ladder`");
            m
        }
        "redis_exporter" => {
            let m = scrape(s, "redis_up");
            let clients = m.value("redis_connected_clients");
            assert!(
                clients.is_some_and(|c| c >= 1.0),
                "{at}: redis_connected_clients {clients:?}"
            );
            m
        }
        other => panic!("no check for {other}"),
    };
    let info = format!("{}_build_info", s.program);
    let version = s.tag.trim_start_matches('v');
    let reported: Vec<_> = m.find(&info, &[]).collect();
    assert!(
        reported.iter().any(|r| r
            .labels
            .get("version")
            .is_some_and(|v| v.trim_start_matches('v') == version)),
        "{at} is not the catalogue's {}: {reported:?}",
        s.tag
    );
    m
}

/// PgBouncer's exporter, when this machine cannot build it: its queries
/// (SHOW STATS, LISTS, CONFIG, DATABASES, POOLS, STATS_TOTALS), run over
/// exactly its rendered connection string by psql, so at least the
/// credentials, the TLS mode and the `stats_users` grant it relies on are
/// proved.
fn check_pgbouncer_exporter_queries(p: &Phase, n: &NotRun) {
    let env = p.env(&n.pod, &n.container, &Mounts(Vec::new()));
    let dsn = n
        .container
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix("--pgBouncer.connectionString="))
        .expect("the rendered connection string");
    let dsn = on_pod_loopback(&expand(dsn, &env), n.pod.ip);
    for q in [
        "SHOW STATS",
        "SHOW LISTS",
        "SHOW CONFIG",
        "SHOW DATABASES",
        "SHOW STATS_TOTALS",
    ] {
        psql(p, &dsn, "", q).unwrap_or_else(|e| {
            panic!("pgbouncer_exporter's `{q}` over its rendered connection string: {e}")
        });
    }
    let pools = psql(p, &dsn, "", "SHOW POOLS").expect("SHOW POOLS");
    assert!(
        pools.lines().any(|l| l.split('|').nth(1) == Some("ladder")),
        "no pool of user `ladder`:\n{pools}"
    );
}

/// Starts and checks the exporters of `pods`; returns the scrapes and the
/// programs not run (printed, with why).
fn run_exporters(p: &mut Phase, pods: &[Pod]) -> (Vec<(&'static str, Metrics)>, Vec<&'static str>) {
    let mut started = Vec::new();
    for pod in pods {
        started.extend(start_exporters(p, pod));
    }
    assert!(!started.is_empty(), "no exporter sidecar rendered");
    let (mut scraped, mut not_run) = (Vec::new(), Vec::new());
    for s in started {
        match s {
            Ok(s) => {
                scraped.push((s.program, check_exporter(&s)));
                eprintln!("{} of {}: up, connected, {}", s.program, s.pod.name, s.tag);
            }
            Err(n) => {
                eprintln!(
                    "NOT RUN: {} of {} ({}); its queries were run over its rendered connection \
                     instead",
                    n.program, n.pod.name, n.why
                );
                assert_eq!(n.program, "pgbouncer_exporter", "{}", n.why);
                check_pgbouncer_exporter_queries(p, &n);
                not_run.push(n.program);
            }
        }
    }
    p.assert_all_running();
    (scraped, not_run)
}

/// Every data-tier metric a dashboard panel or an alert rule queries is one
/// the running exporters export (a panel on a name that no exporter has
/// stays empty, an alert on it never fires).
fn check_dashboard_names(scraped: &[(&'static str, Metrics)], not_run: &[&'static str]) {
    let used = data_tier_names_used();
    let program_of = |name: &str| {
        [
            ("pgbouncer_", "pgbouncer_exporter"),
            ("pg_", "postgres_exporter"),
            ("redis_", "redis_exporter"),
            ("ClickHouse", "clickhouse"),
        ]
        .into_iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, program)| program)
        .expect("a data-tier name")
    };
    let (mut missing, mut verified) = (Vec::new(), Vec::new());
    for name in &used {
        let program = program_of(name);
        if program == "clickhouse" || not_run.contains(&program) {
            eprintln!("NOT VERIFIED (its exporter did not run here): {name}");
            continue;
        }
        verified.push(name.as_str());
        let exported = scraped
            .iter()
            .filter(|(p, _)| *p == program)
            .any(|(_, m)| m.names().contains(name));
        if !exported {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard or the rules query data-tier metrics the exporters do not export: \
         {missing:?}"
    );
    eprintln!("data-tier metrics the dashboard and rules use, exported: {verified:?}");
}

/// Plans and starts PostgreSQL: every primary of `shards` (names), with
/// `replicas` pods of each replica set; then PgBouncer and Redis. Returns
/// the app's wiring, redis-server's pid and every pod started.
fn start_data_tier(
    p: &mut Phase,
    primaries: &[String],
    replicas: u32,
) -> (AppWiring, u32, Vec<Pod>) {
    let mut pods = Vec::new();
    for primary in primaries {
        pods.push(p.pod(primary, Some(0)));
        for i in 0..replicas {
            pods.push(p.pod(&format!("{primary}-replica"), Some(i)));
        }
    }
    let bouncer = p.pod(&format!("{SP}-pgbouncer"), None);
    let redis = p.pod(&format!("{SP}-redis"), Some(0));
    let app = AppWiring::of(p);
    for pod in &pods {
        start_postgres(p, pod);
    }
    start_pgbouncer(p, &bouncer);
    let pid = start_redis(p, &redis);
    pods.extend([bouncer, redis]);
    (app, pid, pods)
}

#[test]
#[ignore = "the rendered-config tier: make test-rendered (root, Debian's servers)"]
fn phase_1_postgres_pgbouncer_and_redis_run_their_rendered_config() {
    let mut p = Phase::new("phase: 1");
    let (app, redis_pid, pods) = start_data_tier(&mut p, &[format!("{SP}-postgres")], 0);
    check_pg_endpoint(&p, &svc(&format!("{SP}-postgres")), 5432);
    check_pg_endpoint(&p, &svc(&format!("{SP}-pgbouncer")), 6432);
    check_app_urls(&p, &app, 1);
    check_pgbouncer_settings(&p, &app);
    check_redis(&p, &app, redis_pid);
    // After the app's connections, so PgBouncer has its pools.
    let (scraped, not_run) = run_exporters(&mut p, &pods);
    check_dashboard_names(&scraped, &not_run);
    p.assert_all_running();
}

#[test]
#[ignore = "the rendered-config tier: make test-rendered (root, Debian's servers)"]
fn phase_2_streaming_replicas_run_their_rendered_config() {
    let mut p = Phase::new("phase: 2\nedge: {blockedPaths: [/admin]}\n");
    let primary = format!("{SP}-postgres");
    let replicas = p
        .desired
        .stateful_sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&format!("{primary}-replica")))
        .and_then(|s| s.spec.replicas)
        .expect("a replica set") as u32;
    let (app, redis_pid, pods) = start_data_tier(&mut p, std::slice::from_ref(&primary), replicas);
    for i in 0..replicas {
        let set = format!("{primary}-replica");
        check_pg_endpoint(&p, &format!("{set}-{i}.{}", svc(&set)), 5432);
    }
    check_pg_endpoint(&p, &svc(&format!("{SP}-postgres-read")), 5432);
    check_app_urls(&p, &app, 1);
    check_replication(&p, &app, &svc(&primary));
    check_redis(&p, &app, redis_pid);
    run_exporters(&mut p, &pods);
    p.assert_all_running();
}

#[test]
#[ignore = "the rendered-config tier: make test-rendered (root, Debian's servers)"]
fn phase_3_shards_behind_pgbouncer_run_their_rendered_config() {
    let mut p = Phase::new("phase: 3\nedge: {blockedPaths: [/admin]}\n");
    let primaries: Vec<String> = p
        .desired
        .stateful_sets
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .filter(|n| n.starts_with(&format!("{SP}-pg-shard-")) && !n.ends_with("-replica"))
        .collect();
    assert_eq!(primaries.len(), 4, "{primaries:?}");
    // One replica pod per shard keeps the run small; every replica set
    // shares one rendered config.
    let (app, redis_pid, pods) = start_data_tier(&mut p, &primaries, 1);
    for primary in &primaries {
        check_pg_endpoint(&p, &svc(primary), 5432);
    }
    check_app_urls(&p, &app, 4);
    check_pgbouncer_settings(&p, &app);
    check_redis(&p, &app, redis_pid);
    run_exporters(&mut p, &pods);
    p.assert_all_running();
}

#[test]
#[ignore = "the rendered-config tier: make test-rendered (root, Debian's servers)"]
fn phase_4_redis_runs_its_rendered_config() {
    let mut p = Phase::new(
        "phase: 4\nauth: {issuerUrl: 'https://login.example.com/realms/shop', clientId: shop-app}\n",
    );
    let pod = p.pod(&format!("{SP}-redis"), Some(0));
    let app = AppWiring::of(&mut p);
    let pid = start_redis(&mut p, &pod);
    check_redis(&p, &app, pid);
    run_exporters(&mut p, &[pod]);
    p.assert_all_running();
}

/// OpenSSL (libpq, PostgreSQL, PgBouncer and Redis all verify with it)
/// enforces what the CA carries: no CA below it (pathlen:0), no name outside
/// the namespace, a server certificate for servers and a client certificate
/// for clients only.
#[test]
#[ignore = "the rendered-config tier: make test-rendered (root, Debian's servers)"]
fn openssl_enforces_the_cas_constraints_and_the_certificate_purposes() {
    let desired = render(
        "phase: 4\nauth: {issuerUrl: 'https://login.example.com/realms/shop', clientId: shop-app}\n",
    );
    let secrets = generate_secrets(&desired);
    let dir = std::env::temp_dir().join(format!("ladder-openssl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = &secrets[&format!("{SP}-ca")];
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let ca_file = file("ca.crt", &ca["tls.crt"]);
    let verify = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .arg("verify")
            .args(["-CAfile", &ca_file])
            .args(args)
            .output()
            .expect("openssl (hack/toolchain.sh installs it)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let server = file(
        "server.crt",
        &secrets[&format!("{SP}-redis-tls")]["tls.crt"],
    );
    let client = file(
        "client.crt",
        &secrets[&format!("{SP}-cockroach-client-ladder")]["tls.crt"],
    );
    assert!(verify(&["-purpose", "sslserver", &server]).0);
    assert!(
        !verify(&["-purpose", "sslclient", &server]).0,
        "a server certificate as a client"
    );
    assert!(verify(&["-purpose", "sslclient", &client]).0);
    assert!(
        !verify(&["-purpose", "sslserver", &client]).0,
        "a client certificate as a server"
    );

    // What only the CA's key could mint, refused all the same.
    let key = rcgen::KeyPair::from_pem(&ca["tls.key"]).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca["tls.crt"], key).expect("issuer");
    let leaf = |names: &[&str], issuer: &rcgen::Issuer<'_, rcgen::KeyPair>| {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params
            .signed_by(&rcgen::KeyPair::generate().expect("key"), issuer)
            .expect("signed")
            .pem()
    };
    let inside = file("inside.crt", &leaf(&["db.prod.svc"], &issuer));
    assert!(verify(&[&inside]).0, "a name of the namespace");
    let outside = file("outside.crt", &leaf(&["db.staging.svc"], &issuer));
    let (ok, out) = verify(&[&outside]);
    assert!(!ok && out.contains("subtree"), "{out}");
    let mut sub = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    sub.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    sub.distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    sub.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let sub_key = rcgen::KeyPair::generate().expect("key");
    let sub_pem = sub.signed_by(&sub_key, &issuer).expect("signed").pem();
    let sub_issuer = rcgen::Issuer::from_ca_cert_pem(&sub_pem, sub_key).expect("issuer");
    let sub_file = file("sub.crt", &sub_pem);
    let under = file("under.crt", &leaf(&["db.prod.svc"], &sub_issuer));
    let (ok, out) = verify(&["-untrusted", &sub_file, &under]);
    assert!(!ok && out.contains("path length"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
