//! The app's ClickHouse statements ([`ladder_app::clicks::sql`]) on two engines: Debian's
//! clickhouse-server 18.16 (hack/services.sh), through the app's own client, and ClickHouse 26
//! in-process (PyPI's chdb-core, in the venv hack/toolchain.sh makes), run by
//! `hack/chdb-run.py`. The operator renders 25.8: a statement both ends accept is one it
//! accepts too.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chrono::{TimeZone, Utc};
use common::{env, unique};
use ladder_app::clicks::{ClickHouse, sql};

/// Three clicks on two days for one code, one for another.
fn clicks(code: &str, other: &str) -> Vec<(String, chrono::DateTime<Utc>)> {
    let at = |d, h| {
        Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0)
            .single()
            .expect("date")
    };
    vec![
        (code.to_owned(), at(1, 10)),
        (code.to_owned(), at(1, 11)),
        (code.to_owned(), at(2, 9)),
        (other.to_owned(), at(2, 9)),
    ]
}

fn assert_stats(rows: &[ladder_app::store::ClickRow], code: &str) {
    let got: Vec<(&str, i64)> = rows.iter().map(|r| (r.day.as_str(), r.clicks)).collect();
    assert_eq!(got, [("2026-03-01", 2), ("2026-03-02", 1)]);
    assert!(rows.iter().all(|r| r.code == code));
}

#[tokio::test]
async fn the_apps_statements_run_on_debians_clickhouse() {
    let url = env("LADDER_CLICKHOUSE_URL");
    let db = unique("ladder_engines");
    let ch = ClickHouse::new(&url, &db).expect("client");
    ch.ensure_schema().await.expect("the app's DDL");
    ch.ensure_schema().await.expect("idempotent");
    let (code, other) = ("abc", "xyz");
    ch.insert(&clicks(code, other)).await.expect("insert");
    assert_stats(&ch.stats(code).await.expect("stats"), code);
    // The table really is the modern form (what the app created, read back).
    ladder_app::tls::install_crypto_provider();
    let show = reqwest::Client::new()
        .post(&url)
        .body(format!("SHOW CREATE TABLE {db}.clicks"))
        .send()
        .await
        .expect("ClickHouse")
        .text()
        .await
        .expect("text");
    assert!(
        show.contains("PARTITION BY toYYYYMM(day)") && show.contains("ORDER BY (code, ts)"),
        "{show}"
    );
    let _ = reqwest::Client::new()
        .post(&url)
        .body(format!("DROP DATABASE {db}"))
        .send()
        .await;
}

/// The chDB venv's python, made by hack/toolchain.sh.
fn chdb_python() -> PathBuf {
    let cache = std::env::var_os("LADDER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ladder")
        });
    let python = cache.join("chdb/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run hack/toolchain.sh (it installs chdb-core from PyPI)",
        python.display()
    );
    python
}

/// Runs `(statement, data)` pairs on chDB; returns the engine's version and each output, or
/// the error of the statement that failed.
fn chdb(statements: &[(String, Option<String>)]) -> Result<(String, Vec<String>), String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/chdb-run.py");
    let input: Vec<_> = statements
        .iter()
        .map(|(q, d)| serde_json::json!({"query": q, "data": d}))
        .collect();
    let mut child = Command::new(chdb_python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(&input).expect("json").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("chdb-run.py");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let outputs = v["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o.as_str().unwrap_or_default().to_owned())
        .collect();
    Ok((v["engine"].as_str().unwrap_or_default().to_owned(), outputs))
}

#[test]
fn the_apps_statements_run_on_clickhouse_26_in_chdb() {
    let db = "ladder";
    let (code, other) = ("abc", "xyz");
    let statements = vec![
        (sql::create_database(db), None),
        (sql::create_table(db), None),
        (sql::create_table(db), None),
        (
            sql::insert(db),
            Some(sql::insert_rows(&clicks(code, other))),
        ),
        (sql::stats(db, code).expect("a valid code"), None),
    ];
    let (engine, outputs) = chdb(&statements).unwrap_or_else(|e| panic!("{e}"));
    let major: u32 = engine
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("a version");
    assert!(major >= 26, "a current engine: {engine}");
    let rows = sql::parse_stats(code, outputs.last().expect("stats")).expect("parses");
    assert_stats(&rows, code);
}

/// Why the DDL changed: the current engine refuses the form the app used before.
#[test]
fn clickhouse_26_refuses_the_deprecated_mergetree_form() {
    let err = chdb(&[
        (sql::create_database("ladder"), None),
        (
            "CREATE TABLE ladder.old (day Date, ts DateTime, code String) \
             ENGINE = MergeTree(day, (code, ts), 8192)"
                .into(),
            None,
        ),
    ])
    .expect_err("refused");
    assert!(err.contains("deprecated"), "{err}");
}
