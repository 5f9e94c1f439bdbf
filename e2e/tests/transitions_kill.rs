//! The operator SIGKILLed at every step of a 0 → 1 transition, one climb per
//! step: the app serves on loopback on phase 0 (SQLite) under a bounded load
//! that keeps a ledger of acknowledged writes; the ScalingPhase climbs to
//! phase 1 with `deletionPolicy: Delete`; the moment `status.transition.step`
//! reaches the step (seen through a watch), the operator is killed with
//! SIGKILL, then a new one is started. It must resume from the stored step
//! and finish: Ready on phase 1, the transition cleared, every acknowledged
//! write in PostgreSQL, and nothing that holds data deleted or replaced (the
//! SQLite volume's claim, the PostgreSQL StatefulSet and its claims keep
//! their UIDs; a 0 → 1 climb deletes none of them, whatever the policy).
//!
//! Where the kill lands is what the apiserver holds after it: a step that
//! lasts one reconcile can be gone by the time the signal arrives, so each
//! step gets up to three climbs and the test reports which steps it hit;
//! it fails unless every step was hit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::Client;
use ladder_crds::scalingphase::TransitionStep;
use ladder_e2e::app::{self, Load, LoopbackApp};
use ladder_e2e::climb::{DataGuard, Databases, Holder, STEPS, SpWatch, describe};
use ladder_e2e::runner::{Runner, RunnerConfig};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, wait_for};

const SP: &str = "shop";
const TIMEOUT: Duration = Duration::from_secs(300);
const ATTEMPTS: usize = 3;

fn manifest(phase: i32) -> String {
    format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: {SP}}}\nspec:\n  phase: {phase}\n  deletionPolicy: Delete\n  transitions: {{retainOldTierFor: 5s}}\n"
    )
}

