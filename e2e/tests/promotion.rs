//! The promoter on the local control plane.
//!
//! - Real load: the `ladder-app` binary runs on loopback as if it were one of
//!   the kwok Pods of the ScalingPhase's app (see `ladder_e2e::load`), writes
//!   real LoadReports, and a bounded write load pushes its TPS over the
//!   threshold. Recommend mode only recommends; Auto mode climbs 1 → 2 and,
//!   once the load stops, recommends the way back.
//! - Injected load: LoadReports written by hand, owned by kwok Pods, cross the
//!   1k, 10k and 100k ceilings this box cannot reach for real, next to a lying
//!   instance, foreign reports and stale ones.
//! - The GitOps fight: a second field manager re-applies the Git version
//!   (`phase: 1`) every 2 s during an automatic promotion, with server-side and
//!   with client-side apply; the promotion holds and the object never shows a
//!   change to that manager.
//!
//! Windows are shortened (seconds, not minutes) through the policy's own
//! fields and the app's `LADDER_LOAD_WINDOW_SECS`/`LADDER_REPORT_INTERVAL_SECS`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use ladder_crds::load_report::LoadReport;
use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseStatus};
use ladder_e2e::load::{self, App, LoadGen, Reporting};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, wait_for};

const TIMEOUT: Duration = Duration::from_secs(180);
/// The app's reporting in these tests: a 10 s load window, a report every 2 s.
const REPORTING: Reporting = Reporting {
    window_secs: 10,
    interval_secs: 2,
};

/// A ScalingPhase `name` at `phase` with a short-windowed policy.
fn sp_yaml(name: &str, phase: i32, autoscale: &str) -> String {
    let auth = if phase == 4 {
        "  auth: {issuerUrl: 'https://login.example.com', clientId: e2e}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: {name}}}\n\
         spec:\n  phase: {phase}\n{auth}  autoscale: {{{autoscale}}}\n"
    )
}

fn status(sp: &ScalingPhase) -> ScalingPhaseStatus {
    sp.status.clone().unwrap_or_default()
}

fn condition(sp: &ScalingPhase, type_: &str) -> Option<(String, String, String)> {
    status(sp)
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until `check` holds for ScalingPhase `name`, and returns it.
async fn wait_sp(
    api: &Api<ScalingPhase>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&ScalingPhase) -> bool,
) -> anyhow::Result<ScalingPhase> {
    let check = &check;
    wait_for(&format!("{name}: {what}"), timeout, || async move {
        let sp = api.get(name).await?;
        Ok(check(&sp).then_some(sp))
    })
    .await
}

/// One look at a ScalingPhase, for invariants over a whole test.
#[derive(Clone, Debug, PartialEq)]
struct Look {
    generation: Option<i64>,
    spec_phase: i32,
    active: Option<i32>,
    target: Option<i32>,
    recommended: Option<i32>,
    /// The evidence's threshold and window.
    evidence: (Option<f64>, i64),
    transition: bool,
}

/// Polls a ScalingPhase every 250 ms in the background and keeps every
/// distinct look, so a test can assert what never happened.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Look>>,
}

impl Watch {
    fn start(api: Api<ScalingPhase>, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut looks: Vec<Look> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok(sp) = api.get(&name).await {
                    let st = status(&sp);
                    let look = Look {
                        generation: sp.metadata.generation,
                        spec_phase: sp.spec.phase,
                        active: st.active_phase,
                        target: st.target_phase,
                        recommended: st.recommended_phase,
                        evidence: st
                            .recommendation
                            .as_ref()
                            .map_or((None, 0), |r| (r.threshold, r.window_seconds)),
                        transition: st.transition.is_some(),
                    };
                    if looks.last() != Some(&look) {
                        looks.push(look);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            looks
        });
        Self { stop, task }
    }

    async fn stop(self) -> anyhow::Result<Vec<Look>> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// The active phases in the order they were seen, repeats collapsed.
fn active_sequence(looks: &[Look]) -> Vec<i32> {
    let mut out: Vec<i32> = Vec::new();
    for a in looks.iter().filter_map(|l| l.active) {
        if out.last() != Some(&a) {
            out.push(a);
        }
    }
    out
}

fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ladder-e2e-{tag}-{}", rand::random::<u32>()))
}

