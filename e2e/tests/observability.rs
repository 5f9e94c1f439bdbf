//! The dashboard and alerts of deploy/observability/:
//!
//! - promtool (Debian's prometheus package) checks the rules and runs their
//!   unit tests (rules_test.yaml, input series for every alert);
//! - every `ladder_*` metric a dashboard panel or a rule reads is exported
//!   by the operator or the app: both are started on loopback and their
//!   /metrics scraped. A labelled family shows in /metrics only once it has
//!   a series (no reconcile error, no click yet), so a name missing from the
//!   scrape must at least be registered under that name in
//!   operator/src/metrics.rs or app/src/metrics.rs (printed as such).
//!   Metrics the operator does not export yet are listed
//!   in [`PENDING`] and printed; one that appears must leave the list (the
//!   test fails until it does, so the list stays true);
//! - the chart's copies (charts/ladder-operator/files/) are the same files.
//!
//! Needs a KUBECONFIG for the local control plane (the operator runs
//! against it).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ladder_e2e::{Operator, TestNamespace, repo_root};

/// Metrics that panels or rules use and no binary exports yet, with who
/// adds them. Empty: `ladder_scalingphase_condition` arrived with the
/// operator's ConditionGauges.
const PENDING: &[&str] = &[];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy/observability"))
        .output()
        .expect("promtool (hack/toolchain.sh installs Debian's prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    promtool(&["check", "rules", "rules.yaml"]);
    promtool(&["test", "rules", "rules_test.yaml"]);
    // Every alert has a unit test.
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/observability/rules.yaml")).expect("rules");
    let tests = read("deploy/observability/rules_test.yaml");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"].as_str().expect("alert name");
            assert!(
                tests.contains(&format!("alertname: {alert}")),
                "{alert} has no test in rules_test.yaml"
            );
        }
    }
}

#[test]
fn the_chart_ships_the_same_rules_and_dashboard() {
    for f in ["rules.yaml", "ladder-dashboard.json"] {
        assert!(
            read(&format!("deploy/observability/{f}"))
                == read(&format!("charts/ladder-operator/files/{f}")),
            "charts/ladder-operator/files/{f} differs from deploy/observability/: run `make chart-files`"
        );
    }
}

/// The `ladder_*` names in PromQL text.
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("ladder_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            into.insert(text[start..end].to_owned());
        }
        i = end;
    }
}

fn used_metrics() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/observability/ladder-dashboard.json"))
            .expect("dashboard json");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = v["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    assert!(
        exprs.len() > 10,
        "the dashboard has {} queries",
        exprs.len()
    );
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/observability/rules.yaml")).expect("rules");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    for e in &exprs {
        metric_names(e, &mut used);
    }
    used
}

/// The sample names a /metrics text can have, from its `# TYPE` lines.
fn exported(text: &str, into: &mut BTreeSet<String>) {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#") || parts.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        into.insert(name.to_owned());
        match kind {
            "counter" => {
                into.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    into.insert(format!("{name}{s}"));
                }
            }
            _ => {}
        }
    }
}

/// `ladder_<name>` for every `.register("<name>", ...)` of the two metrics modules.
fn registered_families() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for path in ["operator/src/metrics.rs", "app/src/metrics.rs"] {
        let text = read(path);
        for (i, _) in text.match_indices(".register(") {
            let rest = text[i + ".register(".len()..].trim_start();
            if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                out.insert(format!("ladder_{name}"));
            }
        }
    }
    assert!(out.len() > 10, "found only {out:?} registered");
    out
}

fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// `LADDER_APP_BIN`, or the debug build (built here when missing).
fn app_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("LADDER_APP_BIN") {
        return bin.into();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "ladder-app", "--bin", "ladder-app"])
        .current_dir(repo_root())
        .status()
        .expect("cargo");
    assert!(status.success(), "cargo build -p ladder-app");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("debug/ladder-app")
}

#[tokio::test]
async fn every_metric_a_panel_or_rule_uses_is_exported() {
    let t0 = Instant::now();
    let used = used_metrics();
    let mut have = BTreeSet::new();

    // The operator's /metrics.
    let client = ladder_e2e::client()
        .await
        .expect("KUBECONFIG for the local control plane");
    ladder_e2e::install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::new(&client, "metrics").await.expect("ns");
    let mut op = Operator::start(&ns.name).await.expect("operator");
    let text = op.metrics().await.expect("operator /metrics");
    op.kill();
    ns.delete().await;
    eprintln!("operator scraped after {:?}", t0.elapsed());
    exported(&text, &mut have);
    assert!(
        have.contains("ladder_reconciles_total"),
        "operator /metrics:\n{text}"
    );

    // The app's /metrics, after one request so labelled families have a series.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut app = Command::new(app_bin())
        .arg("serve")
        .env("LADDER_LISTEN", &addr)
        .env("LADDER_STORE", "sqlite::memory:")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ladder-app");
    let start = Instant::now();
    let mut app_text = None;
    while start.elapsed() < Duration::from_secs(30) {
        if http_get(&addr, "/healthz").is_ok() {
            let _ = http_get(&addr, "/no-such-code");
            app_text = http_get(&addr, "/metrics").ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = app.kill();
    let _ = app.wait();
    let app_text = app_text.expect("ladder-app answered /metrics on loopback");
    eprintln!("app scraped after {:?}", t0.elapsed());
    exported(&app_text, &mut have);
    assert!(
        have.contains("ladder_http_requests_total"),
        "app /metrics:\n{app_text}"
    );

    let registered = registered_families();
    let mut missing = Vec::new();
    for m in used
        .iter()
        .filter(|m| !have.contains(*m) && !PENDING.contains(&m.as_str()))
    {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .unwrap_or(m);
        if registered.contains(family) {
            eprintln!("registered, no series in this scrape yet: {m}");
        } else {
            missing.push(m);
        }
    }
    assert!(
        missing.is_empty(),
        "panels or rules use metrics nothing exports: {missing:?}"
    );
    let arrived: Vec<&&str> = PENDING
        .iter()
        .filter(|m| have.contains(**m) || registered.contains(**m))
        .collect();
    assert!(
        arrived.is_empty(),
        "now exported, remove from PENDING in e2e/tests/observability.rs: {arrived:?}"
    );
    for m in PENDING {
        assert!(
            used.contains(*m),
            "PENDING lists {m}, which no panel or rule uses"
        );
        eprintln!("PENDING (used by the dashboard/alerts, not exported yet): {m}");
    }
}