/// One climb 0 → 1 with the operator killed when the stored step is
/// `step`. Returns the step the apiserver held right after the kill (`None`:
/// the transition was already over).
async fn climb_killed_at(
    client: &Client,
    step: TransitionStep,
) -> anyhow::Result<Option<TransitionStep>> {
    let ns = TestNamespace::new(client, "e2e-kill").await?;
    let mut op = Operator::start(&ns.name).await?;
    let data = std::env::temp_dir().join(format!("ladder-kill-app-{}", ns.name));
    std::fs::create_dir_all(&data)?;
    let app = LoopbackApp::start_phase0(&data).await?;
    let load = Load::start(app.base.clone(), Duration::from_secs(600));
    let dbs = Databases::create("kill", 0).await?;
    let mut hosts = dbs.hosts(SP, &ns.name)?;
    hosts.claims.insert(format!("{SP}-app-data"), data.clone());
    let runner = Runner::start(
        client.clone(),
        RunnerConfig {
            namespace: ns.name.clone(),
            binary: ladder_e2e::app_bin()?,
            hosts,
            extra_env: vec![],
        },
    )?;
    ns.apply_sp(&manifest(0)).await?;
    ns.wait_ready(SP, 0, TIMEOUT).await?;
    let guard = DataGuard::start(client, &ns.name).await?;
    let sqlite_claim = guard
        .uids()
        .get(&(Holder::Claim, format!("{SP}-app-data")))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no SQLite claim on phase 0"))?;
    wait_for("writes on phase 0", Duration::from_secs(30), || {
        let n = load.acked();
        async move { Ok((n >= 100).then_some(())) }
    })
    .await?;

    let mut watch = SpWatch::start(ns.sps(), SP);
    ns.apply_sp(&manifest(1)).await?;
    let seen = watch
        .wait(&format!("step {step:?}"), TIMEOUT, |s| {
            s.step() == Some(step) || s.blocked.is_some() || s.settled_in(1)
        })
        .await;
    op.kill();
    let killed_at = Instant::now();
    let diag = |op: &Operator, watch: &SpWatch| {
        format!(
            "--- status history:\n{}\n--- operator log (tail):\n{}\n--- runner:\n{}",
            describe(&watch.history()),
            op.log_text()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n"),
            runner.logs()
        )
    };
    let seen = seen.map_err(|e| anyhow::anyhow!("{e:#}\n{}", diag(&op, &watch)))?;
    if let Some((reason, message)) = &seen.blocked {
        anyhow::bail!("blocked: {reason}: {message}\n{}", diag(&op, &watch));
    }
    let landed = ns
        .sps()
        .get(SP)
        .await?
        .status
        .and_then(|s| s.transition)
        .map(|t| t.step);

    // A new operator resumes from the stored step.
    let op2 = Operator::start(&ns.name).await?;
    let done = watch
        .wait("Ready on phase 1, the transition cleared", TIMEOUT, |s| {
            s.at > killed_at
                && (s.blocked.is_some()
                    || (s.ready && s.active == Some(1) && s.transition.is_none()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", diag(&op2, &watch)))?;
    if let Some((reason, message)) = &done.blocked {
        anyhow::bail!(
            "blocked after the restart: {reason}: {message}\n{}",
            diag(&op2, &watch)
        );
    }
    let runs = runner.runs();
    anyhow::ensure!(
        runs.last().is_some_and(|r| r.exit_code == 0),
        "the migration ran and succeeded last:\n{}",
        diag(&op2, &watch)
    );

    // The loopback app moved to PostgreSQL and keeps taking writes there.
    let c = app::http();
    let tier = app.tier(&c).await;
    anyhow::ensure!(
        tier.as_deref().is_some_and(|t| t != "sqlite"),
        "the app serves from {tier:?}"
    );
    let before = load.acked();
    wait_for("writes after the cut-over", Duration::from_secs(30), || {
        let n = load.acked();
        async move { Ok((n >= before + 20).then_some(())) }
    })
    .await?;
    let ledger = load.finish().await?;
    let live = app::check_ledger_pg(&dbs.url()?, &ledger).await?;

    // Nothing holding data went: no deletion, no replacement, same UIDs.
    let events = guard.events();
    anyhow::ensure!(
        events.is_empty(),
        "objects holding data were deleted or replaced during 0 -> 1: {events:?}\n{}",
        diag(&op2, &watch)
    );
    let uids = guard.uids();
    anyhow::ensure!(
        uids.get(&(Holder::Claim, format!("{SP}-app-data"))) == Some(&sqlite_claim),
        "the SQLite claim changed: {uids:?}"
    );
    anyhow::ensure!(
        uids.contains_key(&(Holder::Postgres, format!("{SP}-postgres"))),
        "no PostgreSQL StatefulSet was seen: {uids:?}"
    );
    eprintln!(
        "kill at {step:?}: landed on {landed:?}; {} acknowledged writes ({} refused while fenced, longest write gap {:?}), {live} live links verified in PostgreSQL; holders kept: {}",
        ledger.acked,
        ledger.refused,
        ledger.longest_unavailable(),
        uids.len()
    );
    drop(op2);
    drop(runner);
    ns.delete().await;
    Ok(landed)
}

#[tokio::test]
async fn the_operator_killed_at_every_step_resumes_and_loses_nothing() {
    let client = client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let mut hits: BTreeMap<usize, Vec<Option<TransitionStep>>> = BTreeMap::new();
    for (i, step) in STEPS.iter().enumerate() {
        for _ in 0..ATTEMPTS {
            let landed = climb_killed_at(&client, *step)
                .await
                .unwrap_or_else(|e| panic!("killed at {step:?}: {e:#}"));
            hits.entry(i).or_default().push(landed);
            if landed == Some(*step) {
                break;
            }
        }
    }
    let covered: Vec<TransitionStep> = STEPS
        .iter()
        .enumerate()
        .filter(|(i, s)| hits[i].contains(&Some(**s)))
        .map(|(_, s)| *s)
        .collect();
    let climbs: usize = hits.values().map(Vec::len).sum();
    eprintln!(
        "kill points covered: {} of {} steps in {climbs} climbs: {covered:?}; landings per step: {hits:?}",
        covered.len(),
        STEPS.len()
    );
    assert_eq!(
        covered.len(),
        STEPS.len(),
        "some steps were never hit: landings {hits:?}"
    );
}
