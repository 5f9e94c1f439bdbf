//! Operator benchmarks on the local control plane; writes `bench/operator.md`.
//!
//! 1. Per phase 0-4: time from creating a ScalingPhase to `Ready=True`, next
//!    to `kubectl apply --server-side` of the same rendered objects (the
//!    floor: no operator, just the apiserver, controllers and kwok) until every
//!    workload is ready. Both are measured the same way (polling every 100 ms).
//! 2. N ScalingPhases (phase 0) created at once: time until all are Ready, and
//!    API requests per ScalingPhase (the operator's `ladder_api_requests_total`).
//! 3. Operator RSS (VmRSS of its process) with 0, N and M ScalingPhases.
//!
//! Usage: `cargo run -p ladder-e2e --bin bench-operator -- [--many 200] [--most 1000] [--out bench/operator.md]`
//! with KUBECONFIG set. Uses `target/release/ladder-operator` when it exists
//! (else the debug build). Every connection goes to 127.0.0.1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, repo_root, wait_for};
use ladder_operator::{render, validate};

const POLL: Duration = Duration::from_millis(100);

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn spec_yaml(phase: i32) -> String {
    let auth = if phase == 4 {
        "auth: {issuerUrl: 'https://login.example.com', clientId: bench}\n"
    } else {
        ""
    };
    format!("phase: {phase}\n{auth}")
}

fn sp(name: &str, phase: i32) -> anyhow::Result<ScalingPhase> {
    let spec: ScalingPhaseSpec = serde_yaml::from_str(&spec_yaml(phase))?;
    Ok(ScalingPhase::new(name, spec))
}

async fn count_ready(api: &Api<ScalingPhase>) -> anyhow::Result<usize> {
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == "True"
                        && c.observed_generation == s.metadata.generation
                })
            })
        })
        .count())
}

/// Are all workloads of `instance` in `ns` ready (same rule as the operator)?
async fn workloads_ready(
    client: &Client,
    ns: &str,
    instance: &str,
    expected: &[render::ExpectedComponent],
) -> anyhow::Result<bool> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}"));
    let deploys: BTreeMap<_, _> = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|d| (d.metadata.name.clone().unwrap_or_default(), d))
        .collect();
    let stss: BTreeMap<_, _> = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|d| (d.metadata.name.clone().unwrap_or_default(), d))
        .collect();
    let jobs: BTreeMap<_, _> = Api::<Job>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|d| (d.metadata.name.clone().unwrap_or_default(), d))
        .collect();
    Ok(expected.iter().all(|e| match e.kind {
        "Deployment" => deploys
            .get(&e.name)
            .and_then(|d| d.status.as_ref())
            .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= e.replicas),
        "StatefulSet" => stss
            .get(&e.name)
            .and_then(|d| d.status.as_ref())
            .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= e.replicas),
        _ => jobs
            .get(&e.name)
            .and_then(|d| d.status.as_ref())
            .is_some_and(|s| s.succeeded.unwrap_or(0) >= 1),
    }))
}