/// Recommend mode with a real app and real load: only `recommendedPhase`
/// (and its evidence) moves; the spec, `targetPhase` and the active phase
/// never do, and no transition starts.
#[tokio::test]
async fn recommend_mode_only_recommends_under_real_load() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-recommend").await?;
    let op = Operator::start(&ns.name).await?;
    // Phase 1's ceiling is 100 TPS: promoteAt 0.2 = 20 TPS; demoteBelow 0.1
    // of phase 0's ceiling = 1 TPS.
    ns.apply_sp(&sp_yaml(
        "shop",
        1,
        "mode: Recommend, promoteAt: 0.2, demoteBelow: 0.1, promoteAfter: 10s, demoteAfter: 10s, minDwell: 0s",
    ))
    .await?;
    ns.wait_ready("shop", 1, TIMEOUT).await?;
    let pods = load::wait_app_pods(&client, &ns.name, "shop", TIMEOUT).await?;
    let pod = pods[0].name_any();
    let dir = temp_dir("recommend");
    let app = App::start(&dir, &ns.name, "shop", &pod, REPORTING).await?;
    let api = ns.sps();
    // The app's own report is believed: it is owned by a Pod of the app.
    wait_sp(&api, "shop", "MetricsAvailable=True", TIMEOUT, |sp| {
        condition(sp, "MetricsAvailable").is_some_and(|c| c.0 == "True")
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\napp log:\n{}", app.log_text()))?;
    let reports: Api<LoadReport> = ns.api();
    let report = reports.get(&pod).await?;
    assert!(
        report
            .owner_references()
            .iter()
            .any(|o| o.kind == "Pod" && Some(&o.uid) == pods[0].metadata.uid.as_ref()),
        "the app's LoadReport is owned by its Pod: {:?}",
        report.owner_references()
    );

    let watch = Watch::start(api.clone(), "shop");
    let writer = LoadGen::start(app.addr, 30, 120);
    let sp = wait_sp(&api, "shop", "phase 2 recommended", TIMEOUT, |sp| {
        status(sp).recommended_phase == Some(2)
    })
    .await?;
    let st = status(&sp);
    let rec = st.recommendation.clone().expect("evidence");
    assert_eq!(rec.phase, 2);
    assert_eq!(rec.threshold, Some(20.0), "{rec:?}");
    assert_eq!(rec.window_seconds, 10);
    assert!(rec.tps >= 20.0, "{rec:?}");
    assert!(rec.since.is_some(), "{rec:?}");
    assert!(st.observed_tps.is_some_and(|t| t >= 20.0), "{st:?}");
    let (ok, failed) = writer.stop();
    assert!(
        ok > 300 && failed == 0,
        "load: {ok} created, {failed} failed"
    );

    // The load stops: the TPS falls under 1 and phase 0 is recommended after
    // demoteAfter, and still nothing moves.
    let sp = wait_sp(&api, "shop", "phase 0 recommended", TIMEOUT, |sp| {
        status(sp).recommended_phase == Some(0)
    })
    .await?;
    let rec = status(&sp).recommendation.expect("evidence");
    assert_eq!(rec.threshold, Some(1.0), "{rec:?}");
    let looks = watch.stop().await?;
    assert!(looks.iter().any(|l| l.recommended == Some(2)), "{looks:?}");
    for l in &looks {
        assert_eq!(l.spec_phase, 1, "the operator never writes spec: {looks:?}");
        assert_eq!(l.generation, sp.metadata.generation, "{looks:?}");
        assert_eq!(l.active, Some(1), "Recommend never moves: {looks:?}");
        assert_eq!(l.target, None, "targetPhase is Auto only: {looks:?}");
        assert!(!l.transition, "no transition in Recommend: {looks:?}");
    }
    assert_eq!(status(&sp).history.len(), 1, "{:?}", status(&sp).history);
    assert!(
        op.metric_sum("ladder_promotions_total").await? >= 2.0,
        "recommendations are counted"
    );
    drop(app);
    ns.delete().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Auto mode with a real app and real load: `targetPhase` follows the
/// recommendation, the phase climbs 1 → 2 through the transition machine,
/// `spec` stays as written; when the load stops, the way back is recommended.
// The app's Pods roll during the 2 → 1 step, so for a moment no report is
// believed: that gap once withdrew the decided demotion and left
// `targetPhase` at 2 with phase 1 active (see promoter's
// a_gap_in_the_data_does_not_withdraw_a_decided_demotion).
#[tokio::test]
async fn auto_mode_climbs_under_real_load_and_recommends_the_way_back() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-auto").await?;
    let op = Operator::start(&ns.name).await?;
    // On phase 1 promote at 20 TPS; on phase 2 demote below 10 TPS.
    ns.apply_sp(&sp_yaml(
        "shop",
        1,
        "mode: Auto, minPhase: 1, maxPhase: 2, promoteAt: 0.2, demoteBelow: 0.1, promoteAfter: 10s, demoteAfter: 10s, minDwell: 0s",
    ))
    .await?;
    let created = ns.wait_ready("shop", 1, TIMEOUT).await?;
    let pods = load::wait_app_pods(&client, &ns.name, "shop", TIMEOUT).await?;
    let dir = temp_dir("auto");
    let mut app = App::start(&dir, &ns.name, "shop", &pods[0].name_any(), REPORTING).await?;
    let api = ns.sps();
    let watch = Watch::start(api.clone(), "shop");
    let writer = LoadGen::start(app.addr, 30, 150);
    let sp = wait_sp(&api, "shop", "targetPhase 2", TIMEOUT, |sp| {
        status(sp).target_phase == Some(2)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", op.log_text()))?;
    assert_eq!(status(&sp).recommended_phase, Some(2));
    let sp = ns
        .wait_ready("shop", 2, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", op.log_text()))?;
    assert_eq!(sp.spec.phase, 1, "the operator never writes spec");
    assert_eq!(sp.metadata.generation, created.metadata.generation);
    let (ok, failed) = writer.stop();
    assert!(
        ok > 300 && failed == 0,
        "load: {ok} created, {failed} failed"
    );

    // The climb rolled the app: the instance restarts as a Pod of phase 2
    // (the kubelet would start a new container), with the same database.
    app.stop();
    let pods = load::wait_app_pods(&client, &ns.name, "shop", TIMEOUT).await?;
    let app = App::start(&dir, &ns.name, "shop", &pods[0].name_any(), REPORTING).await?;
    wait_sp(&api, "shop", "phase 1 recommended", TIMEOUT, |sp| {
        status(sp).recommended_phase == Some(1)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\napp log:\n{}", app.log_text()))?;
    // 2 → 1 moves no data, so Auto carries it out without an approval, and
    // minPhase 1 holds it there.
    let sp = match ns.wait_ready("shop", 1, TIMEOUT).await {
        Ok(sp) => sp,
        Err(e) => {
            let now = api.get("shop").await?;
            anyhow::bail!(
                "{e}\nstatus: {:?}\noperator log:\n{}",
                now.status,
                op.log_text()
            );
        }
    };
    assert_eq!(status(&sp).target_phase, Some(1));
    tokio::time::sleep(Duration::from_secs(15)).await; // longer than every window: nothing more moves
    let looks = watch.stop().await?;
    assert_eq!(active_sequence(&looks), vec![1, 2, 1], "{looks:?}");
    // The way back was recommended on phase 2 with its evidence: below 10% of
    // phase 1's ceiling (10 TPS) for demoteAfter.
    assert!(
        looks.iter().any(|l| l.active == Some(2)
            && l.recommended == Some(1)
            && l.evidence == (Some(10.0), 10)),
        "{looks:?}"
    );
    assert!(looks.iter().all(|l| l.spec_phase == 1), "{looks:?}");
    let last = api.get("shop").await?;
    assert_eq!(status(&last).active_phase, Some(1));
    assert_eq!(status(&last).recommended_phase, Some(1));
    // Holding, the evidence names no threshold and no start: a field the
    // decision leaves empty must not keep a value from an earlier decision.
    let rec = status(&last).recommendation.expect("evidence");
    assert_eq!(
        (rec.threshold, rec.since.is_some(), rec.window_seconds),
        (None, false, 0),
        "stale evidence left from an earlier recommendation: {rec:?}"
    );
    drop(app);
    ns.delete().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The roadmap's first step taken by the promoter, with the data: phase 0 in
/// Git, Auto mode, the app on loopback on SQLite reporting its load; a write
/// load takes it to phase 1 by itself through the transition machine (the
/// migration Job run for real by the runner); every link is then served from
/// PostgreSQL; when the load stops, the step back is recommended and, since
/// it moves data, held with `ApprovalRequired`. This is `make demo`'s story:
/// the test runs the demo's own program (`demo-transition`, which fails on
/// any of it) against this test's namespace and operator.
#[tokio::test]
async fn auto_mode_climbs_from_sqlite_with_the_data_and_holds_the_way_back_for_approval()
-> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-auto-data").await?;
    let op = Operator::start(&ns.name).await?;
    let app_bin = ladder_e2e::app_bin()?;
    let ns_name = ns.name.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_demo-transition"))
            .args(["--namespace", &ns_name, "--name", "mvp", "--links", "50"])
            .args(["--timeout", "300"])
            .env("LADDER_APP_BIN", app_bin)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo-transition failed:\n{stdout}\n{stderr}\noperator log:\n{}",
        op.log_text()
    );
    for line in [
        "outcome CutOver",
        "50 of 50 links created on phase 0 are there",
        "spec.phase is still 0",
        "ApprovalRequired: stepping down from phase 1 to 0",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let sp = ns.sps().get("mvp").await?;
    let st = status(&sp);
    assert_eq!(sp.spec.phase, 0, "the operator never writes spec");
    assert_eq!(
        (st.active_phase, st.recommended_phase, st.target_phase),
        (Some(1), Some(0), Some(0)),
        "{st:?}"
    );
    assert!(
        st.history.iter().any(|h| h.phase == 1),
        "the climb is in status.history: {:?}",
        st.history
    );
    ns.delete().await;
    Ok(())
}

/// A set of injected reports, re-written (with a fresh `reportedAt`) every
/// 2 s as app instances would, until `done` holds for ScalingPhase `name`.
async fn hold_reports_until(
    api_r: &Api<LoadReport>,
    api_sp: &Api<ScalingPhase>,
    name: &str,
    reports: &[(&str, &str, Option<&Pod>, f64, i32)],
    what: &str,
    timeout: Duration,
    done: impl Fn(&ScalingPhase) -> bool,
) -> anyhow::Result<ScalingPhase> {
    let start = tokio::time::Instant::now();
    loop {
        for (rname, sp, owner, tps, window) in reports {
            load::put_report(api_r, &load::report(rname, sp, *owner, *tps, *window, 0)).await?;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < until {
            let sp = api_sp.get(name).await?;
            if done(&sp) {
                return Ok(sp);
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "timed out waiting for {name}: {what}; status: {:?}",
                    sp.status
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The 1k, 10k and 100k ceilings with injected reports, summed over
/// instances; a lying instance, a report no Pod of the app owns and one owned
/// by another ScalingPhase's Pod are dropped and counted; stale reports make
/// MetricsAvailable False and never demote.
#[tokio::test]
async fn injected_reports_cross_the_high_ceilings_and_bad_ones_are_dropped() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-thresholds").await?;
    let op = Operator::start(&ns.name).await?;
    let policy = "mode: Recommend, promoteAfter: 10s, demoteAfter: 20s, minDwell: 0s";
    for (name, phase) in [("p2", 2), ("p3", 3), ("p4", 4)] {
        ns.apply_sp(&sp_yaml(name, phase, policy)).await?;
    }
    for (name, phase) in [("p2", 2), ("p3", 3), ("p4", 4)] {
        ns.wait_ready(name, phase, TIMEOUT).await?;
    }
    let p2 = load::wait_app_pods(&client, &ns.name, "p2", TIMEOUT).await?;
    let p3 = load::wait_app_pods(&client, &ns.name, "p3", TIMEOUT).await?;
    let p4 = load::wait_app_pods(&client, &ns.name, "p4", TIMEOUT).await?;
    let (a, b) = (&p2[0], p2.get(1).unwrap_or(&p2[0]));
    let reports: Api<LoadReport> = ns.api();
    let sps = ns.sps();

    // Phase 2 (ceiling 1,000; promotes at 800): two honest instances at 300
    // each, plus a liar claiming 500,000 (more than any instance can serve),
    // a report no Pod owns and one owned by p3's Pod. Believed: 600 → holds.
    let rejected_before = op.metric_sum("ladder_loadreports_rejected_total").await?;
    let honest_low = [
        ("p2-a", "p2", Some(a), 300.0, 30),
        ("p2-b", "p2", Some(b), 300.0, 30),
        ("p2-liar", "p2", Some(a), 500_000.0, 30),
        ("p2-orphan", "p2", None, 5_000.0, 30),
        ("p2-foreign", "p2", Some(&p3[0]), 5_000.0, 30),
    ];
    let sp = hold_reports_until(
        &reports,
        &sps,
        "p2",
        &honest_low,
        "observedTPS 600",
        TIMEOUT,
        |sp| status(sp).observed_tps == Some(600.0),
    )
    .await?;
    assert_eq!(
        condition(&sp, "MetricsAvailable").map(|c| c.0).as_deref(),
        Some("True")
    );
    // Longer than promoteAfter with the liar still there: no promotion.
    let held = hold_reports_until(
        &reports,
        &sps,
        "p2",
        &honest_low,
        "20 s with the liar",
        Duration::from_secs(20),
        |sp| status(sp).recommended_phase != Some(2) || status(sp).observed_tps != Some(600.0),
    )
    .await;
    assert!(
        held.is_err(),
        "the liar moved something: {:?}",
        held.map(|s| s.status)
    );
    let metrics = op.metrics().await?;
    for reason in ["implausible", "notOwnedByOurPod"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("ladder_loadreports_rejected_total")
                    && l.contains(&format!("reason=\"{reason}\""))
                    && !l.ends_with(" 0")),
            "rejections with reason {reason} are counted:\n{metrics}"
        );
    }
    assert!(op.metric_sum("ladder_loadreports_rejected_total").await? > rejected_before);

    // The honest instances rise to 450 each: 900 ≥ 800 → phase 3 recommended.
    let honest_high = [
        ("p2-a", "p2", Some(a), 450.0, 30),
        ("p2-b", "p2", Some(b), 450.0, 30),
        ("p2-liar", "p2", Some(a), 500_000.0, 30),
    ];
    let sp = hold_reports_until(
        &reports,
        &sps,
        "p2",
        &honest_high,
        "phase 3 recommended",
        TIMEOUT,
        |sp| status(sp).recommended_phase == Some(3),
    )
    .await?;
    let rec = status(&sp).recommendation.expect("evidence");
    assert_eq!(rec.threshold, Some(800.0), "{rec:?}");
    assert_eq!(status(&sp).observed_tps, Some(900.0));

    // Phase 3 (ceiling 10,000; promotes at 8,000): 9,123.4 TPS → phase 4,
    // shown with two significant digits.
    let sp = hold_reports_until(
        &reports,
        &sps,
        "p3",
        &[("p3-a", "p3", Some(&p3[0]), 9_123.4, 30)],
        "phase 4 recommended",
        TIMEOUT,
        |sp| status(sp).recommended_phase == Some(4),
    )
    .await?;
    assert_eq!(status(&sp).observed_tps, Some(9_100.0));
    assert_eq!(
        status(&sp).recommendation.and_then(|r| r.threshold),
        Some(8_000.0)
    );

    // Phase 4 (ceiling 100,000): 90,000 TPS is above 80% of it, but there is
    // no phase 5: it holds.
    let top = [("p4-a", "p4", Some(&p4[0]), 90_000.0, 30)];
    let sp = hold_reports_until(&reports, &sps, "p4", &top, "90k observed", TIMEOUT, |sp| {
        status(sp).observed_tps == Some(90_000.0)
    })
    .await?;
    assert_eq!(status(&sp).recommended_phase, Some(4));
    // Then one low report (1,000 < 30% of 10,000) with a 3 s window, never
    // refreshed: it is fresh for 6 s, then stale. A gap never demotes, even
    // after twice demoteAfter.
    load::put_report(
        &reports,
        &load::report("p4-a", "p4", Some(&p4[0]), 1_000.0, 3, 0),
    )
    .await?;
    let sp = wait_sp(&sps, "p4", "MetricsAvailable=False", TIMEOUT, |sp| {
        condition(sp, "MetricsAvailable").is_some_and(|c| c.0 == "False")
    })
    .await?;
    assert_eq!(
        condition(&sp, "MetricsAvailable").map(|c| c.1).as_deref(),
        Some("NoFreshLoadReports")
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while tokio::time::Instant::now() < deadline {
        let sp = sps.get("p4").await?;
        assert_eq!(
            status(&sp).recommended_phase,
            Some(4),
            "stale data demoted: {:?}",
            sp.status
        );
        assert_eq!(
            condition(&sp, "MetricsAvailable").map(|c| c.0).as_deref(),
            Some("False")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Fresh low reports again: after demoteAfter, phase 3 is recommended.
    let sp = hold_reports_until(
        &reports,
        &sps,
        "p4",
        &[("p4-a", "p4", Some(&p4[0]), 1_000.0, 30)],
        "phase 3 recommended",
        TIMEOUT,
        |sp| status(sp).recommended_phase == Some(3),
    )
    .await?;
    assert_eq!(
        status(&sp).recommendation.and_then(|r| r.threshold),
        Some(3_000.0)
    );
    // Recommend mode: none of them moved.
    for (name, phase) in [("p2", 2), ("p3", 3), ("p4", 4)] {
        let sp = sps.get(name).await?;
        assert_eq!(status(&sp).active_phase, Some(phase), "{name}");
        assert_eq!(status(&sp).target_phase, None, "{name}");
        assert!(status(&sp).transition.is_none(), "{name}");
    }
    ns.delete().await;
    Ok(())
}

/// UID of every child the operator manages, by kind/name.
async fn child_uids(ns: &TestNamespace) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let sel = ListParams::default().labels("app.kubernetes.io/managed-by=ladder");
    macro_rules! collect {
        ($($t:ty),*) => {$(
            for o in ns.api::<$t>().list(&sel).await?.items {
                out.insert(format!("{}/{}", stringify!($t), o.name_any()), o.uid().unwrap_or_default());
            }
        )*};
    }
    collect!(
        Deployment,
        StatefulSet,
        Service,
        ConfigMap,
        Secret,
        PersistentVolumeClaim
    );
    Ok(out)
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

/// Runs kubectl; returns (exit code, stdout+stderr).
fn run_kubectl(args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Command::new(kubectl()).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The Git version, applied by a second field manager as Argo CD's
/// self-heal would.
#[derive(Clone, Copy, Debug)]
enum GitApply {
    /// `kubectl apply --server-side --field-manager=argocd-controller`.
    ServerSide,
    /// `kubectl apply` (client-side: last-applied annotation and a patch).
    ClientSide,
}

const GIT_MANAGER: &str = "argocd-controller";

impl GitApply {
    fn apply_args<'a>(self, ns: &'a str, file: &'a str) -> Vec<&'a str> {
        match self {
            GitApply::ServerSide => vec![
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                GIT_MANAGER,
                "-n",
                ns,
                "-f",
                file,
            ],
            GitApply::ClientSide => vec!["apply", "-n", ns, "-f", file],
        }
    }

    fn diff_args<'a>(self, ns: &'a str, file: &'a str) -> Vec<&'a str> {
        match self {
            GitApply::ServerSide => vec![
                "diff",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                GIT_MANAGER,
                "-n",
                ns,
                "-f",
                file,
            ],
            GitApply::ClientSide => vec!["diff", "-n", ns, "-f", file],
        }
    }

    /// The managedFields entry this manager owns (what it would see change).
    fn manager(self) -> &'static str {
        match self {
            GitApply::ServerSide => GIT_MANAGER,
            GitApply::ClientSide => "kubectl-client-side-apply",
        }
    }
}

/// The entries of `manager` in managedFields: (operation, subresource, fields).
fn managed_by(sp: &ScalingPhase, manager: &str) -> Vec<String> {
    sp.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .map(|m| {
            format!(
                "{:?} {:?} {}",
                m.operation,
                m.subresource,
                serde_json::to_string(&m.fields_v1).unwrap_or_default()
            )
        })
        .collect()
}

async fn gitops_fight(mode: GitApply) -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(
        &client,
        match mode {
            GitApply::ServerSide => "e2e-gitops-ssa",
            GitApply::ClientSide => "e2e-gitops-csa",
        },
    )
    .await?;
    let op = Operator::start(&ns.name).await?;
    let git = sp_yaml(
        "shop",
        1,
        "mode: Auto, minPhase: 1, maxPhase: 2, promoteAt: 0.2, demoteBelow: 0.1, promoteAfter: 10s, demoteAfter: 1h, minDwell: 0s",
    );
    let dir = temp_dir("gitops");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("shop.yaml");
    std::fs::write(&file, &git)?;
    let file_s = file.to_string_lossy().into_owned();
    let (code, out) = run_kubectl(&mode.apply_args(&ns.name, &file_s))?;
    assert_eq!(code, 0, "first apply: {out}");
    let api = ns.sps();
    let start = ns.wait_ready("shop", 1, TIMEOUT).await?;
    let generation = start.metadata.generation;
    let owned = managed_by(&start, mode.manager());
    assert!(!owned.is_empty(), "{:?}", start.metadata.managed_fields);
    let before = child_uids(&ns).await?;
    let pods = load::wait_app_pods(&client, &ns.name, "shop", TIMEOUT).await?;
    let reports: Api<LoadReport> = ns.api();
    let watch = Watch::start(api.clone(), "shop");

    // Git re-applied every 2 s, the load (50 TPS, over 20) re-reported every
    // 2 s, until phase 2 has been active for 20 s.
    let mut at_two: Option<(tokio::time::Instant, BTreeMap<String, String>)> = None;
    let mut applies = 0;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no promotion to 2 within {TIMEOUT:?}\n{}",
            op.log_text()
        );
        load::put_report(
            &reports,
            &load::report("shop-load", "shop", Some(&pods[0]), 50.0, 30, 0),
        )
        .await?;
        let (code, out) = run_kubectl(&mode.apply_args(&ns.name, &file_s))?;
        assert_eq!(code, 0, "re-apply: {out}");
        assert!(
            out.contains("unchanged") || out.contains("serverside-applied"),
            "{out}"
        );
        applies += 1;
        // `kubectl diff` exits 0 when Git and the cluster agree. It reads the
        // live object, then dry-runs the apply: a status write in between
        // shows as a diff that is not the manager's, so a diff only counts
        // when the resourceVersion held still around it.
        loop {
            let rv = api.get("shop").await?.resource_version();
            let (code, out) = run_kubectl(&mode.diff_args(&ns.name, &file_s))?;
            let rv2 = api.get("shop").await?.resource_version();
            if rv != rv2 {
                continue;
            }
            assert_eq!(
                code, 0,
                "kubectl diff shows a change to the Git manager:\n{out}"
            );
            break;
        }
        let sp = api.get("shop").await?;
        assert_eq!(sp.spec.phase, 1);
        assert_eq!(sp.metadata.generation, generation, "spec changed");
        assert_eq!(
            managed_by(&sp, mode.manager()),
            owned,
            "the Git manager's fields changed"
        );
        let active = status(&sp).active_phase;
        match &at_two {
            None if active == Some(2) && ns.wait_ready("shop", 2, Duration::ZERO).await.is_ok() => {
                at_two = Some((tokio::time::Instant::now(), child_uids(&ns).await?));
            }
            Some((since, _)) if since.elapsed() > Duration::from_secs(20) => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let looks = watch.stop().await?;
    assert_eq!(
        active_sequence(&looks),
        vec![1, 2],
        "no flapping: {looks:?}"
    );
    let targets: Vec<_> = looks.iter().map(|l| l.target).collect();
    assert!(
        targets.windows(2).all(|w| w[0] <= w[1]),
        "targetPhase never went back: {targets:?}"
    );
    let after = child_uids(&ns).await?;
    let Some((_, at_two)) = at_two else {
        unreachable!("the loop ends only after phase 2")
    };
    // Across the climb: claims, credentials, Services, ConfigMaps and
    // Deployments keep their UIDs. StatefulSets are left out here: phase 2's
    // larger volumes re-create a StatefulSet around its running pods and
    // claims by design (operator/src/storage.rs), Git or no Git.
    for (k, uid) in before
        .iter()
        .filter(|(k, _)| !k.starts_with("StatefulSet/"))
    {
        if let Some(now) = after.get(k) {
            assert_eq!(now, uid, "{k} was re-created");
        }
    }
    assert_eq!(at_two, after, "children changed while Git kept re-applying");
    let sp = api.get("shop").await?;
    assert_eq!(status(&sp).history.len(), 2, "{:?}", status(&sp).history);
    assert!(applies >= 10, "{applies} applies");
    ns.delete().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn gitops_server_side_reapply_never_undoes_an_auto_promotion() -> anyhow::Result<()> {
    gitops_fight(GitApply::ServerSide).await
}

#[tokio::test]
async fn gitops_client_side_reapply_never_undoes_an_auto_promotion() -> anyhow::Result<()> {
    gitops_fight(GitApply::ClientSide).await
}

/// A real Prometheus (Debian's `prometheus`) on loopback, scraping the app
/// on loopback every second, to be the promoter's load source.
struct Prometheus {
    child: std::process::Child,
    url: String,
    dir: PathBuf,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> anyhow::Result<Self> {
        let dir = temp_dir("prometheus");
        std::fs::create_dir_all(&dir)?;
        let port = ladder_e2e::app::free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n- job_name: ladder-app\n  static_configs:\n  - targets: ['{target}']\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("prometheus (hack/toolchain.sh installs Debian's prometheus): {e}")
            })?;
        let url = format!("http://127.0.0.1:{port}");
        let http = ladder_e2e::app::http();
        let ready = format!("{url}/-/ready");
        wait_for("Prometheus ready", Duration::from_secs(60), || {
            let (http, ready) = (http.clone(), ready.clone());
            async move {
                Ok(http
                    .get(&ready)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await?;
        Ok(Self { child, url, dir })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `spec.autoscale.source.prometheus`: the TPS comes from a PromQL query on
/// a real Prometheus scraping the app, not from LoadReports; with load over
/// the threshold the promoter recommends the next phase; when Prometheus goes
/// away the phase holds and MetricsAvailable says why.
#[tokio::test]
async fn a_prometheus_query_is_the_load_source() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-prom").await?;
    let op = Operator::start(&ns.name).await?;
    let dir = temp_dir("prom-app");
    // Reports off would be the real setup; they stay on here to show they are not summed.
    let app = App::start(&dir, &ns.name, "shop", "not-a-pod-of-shop", REPORTING).await?;
    let mut prom = Prometheus::start(app.addr).await?;
    let query = "sum(rate(ladder_db_transactions_total[5s]))";
    ns.apply_sp(&sp_yaml(
        "shop",
        0,
        &format!(
            "mode: Recommend, promoteAfter: 10s, minDwell: 0s, source: {{prometheus: {{url: '{}', query: '{query}'}}}}",
            prom.url
        ),
    ))
    .await?;
    let api = ns.sps();
    // Phase 0 promotes at 8 TPS; 20 writes/s keeps it above for the window.
    let writer = LoadGen::start(app.addr, 20, 120);
    let sp = wait_sp(
        &api,
        "shop",
        "phase 1 recommended from Prometheus",
        TIMEOUT,
        |sp| status(sp).recommended_phase == Some(1),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", op.log_text()))?;
    let (ok, reason, message) = condition(&sp, "MetricsAvailable").expect("condition");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("True", "PrometheusQueryFresh"),
        "{message}"
    );
    assert!(message.contains("Prometheus"), "{message}");
    assert!(
        status(&sp).observed_tps.is_some_and(|t| t >= 8.0),
        "{:?}",
        status(&sp)
    );
    assert_eq!(sp.spec.phase, 0, "Recommend mode changes nothing");
    let (created, failed) = writer.stop();
    assert!(
        created > 50 && failed == 0,
        "load: {created} created, {failed} failed"
    );

    // Prometheus gone: no number, the phase holds, the condition says why.
    prom.stop();
    let sp = wait_sp(&api, "shop", "MetricsAvailable False", TIMEOUT, |sp| {
        condition(sp, "MetricsAvailable")
            .is_some_and(|(s, r, _)| s == "False" && r == "PrometheusQueryFailed")
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", op.log_text()))?;
    assert_eq!(status(&sp).active_phase, Some(0));
    assert_eq!(status(&sp).observed_tps, None);
    drop(app);
    ns.delete().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
