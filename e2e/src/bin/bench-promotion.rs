//! Promoter benchmarks on the local control plane; writes `bench/promotion.md`.
//!
//! 1. Reaction time: a ScalingPhase at phase 1 in Auto mode (promoteAt 0.2,
//!    so 20 TPS; minDwell 0s) gets LoadReports at 5 TPS for longer than its
//!    window, then 50 TPS from the instant `t0` the first report over the
//!    threshold is written, re-written every report interval as an app
//!    instance does. Reaction = from `t0` until `status.targetPhase` reads 2
//!    (polled every 100 ms), next to the configured `promoteAfter`; the goal
//!    is within window + 2 s. Per window (10 s, 30 s) and report interval
//!    (2 s, and 15 s: the app's default).
//! 2. Status writes per minute at steady load: after a climb, 60 s of
//!    reports every 2 s at 50 TPS ± 0.4 (the same two-significant-digit
//!    figure), counted by the operator (`ladder_status_writes_total`) and by
//!    the ScalingPhase's resourceVersion; then, for comparison, 60 s of a
//!    figure alternating between 48 and 52 every report.
//!
//! The reports are written by the bench, owned by a kwok Pod of the app (what
//! the app writes, without the app's sliding window blurring `t0`).
//!
//! Usage: `cargo run -p ladder-e2e --bin bench-promotion -- [--out bench/promotion.md] [--runs 1]`
//! with KUBECONFIG set. Every connection goes to 127.0.0.1.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::Api;
use ladder_crds::load_report::LoadReport;
use ladder_crds::scalingphase::ScalingPhase;
use ladder_e2e::load::{self, put_report, report};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, repo_root};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn sp_yaml(name: &str, window: u64) -> String {
    format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: {name}}}\n\
         spec:\n  phase: 1\n  autoscale: {{mode: Auto, minPhase: 1, maxPhase: 2, promoteAt: 0.2, \
         demoteBelow: 0.1, promoteAfter: {window}s, demoteAfter: 1h, minDwell: 0s}}\n"
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Reaction {
    window: u64,
    interval: u64,
    secs: f64,
}

