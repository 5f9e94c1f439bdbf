//! Transition benchmarks on the local control plane and services; writes
//! `bench/transitions.md`.
//!
//! For each row count N, two climbs, each in its own namespace with its own
//! operator and the migration runner (e2e/src/runner.rs) running the Job's
//! `ladder-app migrate` for real on loopback:
//! - **0 → 1**: the app on loopback on phase 0 (SQLite), N links seeded into
//!   its file (one SQL statement, behind the app's back but in its schema
//!   and sequence), then phase 1 applied.
//! - **2 → 3**: a ScalingPhase created at phase 2, the app on loopback on the
//!   store the operator rendered (PgBouncer and the read replica, one fresh
//!   database), N links seeded, then phase 3 applied (four shard databases).
//!
//! During each climb a bounded load (one client, at most ~100 writes/s)
//! keeps a ledger of acknowledged writes and measures, from the app's side,
//! every window in which writes were refused or unanswered (the fence). The
//! time of each step is when the status watch first saw it. After the climb
//! the ledger and the N seeded rows are checked in the new tier, and the
//! same rows are copied with a plain `pg_dump -t links | psql` into a
//! scratch database, for comparison.
//!
//! Usage: `cargo run -p ladder-e2e --bin bench-transitions -- [--rows 10000,1000000]
//! [--out bench/transitions.md]` with KUBECONFIG set and the services up
//! (`make bench-transitions` does all of it with release binaries). Every
//! connection goes to 127.0.0.1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ladder_crds::scalingphase::TransitionStep;
use ladder_e2e::app::{self, Load, LoopbackApp};
use ladder_e2e::climb::{Databases, SpWatch, app_store, describe};
use ladder_e2e::runner::{Runner, RunnerConfig};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, repo_root};

const SP: &str = "shop";
const RETAIN_SECS: u64 = 5;
const CLIMB_TIMEOUT: Duration = Duration::from_secs(45 * 60);

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn manifest(phase: i32) -> String {
    format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: {SP}}}\nspec:\n  phase: {phase}\n  transitions: {{retainOldTierFor: {RETAIN_SECS}s}}\n"
    )
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    )
    .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What else ran: every 5 s, the 1-minute load average and how many
/// processes of each busy kind (compilers, linkers, test binaries) existed.
#[derive(Default)]
struct Sharing {
    samples: Vec<f64>,
    most: BTreeMap<String, usize>,
}

fn sample(sharing: &std::sync::Mutex<Sharing>) {
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
                let comm = comm.trim();
                let kind = match comm {
                    "rustc" | "cargo" | "cc" | "ld" | "rust-lld" | "clippy-driver" | "go" => comm,
                    c if c.starts_with("ladder-") || c == "kube-apiserver" || c == "etcd" => c,
                    _ => continue,
                };
                *counts.entry(kind.to_owned()).or_default() += 1;
            }
        }
    }
    let mut s = sharing.lock().expect("sharing");
    s.samples.push(load);
    for (k, n) in counts {
        let m = s.most.entry(k).or_default();
        *m = (*m).max(n);
    }
}

/// One climb's figures.
struct Climb {
    scenario: &'static str,
    rows: u64,
    steps: Vec<(TransitionStep, f64)>,
    apply_to_settled: f64,
    migrate_process: Option<f64>,
    fence_ms: Option<u64>,
    verified_rows: u64,
    app_longest: Option<Duration>,
    app_windows: usize,
    app_refused_secs: f64,
    acked: u64,
    refused: u64,
    dump_secs: f64,
    dump_rows: u64,
}

