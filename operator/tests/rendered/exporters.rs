//! What running the data-tier exporters needs besides the pods: their
//! binaries (the catalogue's versions, built by `hack/build-exporters.sh`),
//! a scrape over loopback, the Prometheus text format read back, and the
//! metric names the dashboard and the alert rules use.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// Binaries found so far, so parallel tests build each exporter once.
static BINS: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());

/// The binary of exporter `name` (`postgres_exporter`, …) at the
/// catalogue's version: `LADDER_<NAME>` (hack/test.sh sets it), else built
/// by `hack/build-exporters.sh NAME` (once, cached outside the clone).
/// `Err` says why there is none when the Go module proxy does not serve
/// that version (the script's exit 3); any other failure panics.
pub fn exporter_bin(name: &str) -> Result<PathBuf, String> {
    let mut bins = BINS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = bins.get(name) {
        return found.clone();
    }
    let var = format!("LADDER_{}", name.to_uppercase());
    let found = if let Some(bin) = std::env::var_os(&var) {
        Ok(PathBuf::from(bin))
    } else {
        let out = Command::new("bash")
            .arg(repo_root().join("hack/build-exporters.sh"))
            .arg(name)
            .output()
            .expect("hack/build-exporters.sh runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(0) => Ok(PathBuf::from(
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            )),
            Some(3) => Err(plain(stderr.trim())),
            _ => panic!("hack/build-exporters.sh {name} failed:\n{stderr}"),
        }
    };
    if let Ok(bin) = &found {
        assert!(bin.is_file(), "{var}: {} is not a file", bin.display());
    }
    bins.insert(name.to_owned(), found.clone());
    found
}

/// `text` without the terminal colours of hack/lib/common.sh's messages.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        rest = after.find('m').map_or("", |end| &after[end + 1..]);
    }
    out.push_str(rest);
    out
}

/// `GET path` over plain HTTP, as Prometheus scrapes: the body, or why not.
/// HTTP/1.0, so the body is neither chunked nor compressed.
pub fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<String, String> {
    let addr = SocketAddr::from((ip, port));
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response from {addr}: {text}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}{path}: {head}\n{body}"));
    }
    Ok(body.to_owned())
}

/// One sample of the Prometheus text format.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape, read back.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
    /// Families declared by `# TYPE` lines (a labelled family may declare
    /// itself without a sample).
    pub families: BTreeSet<String>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        let mut families = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some(name) = rest.split_whitespace().next() {
                    families.insert(name.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(parse_sample(line).unwrap_or_else(|| panic!("a sample line: {line}")));
        }
        Metrics {
            text: text.to_owned(),
            samples,
            families,
        }
    }

    /// The samples named `name` whose labels include all of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample `name` without labels.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.find(name, &[])
            .find(|s| s.labels.is_empty())
            .map(|s| s.value)
    }

    /// Every name a query could select: the samples' and the families'.
    pub fn names(&self) -> BTreeSet<String> {
        let mut out = self.families.clone();
        out.extend(self.samples.iter().map(|s| s.name.clone()));
        out
    }
}

/// `name{k="v",…} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches([',', ' ']);
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = body.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            body = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The metric names of the data-tier exporters (`pg_*`, `pgbouncer_*`,
/// `redis_*`) and of ClickHouse's endpoint (`ClickHouse*`) that a panel of
/// deploy/observability/ladder-dashboard.json or a rule of rules.yaml
/// queries (the same expressions `e2e/tests/observability.rs` reads for
/// the `ladder_*` names).
pub fn data_tier_names_used() -> BTreeSet<String> {
    let root = repo_root().join("deploy/observability");
    let read = |f: &str| std::fs::read_to_string(root.join(f)).expect("deploy/observability");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("ladder-dashboard.json")).expect("dashboard json");
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
    let rules: serde_yaml::Value = serde_yaml::from_str(&read("rules.yaml")).expect("rules.yaml");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    let mut used = BTreeSet::new();
    for e in &exprs {
        for word in identifiers(e) {
            if ["pg_", "pgbouncer_", "redis_", "ClickHouse"]
                .iter()
                .any(|p| word.starts_with(p))
            {
                used.insert(word.to_owned());
            }
        }
    }
    used
}

/// The identifiers of a PromQL expression outside string literals (label
/// values such as `datname="pg_x"` are not names).
fn identifiers(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let (mut i, mut quote) = (0, None::<u8>);
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == b'"' || c == b'\'' || c == b'`' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"_:".contains(&bytes[i]))
            {
                i += 1;
            }
            out.push(&expr[start..i]);
            continue;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_names_are_read_back() {
        let m = Metrics::parse(
            "# HELP pg_up up\n# TYPE pg_up gauge\npg_up 1\n\
             pg_stat_database_numbackends{datid=\"16384\",datname=\"ladder\"} 2\n\
             redis_exporter_build_info{build_date=\"x\",version=\"v1.74.0\",commit_sha=\"a\\\"b\"} 1\n",
        );
        assert_eq!(m.value("pg_up"), Some(1.0));
        let row: Vec<_> = m
            .find("pg_stat_database_numbackends", &[("datname", "ladder")])
            .collect();
        assert_eq!(row.len(), 1);
        assert_eq!(row[0].value, 2.0);
        let info: Vec<_> = m
            .find("redis_exporter_build_info", &[("version", "v1.74.0")])
            .collect();
        assert_eq!(info[0].labels["commit_sha"], "a\"b");
        assert!(m.names().contains("pg_stat_database_numbackends"));
    }

    #[test]
    fn script_messages_lose_their_colours() {
        assert_eq!(
            plain("\x1b[1;33mwarning:\x1b[0m not served"),
            "warning: not served"
        );
    }

    #[test]
    fn identifiers_skip_label_values() {
        let ids = identifiers(
            r#"sum by (datname) (rate(pg_stat_database_xact_commit{datname!~"pg_.*"}[5m])) > 0"#,
        );
        assert!(ids.contains(&"pg_stat_database_xact_commit"));
        assert!(!ids.iter().any(|i| i.starts_with("pg_.")), "{ids:?}");
    }
}