/// One climb: returns the reaction time.
async fn reaction(
    ns: &TestNamespace,
    client: &kube::Client,
    name: &str,
    window: u64,
    interval: u64,
) -> anyhow::Result<f64> {
    ns.apply_sp(&sp_yaml(name, window)).await?;
    ns.wait_ready(name, 1, Duration::from_secs(300)).await?;
    let pods = load::wait_app_pods(client, &ns.name, name, Duration::from_secs(300)).await?;
    let reports: Api<LoadReport> = ns.api();
    let sps = ns.sps();
    let rname = format!("{name}-load");
    // Below the threshold for longer than the window: the history is full.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(window + 5) {
        put_report(&reports, &report(&rname, name, Some(&pods[0]), 5.0, 60, 0)).await?;
        tokio::time::sleep(Duration::from_secs(interval)).await;
    }
    let t0 = Instant::now();
    let mut next_report = t0;
    loop {
        if Instant::now() >= next_report {
            put_report(&reports, &report(&rname, name, Some(&pods[0]), 50.0, 60, 0)).await?;
            next_report += Duration::from_secs(interval);
        }
        let sp: ScalingPhase = sps.get(name).await?;
        if sp.status.as_ref().and_then(|s| s.target_phase) == Some(2) {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > Duration::from_secs(window + 120) {
            anyhow::bail!("{name}: no targetPhase 2 within {}s", window + 120);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reports every 2 s for `secs` with `tps(i)`; returns (status writes
/// counted by the operator, resourceVersion changes seen).
async fn steady(
    op: &Operator,
    ns: &TestNamespace,
    name: &str,
    owner: &k8s_openapi::api::core::v1::Pod,
    secs: u64,
    tps: impl Fn(u64) -> f64,
) -> anyhow::Result<(f64, usize)> {
    let reports: Api<LoadReport> = ns.api();
    let sps = ns.sps();
    let rname = format!("{name}-load");
    let writes0 = op.metric_sum("ladder_status_writes_total").await?;
    let mut rv = sps.get(name).await?.metadata.resource_version;
    let mut changes = 0;
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        put_report(&reports, &report(&rname, name, Some(owner), tps(i), 60, 0)).await?;
        i += 1;
        let until = start + Duration::from_secs(2 * i);
        while Instant::now() < until {
            let now = sps.get(name).await?.metadata.resource_version;
            if now != rv {
                changes += 1;
                rv = now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let writes = op.metric_sum("ladder_status_writes_total").await? - writes0;
    Ok((writes, changes))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out_path = repo_root().join(arg("--out", "bench/promotion.md"));
    let runs: usize = arg("--runs", "1").parse()?;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "bench-promo").await?;
    let op = Operator::start(&ns.name).await?;
    let load_before = loadavg();
    let started = Instant::now();

    // 1. Reaction times.
    let mut rows = Vec::new();
    for window in [10u64, 30] {
        for interval in [2u64, 15] {
            for run in 0..runs {
                let name = format!("w{window}-i{interval}-{run}");
                let secs = reaction(&ns, &client, &name, window, interval)
                    .await
                    .with_context(|| format!("operator log:\n{}", op.log_text()))?;
                eprintln!("window {window}s, reports every {interval}s: {secs:.1}s");
                rows.push(Reaction {
                    window,
                    interval,
                    secs,
                });
            }
        }
    }

    // 2. Status writes at steady load, on the last climbed ScalingPhase once
    // phase 2 is Ready and settled.
    let name = format!("w30-i15-{}", runs - 1);
    ns.wait_ready(&name, 2, Duration::from_secs(300)).await?;
    let pods = load::wait_app_pods(&client, &ns.name, &name, Duration::from_secs(300)).await?;
    // Settle: one minute of the steady figure before measuring.
    steady(&op, &ns, &name, &pods[0], 60, |i| {
        50.0 + if i % 2 == 0 { 0.4 } else { -0.4 }
    })
    .await?;
    let (steady_writes, steady_rv) = steady(&op, &ns, &name, &pods[0], 60, |i| {
        50.0 + if i % 2 == 0 { 0.4 } else { -0.4 }
    })
    .await?;
    let (wiggle_writes, wiggle_rv) = steady(&op, &ns, &name, &pods[0], 60, |i| {
        if i % 2 == 0 { 48.0 } else { 52.0 }
    })
    .await?;
    let load_after = loadavg();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);

    let mut md = String::new();
    writeln!(md, "# Promoter benchmarks\n")?;
    writeln!(
        md,
        "Written by `make bench-promotion` (`e2e/src/bin/bench-promotion.rs`) on the local control plane \
         (kube-apiserver, etcd, controller-manager, scheduler and kwok as local processes; kwok runs no \
         containers). Operator: debug build, scoped to one namespace. LoadReports are written by the bench, \
         owned by a kwok Pod of the app, exactly as `ladder-app --report-load` writes them.\n"
    )?;
    writeln!(
        md,
        "**What shared the cores**: {cores} cores for everything: the control plane, the operator and this \
         bench, and other developers' builds and test runs on the same machine. Load average {load_before} \
         at the start and {load_after} at the end ({:.0} min run). Figures on a quiet machine will be lower; \
         they are an upper bound.\n",
        started.elapsed().as_secs_f64() / 60.0
    )?;
    writeln!(md, "## Reaction time\n")?;
    writeln!(
        md,
        "From writing the first LoadReport over the threshold (50 TPS against 20 TPS: phase 1 with \
         `promoteAt: 0.2`, `minDwell: 0s`, after 5 TPS for longer than the window) until `status.targetPhase` \
         reads 2 (polled every 100 ms). Reports are re-written every report interval, as an app instance does; \
         the operator also samples every 10 s without them. Goal: within the window + 2 s.\n"
    )?;
    writeln!(
        md,
        "| promoteAfter | report interval | reaction | over the window | goal met |"
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    for r in &rows {
        let over = r.secs - r.window as f64;
        writeln!(
            md,
            "| {}s | {}s | {:.1}s | +{:.1}s | {} |",
            r.window,
            r.interval,
            r.secs,
            over,
            if over <= 2.0 { "yes" } else { "no" }
        )?;
    }
    writeln!(md, "\n## Status writes at steady load\n")?;
    writeln!(
        md,
        "The ScalingPhase after its climb (phase 2 Ready), one report every 2 s for 60 s after a minute of \
         settling. `ladder_status_writes_total` counts the operator's status patches (all ScalingPhases of the \
         namespace: the others are idle); the resourceVersion count is every change of the object seen by \
         polling every 200 ms. Goal: 0 when nothing changes.\n"
    )?;
    writeln!(
        md,
        "| load | status writes/min (operator) | object changes/min (observed) |"
    )?;
    writeln!(md, "|---|---|---|")?;
    writeln!(
        md,
        "| 50 TPS ± 0.4 (shown as 50) | {steady_writes:.0} | {steady_rv} |"
    )?;
    writeln!(
        md,
        "| alternating 48 / 52 every report (the shown figure changes) | {wiggle_writes:.0} | {wiggle_rv} |"
    )?;
    std::fs::write(&out_path, md)?;
    eprintln!("wrote {}", out_path.display());
    drop(op);
    ns.delete().await;
    Ok(())
}
