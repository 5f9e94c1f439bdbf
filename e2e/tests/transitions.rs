//! Phase transitions with real data: the app serves on loopback on phase 0
//! (SQLite) under a bounded load that keeps a ledger of acknowledged writes;
//! the ScalingPhase climbs to phase 1; the operator's migration Job really
//! runs `ladder-app migrate` (through the e2e runner, e2e/src/runner.rs, as
//! kwok runs no containers) into the local PostgreSQL through PgBouncer; the
//! transition must finish, and every acknowledged write must be there.
//!
//! The app Deployment's pods are kwok's (never run); the app the load talks
//! to is the loopback process whose SQLite directory the runner mounts as the
//! Deployment's data claim, so the Job migrates exactly the data being
//! written, and that process follows the migration's cut-over pointer to the
//! new tier by itself.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ListParams;
use ladder_crds::scalingphase::{ScalingPhase, TransitionStep};
use ladder_e2e::app::{self, Load, LoopbackApp};
use ladder_e2e::runner::{Hosts, Runner, RunnerConfig};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, wait_for};

const SP: &str = "shop";
const TIMEOUT: Duration = Duration::from_secs(300);

fn manifest(phase: i32) -> String {
    format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: {SP}}}\nspec:\n  phase: {phase}\n  transitions: {{retainOldTierFor: 5s}}\n"
    )
}

/// The runner's mapping: the local services (PgBouncer on `bouncer`, or the
/// real one), this test's own target database in place of `ladder`, and the
/// app's data claim → the loopback app's directory.
fn hosts(ns: &str, db: &str, data: &std::path::Path, bouncer: Option<u16>) -> Hosts {
    let mut hosts = Hosts::local_services(SP, ns).expect("local services (hack/services.sh up)");
    let bouncer = bouncer.unwrap_or_else(|| {
        let url = ladder_e2e::service_env("LADDER_PGBOUNCER_URL").expect("pgbouncer");
        url.rsplit_once(':')
            .and_then(|(_, r)| r.split('/').next()?.parse().ok())
            .expect("port")
    });
    hosts.rewrites.insert(
        0,
        (
            format!("{SP}-pgbouncer.{ns}.svc:6432/ladder?"),
            format!("localhost:{bouncer}/{db}?"),
        ),
    );
    hosts
        .claims
        .insert(format!("{SP}-app-data"), data.to_owned());
    hosts
}

fn condition<'a>(
    sp: &'a ScalingPhase,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    sp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn app_store(dep: &Deployment) -> Option<String> {
    dep.spec
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "LADDER_STORE")
        .and_then(|e| e.value.clone())
}

struct Setup {
    ns: TestNamespace,
    op: Operator,
    app: LoopbackApp,
    load: Load,
    runner: Runner,
    db: String,
}

