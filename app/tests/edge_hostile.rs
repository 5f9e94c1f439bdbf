//! Hostile requests at the edge and at the app, against what the operator renders, run for
//! real: Debian's `varnishd` with the rendered VCL → `ghostunnel` (the edge pod's sidecar, the
//! catalogue's version built by `hack/build-ghostunnel.sh`) with the rendered arguments,
//! presenting the edge's client certificate → the app over HTTPS with the rendered identity
//! settings (`LADDER_EDGE_CLIENT_NAME`, `LADDER_TRUSTED_PROXIES`) and the rendered WAF rules.
//! Phase 2 (no Varnish): the app behind a trusted proxy, by the rendered `LADDER_TRUSTED_PROXIES`.
//!
//! What a cluster would do, the test does: paths and ports are rewritten to a temp dir and
//! loopback, certificates come from a test CA (the operator's are made the same way: a CA, a
//! client certificate with only a common name, a server certificate for the app's name, here
//! `localhost`). Clients are told apart by their source address: every `127.0.0.0/8` address
//! is this machine, so `127.0.1.7` is another client than `127.0.1.8`.
//!
//! The rendered rate limit is replaced by one token per client and no refill worth the name
//! (0.001/s): an address gets exactly one request through, so any further request that is not
//! answered 429 got a fresh identity. Every hostile request is tallied; the test prints
//! `hostile requests: tried N, got through M` and fails unless M is 0.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, free_port, unique};
use k8s_openapi::api::core::v1::Container;
use ladder_app::config::ClickSinkKind;
use ladder_app::store::StoreSpec;
use ladder_crds::contract::{self, Rules};
use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};
use ladder_operator::render::{self, Desired};
use ladder_operator::validate::{self, World};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SP: &str = "edgy";
const NS: &str = "hostile";
/// The address a trusted proxy (an ingress in front of the edge, or of the app in phase 2)
/// connects from; rendered into `trustedProxyCidrs`.
const PROXY: &str = "127.0.0.9";
const BLOCKED: &str = "[/admin, /api/v1/internal]";

fn render(yaml: &str) -> Desired {
    let spec: ScalingPhaseSpec = serde_yaml::from_str(yaml).expect("spec parses");
    let mut sp = ScalingPhase::new(SP, spec);
    sp.metadata.namespace = Some(NS.into());
    sp.metadata.uid = Some("00000000-0000-0000-0000-0000000000e1".into());
    let world = World {
        node_regions: vec!["ap-south".into(), "eu-west".into(), "us-east".into()],
        integrations: Default::default(),
    };
    let (v, profile) = validate::validate(&sp, &world).expect("spec is valid");
    render::render(&v, &profile)
}

fn config_file(d: &Desired, name: &str, key: &str) -> String {
    d.config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(&format!("{SP}-{name}")))
        .and_then(|c| c.data.as_ref()?.get(key).cloned())
        .unwrap_or_else(|| panic!("ConfigMap {SP}-{name} has {key}"))
}

fn container<'a>(d: &'a Desired, deployment: &str, name: &str) -> &'a Container {
    d.deployments
        .iter()
        .find(|x| x.metadata.name.as_deref() == Some(&format!("{SP}-{deployment}")))
        .and_then(|x| x.spec.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("{SP}-{deployment} has a {name} container"))
}

