//! The results and their Markdown (bench/operator.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::apiserver::{Counters, Row};

/// Median and range of some timings (seconds).
pub fn stats(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    };
    (median, v[0], v[v.len() - 1])
}

/// One phase's repeated measurements.
#[derive(Debug, Default)]
pub struct PhaseRow {
    /// Phase number.
    pub phase: i32,
    /// Components in its status.
    pub components: usize,
    /// Operator: create → Ready, seconds.
    pub op: Vec<f64>,
    /// Floor: create → rendered objects applied → workloads ready, seconds.
    pub floor: Vec<f64>,
}

/// One fleet run (N phase-0 ScalingPhases created at once), both sides.
#[derive(Debug, Default)]
pub struct Fleet {
    /// N.
    pub n: usize,
    /// Operator: all created, all Ready (seconds from the first create).
    pub op_created: f64,
    /// See `op_created`.
    pub op_ready: f64,
    /// Floor: all applied, all ready.
    pub floor_applied: f64,
    /// See `floor_applied`.
    pub floor_ready: f64,
    /// The operator's own count (ladder_api_requests_total) over the run.
    pub op_own: BTreeMap<Row, f64>,
    /// The apiserver's counters over the operator's run.
    pub op_apiserver: Counters,
    /// The apiserver's counters over the floor's run.
    pub floor_apiserver: Counters,
    /// Operator CPU seconds over its run.
    pub op_cpu: f64,
    /// Reconcile time quantiles over the run (p50, p99), seconds.
    pub reconcile: (Option<f64>, Option<f64>),
    /// Reconciles run.
    pub reconciles: f64,
    /// Deepest workqueue_depth seen (sampled each second).
    pub deepest: f64,
}

/// The churn run.
#[derive(Debug, Default)]
pub struct Churn {
    /// ScalingPhases in the fleet.
    pub fleet: usize,
    /// Changed per round.
    pub batch: usize,
    /// Seconds between rounds.
    pub every: f64,
    /// Rounds done.
    pub rounds: usize,
    /// Each round: seconds until all its ScalingPhases were Ready at their new generation.
    pub settle: Vec<f64>,
    /// Reconcile time quantiles over the run (p50, p99), seconds.
    pub reconcile: (Option<f64>, Option<f64>),
    /// Reconciles run.
    pub reconciles: f64,
    /// (seconds, workqueue_depth, active workers), sampled each second.
    pub depth: Vec<(f64, f64, f64)>,
    /// The operator's own requests over the run.
    pub op_requests: f64,
    /// The apiserver's count of the operator's requests over the run.
    pub op_apiserver: f64,
}

/// Memory of the operator process.
#[derive(Debug, Default)]
pub struct Memory {
    /// (ScalingPhases, VmRSS KiB, VmHWM KiB).
    pub points: Vec<(String, u64, u64)>,
    /// JSON bytes of what the caches hold at the largest fleet measured,
    /// and of that the managedFields.
    pub cache: Option<(usize, usize, usize)>,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Results {
    /// When.
    pub when: String,
    /// How long the whole run took, minutes.
    pub minutes: f64,
    /// The command run.
    pub command: String,
    /// Which build of the operator.
    pub build: String,
    /// Operator concurrency (and the floor's).
    pub concurrency: usize,
    /// ScalingPhases created at once by the bench.
    pub in_flight: usize,
    /// Per phase.
    pub phases: Vec<PhaseRow>,
    /// Fleet runs.
    pub fleets: Vec<Fleet>,
    /// The churn run.
    pub churn: Option<Churn>,
    /// Memory.
    pub memory: Memory,
    /// What shared the cores: load averages seen, busiest other processes.
    pub sharing: Vec<String>,
    /// Steps not run, and why.
    pub skipped: Vec<String>,
    /// Other findings worth a line.
    pub notes: Vec<String>,
}

fn secs(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x < 10.0 {
        format!("{x:.2} s")
    } else {
        format!("{x:.1} s")
    }
}

fn ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.0} ms", v * 1000.0))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn row_name((verb, group, resource): &Row) -> String {
    if group.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource} ({group})")
    }
}

