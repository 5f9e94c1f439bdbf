//! Operator benchmarks on the local control plane; writes `bench/operator.md`.
//!
//! 1. Warm-up: one ScalingPhase of each phase through the operator and
//!    through the floor ([`floor`]), untimed.
//! 2. Per phase 0-4, `--reps` times each, alternating sides: operator
//!    (create → `Ready=True`) next to the floor (create → the same rendered
//!    objects applied by a minimal client → workloads ready). Median and range.
//! 3. Fleets of N phase-0 ScalingPhases created at once (`--many`, `--most`):
//!    floor, then operator, each on a quiet cluster; time to all Ready, API
//!    requests per ScalingPhase counted on the apiserver's side ([`apiserver`])
//!    and by the operator, by verb and resource; reconcile time quantiles and
//!    the deepest queue from the operator's controller-runtime metrics.
//! 4. Churn on the `--most` fleet: `--churn-fraction` of it changed every
//!    `--churn-every` seconds for `--churn-secs`; reconcile p50/p99, the time
//!    each round takes to be Ready again, `workqueue_depth` over time.
//! 5. Memory (VmRSS, VmHWM) at 0, N and, with `--full 5000` (or
//!    `BENCH_FULL=1`), 5,000 ScalingPhases; what share of the cached bytes is
//!    managedFields.
//!
//! `BENCH_QUICK=1` shrinks everything for a smoke check (minutes, not half
//! an hour); its output says so. Every connection goes to 127.0.0.1.
//!
//! Usage: `cargo run --release -p ladder-e2e --bin bench-operator -- [--many 200]
//! [--most 1000] [--reps 5] [--full 5000] [--churn-secs 300] [--out bench/operator.md]`
//! with KUBECONFIG set (`make bench`).

