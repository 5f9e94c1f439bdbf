//! The transition part of `make demo` (hack/demo-operator.sh runs it once
//! the demo's operator is up): the app on loopback on phase 0 (SQLite) with
//! links in it, reporting its load; a write load pushes its TPS over phase
//! 0's threshold and the ScalingPhase, in `autoscale.mode: Auto`, climbs to
//! phase 1 by itself, step by step, shown as `kubectl get sp -w` shows it,
//! with the migration Job's pod run on loopback by the e2e runner (kwok runs
//! no containers); the links are counted through the app, which now serves
//! them from PostgreSQL; then the load stops and the way back to phase 0 is
//! recommended and held for approval (it would move data).
//!
//! Usage: `demo-transition --namespace ladder-demo [--name mvp] [--links 200]
//! [--timeout 300]` with KUBECONFIG set and the services up. Bounded: it
//! gives up after `--timeout` seconds. The ScalingPhase stays (at phase 1,
//! its step down awaiting approval) with the rest of the demo; the app and
//! the runner stop with it.
//! Every connection goes to 127.0.0.1.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use ladder_crds::scalingphase::ScalingPhase;
use ladder_e2e::app::{self, Load, LoopbackApp, ReportAs};
use ladder_e2e::climb::{Databases, Snapshot, SpWatch};
use ladder_e2e::runner::{Runner, RunnerConfig};
use ladder_e2e::{client, repo_root};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// Phase 0 in Git; the promoter may take it up to phase 1. Short windows so
/// the story fits in a demo (the defaults are 5 minutes up and 1 hour down).
const AUTOSCALE: &str =
    "{mode: Auto, maxPhase: 1, promoteAfter: 10s, demoteAfter: 20s, minDwell: 0s}";

fn manifest(name: &str, phase: i32) -> String {
    format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: {name}}}\nspec:\n  phase: {phase}\n  autoscale: {AUTOSCALE}\n  transitions: {{retainOldTierFor: 10s}}\n"
    )
}

/// The app's load reporting in the demo: a 5 s window, a report every 2 s.
fn report_as(ns: &str, name: &str, pod: &str) -> ReportAs {
    ReportAs {
        namespace: ns.to_owned(),
        scaling_phase: name.to_owned(),
        pod: pod.to_owned(),
        window_secs: 5,
        interval_secs: 2,
    }
}

async fn apply(api: &Api<ScalingPhase>, name: &str, phase: i32) -> anyhow::Result<()> {
    let sp: ScalingPhase = serde_yaml::from_str(&manifest(name, phase))?;
    api.patch(
        name,
        &PatchParams::apply("ladder-demo").force(),
        &Patch::Apply(&sp),
    )
    .await
    .with_context(|| format!("apply phase {phase}"))?;
    Ok(())
}

/// A `kubectl get sp -w` line: the printer columns that move during a
/// transition.
fn row(name: &str, s: &Snapshot, since: Instant) -> String {
    let phase = s.active.map_or("".into(), |p| p.to_string());
    let transition = match s.transition {
        Some((from, to, step)) => format!("{from}->{to} {step:?}"),
        None => String::new(),
    };
    let (tps, recommended, target) = s.load;
    let num = |n: Option<i32>| n.map_or(String::new(), |n| n.to_string());
    let tps = tps.map_or(String::new(), |t| format!("{t}"));
    let blocked = s
        .blocked
        .as_ref()
        .map(|(r, _)| format!("  (blocked: {r})"))
        .unwrap_or_default();
    format!(
        "{name:<6} {phase:<6} {:<6} {tps:<6} {:<12} {:<7} {transition:<24} {:>5.1}s{blocked}",
        if s.ready { "True" } else { "False" },
        num(recommended),
        num(target),
        s.at.duration_since(since).as_secs_f64()
    )
}

/// Prints every status change from `from` on; returns the new position.
fn show(name: &str, watch: &SpWatch, from: usize, since: Instant) -> usize {
    let h = watch.history();
    for s in &h[from.min(h.len())..] {
        out(&row(name, s, since));
    }
    h.len()
}