fn app_env(d: &Desired, name: &str) -> Option<String> {
    container(d, "app", "app")
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// The rendered rules with one token per client (see the module doc).
fn strict_rules(d: &Desired, dir: &Path) -> PathBuf {
    let mut rules: Rules =
        serde_json::from_str(&config_file(d, "edge-policy", "policy.json")).expect("rules");
    assert!(rules.blocked_path_prefixes.contains(&"/admin".to_owned()));
    rules.rate_per_second = 0.001;
    rules.burst = 1.0;
    let path = dir.join("rules.json");
    std::fs::write(&path, serde_json::to_string(&rules).expect("json")).expect("rules file");
    path
}

/// A test CA and the certificates of the cast: the app (server, `localhost`), the edge (client,
/// the rendered name), another component of the same CA, a self-signed impostor of the edge's
/// name, and the edge's name signed by the CA but expired.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, edge_name: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
        };
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let write = |name: &str, cert: String, key: &KeyPair| {
            std::fs::write(dir.join(format!("{name}.crt")), cert).expect("cert");
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("key");
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "edge test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("key");
        let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
        std::fs::write(dir.join("ca.crt"), ca.pem()).expect("ca.crt");
        let leaf = |cn: &str, sans: Vec<String>, expired: bool| {
            let mut p = CertificateParams::new(sans).expect("params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            if expired {
                p.not_before = date_time_ymd(2020, 1, 1);
                p.not_after = date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().expect("key");
            (p.signed_by(&key, &ca).expect("signed").pem(), key)
        };
        let (c, k) = leaf("localhost", vec!["localhost".into()], false);
        write("app", c, &k);
        let (c, k) = leaf(edge_name, vec![], false);
        write("edge", c, &k);
        let (c, k) = leaf(&format!("{SP}-redis"), vec![], false);
        write("other", c, &k);
        let (c, k) = leaf(edge_name, vec![], true);
        write("expired", c, &k);
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, edge_name);
        let key = KeyPair::generate().expect("key");
        write(
            "impostor",
            p.self_signed(&key).expect("self-signed").pem(),
            &key,
        );
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A TLS client trusting the CA, presenting `identity`'s certificate when given.
    fn client(&self, identity: Option<&str>) -> Arc<rustls::ClientConfig> {
        ladder_app::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.crt")).expect("ca") {
            roots.add(c.expect("ca cert")).expect("root");
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        Arc::new(match identity {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.path(&format!("{name}.crt")))
                    .expect("chain")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certs");
                let key =
                    PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
        })
    }
}

/// One HTTP/1.1 answer read to the end (`Connection: close`).
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Answered by the app (JSON), not by Varnish (its own pages are HTML).
    fn answered_by_app(&self) -> bool {
        self.header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
            && self.body.starts_with('{')
    }

    /// Served from Varnish's cache: `X-Varnish` names this request and the cached one.
    fn cache_hit(&self) -> bool {
        self.header("x-varnish")
            .is_some_and(|ids| ids.split_whitespace().count() == 2)
    }
}