fn dump_copy(from_url: &str, to_url: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let status = std::process::Command::new("bash")
        .args([
            "-c",
            "set -euo pipefail; pg_dump --no-owner --no-privileges -t links \"$FROM\" | psql -q -v ON_ERROR_STOP=1 \"$TO\" >/dev/null",
        ])
        .env("FROM", from_url)
        .env("TO", to_url)
        .status()
        .context("run pg_dump | psql")?;
    if !status.success() {
        bail!("pg_dump | psql failed: {status}");
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn count_seeded(urls: &[String]) -> anyhow::Result<u64> {
    let mut n = 0i64;
    for url in urls {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
        let c: i64 = sqlx::query_scalar("SELECT count(*) FROM links WHERE code LIKE 'seed%'")
            .fetch_one(&mut conn)
            .await?;
        n += c;
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn seed_sqlite(db: &Path, rows: u64) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let sql = format!(
        "BEGIN IMMEDIATE;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO links (code, target, created_ms, seq, deleted)
         SELECT 'seed' || i, 'https://example.com/seed/' || i, {ms},
                (SELECT value FROM ladder_seq WHERE id = 1) + i, 0 FROM n;
         UPDATE ladder_seq SET value = value + {rows} WHERE id = 1;
         COMMIT;",
        ms = now_ms()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    Ok(())
}

async fn seed_pg(url: &str, rows: u64) -> anyhow::Result<()> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    let sql = format!(
        "INSERT INTO links (code, target, created_ms, seq, deleted)
         SELECT 'seed' || i, 'https://example.com/seed/' || i, {ms}, nextval('ladder_links_seq'), FALSE
         FROM generate_series(1, {rows}) AS i",
        ms = now_ms()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Climbs `from` → `from + 1` with `rows` seeded links.
async fn climb(kube: &kube::Client, from: i32, rows: u64) -> anyhow::Result<Climb> {
    let to = from + 1;
    let ns = TestNamespace::new(kube, &format!("bench-tr-{from}{to}")).await?;
    let op = Operator::start(&ns.name).await?;
    let dir = std::env::temp_dir().join(format!("ladder-bench-transition-{}", ns.name));
    std::fs::create_dir_all(&dir)?;
    let dbs = Databases::create("bench", if to == 3 { 4 } else { 0 }).await?;
    let mut hosts = dbs.hosts(SP, &ns.name)?;
    hosts.claims.insert(format!("{SP}-app-data"), dir.clone());
    let runner = Runner::start(
        kube.clone(),
        RunnerConfig {
            namespace: ns.name.clone(),
            binary: ladder_e2e::app_bin()?,
            hosts: hosts.clone(),
            extra_env: vec![],
        },
    )?;
    ns.apply_sp(&manifest(from)).await?;
    ns.wait_ready(SP, from, Duration::from_secs(300)).await?;
    let (app, source_url) = if from == 0 {
        let app = LoopbackApp::start_phase0(&dir).await?;
        seed_sqlite(&dir.join("ladder.db"), rows).await?;
        (app, None)
    } else {
        let store = app_store(kube, &ns.name, SP, &hosts, &dir.join("mounts")).await?;
        let app = LoopbackApp::start(&dir, &store).await?;
        seed_pg(&dbs.url()?, rows).await?;
        (app, Some(dbs.url()?))
    };
    eprintln!("  {from} -> {to}: {rows} rows seeded; climbing");
    let load = Load::start(app.base.clone(), CLIMB_TIMEOUT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut watch = SpWatch::start(ns.sps(), SP);
    let t0 = Instant::now();
    ns.apply_sp(&manifest(to)).await?;
    let end = watch
        .wait("settled", CLIMB_TIMEOUT, |s| {
            s.blocked.is_some() || (s.ready && s.active == Some(to) && s.transition.is_none())
        })
        .await
        .with_context(|| describe(&watch.history()))?;
    if let Some((reason, message)) = &end.blocked {
        bail!(
            "blocked: {reason}: {message}\n{}\n{}",
            describe(&watch.history()),
            runner.logs()
        );
    }
    let apply_to_settled = end.at.duration_since(t0).as_secs_f64();
    let entries = watch.step_entries(from, to);
    let mut steps = Vec::new();
    for (i, (step, at)) in entries.iter().enumerate() {
        let next = entries.get(i + 1).map_or(end.at, |(_, t)| *t);
        steps.push((*step, next.duration_since(*at).as_secs_f64()));
    }
    // A few writes on the new tier, then the ledger.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = load.finish().await?;
    let new_tier = if to == 3 {
        dbs.shard_urls()?
    } else {
        vec![dbs.url()?]
    };
    app::check_ledger_in(&new_tier, &ledger).await?;
    let seeded = count_seeded(&new_tier).await?;
    if seeded != rows {
        bail!("{seeded} of {rows} seeded rows in the new tier");
    }
    let run = runner
        .runs()
        .into_iter()
        .rfind(|r| r.exit_code == 0)
        .context("no successful migration run")?;
    let result: serde_json::Value = serde_json::from_str(&run.message).unwrap_or_default();
    let verified_rows = result["tables"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter(|t| t["table"] == "links")
                .filter_map(|t| t["targetRows"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    // The plain copy of the same rows: PostgreSQL to a scratch database.
    let scratch = Databases::create("benchdump", 0).await?;
    let from_url = source_url.unwrap_or(dbs.url()?);
    let dump_secs = dump_copy(&from_url, &scratch.url()?)?;
    let dump_rows = {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&scratch.url()?).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
            .fetch_one(&mut conn)
            .await?;
        u64::try_from(n).unwrap_or(0)
    };
    let climb = Climb {
        scenario: if from == 0 {
            "0 → 1 (SQLite → PostgreSQL via PgBouncer)"
        } else {
            "2 → 3 (PostgreSQL → 4 shards)"
        },
        rows,
        steps,
        apply_to_settled,
        migrate_process: Some(run.secs),
        fence_ms: result["fenceMillis"].as_u64(),
        verified_rows,
        app_longest: ledger.longest_unavailable(),
        app_windows: ledger.unavailable.len(),
        app_refused_secs: ledger.unavailable.iter().map(Duration::as_secs_f64).sum(),
        acked: ledger.acked,
        refused: ledger.refused,
        dump_secs,
        dump_rows,
    };
    drop(runner);
    drop(app);
    drop(op);
    ns.delete().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(climb)
}

fn secs(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2} s")
    } else {
        format!("{x:.1} s")
    }
}

fn report(climbs: &[Climb], start: &str, end: &str, minutes: f64, sharing: &Sharing) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Transition benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `make bench-transitions` (`e2e/src/bin/bench-transitions.rs`) on the local control plane \
         (kube-apiserver, etcd, controller-manager, scheduler and kwok as local processes) and the local data \
         services of `hack/services.sh` (PostgreSQL 15 primary + streaming replica, PgBouncer). The operator and \
         `ladder-app` are the binaries named by `LADDER_OPERATOR_BIN` / `LADDER_APP_BIN` (release builds under \
         `make bench-transitions`). kwok runs no containers: the migration Job's pod is run by the e2e runner \
         (`e2e/src/runner.rs`), which executes the pod's `ladder-app migrate` with its rendered environment \
         against the local services. Each climb has its own namespace, operator and databases; \
         `retainOldTierFor` is {RETAIN_SECS} s so that Retain costs its configured window and no more.\n"
    );
    let avg = if sharing.samples.is_empty() {
        0.0
    } else {
        sharing.samples.iter().sum::<f64>() / sharing.samples.len() as f64
    };
    let max = sharing.samples.iter().copied().fold(0.0, f64::max);
    let others: Vec<String> = sharing
        .most
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    let _ = writeln!(
        md,
        "**What shared the cores**: 2 cores for everything: the control plane, the data services, the operator, \
         the app, the migrator, this bench, and other developers' builds and test runs on the same machine. \
         Load average {start} at the start and {end} at the end ({minutes:.0} min run); sampled every 5 s: mean \
         {avg:.1}, max {max:.1}. Most processes of each busy kind seen at once: {}. Figures on a quiet machine \
         will be lower; read them as an upper bound.\n",
        others.join(", ")
    );
    let _ = writeln!(md, "## Time of each step\n");
    let _ = writeln!(
        md,
        "From the status watch: a step's time runs from when `status.transition.step` first showed it to \
         when the next step (or, after Done, the cleared transition) showed. *Total* is from applying the \
         new phase to Ready with the transition cleared; Retain is the configured window.\n"
    );
    let names = [
        TransitionStep::PrepareTarget,
        TransitionStep::WaitTargetReady,
        TransitionStep::Migrate,
        TransitionStep::Verify,
        TransitionStep::CutOver,
        TransitionStep::Retain,
        TransitionStep::Retire,
        TransitionStep::Done,
    ];
    let mut header = "| climb | rows |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for n in names {
        let _ = write!(header, " {n:?} |");
        rule.push_str("---|");
    }
    let _ = writeln!(md, "{header} total |\n{rule}---|");
    for c in climbs {
        let mut line = format!("| {} | {} |", c.scenario, c.rows);
        for n in names {
            let v = c
                .steps
                .iter()
                .filter(|(s, _)| *s == n)
                .map(|(_, t)| *t)
                .sum::<f64>();
            let seen = c.steps.iter().any(|(s, _)| *s == n);
            let _ = write!(line, " {} |", if seen { secs(v) } else { "—".into() });
        }
        let _ = writeln!(line, " {} |", secs(c.apply_to_settled));
        md.push_str(&line);
    }
    let _ = writeln!(md, "\n## The copy next to a plain `pg_dump | psql`\n");
    let _ = writeln!(
        md,
        "*Migrate process*: the wall time of the migration Job's `ladder-app migrate` (live copy passes, fence, \
         catch-up, verification of every table and shard by count and checksum, cut-over). *pg_dump | psql*: \
         `pg_dump -t links` of the same rows from the PostgreSQL side of the transition (for 0 → 1 the new \
         tier, as SQLite has no pg_dump; for 2 → 3 the old one) piped into `psql` on a scratch database of the \
         same server, in the same run. The plain copy has no fence, no verification and no cut-over.\n"
    );
    let _ = writeln!(
        md,
        "| climb | rows seeded | rows verified by the Job | Migrate process | pg_dump \\| psql (rows) | ratio |\n|---|---|---|---|---|---|"
    );
    for c in climbs {
        let m = c.migrate_process.unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} ({}) | {:.1}× |",
            c.scenario,
            c.rows,
            c.verified_rows,
            secs(m),
            secs(c.dump_secs),
            c.dump_rows,
            if c.dump_secs > 0.0 {
                m / c.dump_secs
            } else {
                0.0
            }
        );
    }
    let _ = writeln!(md, "\n## The write-unavailability window (the fence)\n");
    let _ = writeln!(
        md,
        "From the app's side: one client writing through the loopback app throughout the climb (creates, \
         updates, deletes; at most ~100/s, retrying a refused write every 20 ms). A window runs from the first \
         write that was refused (503) or unanswered to the next acknowledged write. *Migrator's fence* is what \
         the Job reported (`fenceMillis`: from fencing the source to the cut-over). Every acknowledged write \
         was then found in the new tier (the ledger check), and so were all seeded rows.\n"
    );
    let _ = writeln!(
        md,
        "| climb | rows | migrator's fence | longest window (app side) | windows | total refused time | writes acknowledged | refusals retried |\n|---|---|---|---|---|---|---|---|"
    );
    for c in climbs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.scenario,
            c.rows,
            c.fence_ms.map_or("—".into(), |m| secs(m as f64 / 1000.0)),
            c.app_longest
                .map_or("none".into(), |d| secs(d.as_secs_f64())),
            c.app_windows,
            secs(c.app_refused_secs),
            c.acked,
            c.refused
        );
    }
    md
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: Vec<u64> = arg("--rows", "10000,1000000")
        .split(',')
        .map(|r| r.trim().parse().context("--rows: numbers, comma-separated"))
        .collect::<anyhow::Result<_>>()?;
    let out = arg("--out", "bench/transitions.md");
    let kube = client().await?;
    install_crds(&kube).await?;
    let start = loadavg();
    let t = Instant::now();
    let sharing = Arc::new(std::sync::Mutex::new(Sharing::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sharing, stop) = (sharing.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sample(&sharing);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let mut climbs = Vec::new();
    for n in rows {
        for from in [0, 2] {
            let c = climb(&kube, from, n).await?;
            eprintln!(
                "{} rows {}: total {:.1}s, migrate {:.1}s, pg_dump|psql {:.1}s, fence {:?} ms, app window {:?}",
                c.scenario,
                c.rows,
                c.apply_to_settled,
                c.migrate_process.unwrap_or(0.0),
                c.dump_secs,
                c.fence_ms,
                c.app_longest
            );
            climbs.push(c);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let sharing = std::mem::take(&mut *sharing.lock().expect("sharing"));
    let md = report(
        &climbs,
        &start,
        &loadavg(),
        t.elapsed().as_secs_f64() / 60.0,
        &sharing,
    );
    let path = repo_root().join(&out);
    std::fs::write(&path, &md).with_context(|| format!("write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