fn kubectl() -> PathBuf {
    if let Ok(k) = std::env::var("KUBECTL") {
        return PathBuf::from(k);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cached =
        PathBuf::from(home).join(".cache/ladder/bin/k8s-v1.37.2-etcd-v3.7.0-kwok-v0.8.0/kubectl");
    if cached.exists() {
        cached
    } else {
        PathBuf::from("kubectl")
    }
}

/// The floor: the rendered objects (owner references removed, so garbage
/// collection keeps them; generated Secrets created with placeholder data)
/// applied with `kubectl apply --server-side`, until every workload is ready.
async fn floor(
    client: &Client,
    ns: &str,
    name: &str,
    phase: i32,
    regions: &[String],
) -> anyhow::Result<Duration> {
    let mut obj = sp(name, phase)?;
    obj.metadata.namespace = Some(ns.into());
    obj.metadata.uid = Some("00000000-0000-0000-0000-00000000f100".into());
    let world = validate::World {
        node_regions: regions.to_vec(),
        integrations: Default::default(),
    };
    let (v, profile) = validate::validate(&obj, &world).map_err(|e| anyhow::anyhow!("{e}"))?;
    let desired = render::render(&v, &profile);
    let mut docs = String::new();
    for s in &desired.generated_secrets {
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": s.name, "namespace": ns}, "stringData": {"placeholder": "floor"}});
        docs.push_str("---\n");
        docs.push_str(&serde_yaml::to_string(&secret)?);
    }
    for mut o in desired.objects() {
        if let Some(m) = o["metadata"].as_object_mut() {
            m.remove("ownerReferences");
        }
        docs.push_str("---\n");
        docs.push_str(&serde_yaml::to_string(&o)?);
    }
    let file = std::env::temp_dir().join(format!("ladder-floor-{ns}-{name}.yaml"));
    std::fs::write(&file, ladder_operator::cli::yaml11_safe(&docs))?;
    let start = Instant::now();
    let out = std::process::Command::new(kubectl())
        .args(["apply", "--server-side", "-f"])
        .arg(&file)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    loop {
        if workloads_ready(client, ns, name, &desired.expected).await? {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "floor for phase {phase} not ready in 300 s"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn create_many(api: &Api<ScalingPhase>, from: usize, to: usize) -> anyhow::Result<()> {
    let pp = PatchParams::apply("ladder-bench").force();
    futures::stream::iter(from..to)
        .map(|i| {
            let api = api.clone();
            let pp = pp.clone();
            async move {
                let name = format!("many-{i:04}");
                let obj = sp(&name, 0)?;
                api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

async fn wait_all_ready(
    api: &Api<ScalingPhase>,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let ready = count_ready(api).await?;
        if ready >= n {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "only {ready}/{n} Ready after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let many: usize = arg("--many", "200").parse()?;
    let most: usize = arg("--most", "1000").parse()?;
    let out_path = repo_root().join(arg("--out", "bench/operator.md"));
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("release/ladder-operator");
    let bin_note = if release.exists() { "release" } else { "debug" };
    let client = client().await?;
    install_crds(&client).await?;
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let mut regions: Vec<String> = nodes
        .items
        .iter()
        .filter_map(|n| {
            n.metadata
                .labels
                .as_ref()?
                .get("topology.kubernetes.io/region")
                .cloned()
        })
        .collect();
    regions.sort();
    regions.dedup();

    let ns = TestNamespace::new(&client, "bench-op").await?;
    let floor_ns = TestNamespace::new(&client, "bench-floor").await?;
    let op = if release.exists() {
        Operator::start_bin(&ns.name, &release).await?
    } else {
        Operator::start(&ns.name).await?
    };
    let pid = op.pid();
    let sps = ns.sps();
    tokio::time::sleep(Duration::from_secs(3)).await; // settle before the idle RSS sample
    let rss0 = rss_kib(pid).context("operator RSS")?;
    eprintln!("RSS with 0 ScalingPhases: {rss0} KiB");

    // 1. Per phase.
    let mut phase_rows = Vec::new();
    for phase in 0..=4 {
        let name = format!("phase-{phase}");
        let pp = PatchParams::apply("ladder-bench").force();
        let start = Instant::now();
        sps.patch(&name, &pp, &Patch::Apply(&sp(&name, phase)?))
            .await?;
        let ready = loop {
            let s = sps.get(&name).await?;
            let ok = s.status.as_ref().is_some_and(|st| {
                st.active_phase == Some(phase)
                    && st.conditions.iter().any(|c| {
                        c.type_ == "Ready"
                            && c.status == "True"
                            && c.observed_generation == s.metadata.generation
                    })
            });
            if ok {
                break (
                    start.elapsed(),
                    s.status.map(|st| st.components.len()).unwrap_or(0),
                );
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(300),
                "phase {phase} not Ready in 300 s"
            );
            tokio::time::sleep(POLL).await;
        };
        let fl = floor(&client, &floor_ns.name, &name, phase, &regions).await?;
        eprintln!("phase {phase}: operator {:?}, floor {:?}", ready.0, fl);
        phase_rows.push((phase, ready.1, ready.0, fl));
    }
    for phase in 0..=4 {
        let _ = sps
            .delete(&format!("phase-{phase}"), &Default::default())
            .await;
    }
    floor_ns.delete().await;
    wait_for(
        "phase ScalingPhases deleted",
        Duration::from_secs(120),
        || {
            let sps = sps.clone();
            async move {
                Ok(sps
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            }
        },
    )
    .await?;

    // 2. Many at once.
    let requests_before = op.metric_sum("ladder_api_requests_total").await?;
    let start = Instant::now();
    create_many(&sps, 0, many).await?;
    let created = start.elapsed();
    let many_ready = wait_all_ready(&sps, many, Duration::from_secs(900)).await? + created;
    let requests_many = op.metric_sum("ladder_api_requests_total").await? - requests_before;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_many = rss_kib(pid).context("operator RSS")?;
    eprintln!(
        "{many} ScalingPhases Ready in {many_ready:?}, {requests_many} requests, RSS {rss_many} KiB"
    );

    // 3. The most.
    let start = Instant::now();
    let most_result = async {
        create_many(&sps, many, most).await?;
        wait_all_ready(
            &sps,
            most,
            Duration::from_secs(arg("--most-timeout", "900").parse()?),
        )
        .await
    }
    .await;
    let most_elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_most = rss_kib(pid).context("operator RSS")?;
    let most_ready = count_ready(&sps).await?;
    eprintln!(
        "{most_ready}/{most} ScalingPhases Ready after {most_elapsed:?}, RSS {rss_most} KiB ({most_result:?})"
    );

    // Report.
    let mut md = String::new();
    let now = k8s_openapi::jiff::Timestamp::now();
    writeln!(md, "# Operator benchmarks\n")?;
    writeln!(
        md,
        "Measured {now} on the local control plane (kube-apiserver v1.37 + etcd + kwok, 6 fake nodes in 3 regions)"
    )?;
    writeln!(
        md,
        "on a 2-core machine shared with other work, with the {bin_note} build of `ladder-operator`."
    )?;
    writeln!(
        md,
        "Regenerate with `cargo run -q -p ladder-e2e --bin bench-operator` (KUBECONFIG set; `make bench`).\n"
    )?;
    writeln!(md, "## Time to Ready per phase, next to the floor\n")?;
    writeln!(
        md,
        "The floor applies the same rendered objects with `kubectl apply --server-side` (no operator) and waits"
    )?;
    writeln!(
        md,
        "until every workload is ready; both are polled every 100 ms.\n"
    )?;
    writeln!(
        md,
        "| phase | components | operator: apply → Ready | floor: kubectl apply → ready | ratio |"
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    for (phase, comps, op_t, fl) in &phase_rows {
        let name = ladder_crds::catalogue::Phase::from_number(*phase)
            .map(|p| p.name())
            .unwrap_or("?");
        writeln!(
            md,
            "| {phase} {name} | {comps} | {:.2} s | {:.2} s | {:.2} |",
            op_t.as_secs_f64(),
            fl.as_secs_f64(),
            op_t.as_secs_f64() / fl.as_secs_f64().max(0.001)
        )?;
    }
    writeln!(
        md,
        "\nOne run each on a shared 2-core machine: differences under about a second are noise. The floor includes"
    )?;
    writeln!(
        md,
        "`kubectl`'s own start-up and API discovery, which is why the operator (already running, watching) can come"
    )?;
    writeln!(
        md,
        "out below 1; it also creates the generated Secrets with placeholder data in the same apply."
    )?;
    writeln!(md, "\n## {many} ScalingPhases (phase 0) created at once\n")?;
    writeln!(
        md,
        "- created (16 in flight) and all Ready after **{:.1} s**",
        many_ready.as_secs_f64()
    )?;
    writeln!(
        md,
        "- API requests sent by the operator: {requests_many:.0}, i.e. **{:.1} per ScalingPhase** (reads, applies, status patches, events and watch requests)\n",
        requests_many / many as f64
    )?;
    writeln!(md, "## Operator memory (VmRSS)\n")?;
    writeln!(md, "| ScalingPhases | RSS | per ScalingPhase over idle |")?;
    writeln!(md, "|---|---|---|")?;
    writeln!(md, "| 0 | {:.1} MiB | - |", rss0 as f64 / 1024.0)?;
    writeln!(
        md,
        "| {many} | {:.1} MiB | {:.1} KiB |",
        rss_many as f64 / 1024.0,
        (rss_many.saturating_sub(rss0)) as f64 / many as f64
    )?;
    writeln!(
        md,
        "| {most_ready} Ready of {most} | {:.1} MiB | {:.1} KiB |",
        rss_most as f64 / 1024.0,
        (rss_most.saturating_sub(rss0)) as f64 / most.max(1) as f64
    )?;
    if let Err(e) = &most_result {
        writeln!(
            md,
            "\nThe {most}-ScalingPhase step did not finish: {e}. {most_ready} were Ready after {:.0} s.",
            most_elapsed.as_secs_f64()
        )?;
    } else {
        writeln!(
            md,
            "\nAll {most} were Ready {:.1} s after the extra {} were created.",
            most_elapsed.as_secs_f64(),
            most - many
        )?;
    }
    writeln!(
        md,
        "\nThe operator watches ScalingPhases and its Deployments, StatefulSets and Jobs (label-selected) and node metadata;"
    )?;
    writeln!(
        md,
        "memory grows with those caches, which is what the per-ScalingPhase figure shows."
    )?;
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_path, &md)?;
    eprintln!("wrote {}", out_path.display());
    drop(op);
    // Harness cleanup, not operator behaviour: drop the finalizers so the
    // namespace can go without running a thousand Retain clean-ups.
    let strip = serde_json::json!({"metadata": {"finalizers": null}});
    let names: Vec<String> = sps
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    futures::stream::iter(names)
        .for_each_concurrent(16, |n| {
            let sps = sps.clone();
            let strip = strip.clone();
            async move {
                let _ = sps
                    .patch(&n, &PatchParams::default(), &Patch::Merge(&strip))
                    .await;
            }
        })
        .await;
    ns.delete().await;
    Ok(())
}