mod apiserver;
mod fleet;
mod floor;
mod report;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use ladder_crds::scalingphase::ScalingPhase;
use ladder_e2e::{Operator, TestNamespace, install_crds, repo_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::apiserver::{FLOOR_USER, OPERATOR_USER};
use crate::fleet::{DepthSamples, Scrape, Watched};
use crate::report::{Churn, Fleet, PhaseRow, Results};

/// What to run.
#[derive(Debug)]
struct Opts {
    quick: bool,
    reps: usize,
    many: usize,
    most: usize,
    full: Option<usize>,
    churn_secs: u64,
    churn_every: u64,
    churn_fraction: f64,
    concurrency: usize,
    in_flight: usize,
    timeout: Duration,
    out: PathBuf,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn opts() -> anyhow::Result<Opts> {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let num = |name: &str, normal: usize, small: usize| -> anyhow::Result<usize> {
        arg(name).map_or(Ok(if quick { small } else { normal }), |v| {
            v.parse().with_context(|| format!("{name} {v}"))
        })
    };
    let full = match arg("--full") {
        Some(v) => Some(v.parse()?),
        None if std::env::var("BENCH_FULL").is_ok_and(|v| v == "1") => Some(5000),
        None => None,
    };
    Ok(Opts {
        quick,
        reps: num("--reps", 5, 1)?,
        many: num("--many", 200, 10)?,
        most: num("--most", 1000, 30)?,
        full,
        churn_secs: u64::try_from(num("--churn-secs", 300, 30)?)?,
        churn_every: u64::try_from(num("--churn-every", 10, 10)?)?,
        churn_fraction: arg("--churn-fraction").map_or(Ok(0.1), |v| v.parse())?,
        concurrency: num("--concurrency", 8, 8)?,
        in_flight: 16,
        timeout: Duration::from_secs(u64::try_from(num("--timeout", 1800, 600)?)?),
        out: repo_root().join(arg("--out").unwrap_or_else(|| "bench/operator.md".into())),
    })
}

/// GET /metrics of the operator over loopback.
async fn scrape(addr: &str) -> anyhow::Result<Scrape> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await??;
    Ok(Scrape(out))
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here; USER_HZ is 100.
    (ticks(11) + ticks(12)) / 100.0
}

/// Samples the queue every second until dropped.
struct DepthSampler {
    samples: DepthSamples,
    task: tokio::task::JoinHandle<()>,
}

impl DepthSampler {
    fn start(addr: String) -> Self {
        let samples: DepthSamples = Arc::default();
        let out = samples.clone();
        let start = Instant::now();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(s) = scrape(&addr).await {
                    let depth = s.sum("workqueue_depth", &[]);
                    let active = s.sum("controller_runtime_active_workers", &[]);
                    out.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((start.elapsed().as_secs_f64(), depth, active));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Self { samples, task }
    }

    fn stop(self) -> Vec<(f64, f64, f64)> {
        self.task.abort();
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The 1-minute load average, sampled every 5 s while the bench runs.
struct LoadSampler {
    samples: Arc<Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The busiest processes now that are not part of the benchmark's own
/// stack, by CPU share since they started (`ps`).
fn busiest_others() -> String {
    let ours = [
        "kube-apiserver",
        "etcd",
        "kube-controller",
        "kube-scheduler",
        "kwok",
        "ladder-operator",
        "bench-operator",
        "ps",
    ];
    let out = std::process::Command::new("ps")
        .args(["-eo", "pcpu=,comm=", "--sort=-pcpu"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut counts: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    for line in out.lines() {
        let mut it = line.split_whitespace();
        let (Some(cpu), Some(comm)) = (it.next(), it.next()) else {
            continue;
        };
        let cpu: f64 = cpu.parse().unwrap_or(0.0);
        if cpu < 5.0 || ours.iter().any(|o| comm.starts_with(o)) {
            continue;
        }
        let e = counts.entry(comm.to_owned()).or_default();
        e.0 += 1;
        e.1 += cpu;
    }
    if counts.is_empty() {
        return "none above 5% CPU".into();
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    v.iter()
        .take(6)
        .map(|(c, (n, cpu))| format!("{c} ×{n} ({cpu:.0}% CPU)"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl LoadSampler {
    fn start() -> Self {
        let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
        let out = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(l) = loadavg() {
                    out.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(l);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        Self { samples, task }
    }

    fn summary(&self) -> String {
        let v = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if v.is_empty() {
            return "no load average samples".into();
        }
        let (mean, lo, hi) = (
            v.iter().sum::<f64>() / v.len() as f64,
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        );
        format!(
            "1-minute load average over the run: mean {mean:.1}, min {lo:.1}, max {hi:.1} (on 2 cores; the control plane, the operator and the bench itself account for some of it)"
        )
    }
}

impl Drop for LoadSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A churn round: its number, when it began, and each changed ScalingPhase
/// with the generation it must be Ready at.
type Round = (usize, Instant, Vec<(String, i64)>);

/// Everything shared by the steps.
struct Bench {
    o: Opts,
    client: Client,
    floor_client: Client,
    regions: Vec<String>,
    kinds: floor::Kinds,
    op: Operator,
    addr: String,
    op_ns: TestNamespace,
    floor_ns: TestNamespace,
    watched: Watched,
    floor_work: floor::Workloads,
}

impl Bench {
    fn sps(&self) -> Api<ScalingPhase> {
        self.op_ns.sps()
    }

    fn floor_sps(&self) -> Api<ScalingPhase> {
        self.floor_ns.sps()
    }

    /// One ScalingPhase through the operator; seconds and components.
    async fn op_once(&self, name: &str, phase: i32) -> anyhow::Result<(f64, usize)> {
        let start = Instant::now();
        fleet::create(&self.sps(), name, phase).await?;
        let (t, comps) = self
            .watched
            .wait_one(
                &self.op_ns.name,
                name,
                phase,
                start,
                Duration::from_secs(300),
            )
            .await?;
        Ok((t.as_secs_f64(), comps))
    }

    /// The same through the floor; seconds.
    async fn floor_once(&self, name: &str, phase: i32) -> anyhow::Result<f64> {
        let start = Instant::now();
        let sp = fleet::create(&self.floor_sps(), name, phase).await?;
        let ns = &self.floor_ns.name;
        let expected =
            floor::apply_for(&self.floor_client, &self.kinds, ns, &self.regions, &sp).await?;
        let t = floor::wait_ready(
            &self.floor_work,
            ns,
            &expected,
            start,
            Duration::from_secs(300),
        )
        .await?;
        Ok(t.as_secs_f64())
    }

    async fn clear_both(&self) -> anyhow::Result<()> {
        let t = self.o.timeout;
        fleet::clear(&self.client, &self.op_ns.name, true, t).await?;
        fleet::clear(&self.client, &self.floor_ns.name, true, t).await
    }

    fn memory(&self, what: &str, r: &mut Results) {
        if let Some((rss, hwm)) = fleet::memory_kib(self.op.pid()) {
            eprintln!("memory at {what}: VmRSS {rss} KiB, VmHWM {hwm} KiB");
            r.memory.points.push((what.to_owned(), rss, hwm));
        }
    }

    /// Per-phase rows.
    async fn phases(&self, r: &mut Results) -> anyhow::Result<()> {
        for phase in 0..=4 {
            let mut row = PhaseRow {
                phase,
                ..PhaseRow::default()
            };
            for rep in 0..self.o.reps {
                let name = format!("p{phase}-{rep}");
                let op_first = rep % 2 == 0;
                if op_first {
                    let (t, c) = self.op_once(&name, phase).await?;
                    row.op.push(t);
                    row.components = c;
                }
                row.floor.push(self.floor_once(&name, phase).await?);
                if !op_first {
                    let (t, c) = self.op_once(&name, phase).await?;
                    row.op.push(t);
                    row.components = c;
                }
                eprintln!(
                    "phase {phase} run {rep}: operator {:.2} s, floor {:.2} s",
                    row.op.last().copied().unwrap_or_default(),
                    row.floor.last().copied().unwrap_or_default()
                );
            }
            self.clear_both().await?;
            r.phases.push(row);
        }
        Ok(())
    }

    /// The floor for N, then the operator for N; the operator's ScalingPhases stay.
    async fn fleet(&self, n: usize) -> anyhow::Result<Fleet> {
        let mut f = Fleet {
            n,
            ..Fleet::default()
        };
        // Floor.
        let before = apiserver::scrape(&self.client).await?;
        let start = Instant::now();
        let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
        let floor_sps = self.floor_sps();
        let in_flight = self.o.in_flight;
        let creator = tokio::spawn(async move {
            fleet::create_many(&floor_sps, fleet::names("f", 0..n), in_flight, Some(tx)).await
        });
        let (applied, ready) = floor::run(
            &self.floor_client,
            &self.kinds,
            &self.floor_work,
            &self.floor_ns.name,
            &self.regions,
            rx,
            self.o.concurrency,
            start,
            self.o.timeout,
        )
        .await?;
        creator.await??;
        f.floor_apiserver = apiserver::scrape(&self.client).await?.since(&before);
        (f.floor_applied, f.floor_ready) = (applied.as_secs_f64(), ready.as_secs_f64());
        eprintln!(
            "floor N={n}: applied {applied:?}, ready {ready:?}, {} requests of the floor client",
            f.floor_apiserver.of_user(FLOOR_USER)
        );
        fleet::clear(&self.client, &self.floor_ns.name, true, self.o.timeout).await?;

        // Operator.
        let pid = self.op.pid();
        let before = apiserver::scrape(&self.client).await?;
        let op_before = scrape(&self.addr).await?;
        let cpu0 = cpu_seconds(pid);
        let sampler = DepthSampler::start(self.addr.clone());
        let start = Instant::now();
        fleet::create_many(&self.sps(), fleet::names("s", 0..n), in_flight, None).await?;
        f.op_created = start.elapsed().as_secs_f64();
        let ready = self
            .watched
            .wait_ready(n, |_| true, start, self.o.timeout)
            .await?;
        f.op_ready = ready.as_secs_f64();
        let op_after = scrape(&self.addr).await?;
        f.op_apiserver = apiserver::scrape(&self.client).await?.since(&before);
        f.op_cpu = cpu_seconds(pid) - cpu0;
        f.deepest = sampler.stop().iter().map(|s| s.1).fold(0.0, f64::max);
        let own_before = op_before.requests();
        f.op_own = op_after
            .requests()
            .into_iter()
            .map(|(k, v)| {
                let b = own_before.get(&k).copied().unwrap_or(0.0);
                (k, v - b)
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let h = "controller_runtime_reconcile_time_seconds";
        f.reconcile = (
            fleet::quantile(0.5, &op_before.buckets(h), &op_after.buckets(h)),
            fleet::quantile(0.99, &op_before.buckets(h), &op_after.buckets(h)),
        );
        let c = "controller_runtime_reconcile_total";
        f.reconciles = op_after.sum(c, &[]) - op_before.sum(c, &[]);
        eprintln!(
            "operator N={n}: created {:.1} s, Ready {:.1} s, {} requests of the operator (apiserver), {} reconciles",
            f.op_created,
            f.op_ready,
            f.op_apiserver.of_user(OPERATOR_USER),
            f.reconciles
        );
        Ok(f)
    }

    /// Churn on the `most` ScalingPhases (named s-0000...).
    async fn churn(&self) -> anyhow::Result<Churn> {
        let fleet_n = self.o.most;
        let batch = ((fleet_n as f64 * self.o.churn_fraction).ceil() as usize).max(1);
        let rounds = usize::try_from(self.o.churn_secs / self.o.churn_every.max(1))?;
        let every = Duration::from_secs(self.o.churn_every);
        let sps = self.sps();
        let before = apiserver::scrape(&self.client).await?;
        let op_before = scrape(&self.addr).await?;
        let sampler = DepthSampler::start(self.addr.clone());
        let start = Instant::now();
        // Per round: when it started, and (name, generation to reach).
        let mut pending: Vec<Round> = Vec::new();
        let mut settle = vec![f64::NAN; rounds];
        let ns = self.op_ns.name.clone();
        let check = |pending: &mut Vec<Round>, settle: &mut Vec<f64>| {
            pending.retain(|(round, at, targets)| {
                let done = targets.iter().all(|(name, g)| {
                    self.watched
                        .store
                        .get(&kube::runtime::reflector::ObjectRef::new(name).within(&ns))
                        .is_some_and(|sp| {
                            sp.metadata.generation.unwrap_or(0) >= *g && fleet::is_ready(&sp, None)
                        })
                });
                if done {
                    settle[*round] = at.elapsed().as_secs_f64();
                }
                !done
            });
        };
        for round in 0..rounds {
            let due = start + every * u32::try_from(round)?;
            while Instant::now() < due {
                check(&mut pending, &mut settle);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let at = Instant::now();
            let names: Vec<String> = (0..batch)
                .map(|i| format!("s-{:04}", (round * batch + i) % fleet_n))
                .collect();
            let patch = serde_json::json!({"spec": {"app": {"env": [{"name": "CHURN", "value": round.to_string()}]}}});
            let targets: Vec<anyhow::Result<(String, i64)>> = futures::stream::iter(names)
                .map(|name| {
                    let (sps, patch) = (sps.clone(), patch.clone());
                    async move {
                        let sp = sps
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await?;
                        Ok((name, sp.metadata.generation.unwrap_or(0)))
                    }
                })
                .buffer_unordered(self.o.in_flight)
                .collect()
                .await;
            pending.push((
                round,
                at,
                targets.into_iter().collect::<anyhow::Result<_>>()?,
            ));
        }
        let end = start + every * u32::try_from(rounds)?;
        let deadline = end + Duration::from_secs(180);
        while !pending.is_empty() && Instant::now() < deadline {
            check(&mut pending, &mut settle);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let op_after = scrape(&self.addr).await?;
        let after = apiserver::scrape(&self.client).await?.since(&before);
        let h = "controller_runtime_reconcile_time_seconds";
        let c = "controller_runtime_reconcile_total";
        let churn = Churn {
            fleet: fleet_n,
            batch,
            every: every.as_secs_f64(),
            rounds,
            settle: settle.into_iter().filter(|s| !s.is_nan()).collect(),
            reconcile: (
                fleet::quantile(0.5, &op_before.buckets(h), &op_after.buckets(h)),
                fleet::quantile(0.99, &op_before.buckets(h), &op_after.buckets(h)),
            ),
            reconciles: op_after.sum(c, &[]) - op_before.sum(c, &[]),
            depth: sampler.stop(),
            op_requests: op_after.sum("ladder_api_requests_total", &[])
                - op_before.sum("ladder_api_requests_total", &[]),
            op_apiserver: after.of_user(OPERATOR_USER),
        };
        anyhow::ensure!(
            pending.is_empty(),
            "churn: {} rounds not Ready 180 s after the last change",
            pending.len()
        );
        Ok(churn)
    }
}

async fn regions(client: &Client) -> anyhow::Result<Vec<String>> {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let mut regions: Vec<String> = nodes
        .items
        .iter()
        .filter_map(|n| n.labels().get("topology.kubernetes.io/region").cloned())
        .collect();
    regions.sort();
    regions.dedup();
    Ok(regions)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = opts()?;
    eprintln!("{o:?}");
    let began = Instant::now();
    let load = LoadSampler::start();
    let mut r = Results {
        when: k8s_openapi::jiff::Timestamp::now().to_string(),
        concurrency: o.concurrency,
        in_flight: o.in_flight,
        command: if o.quick {
            "BENCH_QUICK=1 make bench".into()
        } else if o.full.is_some() {
            "BENCH_FULL=1 make bench".into()
        } else {
            "make bench".into()
        },
        ..Results::default()
    };
    r.sharing.push(format!(
        "at the start, busiest other processes: {}",
        busiest_others()
    ));
    let client = ladder_e2e::client().await?;
    install_crds(&client).await?;
    apiserver::set_up_identities(&client, &[OPERATOR_USER, FLOOR_USER]).await?;
    let floor_client = apiserver::client_as(FLOOR_USER).await?;
    let kubeconfig = PathBuf::from(std::env::var("KUBECONFIG").context("KUBECONFIG")?);
    let op_kubeconfig = apiserver::impersonating_kubeconfig(&kubeconfig, OPERATOR_USER)?;
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("release/ladder-operator");
    let bin = if release.exists() {
        r.build = "release".into();
        release
    } else {
        r.build = "debug".into();
        ladder_e2e::operator_bin()?
    };
    let op_ns = TestNamespace::new(&client, "bench-op").await?;
    let floor_ns = TestNamespace::new(&client, "bench-floor").await?;
    let concurrency = o.concurrency.to_string();
    let op = Operator::start_with(
        &op_ns.name,
        &bin,
        &["--concurrency", &concurrency],
        &[("KUBECONFIG", op_kubeconfig.to_string_lossy().as_ref())],
    )
    .await?;
    let addr = op.http_addr().context("operator metrics address")?;
    let watched = Watched::start(op_ns.sps()).await?;
    let floor_work = floor::Workloads::watch(&client, &floor_ns.name).await?;
    let b = Bench {
        regions: regions(&client).await?,
        kinds: floor::Kinds::default(),
        client,
        floor_client,
        op,
        addr,
        op_ns,
        floor_ns,
        watched,
        floor_work,
        o,
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.memory("0 (started, idle)", &mut r);
    let outcome = run(&b, &mut r).await;
    if let Err(e) = &outcome {
        eprintln!("bench failed: {e:#}");
        r.skipped.push(format!("the run stopped early: {e:#}"));
    }
    r.sharing.push(format!(
        "at the end, busiest other processes: {}",
        busiest_others()
    ));
    r.sharing.push(load.summary());
    if b.o.quick {
        r.skipped.push(
            "BENCH_QUICK=1: a smoke run with small N and one repetition; its figures are not the benchmark".into(),
        );
    }
    r.minutes = began.elapsed().as_secs_f64() / 60.0;
    let md = report::markdown(&r)?;
    if let Some(dir) = b.o.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&b.o.out, md)?;
    eprintln!("wrote {}", b.o.out.display());
    // Harness clean-up: no finalizer work, then the namespaces.
    let _ = b.clear_both().await;
    let Bench {
        op,
        op_ns,
        floor_ns,
        ..
    } = b;
    op_ns.delete().await;
    floor_ns.delete().await;
    drop(op);
    outcome
}

async fn run(b: &Bench, r: &mut Results) -> anyhow::Result<()> {
    // 1. Warm-up.
    for phase in 0..=4 {
        let name = format!("warm-{phase}");
        let (t, _) = b.op_once(&name, phase).await?;
        let f = b.floor_once(&name, phase).await?;
        eprintln!("warm-up phase {phase}: operator {t:.2} s, floor {f:.2} s");
    }
    b.clear_both().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.memory("0 (after the warm-up)", r);

    // 2. Per phase.
    b.phases(r).await?;

    // 3. Fleets; 4. churn on the last; 5. memory.
    let sizes = [b.o.many, b.o.most];
    for (i, &n) in sizes.iter().enumerate() {
        let f = b.fleet(n).await?;
        r.fleets.push(f);
        tokio::time::sleep(Duration::from_secs(5)).await;
        b.memory(&format!("{n} Ready"), r);
        if i + 1 < sizes.len() {
            fleet::clear(&b.client, &b.op_ns.name, true, b.o.timeout).await?;
            continue;
        }
        match fleet::cache_bytes(&b.client, &b.op_ns.name).await {
            Ok((all, mf)) => r.memory.cache = Some((n, all, mf)),
            Err(e) => eprintln!("cache size estimate failed: {e:#}"),
        }
        if b.o.churn_secs > 0 {
            let c = b.churn().await;
            match c {
                Ok(c) => r.churn = Some(c),
                Err(e) => r.skipped.push(format!("churn: {e:#}")),
            }
            b.memory(&format!("{n} after the churn"), r);
        }
    }
    match b.o.full {
        Some(full) if full > b.o.most => {
            let start = Instant::now();
            let more = fleet::names("s", b.o.most..full);
            fleet::create_many(&b.sps(), more, b.o.in_flight, None).await?;
            let res = b
                .watched
                .wait_ready(full, |_| true, start, Duration::from_secs(7200))
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let ready = b.watched.ready(|_| true);
            b.memory(&format!("{full} created, {ready} Ready"), r);
            match res {
                Ok(t) => r.notes.push(format!(
                    "The extra {} ScalingPhases up to {full} were all Ready {:.0} s after their creation began.",
                    full - b.o.most,
                    t.as_secs_f64()
                )),
                Err(e) => r.skipped.push(format!("{full}: {e:#}")),
            }
            if let Ok((all, mf)) = fleet::cache_bytes(&b.client, &b.op_ns.name).await {
                r.memory.cache = Some((full, all, mf));
            }
        }
        _ => r.skipped.push(format!(
            "the 5,000-ScalingPhase memory point: optional (`BENCH_FULL=1 make bench`), it adds {} creations and their readiness on top of the rest; not run this time",
            5000usize.saturating_sub(b.o.most)
        )),
    }
    Ok(())
}