/// The Markdown.
#[allow(clippy::too_many_lines)]
pub fn markdown(r: &Results) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(md, "# Operator benchmarks\n")?;
    writeln!(
        md,
        "Measured {} on the local control plane (kube-apiserver v1.37 + etcd + kwok, 6 fake nodes in 3 regions)",
        r.when
    )?;
    writeln!(
        md,
        "with the {} build of `ladder-operator` (`--concurrency {}`). Regenerate with `{}` ({:.0} minutes this time).\n",
        r.build, r.concurrency, r.command, r.minutes
    )?;
    writeln!(md, "**What shared the 2 cores during the run.** ")?;
    for s in &r.sharing {
        writeln!(md, "- {s}")?;
    }
    writeln!(
        md,
        "\nAbsolute times move with that load; read the ratios against the floor, measured in the same run, side by side.\n"
    )?;
    writeln!(md, "How it is measured:")?;
    writeln!(
        md,
        "- **Floor**: a minimal client (`e2e/src/bin/bench-operator/floor.rs`) renders, with the operator's own pure validator and renderer, exactly"
    )?;
    writeln!(
        md,
        "  the objects the operator renders for each ScalingPhase (created in a namespace no operator watches, so owner references are real)"
    )?;
    writeln!(
        md,
        "  and server-side-applies them one by one in the operator's apply order (generated Secrets with placeholder data), {} ScalingPhases at once",
        r.concurrency
    )?;
    writeln!(
        md,
        "  like the operator's `--concurrency`, with no client-side rate limit (the operator has none either); done when every expected workload is"
    )?;
    writeln!(
        md,
        "  ready by the operator's rule, seen through watches. No status, Events, finalizer or reads: what any client must do at the least."
    )?;
    writeln!(
        md,
        "- **Operator**: the same ScalingPhases created (by the bench, {} in flight, in both cases) in the namespace the operator watches; done when all are",
        r.in_flight
    )?;
    writeln!(
        md,
        "  `Ready=True` for their generation, seen through a watch. Before timing, the operator is warmed up (one ScalingPhase of each phase)."
    )?;
    writeln!(
        md,
        "- **Requests, apiserver side**: the kube-apiserver's `/metrics` scraped before and after (loopback, admin credentials). `apiserver_request_total`"
    )?;
    writeln!(
        md,
        "  counts every client (controller-manager, scheduler, kwok, the bench); the operator and the floor client run as their own users (impersonated),"
    )?;
    writeln!(
        md,
        "  each matched by a FlowSchema to the exempt priority level, so `apiserver_flowcontrol_dispatched_requests_total{{flow_schema}}` counts them alone."
    )?;
    writeln!(
        md,
        "- **Metrics**: the operator's own `/metrics` (controller-runtime-compatible series added for this: `controller_runtime_reconcile_time_seconds`,"
    )?;
    writeln!(
        md,
        "  `workqueue_depth`, `rest_client_requests_total`; `ladder_api_requests_total` labelled by the apiserver's verb and resource).\n"
    )?;

    if !r.phases.is_empty() {
        let reps = r.phases.first().map_or(0, |p| p.op.len());
        writeln!(md, "## Time to Ready per phase, next to the floor\n")?;
        writeln!(
            md,
            "One ScalingPhase at a time; {reps} run(s) of each side, alternating which goes first; median (min–max).\n"
        )?;
        writeln!(
            md,
            "| phase | components | operator: create → Ready | floor: create → apply → ready | ratio of medians |"
        )?;
        writeln!(md, "|---|---|---|---|---|")?;
        for p in &r.phases {
            let name = ladder_crds::catalogue::Phase::from_number(p.phase)
                .map(|ph| ph.name())
                .unwrap_or("?");
            let (om, olo, ohi) = stats(&p.op);
            let (fm, flo, fhi) = stats(&p.floor);
            writeln!(
                md,
                "| {} {name} | {} | {} ({}–{}) | {} ({}–{}) | {:.2} |",
                p.phase,
                p.components,
                secs(om),
                secs(olo),
                secs(ohi),
                secs(fm),
                secs(flo),
                secs(fhi),
                om / fm
            )?;
        }
        writeln!(md)?;
    }

    if !r.fleets.is_empty() {
        writeln!(md, "## A fleet of phase-0 ScalingPhases created at once\n")?;
        writeln!(
            md,
            "| N | operator: all Ready | floor: all ready | ratio | operator requests / ScalingPhase (apiserver) | (operator's own count) | floor requests / ScalingPhase | reconciles | reconcile p50 / p99 | deepest queue | operator CPU |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|")?;
        for f in &r.fleets {
            let n = f.n as f64;
            let own: f64 = f.op_own.values().sum();
            writeln!(
                md,
                "| {} | **{}** (created in {}) | {} (applied in {}) | **{:.2}** | **{:.1}** | {:.1} | {:.1} | {:.0} | {} / {} | {:.0} | {:.1} s |",
                f.n,
                secs(f.op_ready),
                secs(f.op_created),
                secs(f.floor_ready),
                secs(f.floor_applied),
                f.op_ready / f.floor_ready,
                f.op_apiserver.of_user(crate::apiserver::OPERATOR_USER) / n,
                own / n,
                f.floor_apiserver.of_user(crate::apiserver::FLOOR_USER) / n,
                f.reconciles,
                ms(f.reconcile.0),
                ms(f.reconcile.1),
                f.deepest,
                f.op_cpu
            )?;
        }
        writeln!(
            md,
            "\nGoals (issue 12): operator ≤ 1.5× the floor at N = 1,000; ≤ 8 API requests per phase-0 ScalingPhase from creation to Ready."
        )?;
        writeln!(
            md,
            "The operator's own count includes watches when they open; the apiserver's count of the operator's user is what it dispatched."
        )?;
        // One table per fleet: where a larger fleet costs more requests per
        // ScalingPhase shows in the rows that grow.
        for (i, f) in r.fleets.iter().enumerate() {
            writeln!(
                md,
                "\n### Where the requests go (N = {}), per ScalingPhase\n",
                f.n
            )?;
            if i == 0 {
                writeln!(
                    md,
                    "Verb and resource as `apiserver_request_total` names them (APPLY = server-side apply). \"operator\" is the operator's own count,"
                )?;
                writeln!(
                    md,
                    "labelled the same way; the two apiserver columns count every client during each run (the operator's or the floor's, plus the"
                )?;
                writeln!(
                    md,
                    "controller-manager, scheduler and kwok making the same workloads Ready, plus the bench's creates), so their difference is what the operator adds.\n"
                )?;
            }
            writeln!(
                md,
                "| verb resource | operator | apiserver, operator run | apiserver, floor run | difference |"
            )?;
            writeln!(md, "|---|---|---|---|---|")?;
            let n = f.n as f64;
            let rows: BTreeSet<&Row> = f
                .op_own
                .keys()
                .chain(f.op_apiserver.requests.keys())
                .chain(f.floor_apiserver.requests.keys())
                .collect();
            let mut rows: Vec<(&Row, f64, f64, f64)> = rows
                .into_iter()
                .map(|k| {
                    let g = |m: &BTreeMap<Row, f64>| m.get(k).copied().unwrap_or(0.0) / n;
                    (
                        k,
                        g(&f.op_own),
                        g(&f.op_apiserver.requests),
                        g(&f.floor_apiserver.requests),
                    )
                })
                .filter(|(_, a, b, c)| a.max(*b).max(*c) >= 0.1)
                .collect();
            rows.sort_by(|a, b| (b.1.max(b.2)).total_cmp(&a.1.max(a.2)));
            for (k, own, op, fl) in &rows {
                writeln!(
                    md,
                    "| {} | {own:.2} | {op:.2} | {fl:.2} | {:+.2} |",
                    row_name(k),
                    op - fl
                )?;
            }
            let own: f64 = f.op_own.values().sum::<f64>() / n;
            let (op, fl) = (f.op_apiserver.total() / n, f.floor_apiserver.total() / n);
            writeln!(
                md,
                "| **all** | **{own:.2}** | **{op:.2}** | **{fl:.2}** | **{:+.2}** |",
                op - fl
            )?;
            writeln!(
                md,
                "\nRows under 0.1 per ScalingPhase in every column are left out."
            )?;
        }
        writeln!(md)?;
    }

    if let Some(c) = &r.churn {
        writeln!(md, "## Churn\n")?;
        writeln!(
            md,
            "{} phase-0 ScalingPhases; every {:.0} s, {} of them ({:.0}%) get a new `spec.app.env` value (a new app Deployment template, so a rollout); {} rounds ({:.0} s).\n",
            c.fleet,
            c.every,
            c.batch,
            100.0 * c.batch as f64 / c.fleet.max(1) as f64,
            c.rounds,
            c.every * c.rounds as f64
        )?;
        let (sm, slo, shi) = stats(&c.settle);
        writeln!(
            md,
            "- reconciles: {:.0}, time per reconcile **p50 {} / p99 {}** (from `controller_runtime_reconcile_time_seconds`)",
            c.reconciles,
            ms(c.reconcile.0),
            ms(c.reconcile.1)
        )?;
        writeln!(
            md,
            "- a round's ScalingPhases all Ready at their new generation after {} median ({}–{})",
            secs(sm),
            secs(slo),
            secs(shi)
        )?;
        let changes = (c.rounds * c.batch).max(1) as f64;
        writeln!(
            md,
            "- operator requests per change: {:.1} (apiserver side), {:.1} (own count)\n",
            c.op_apiserver / changes,
            c.op_requests / changes
        )?;
        writeln!(
            md,
            "`workqueue_depth` over time (sampled each second; max and mean per {:.0} s window; active workers' mean):\n",
            c.every
        )?;
        writeln!(
            md,
            "| window | max depth | mean depth | mean active workers |"
        )?;
        writeln!(md, "|---|---|---|---|")?;
        let w = c.every.max(1.0);
        let windows = c.depth.last().map_or(0, |l| (l.0 / w).floor() as usize + 1);
        for i in 0..windows {
            let inside: Vec<_> = c
                .depth
                .iter()
                .filter(|(t, _, _)| (t / w).floor() as usize == i)
                .collect();
            if inside.is_empty() {
                continue;
            }
            let max = inside.iter().map(|x| x.1).fold(0.0, f64::max);
            let mean = inside.iter().map(|x| x.1).sum::<f64>() / inside.len() as f64;
            let workers = inside.iter().map(|x| x.2).sum::<f64>() / inside.len() as f64;
            writeln!(
                md,
                "| {:.0}–{:.0} s | {max:.0} | {mean:.1} | {workers:.1} |",
                i as f64 * w,
                (i + 1) as f64 * w
            )?;
        }
        writeln!(md)?;
    }

    writeln!(md, "## Operator memory\n")?;
    writeln!(
        md,
        "`VmRSS` (resident now) and `VmHWM` (peak resident) of the operator process, from /proc/<pid>/status. Goal: ≤ 48 MiB RSS at 5,000.\n"
    )?;
    writeln!(md, "| ScalingPhases | VmRSS | VmHWM |")?;
    writeln!(md, "|---|---|---|")?;
    for (what, rss, hwm) in &r.memory.points {
        writeln!(md, "| {what} | {} | {} |", mib(*rss), mib(*hwm))?;
    }
    if let Some((n, all, mf)) = r.memory.cache {
        writeln!(
            md,
            "\nWhat the apiserver serves for the objects the operator caches at {n} ScalingPhases, as JSON: {:.1} MiB (the ScalingPhases in full, metadata of their Deployments, StatefulSets, Jobs and app pods), of which **{:.0}% is `managedFields`**, which the operator drops before caching (`reconcile::watches::slim_metadata`).",
            all as f64 / 1_048_576.0,
            100.0 * mf as f64 / all.max(1) as f64
        )?;
    }
    for n in &r.notes {
        writeln!(md, "\n{n}")?;
    }
    if !r.skipped.is_empty() {
        writeln!(md, "\n## Not run\n")?;
        for s in &r.skipped {
            writeln!(md, "- {s}")?;
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(stats(&[]).0.is_nan());
    }
}