/// Sends `request` (request line and headers, without the final blank line) byte for byte from
/// the source address `from`, over TLS when `tls` is given. `None` when the connection or the
/// handshake fails or no status line comes back.
async fn raw(
    from: &str,
    to: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    request: &str,
) -> Option<Reply> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket
        .bind(SocketAddr::new(from.parse().expect("source"), 0))
        .ok()?;
    let tcp = socket.connect(to).await.ok()?;
    let bytes = format!("{request}\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    let io = async {
        match tls {
            Some(config) => {
                let name = ServerName::try_from("localhost").expect("name");
                let mut s = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                s.write_all(bytes.as_bytes()).await?;
                // A refused client certificate surfaces here (TLS 1.3 sends the alert late).
                s.read_to_end(&mut out).await
            }
            None => {
                let mut s = tcp;
                s.write_all(bytes.as_bytes()).await?;
                s.read_to_end(&mut out).await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

fn get(path: &str, headers: &[&str]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: short.example");
    for h in headers {
        r.push_str("\r\n");
        r.push_str(h);
    }
    r
}

/// Hostile requests tried, and those that got through (goal: none).
#[derive(Default)]
struct Tally {
    tried: usize,
    through: Vec<String>,
}

impl Tally {
    /// One hostile request; `held` says the defence held.
    fn check(&mut self, what: impl Into<String>, held: bool) {
        self.tried += 1;
        if !held {
            self.through.push(what.into());
        }
    }

    fn finish(self, name: &str) {
        eprintln!(
            "{name}: hostile requests: tried {}, got through {}",
            self.tried,
            self.through.len()
        );
        assert!(self.tried > 0);
        assert!(
            self.through.is_empty(),
            "{name}: got through:\n{}",
            self.through.join("\n")
        );
    }
}

/// Kills a child process on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn listening(what: &str, port: u16) {
    eventually(what, Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// The catalogue's ghostunnel, built once by `hack/build-ghostunnel.sh` (or `LADDER_GHOSTUNNEL`).
fn ghostunnel_bin() -> String {
    if let Ok(bin) = std::env::var("LADDER_GHOSTUNNEL") {
        return bin;
    }
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../hack/build-ghostunnel.sh"
    ))
    .stderr(Stdio::inherit())
    .output()
    .expect("hack/build-ghostunnel.sh runs");
    assert!(out.status.success(), "hack/build-ghostunnel.sh failed");
    String::from_utf8(out.stdout)
        .expect("path")
        .trim()
        .to_owned()
}

/// The rendered sidecar, its paths and ports rewritten: listens on `listen`, connects to the
/// app on `localhost:app_port` with `identity`'s certificate.
fn tunnel(args: &[String], pki: &Pki, listen: u16, app_port: u16, dir: &Path) -> Killed {
    let tls = dir.join("edge-tls");
    std::fs::create_dir_all(&tls).expect("dir");
    for (from, to) in [
        ("ca.crt", "ca.crt"),
        ("edge.crt", "tls.crt"),
        ("edge.key", "tls.key"),
    ] {
        std::fs::copy(pki.path(from), tls.join(to)).expect("copy");
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("--listen=") {
                format!("--listen=127.0.0.1:{listen}")
            } else if a.starts_with("--target=") {
                assert_eq!(a, &format!("--target={SP}-app.{NS}.svc:8080"));
                format!("--target=localhost:{app_port}")
            } else {
                a.replace("/etc/ladder/tls", &tls.display().to_string())
            }
        })
        .collect();
    assert!(args.iter().any(|a| a.starts_with("--cert=")), "{args:?}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("ghostunnel.log"))
        .expect("log");
    Killed(
        Command::new(ghostunnel_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("ghostunnel starts"),
    )
}

fn varnish(vcl: &str, backend_port: u16, port: u16, dir: &Path) -> Killed {
    assert!(vcl.contains(".port = \"8081\""), "{vcl}");
    let vcl = vcl.replace(".port = \"8081\"", &format!(".port = \"{backend_port}\""));
    std::fs::write(dir.join("default.vcl"), vcl).expect("vcl");
    Killed(
        Command::new("/usr/sbin/varnishd")
            .arg("-F")
            .args(["-a", &format!("127.0.0.1:{port}")])
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
            .expect("varnishd (Debian package varnish) starts"),
    )
}

/// Paths that must not reach a handler behind a WAF blocking `/admin` and `/api/v1/internal`:
/// encodings, case, slashes, dot segments, control characters.
const HOSTILE_PATHS: &[&str] = &[
    "/admin",
    "/admin/users",
    "/ADMIN",
    "/Admin/x",
    "/%61dmin",
    "/%41%44%4D%49%4E",
    "/adm%69n/x",
    "/%2561dmin",
    "/%252561dmin",
    "//admin",
    "///admin/x",
    "/%2fadmin",
    "/%2Fadmin",
    "/%5cadmin",
    "/%5Cadmin",
    "/./admin",
    "/x/../admin",
    "/x/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/x/.%2e/admin",
    "/x%2f..%2fadmin",
    "/x%2f%2e%2e%2fadmin",
    "/%2e/admin",
    "/admin%00",
    "/%00/admin",
    "/adm%0d%0ain",
    "/admin%",
    "/adm%zzin",
    "/api/v1/internal",
    "/api/v1//internal/x",
    "/API/V1/INTERNAL",
    "/api%2fv1%2finternal",
    "/api/v1/%69nternal",
    "/api/v1/x/../internal",
];

/// Absolute-form request targets: Varnish would see the whole URI in `req.url`.
const HOSTILE_ABSOLUTE: &[&str] = &[
    "http://short.example/admin",
    "HTTP://short.example/%61dmin",
    "https://evil.example/api/v1/internal/x",
    "http://short.example//admin",
];

/// Phase 3: spoofed client identities, encoded paths and cache poisoning through the edge, and
/// the edge bypassed straight to the app.
#[tokio::test]
async fn phase_3_edge_holds_against_spoofing_encoding_and_bypass() {
    let d = render(&format!(
        "phase: 3\nedge: {{purgeAllowedCidrs: [10.0.0.0/8], trustedProxyCidrs: [{PROXY}/32], blockedPaths: {BLOCKED}}}\n"
    ));
    let vcl = config_file(&d, "edge-vcl", "default.vcl");
    let tunnel_args = container(&d, "edge", "tls-origin")
        .args
        .clone()
        .expect("sidecar args");
    let edge_name =
        app_env(&d, contract::env::EDGE_CLIENT_NAME).expect("the app is told the edge's name");
    assert_eq!(
        app_env(&d, contract::env::TRUSTED_PROXIES),
        Some(format!("{PROXY}/32"))
    );
    let dir = std::env::temp_dir().join(unique("edge-hostile"));
    std::fs::create_dir_all(&dir).expect("dir");
    let pki = Pki::new(&dir, &edge_name);

    // The app as the rendered Deployment configures it (identity and rules), over HTTPS; its
    // clicks go to ClickHouse through a proxy the test can cut (an app-made 503).
    let clickhouse = common::proxy::Proxy::start(
        url::Url::parse(&common::env("LADDER_CLICKHOUSE_URL"))
            .expect("url")
            .socket_addrs(|| None)
            .expect("addr")[0]
            .to_string(),
    )
    .await;
    let mut a = common::args(StoreSpec::Sqlite {
        path: common::temp_sqlite(),
    });
    a.tls_cert = Some(pki.path("app.crt"));
    a.tls_key = Some(pki.path("app.key"));
    a.tls_ca = Some(pki.path("ca.crt"));
    a.edge_client_name = Some(edge_name.clone());
    a.trusted_proxies = Vec::new();
    a.rules_file = Some(strict_rules(&d, &dir));
    a.clicks = ClickSinkKind::Clickhouse;
    a.clickhouse_url = Some(format!("http://{}", clickhouse.addr));
    a.clickhouse_database = unique("ladder_edge");
    let app = common::start(&a).await;
    let app_addr = app.addr;

    let tunnel_port = free_port();
    let mut sidecar = Some(tunnel(
        &tunnel_args,
        &pki,
        tunnel_port,
        app_addr.port(),
        &dir,
    ));
    let edge_port = free_port();
    let _varnishd = varnish(&vcl, tunnel_port, edge_port, &dir);
    listening("ghostunnel", tunnel_port).await;
    listening("varnishd", edge_port).await;
    let edge: SocketAddr = ([127, 0, 0, 1], edge_port).into();
    let plain = pki.client(None);
    let mut t = Tally::default();

    // Controls: the edge passes each real client as itself (its own bucket) and ordinary paths.
    for (i, client) in ["127.0.1.1", "127.0.1.2"].iter().enumerate() {
        let r = raw(client, edge, None, &get(&format!("/control-{i}"), &[]))
            .await
            .expect("through the edge");
        assert_eq!((r.status, r.answered_by_app()), (404, true), "{r:?}");
    }
    let r = raw("127.0.1.1", edge, None, &get("/control-again", &[]))
        .await
        .expect("through the edge");
    assert_eq!(r.status, 429, "one token per client: {r:?}");

    // 1. Spoofed identities through the edge: 127.0.1.1 has spent its token; whatever it claims,
    //    it stays itself.
    let spoofs: &[&[&str]] = &[
        &["X-Forwarded-For: 198.51.100.1"],
        &["X-Forwarded-For: 198.51.100.2, 198.51.100.3"],
        &[
            "X-Forwarded-For: 198.51.100.4",
            "X-Forwarded-For: 198.51.100.5",
        ],
        &["Forwarded: for=198.51.100.6"],
        &["X-Real-IP: 198.51.100.7"],
        &["X-Forwarded-For: 127.0.1.2"],
        &["X-Forwarded-For: 2001:db8::1"],
        &["X-Forwarded-For: unknown"],
        &["X-Forwarded-For: 198.51.100.8 , ,"],
        &["X-Forwarded-For: 127.0.0.9"],
        &["X-Ladder-Client: somebody-else"],
        &[
            "X-Forwarded-For: 198.51.100.9",
            "Forwarded: for=198.51.100.10",
        ],
    ];
    for (i, headers) in spoofs.iter().enumerate() {
        let r = raw(
            "127.0.1.1",
            edge,
            None,
            &get(&format!("/spoof-{i}"), headers),
        )
        .await;
        t.check(
            format!("edge spoof {headers:?}: {r:?}"),
            r.is_some_and(|r| r.status == 429),
        );
    }
    // A PROXY protocol preamble: the edge does not speak it.
    let r = raw(
        "127.0.1.1",
        edge,
        None,
        &format!(
            "PROXY TCP4 198.51.100.11 127.0.0.1 1234 80\r\n{}",
            get("/spoof-proxy", &[])
        ),
    )
    .await;
    t.check(
        format!("edge PROXY preamble: {r:?}"),
        r.is_none_or(|r| r.status != 404),
    );

    // 2. Behind a trusted proxy (an ingress in front of the edge): its last entry is the client;
    //    what the client put before it is ignored. An untrusted peer cannot play the proxy.
    let r = raw(
        PROXY,
        edge,
        None,
        &get("/via-proxy-0", &["X-Forwarded-For: 6.6.6.6, 198.51.100.20"]),
    )
    .await
    .expect("via the proxy");
    assert_eq!(r.status, 404, "{r:?}");
    let r = raw(
        PROXY,
        edge,
        None,
        &get("/via-proxy-1", &["X-Forwarded-For: 198.51.100.21"]),
    )
    .await
    .expect("via the proxy");
    assert_eq!(r.status, 404, "another client behind the proxy: {r:?}");
    let r = raw(
        PROXY,
        edge,
        None,
        &get(
            "/via-proxy-2",
            &["X-Forwarded-For: 198.51.100.99, 198.51.100.20"],
        ),
    )
    .await;
    t.check(
        format!("client behind the proxy spoofs its entry: {r:?}"),
        r.is_some_and(|r| r.status == 429),
    );
    let r = raw(
        "127.0.1.3",
        edge,
        None,
        &get(
            "/fake-proxy-0",
            &["X-Forwarded-For: 6.6.6.6, 198.51.100.30"],
        ),
    )
    .await
    .expect("through the edge");
    assert_eq!(r.status, 404, "{r:?}");
    for i in 1..4 {
        let r = raw(
            "127.0.1.3",
            edge,
            None,
            &get(
                &format!("/fake-proxy-{i}"),
                &[&format!("X-Forwarded-For: 6.6.6.6, 198.51.100.3{i}")],
            ),
        )
        .await;
        t.check(
            format!("untrusted peer plays the proxy: {r:?}"),
            r.is_some_and(|r| r.status == 429),
        );
    }

    // 3. Encoded paths through the edge: refused by Varnish itself (never reach the app).
    for path in HOSTILE_PATHS.iter().chain(HOSTILE_ABSOLUTE) {
        let r = raw("127.0.1.4", edge, None, &get(path, &[])).await;
        t.check(
            format!("edge path {path}: {r:?}"),
            r.as_ref()
                .is_some_and(|r| matches!(r.status, 400 | 403) && !r.answered_by_app()),
        );
    }
    for (i, ok) in ["/x..y", "/caf%C3%A9", "/api/v1/links/nosuch"]
        .iter()
        .enumerate()
    {
        let r = raw(&format!("127.0.1.{}", 40 + i), edge, None, &get(ok, &[]))
            .await
            .expect("through the edge");
        assert_eq!(
            (r.status, r.answered_by_app()),
            (404, true),
            "{ok} is an ordinary path: {r:?}"
        );
    }

    // 4. Cache poisoning: a 429 earned by one client is not served to another; an app-made 503
    //    and the edge's own 503 (app unreachable) are not kept either.
    let _ = raw("127.0.2.1", edge, None, &get("/warm", &[])).await;
    let r = raw("127.0.2.1", edge, None, &get("/shared", &[]))
        .await
        .expect("429");
    assert_eq!(r.status, 429, "{r:?}");
    let r = raw("127.0.2.2", edge, None, &get("/shared", &[])).await;
    t.check(
        format!("429 cached for everyone: {r:?}"),
        r.is_some_and(|r| r.status == 404 && !r.cache_hit()),
    );
    let c = reqwest::Client::builder()
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(pki.path("ca.crt")).expect("ca"))
                .expect("CA"),
        )
        .build()
        .expect("client");
    let base = format!("https://localhost:{}", app_addr.port());
    let code = common::create(&c, &base, "https://example.com/stats", None).await;
    let stats = format!("/api/v1/links/{code}/stats");
    clickhouse.cut().await;
    let first = raw("127.0.2.3", edge, None, &get(&stats, &[]))
        .await
        .expect("503");
    assert_eq!(
        (first.status, first.answered_by_app()),
        (503, true),
        "{first:?}"
    );
    let second = raw("127.0.2.4", edge, None, &get(&stats, &[])).await;
    t.check(
        format!("app 503 cached: {second:?}"),
        second.is_some_and(|r| r.status == 503 && !r.cache_hit()),
    );
    clickhouse.restore().await;
    let r = raw("127.0.2.5", edge, None, &get(&stats, &[])).await;
    t.check(
        format!("app 503 still served after recovery: {r:?}"),
        r.is_some_and(|r| r.status == 200),
    );
    // 5. PURGE from outside the ACL.
    let cached = format!("/{code}");
    let r = raw("127.0.2.8", edge, None, &get(&cached, &[]))
        .await
        .expect("redirect");
    assert_eq!(r.status, 302, "{r:?}");
    let r = raw(
        "127.0.2.9",
        edge,
        None,
        &format!("PURGE {cached} HTTP/1.1\r\nHost: short.example"),
    )
    .await;
    t.check(
        format!("PURGE from outside the ACL: {r:?}"),
        r.is_some_and(|r| r.status == 405),
    );
    let r = raw("127.0.2.10", edge, None, &get(&cached, &[]))
        .await
        .expect("redirect");
    assert!(r.cache_hit(), "the redirect is still cached: {r:?}");

    // The app unreachable (the sidecar gone): the edge's own 503 is not kept either. (Varnish's
    // pooled connections to the dead sidecar may fail a request or two after it is back: an
    // uncached 503 each, which is what is checked here.)
    drop(sidecar.take());
    let r = raw("127.0.2.6", edge, None, &get("/while-down", &[]))
        .await
        .expect("503");
    assert_eq!((r.status, r.answered_by_app()), (503, false), "{r:?}");
    sidecar = Some(tunnel(
        &tunnel_args,
        &pki,
        tunnel_port,
        app_addr.port(),
        &dir,
    ));
    listening("ghostunnel again", tunnel_port).await;
    let mut seen = Vec::new();
    let mut held = false;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = raw(
            &format!("127.0.2.{}", 20 + i),
            edge,
            None,
            &get("/while-down", &[]),
        )
        .await;
        if r.as_ref()
            .is_some_and(|r| r.status == 404 && r.answered_by_app())
        {
            held = true;
            break;
        }
        if r.as_ref().is_some_and(Reply::cache_hit) {
            break;
        }
        seen.push(r);
    }
    t.check(format!("edge 503 cached: {seen:?}"), held);

    // 6. The edge bypassed: straight to the app, with spoofed headers, with no certificate,
    //    another component's certificate, an impostor's and an expired one.
    for (client, identity) in [("127.0.3.1", None), ("127.0.3.2", Some("other"))] {
        let config = pki.client(identity);
        let r = raw(
            client,
            app_addr,
            Some(config.clone()),
            &get("/direct-0", &[]),
        )
        .await
        .expect("the app answers");
        assert_eq!(r.status, 404, "{r:?}");
        for (i, headers) in spoofs.iter().enumerate() {
            let r = raw(
                client,
                app_addr,
                Some(config.clone()),
                &get(&format!("/direct-{}", i + 1), headers),
            )
            .await;
            t.check(
                format!("bypass with {identity:?} {headers:?}: {r:?}"),
                r.is_some_and(|r| r.status == 429),
            );
        }
    }
    for identity in ["impostor", "expired"] {
        let r = raw(
            "127.0.3.3",
            app_addr,
            Some(pki.client(Some(identity))),
            &get("/direct-x", &["X-Forwarded-For: 198.51.100.50"]),
        )
        .await;
        t.check(
            format!("bypass with the {identity} certificate: {r:?}"),
            r.is_none(),
        );
    }
    // The edge's own certificate is the edge: it may speak for a client.
    let r = raw(
        "127.0.3.4",
        app_addr,
        Some(pki.client(Some("edge"))),
        &get("/direct-edge", &["X-Forwarded-For: 198.51.100.51"]),
    )
    .await
    .expect("the app answers");
    assert_eq!(r.status, 404, "{r:?}");

    // 7. The app's own WAF, bypassing the edge.
    for path in HOSTILE_PATHS {
        let r = raw("127.0.3.5", app_addr, Some(plain.clone()), &get(path, &[])).await;
        t.check(
            format!("app path {path}: {r:?}"),
            r.is_some_and(|r| matches!(r.status, 400 | 403)),
        );
    }
    drop(sidecar);
    t.finish("phase 3");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Phase 2 (no Varnish): the app behind an ingress keys on the client the ingress names, and
/// on the peer for anyone else.
#[tokio::test]
async fn phase_2_limiter_keys_on_the_client_the_ingress_names() {
    let d = render(&format!(
        "phase: 2\nedge: {{trustedProxyCidrs: [{PROXY}/32], blockedPaths: {BLOCKED}}}\n"
    ));
    assert_eq!(
        app_env(&d, contract::env::EDGE_CLIENT_NAME),
        None,
        "no edge in phase 2"
    );
    let proxies = app_env(&d, contract::env::TRUSTED_PROXIES).expect("rendered");
    let dir = std::env::temp_dir().join(unique("edge-p2"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut a = common::args(StoreSpec::Sqlite {
        path: common::temp_sqlite(),
    });
    a.edge_client_name = None;
    a.trusted_proxies = proxies
        .split(',')
        .map(|c| c.parse().expect("the app reads the rendered CIDRs"))
        .collect();
    a.rules_file = Some(strict_rules(&d, &dir));
    let app = common::start(&a).await;
    let to = app.addr;
    let mut t = Tally::default();

    // Each client the ingress names has its own bucket...
    for client in ["198.51.100.40", "198.51.100.41", "2001:db8:1::1"] {
        let r = raw(
            PROXY,
            to,
            None,
            &get("/p2", &[&format!("X-Forwarded-For: {client}")]),
        )
        .await
        .expect("answer");
        assert_eq!(r.status, 404, "{client}: {r:?}");
    }
    // ...and a client cannot leave it by writing its own entries before the ingress' one, nor
    // by moving within its IPv6 /64.
    for headers in [
        "X-Forwarded-For: 6.6.6.6, 198.51.100.40",
        "X-Forwarded-For: 198.51.100.77\r\nX-Forwarded-For: 198.51.100.40",
        "X-Forwarded-For: 2001:db8:1::ffff",
    ] {
        let r = raw(PROXY, to, None, &get("/p2", &[headers])).await;
        t.check(
            format!("behind the ingress {headers}: {r:?}"),
            r.is_some_and(|r| r.status == 429),
        );
    }
    // Anyone else is its peer address, whatever it sends.
    let r = raw(
        "127.0.5.1",
        to,
        None,
        &get("/p2", &["X-Forwarded-For: 198.51.100.60"]),
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 404, "{r:?}");
    for i in 61..70 {
        let r = raw(
            "127.0.5.1",
            to,
            None,
            &get("/p2", &[&format!("X-Forwarded-For: 198.51.100.{i}")]),
        )
        .await;
        t.check(
            format!("direct spoof .{i}: {r:?}"),
            r.is_some_and(|r| r.status == 429),
        );
    }
    for path in HOSTILE_PATHS {
        let r = raw("127.0.5.2", to, None, &get(path, &[])).await;
        t.check(
            format!("app path {path}: {r:?}"),
            r.is_some_and(|r| matches!(r.status, 400 | 403)),
        );
    }
    t.finish("phase 2");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The edge is recognised by its certificate: naming it without HTTPS and a CA is refused at
/// startup with a message that says why.
#[tokio::test]
async fn edge_name_without_tls_is_refused() {
    let mut a = common::args(StoreSpec::Sqlite {
        path: common::temp_sqlite(),
    });
    a.edge_client_name = Some("ladder-edge".into());
    let err = ladder_app::server::start(&a)
        .await
        .expect_err("no TLS, no edge");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--tls-ca") && msg.contains("client certificate"),
        "{msg}"
    );
}