async fn wait_until(
    name: &str,
    watch: &SpWatch,
    shown: &mut usize,
    since: Instant,
    deadline: Instant,
    done: impl Fn(&Snapshot) -> bool,
) -> anyhow::Result<()> {
    loop {
        *shown = show(name, watch, *shown, since);
        if let Some(s) = watch.latest() {
            if let Some((reason, message)) = &s.blocked {
                bail!("the transition is blocked: {reason}: {message}");
            }
            if done(&s) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("gave up after the demo's time limit");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ns = arg("--namespace", "ladder-demo");
    let name = arg("--name", "mvp");
    let links: usize = arg("--links", "200").parse().context("--links")?;
    let limit = Duration::from_secs(arg("--timeout", "300").parse().context("--timeout")?);
    let deadline = Instant::now() + limit;
    let kube = client().await?;
    let api: Api<ScalingPhase> = Api::namespaced(kube.clone(), &ns);

    // A fresh start: the app's directory and its own database.
    let dir = repo_root().join(".ladder/demo-transition");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    if api.get_opt(&name).await?.is_some() {
        out(&format!(
            "removing the ScalingPhase {name} of an earlier demo"
        ));
        api.delete(&name, &Default::default()).await?;
        while api.get_opt(&name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("the earlier ScalingPhase {name} is not gone");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let dbs = Databases::create("demo", 0).await?;
    let mut hosts = dbs.hosts(&name, &ns)?;
    hosts.claims.insert(format!("{name}-app-data"), dir.clone());
    let runner = Runner::start(
        kube.clone(),
        RunnerConfig {
            namespace: ns.clone(),
            binary: ladder_e2e::app_bin()?,
            hosts,
            extra_env: vec![],
        },
    )?;

    let since = Instant::now();
    let watch = SpWatch::start(api.clone(), &name);
    let mut shown = 0;
    out(&format!(
        "$ kubectl -n {ns} apply -f - <<< 'ScalingPhase {name}: phase 0, autoscale {AUTOSCALE}'"
    ));
    apply(&api, &name, 0).await?;
    out(&format!("$ kubectl -n {ns} get sp {name} -w"));
    out(&format!(
        "{:<6} {:<6} {:<6} {:<6} {:<12} {:<7} {:<24} {:>6}",
        "NAME", "PHASE", "READY", "TPS", "RECOMMENDED", "TARGET", "TRANSITION", "AGE"
    ));
    wait_until(&name, &watch, &mut shown, since, deadline, |s| {
        s.ready && s.active == Some(0)
    })
    .await?;

    // The app on phase 0: the data claim of the ScalingPhase is its
    // directory, and it reports its load as the Pod kwok runs for it.
    let pods = ladder_e2e::load::wait_app_pods(&kube, &ns, &name, limit).await?;
    let store = format!("sqlite:{}", dir.join("ladder.db").display());
    let reporter = report_as(&ns, &name, &pods[0].name_any());
    let app = LoopbackApp::start_with(&dir, &store, Some(&reporter)).await?;
    let http = app::http();
    let mut codes = Vec::with_capacity(links);
    for i in 0..links {
        let r = http
            .post(format!("{}/api/v1/links", app.base))
            .json(&serde_json::json!({"url": format!("https://example.com/demo/{i}")}))
            .send()
            .await?
            .error_for_status()?;
        let v: serde_json::Value = r.json().await?;
        codes.push(v["code"].as_str().context("a code")?.to_owned());
    }
    out(&format!(
        "  the app on {} serves from {}: {links} links created (e.g. /{} -> https://example.com/demo/0)",
        app.base,
        app.tier(&http).await.unwrap_or_default(),
        codes[0]
    ));
    let load = Load::start(app.base.clone(), limit);

    out(
        "  a write load starts: phase 0's ceiling is 10 TPS, so the promoter recommends phase 1 once the load stays above 8 TPS for 10s, and Auto mode climbs",
    );
    wait_until(&name, &watch, &mut shown, since, deadline, |s| {
        s.ready && s.active == Some(1) && s.transition.is_none()
    })
    .await?;

    for r in runner.runs() {
        let result: serde_json::Value = serde_json::from_str(&r.message).unwrap_or_default();
        let rows: u64 = result["tables"]
            .as_array()
            .map(|ts| ts.iter().filter_map(|t| t["targetRows"].as_u64()).sum())
            .unwrap_or(0);
        out(&format!(
            "  migration pod {}: `ladder-app migrate` ran on loopback for {:.1}s, exit {}, outcome {}, {rows} rows verified, writes fenced for {} ms",
            r.pod,
            r.secs,
            r.exit_code,
            result["outcome"].as_str().unwrap_or("?"),
            result["fenceMillis"].as_u64().unwrap_or(0)
        ));
    }
    let ledger = load.finish().await?;
    let live = app::check_ledger_pg(&dbs.url()?, &ledger).await?;
    out(&format!(
        "  during the climb: {} writes acknowledged, {} refused while fenced (longest wait {:.2}s); all {live} live ones are in PostgreSQL",
        ledger.acked,
        ledger.refused,
        ledger
            .longest_unavailable()
            .map_or(0.0, |d| d.as_secs_f64())
    ));
    let mut found = 0;
    for code in &codes {
        let r = http
            .get(format!("{}/api/v1/links/{code}", app.base))
            .send()
            .await?;
        if r.status().is_success() {
            found += 1;
        }
    }
    let tier = app.tier(&http).await.unwrap_or_default();
    out(&format!(
        "  counted through the app: {found} of {links} links created on phase 0 are there, served from {tier}"
    ));
    if found != links || tier == "sqlite" {
        bail!("the data did not make it: {found} of {links} links, tier {tier}");
    }
    let declared = api.get(&name).await?.spec.phase;
    out(&format!(
        "  spec.phase is still {declared}: the promoter wrote only status.targetPhase, so Git and Argo CD see no change"
    ));

    // The way back: the load has stopped. The app restarts as the Pod of
    // phase 1 (its phase-0 Pod is gone, and a report no Pod of the app owns
    // is not believed); it follows the cut-over pointer to PostgreSQL.
    drop(app);
    let phase1 = ladder_e2e::load::wait_app_pods(&kube, &ns, &name, limit).await?;
    let reporter = report_as(&ns, &name, &phase1[0].name_any());
    let app = LoopbackApp::start_with(&dir, &store, Some(&reporter)).await?;
    out(&format!(
        "  the load stopped; the app (now Pod {}) reports 0 TPS. Below 3 TPS for 20s, phase 0 is recommended, and since 1 -> 0 moves data, Auto mode holds it for approval:",
        reporter.pod
    ));
    loop {
        shown = show(&name, &watch, shown, since);
        if let Some(s) = watch.latest()
            && let Some((reason, message)) = &s.blocked
        {
            if reason != "ApprovalRequired" || s.load.1 != Some(0) {
                bail!("the transition is blocked: {reason}: {message}");
            }
            out(&format!("  {reason}: {message}"));
            break;
        }
        if Instant::now() > deadline {
            bail!("gave up after the demo's time limit:\n{}", app.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(runner);
    Ok(())
}