impl Setup {
    /// Everything on phase 0 with writes acknowledged; the runner maps
    /// PgBouncer to `bouncer` (a port where nothing listens, for failures).
    async fn phase0(prefix: &str, bouncer: Option<u16>) -> Setup {
        let client = client().await.expect("client");
        install_crds(&client).await.expect("CRDs");
        let ns = TestNamespace::new(&client, prefix).await.expect("ns");
        let op = Operator::start(&ns.name).await.expect("operator");
        let data = std::env::temp_dir().join(format!("ladder-transition-app-{}", ns.name));
        std::fs::create_dir_all(&data).expect("data dir");
        let app = LoopbackApp::start_phase0(&data).await.expect("app");
        let load = Load::start(app.base.clone(), Duration::from_secs(240));
        let db = app::fresh_db("transition").await.expect("target database");
        let runner = Runner::start(
            client.clone(),
            RunnerConfig {
                namespace: ns.name.clone(),
                binary: ladder_e2e::app_bin().expect("ladder-app"),
                hosts: hosts(&ns.name, &db, &data, bouncer),
                extra_env: vec![],
            },
        )
        .expect("runner");
        ns.apply_sp(&manifest(0)).await.expect("apply phase 0");
        ns.wait_ready(SP, 0, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", op.log_text()));
        wait_for(
            "acknowledged writes on phase 0",
            Duration::from_secs(30),
            || {
                let n = load.acked();
                async move { Ok((n >= 100).then_some(())) }
            },
        )
        .await
        .expect("load");
        Setup {
            ns,
            op,
            app,
            load,
            runner,
            db,
        }
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- operator log:\n{}\n--- runner:\n{}\n--- app log (tail):\n{}",
            self.op.log_text(),
            self.runner.logs(),
            self.app
                .log_text()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// 0 → 1 with the migration Job run for real: Ready on phase 1, the
/// transition Done and in the history, the app on PostgreSQL, and every
/// acknowledged write in PostgreSQL.
#[tokio::test]
async fn climb_0_to_1_migrates_every_acknowledged_write() {
    let s = Setup::phase0("e2e-climb", None).await;
    s.ns.apply_sp(&manifest(1)).await.expect("apply phase 1");
    let sps = s.ns.sps();
    let sp = wait_for("Ready on phase 1 with the transition done", TIMEOUT, || {
        let sps = sps.clone();
        async move {
            let sp = sps.get(SP).await?;
            if let Some(c) = condition(&sp, "TransitionBlocked")
                && c.status == "True"
            {
                // Stop waiting at once: a blocked transition does not unblock by itself.
                return Ok(Some(Err(format!("blocked: {} {}", c.reason, c.message))));
            }
            let status = sp.status.clone().unwrap_or_default();
            let ready = condition(&sp, "Ready").is_some_and(|c| {
                c.status == "True" && c.observed_generation == sp.metadata.generation
            });
            let done = status
                .transition
                .as_ref()
                .is_none_or(|t| t.step == TransitionStep::Done);
            Ok((ready && done && status.active_phase == Some(1)).then_some(Ok(sp)))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", s.diagnostics()))
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));

    let status = sp.status.expect("status");
    let phases: Vec<i32> = status.history.iter().map(|h| h.phase).collect();
    assert_eq!(phases.last(), Some(&1), "history {phases:?}");
    assert!(phases.contains(&0), "history {phases:?}");
    let runs = s.runner.runs();
    assert_eq!(runs.len(), 1, "one migration pod ran:\n{}", s.diagnostics());
    assert_eq!(runs[0].exit_code, 0, "{}", s.diagnostics());
    let dep =
        s.ns.api::<Deployment>()
            .get(&format!("{SP}-app"))
            .await
            .expect("app Deployment");
    let store = app_store(&dep).unwrap_or_default();
    assert!(
        store.starts_with("pgbouncer:"),
        "the app is cut over: {store}"
    );

    // The loopback app followed the cut-over; writes go on, now on PostgreSQL.
    let c = app::http();
    let tier = s.app.tier(&c).await;
    assert!(
        tier.as_deref().is_some_and(|t| t != "sqlite"),
        "the app serves from {tier:?}\n{}",
        s.diagnostics()
    );
    let before = s.load.acked();
    wait_for("writes after the cut-over", Duration::from_secs(30), || {
        let n = s.load.acked();
        async move { Ok((n >= before + 20).then_some(())) }
    })
    .await
    .expect("writes go on");
    let ledger = s.load.finish().await.expect("ledger");
    let live = app::check_ledger_pg(&app::primary_db_url(&s.db).expect("url"), &ledger)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", s.runner.logs()));
    assert!(live > 0);
    eprintln!(
        "0→1: {} acknowledged writes, {} refused while fenced, {live} live links verified in PostgreSQL",
        ledger.acked, ledger.refused
    );
    drop(s.runner);
    s.ns.delete().await;
}

/// A migration that fails (PgBouncer mapped to a port where nothing
/// listens) blocks the transition with `MigrationFailed`: the app
/// Deployment stays on SQLite, its data claim is untouched, the app keeps
/// taking writes on SQLite.
#[tokio::test]
async fn a_failed_migration_blocks_and_keeps_phase_0() {
    let s = Setup::phase0("e2e-climb-fail", Some(app::free_port())).await;
    let claim_uid =
        s.ns.api::<PersistentVolumeClaim>()
            .get(&format!("{SP}-app-data"))
            .await
            .expect("the app's data claim")
            .metadata
            .uid;
    s.ns.apply_sp(&manifest(1)).await.expect("apply phase 1");
    let sps = s.ns.sps();
    let sp = wait_for("TransitionBlocked=True", TIMEOUT, || {
        let sps = sps.clone();
        async move {
            let sp = sps.get(SP).await?;
            let blocked = condition(&sp, "TransitionBlocked").is_some_and(|c| c.status == "True");
            Ok(blocked.then_some(sp))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", s.diagnostics()));
    let c = condition(&sp, "TransitionBlocked").expect("condition");
    assert_eq!(c.reason, "MigrationFailed", "{}: {}", c.reason, c.message);
    let status = sp.status.clone().expect("status");
    assert_eq!(status.active_phase, Some(0));
    let runs = s.runner.runs();
    assert!(
        !runs.is_empty() && runs.iter().all(|r| r.exit_code != 0),
        "the migration ran and failed:\n{}",
        s.diagnostics()
    );

    // Nothing moved: the app Deployment still on SQLite, the claim the same one.
    let dep =
        s.ns.api::<Deployment>()
            .get(&format!("{SP}-app"))
            .await
            .expect("app Deployment");
    let store = app_store(&dep).unwrap_or_default();
    assert!(
        store.starts_with("sqlite:"),
        "the app stays on SQLite: {store}"
    );
    let claims =
        s.ns.api::<PersistentVolumeClaim>()
            .list(&ListParams::default())
            .await
            .expect("claims");
    let claim = claims
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(&format!("{SP}-app-data")))
        .expect("the app's data claim is still there");
    assert_eq!(claim.metadata.uid, claim_uid, "the same claim");
    for p in &claims.items {
        assert!(
            p.metadata.deletion_timestamp.is_none(),
            "{:?} is being deleted",
            p.metadata.name
        );
    }
    // The loopback app serves and writes on SQLite still.
    let http = app::http();
    assert_eq!(s.app.tier(&http).await.as_deref(), Some("sqlite"));
    let before = s.load.acked();
    wait_for("writes after the failure", Duration::from_secs(30), || {
        let n = s.load.acked();
        async move { Ok((n >= before + 20).then_some(())) }
    })
    .await
    .expect("writes go on");
    let _ = s.load.finish().await.expect("ledger");
    drop(s.runner);
    s.ns.delete().await;
}

/// Every acknowledged write of `ledger`, read back through the app's own
/// API (whatever tier it serves from): live links with their acknowledged
/// target, acknowledged deletes gone. Returns how many live links matched.
async fn check_ledger_http(base: &str, ledger: &app::Ledger) -> anyhow::Result<usize> {
    let c = app::http();
    let mut live = 0;
    let mut problems = Vec::new();
    for (code, expected) in &ledger.links {
        let r = c.get(format!("{base}/api/v1/links/{code}")).send().await?;
        let status = r.status().as_u16();
        let found: Option<String> = if status == 200 {
            let v: serde_json::Value = r.json().await?;
            v["url"].as_str().map(str::to_owned)
        } else {
            None
        };
        if ledger.uncertain.contains(code) {
            continue;
        }
        match (expected, found) {
            (Some(t), Some(f)) if *t == f => live += 1,
            (Some(t), f) => problems.push(format!("{code}: {f:?} ({status}), expected {t}")),
            (None, None) if status == 404 => {}
            (None, f) => problems.push(format!("{code}: deleted, found {f:?} ({status})")),
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} of {} acknowledged links wrong: {:?}",
        problems.len(),
        ledger.links.len(),
        &problems[..problems.len().min(10)]
    );
    Ok(live)
}

/// Rollback while the old tier is retained: 0 → 1 cuts over to PostgreSQL,
/// writes go on there; `ladder.dev/rollback-transition: 0-to-1` migrates
/// them back (a second migration Job, 1 → 0), the app returns to SQLite
/// with every acknowledged write (those made on PostgreSQL included), and
/// the operator holds on phase 0 with `RolledBack` while the annotation says
/// so, although `spec.phase` is still 1.
#[tokio::test]
async fn rollback_while_retained_brings_every_write_back() {
    let s = Setup::phase0("e2e-rollback", None).await;
    s.ns.apply_sp(&manifest(1).replace("retainOldTierFor: 5s", "retainOldTierFor: 1h"))
        .await
        .expect("apply phase 1");
    let sps = s.ns.sps();
    wait_for("the 0 -> 1 cut-over, old tier retained", TIMEOUT, || {
        let sps = sps.clone();
        async move {
            let sp = sps.get(SP).await?;
            let step = sp
                .status
                .as_ref()
                .and_then(|s| s.transition.as_ref())
                .map(|t| t.step);
            Ok((step == Some(TransitionStep::Retain)).then_some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", s.diagnostics()));
    // Writes made on PostgreSQL after the cut-over: these are the ones a
    // rollback must not lose.
    let c = app::http();
    wait_for("the app on PostgreSQL", Duration::from_secs(60), || {
        let (c, app) = (c.clone(), &s.app);
        async move { Ok(app.tier(&c).await.filter(|t| t != "sqlite")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", s.diagnostics()));
    let on_pg = s.load.acked();
    wait_for("writes on PostgreSQL", Duration::from_secs(30), || {
        let n = s.load.acked();
        async move { Ok((n >= on_pg + 50).then_some(())) }
    })
    .await
    .expect("writes go on");

    let patch = serde_json::json!({"metadata": {"annotations": {"ladder.dev/rollback-transition": "0-to-1"}}});
    sps.patch(
        SP,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("annotate");
    wait_for("the rollback cut over, phase 1 retained", TIMEOUT, || {
        let sps = sps.clone();
        async move {
            let sp = sps.get(SP).await?;
            if let Some(c) = condition(&sp, "TransitionBlocked")
                && c.status == "True"
            {
                return Ok(Some(Err(format!("blocked: {} {}", c.reason, c.message))));
            }
            let t = sp.status.as_ref().and_then(|s| s.transition.clone());
            Ok(t.filter(|t| {
                (t.from, t.to, t.step) == (1, 0, TransitionStep::Retain)
                    && t.rollback_of.as_deref() == Some("0-to-1")
            })
            .map(Ok))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", s.diagnostics()))
    .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    let runs = s.runner.runs();
    assert_eq!(
        runs.len(),
        2,
        "the climb's Job and the rollback's:\n{}",
        s.diagnostics()
    );
    assert!(runs.iter().all(|r| r.exit_code == 0), "{}", s.diagnostics());
    let dep =
        s.ns.api::<Deployment>()
            .get(&format!("{SP}-app"))
            .await
            .expect("app Deployment");
    let store = app_store(&dep).unwrap_or_default();
    assert!(
        store.starts_with("sqlite:"),
        "the app is back on SQLite: {store}"
    );
    wait_for(
        "the loopback app on SQLite",
        Duration::from_secs(60),
        || {
            let (c, app) = (c.clone(), &s.app);
            async move { Ok(app.tier(&c).await.filter(|t| t == "sqlite")) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", s.diagnostics()));

    // Shortening the retention ends it early; then phase 0 holds, although
    // spec.phase still says 1, for as long as the annotation names the step.
    s.ns.apply_sp(&manifest(1)).await.expect("retain 5s");
    let sp = wait_for("back on phase 0, held with RolledBack", TIMEOUT, || {
        let sps = sps.clone();
        async move {
            let sp = sps.get(SP).await?;
            let status = sp.status.clone().unwrap_or_default();
            let held = condition(&sp, "TransitionBlocked")
                .is_some_and(|c| c.status == "True" && c.reason == "RolledBack");
            Ok(
                (held && status.active_phase == Some(0) && status.transition.is_none())
                    .then_some(sp),
            )
        }
    })
    .await;
    let sp = match sp {
        Ok(sp) => sp,
        Err(e) => {
            let now = sps.get(SP).await.ok().and_then(|sp| sp.status);
            panic!(
                "{e:#}\n--- status:\n{}\n{}",
                serde_json::to_string_pretty(&now).unwrap_or_default(),
                s.diagnostics()
            )
        }
    };
    assert_eq!(sp.spec.phase, 1, "the operator never writes spec");
    let ledger = s.load.finish().await.expect("ledger");
    let live = match check_ledger_http(&s.app.base, &ledger).await {
        Ok(n) => n,
        Err(e) => panic!(
            "{e:#}\n--- operator log:\n{}\n--- runner:\n{}",
            s.op.log_text(),
            s.runner.logs()
        ),
    };
    assert!(live > 0);
    eprintln!(
        "0→1→rollback: {} acknowledged writes ({} after the cut-over), {live} live links back on SQLite",
        ledger.acked,
        ledger.acked.saturating_sub(on_pg)
    );
    drop(s.runner);
    s.ns.delete().await;
}
