//! Transitions past phase 1 with real data: the sharded tier (phase 3) on
//! the local PostgreSQL, one fresh database per shard (see
//! `ladder_e2e::climb::Databases`), the migration Job run for real by the
//! runner, and the app on loopback started from the `LADDER_STORE` the
//! operator rendered (mapped to loopback as the runner maps a pod) under a
//! bounded load that keeps a ledger of acknowledged writes.
//!
//! - 1 → 2 → 3: after each step, every acknowledged write is where the
//!   active phase keeps it (after 2 → 3, in exactly one shard: the one its
//!   slot names in the rendered shard map).
//! - `deletionPolicy: Delete` during 2 → 3: the PostgreSQL primary's claim
//!   keeps its UID until the retain window ends, and only then goes.
//! - 3 → 2 without the approval annotation: blocked with `ApprovalRequired`,
//!   nothing deleted, no migration; with `ladder.dev/approve-transition:
//!   "3-to-2"`: it completes, and the data is back on the unsharded tier.
//! - 2 → 3 on 2 shards (`status.shardMapVersion` 1), then the shard count
//!   changed to 4: a resharding onto shard map v2 (the migration Job moves
//!   the slots, the old map goes at Retire, the sweep Job runs), every
//!   acknowledged write in the shard that owns it, nothing holding data
//!   deleted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use ladder_crds::contract::ShardMap;
use ladder_crds::scalingphase::TransitionStep;
use ladder_e2e::app::{self, Ledger, Load, LoopbackApp};
use ladder_e2e::climb::{
    DataChange, DataGuard, Databases, Holder, Snapshot, SpWatch, app_store, describe,
};
use ladder_e2e::runner::{Runner, RunnerConfig};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, wait_for};

const SP: &str = "shop";
const TIMEOUT: Duration = Duration::from_secs(300);

fn manifest(phase: i32, extra: &str) -> String {
    format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: {SP}}}\nspec:\n  phase: {phase}\n{extra}"
    )
}

/// One ScalingPhase with its operator, runner, databases, loopback app and load.
struct Climb {
    ns: TestNamespace,
    op: Operator,
    dbs: Databases,
    runner: Runner,
    watch: SpWatch,
    guard: DataGuard,
    app: LoopbackApp,
    load: Load,
    extra: String,
}

impl Climb {
    /// The ScalingPhase created at `phase` (no data to move yet), the app on
    /// the tier it rendered, writes acknowledged.
    async fn start(prefix: &str, phase: i32, extra: &str) -> Climb {
        let client = client().await.expect("client");
        install_crds(&client).await.expect("CRDs");
        let ns = TestNamespace::new(&client, prefix).await.expect("ns");
        let op = Operator::start(&ns.name).await.expect("operator");
        let dbs = Databases::create("climb", 4).await.expect("databases");
        let hosts = dbs.hosts(SP, &ns.name).expect("hosts");
        let runner = Runner::start(
            client.clone(),
            RunnerConfig {
                namespace: ns.name.clone(),
                binary: ladder_e2e::app_bin().expect("ladder-app"),
                hosts: hosts.clone(),
                extra_env: vec![],
            },
        )
        .expect("runner");
        let watch = SpWatch::start(ns.sps(), SP);
        ns.apply_sp(&manifest(phase, extra)).await.expect("apply");
        ns.wait_ready(SP, phase, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", op.log_text()));
        let guard = DataGuard::start(&client, &ns.name).await.expect("guard");
        let dir: PathBuf = std::env::temp_dir().join(format!("ladder-climb-app-{}", ns.name));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = app_store(&client, &ns.name, SP, &hosts, &dir.join("mounts"))
            .await
            .expect("the rendered store");
        let app = LoopbackApp::start(&dir, &store)
            .await
            .unwrap_or_else(|e| panic!("the app on {store}: {e:#}"));
        let load = Load::start(app.base.clone(), Duration::from_secs(900));
        wait_for("acknowledged writes", Duration::from_secs(60), || {
            let n = load.acked();
            async move { Ok((n >= 100).then_some(())) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", app.log_text()));
        Climb {
            ns,
            op,
            dbs,
            runner,
            watch,
            guard,
            app,
            load,
            extra: extra.to_owned(),
        }
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- status history:\n{}\n--- operator log (tail):\n{}\n--- runner:\n{}\n--- app log (tail):\n{}",
            describe(&self.watch.history()),
            tail(&self.op.log_text(), 40),
            self.runner.logs(),
            tail(&self.app.log_text(), 20)
        )
    }

    async fn apply(&self, phase: i32) {
        self.ns
            .apply_sp(&manifest(phase, &self.extra))
            .await
            .expect("apply");
    }

    /// Applies `phase` and waits until it is Ready with the transition
    /// cleared; a blocked transition fails at once.
    async fn climb(&mut self, phase: i32) -> Snapshot {
        let since = Instant::now();
        self.apply(phase).await;
        self.settle(phase, since, None).await
    }

    /// Waits, from `since` on, until `phase` is Ready with the transition
    /// cleared; a transition blocked for another reason than `resolving`
    /// fails at once.
    async fn settle(&mut self, phase: i32, since: Instant, resolving: Option<&str>) -> Snapshot {
        let s = self
            .watch
            .wait(&format!("phase {phase} settled"), TIMEOUT, |s| {
                s.at >= since
                    && (s
                        .blocked
                        .as_ref()
                        .is_some_and(|(r, _)| Some(r.as_str()) != resolving)
                        || (s.ready && s.active == Some(phase) && s.transition.is_none()))
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()));
        if let Some((reason, message)) = &s.blocked {
            panic!("blocked: {reason}: {message}\n{}", self.diagnostics());
        }
        s
    }

    /// The ledger as it stands with no write in flight, checked against
    /// `urls`; the load goes on afterwards.
    async fn check(&self, what: &str, urls: &[String]) -> Ledger {
        let ledger = self.load.pause().await.expect("pause the load");
        let live = app::check_ledger_in(urls, &ledger)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", self.diagnostics()));
        self.load.resume();
        eprintln!(
            "{what}: {} acknowledged writes ({} refused while fenced, longest gap {:?}), {live} live links verified in {} database(s)",
            ledger.acked,
            ledger.refused,
            ledger.longest_unavailable(),
            urls.len()
        );
        ledger
    }

    /// The retain deadline the operator stored for `from` → `to`.
    fn retain_until(&self, from: i32, to: i32) -> k8s_openapi::jiff::Timestamp {
        self.watch
            .history()
            .iter()
            .find(|s| {
                s.transition == Some((from, to, TransitionStep::Retain)) && s.retain_until.is_some()
            })
            .and_then(|s| s.retain_until)
            .unwrap_or_else(|| {
                panic!(
                    "{from} -> {to} was never seen in Retain\n{}",
                    self.diagnostics()
                )
            })
    }

    /// Every step of `from` → `to` seen, in order.
    fn steps(&self, from: i32, to: i32) -> Vec<TransitionStep> {
        self.watch
            .step_entries(from, to)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    async fn writes_go_on(&self) {
        let before = self.load.acked();
        wait_for("writes go on", Duration::from_secs(30), || {
            let n = self.load.acked();
            async move { Ok((n >= before + 20).then_some(())) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()));
    }

    async fn finish(self) {
        let _ = self.load.finish().await;
        drop(self.runner);
        drop(self.op);
        self.ns.delete().await;
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The rendered shard map of `version`, if its ConfigMap exists.
async fn shard_map(c: &Climb, version: i32) -> Option<ShardMap> {
    // Immutable, so named after its content: `<sp>-shard-map-v<N>-<hash>`.
    let prefix = format!("{SP}-shard-map-v{version}-");
    let cm =
        c.ns.api::<ConfigMap>()
            .list(&Default::default())
            .await
            .expect("ConfigMaps")
            .items
            .into_iter()
            .find(|cm| {
                cm.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&prefix))
            })?;
    let text = cm.data.unwrap_or_default()["shard-map.json"].clone();
    Some(ShardMap::parse(&text).expect("shard map"))
}

/// Checks that each live link sits in the shard its slot names in the
/// rendered shard map v1. Returns how many were checked.
async fn check_routing(c: &Climb) -> usize {
    let map = shard_map(c, 1).await.expect("the shard map");
    let table = map.slot_table().expect("slot table");
    // The map's shards: databases past them have no tables yet.
    let urls = c.dbs.shard_urls().expect("urls");
    let seen = app::links_in(&urls[..map.shards.len().min(urls.len())])
        .await
        .expect("links");
    let mut wrong = Vec::new();
    for (code, places) in &seen {
        let owner = table[map.slot_of(code) as usize];
        if places.iter().any(|(i, _, _)| *i != owner) {
            wrong.push(format!("{code}: in {places:?}, slot owner {owner}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} links in the wrong shard: {:?}",
        wrong.len(),
        seen.len(),
        &wrong[..wrong.len().min(10)]
    );
    seen.len()
}

/// Every deletion of a data holder the guard saw must concern the tier
/// `left` (by name), and come at or after `not_before`; claims may only go
/// when `claims_may_go`.
fn assert_only_retired(
    c: &Climb,
    left: &[&str],
    not_before: Option<k8s_openapi::jiff::Timestamp>,
    claims_may_go: bool,
) {
    for e in c.guard.events() {
        if !c
            .guard
            .data_events()
            .iter()
            .any(|d| d.uid == e.uid && d.what == e.what)
        {
            eprintln!(
                "(allowed: {:?} {} {:?}: its claims stay)",
                e.kind, e.name, e.what
            );
            continue;
        }
        let of_left = left.iter().any(|n| e.name.contains(n));
        let ok = match (&e.what, e.kind) {
            (DataChange::Replaced { .. }, _) => false,
            (_, Holder::Claim) if !claims_may_go => false,
            _ => of_left && not_before.is_some_and(|t| e.wall >= t),
        };
        assert!(
            ok,
            "{:?} {} ({}) {:?} at {} (allowed: {left:?} from {not_before:?}, claims {claims_may_go})\n{}",
            e.kind,
            e.name,
            e.uid,
            e.what,
            e.wall,
            c.diagnostics()
        );
    }
}

#[tokio::test]
async fn climbing_1_2_3_keeps_every_acknowledged_write() {
    let mut c = Climb::start("e2e-123", 1, "  transitions: {retainOldTierFor: 5s}\n").await;
    let unsharded = vec![c.dbs.url().expect("url")];
    c.check("phase 1", &unsharded).await;

    // 1 -> 2 adds read replicas: nothing to migrate, the primary stays.
    c.climb(2).await;
    let steps = c.steps(1, 2);
    assert!(
        !steps.contains(&TransitionStep::Migrate) && steps.contains(&TransitionStep::CutOver),
        "1 -> 2 steps {steps:?}"
    );
    assert!(c.runner.runs().is_empty(), "no migration for 1 -> 2");
    c.writes_go_on().await;
    c.check("after 1 -> 2", &unsharded).await;

    // 2 -> 3: the migration Job copies onto the four shards.
    c.climb(3).await;
    let steps = c.steps(2, 3);
    for s in [
        TransitionStep::Migrate,
        TransitionStep::Verify,
        TransitionStep::CutOver,
        TransitionStep::Retain,
    ] {
        assert!(steps.contains(&s), "2 -> 3 went through {s:?}: {steps:?}");
    }
    let runs = c.runner.runs();
    assert!(
        runs.len() == 1 && runs[0].exit_code == 0,
        "one migration, successful:\n{}",
        c.runner.logs()
    );
    let tier = c.app.tier(&app::http()).await;
    assert!(
        tier.as_deref().is_some_and(|t| t.contains("shard")),
        "the app serves from {tier:?}\n{}",
        c.diagnostics()
    );
    c.writes_go_on().await;
    let shards = c.dbs.shard_urls().expect("urls");
    c.check("after 2 -> 3", &shards).await;
    let routed = check_routing(&c).await;
    eprintln!("after 2 -> 3: {routed} links, each in the shard its slot names");
    let retain = c.retain_until(2, 3);
    assert_only_retired(&c, &[&format!("{SP}-postgres")], Some(retain), false);
    c.finish().await;
}

#[tokio::test]
async fn resharding_2_to_4_keeps_every_acknowledged_write() {
    const RETAIN: &str = "  transitions: {retainOldTierFor: 5s}\n";
    let mut c = Climb::start(
        "e2e-reshard",
        2,
        &format!("  overrides: {{postgres: {{shards: 2}}}}\n{RETAIN}"),
    )
    .await;
    c.check("phase 2", &[c.dbs.url().expect("url")]).await;

    // 2 -> 3 onto 2 shards: shard map v1.
    let s = c.climb(3).await;
    assert_eq!(s.shards, Some((2, 1)), "status after 2 -> 3: {s}");
    let shards = c.dbs.shard_urls().expect("urls");
    // Shards 2 and 3 are databases the cluster does not use yet.
    c.check("after 2 -> 3 on 2 shards", &shards[..2]).await;
    let routed = check_routing(&c).await;
    eprintln!("after 2 -> 3: {routed} links, each in the shard its slot names");
    let retain_2_3 = c.retain_until(2, 3);

    // The shard count goes to 4: a resharding 3 -> 3 onto map v2.
    let since = Instant::now();
    c.extra = format!("  overrides: {{postgres: {{shards: 4}}}}\n{RETAIN}");
    c.apply(3).await;
    c.watch
        .wait("the resharding to start", TIMEOUT, |s| {
            s.at >= since
                && (s.transition.is_some_and(|(f, t, _)| (f, t) == (3, 3)) || s.blocked.is_some())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.diagnostics()));
    let s = c.settle(3, Instant::now(), None).await;
    assert_eq!(
        s.shards,
        Some((4, 2)),
        "status.shardMapVersion after 2 -> 4 shards: {s}"
    );
    let steps = c.steps(3, 3);
    for step in [
        TransitionStep::Migrate,
        TransitionStep::Verify,
        TransitionStep::CutOver,
        TransitionStep::Retain,
    ] {
        assert!(
            steps.contains(&step),
            "the resharding went through {step:?}: {steps:?}"
        );
    }
    // Until the cut-over the app used the 2 shards of map v1, from then on
    // the 4 of map v2.
    let history = c.watch.history();
    for snap in history
        .iter()
        .filter(|s| s.transition.is_some_and(|(f, t, _)| (f, t) == (3, 3)))
    {
        let step = snap.step().expect("step");
        let want = if step >= TransitionStep::CutOver {
            (4, 2)
        } else {
            (2, 1)
        };
        assert_eq!(snap.shards, Some(want), "at {step:?}\n{}", c.diagnostics());
    }
    // 2 -> 3, the resharding, and the sweep: each run for real, each exit 0
    // (Ready waits for the sweep Job; its pod's outcome reaches the
    // runner's list as it is written back).
    wait_for("the sweep's run", Duration::from_secs(60), || {
        let n = c.runner.runs().len();
        async move { Ok((n >= 3).then_some(())) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.diagnostics()));
    let runs = c.runner.runs();
    let names: Vec<&str> = runs.iter().map(|r| r.pod.as_str()).collect();
    assert!(
        runs.len() == 3
            && runs.iter().all(|r| r.exit_code == 0)
            && names[1].starts_with(&format!("{SP}-reshard-v1-to-v2"))
            && names[2].starts_with(&format!("{SP}-sweep-shards-v2")),
        "runs {names:?}:\n{}",
        c.runner.logs()
    );
    // The app followed the cut-over onto the new map (its /readyz names
    // the kind of tier only: `shards`).
    let tier = c.app.tier(&app::http()).await;
    let followed = c
        .app
        .log_text()
        .lines()
        .any(|l| l.contains("cut over to the new tier") && l.contains("shard-map-v2"));
    assert!(
        tier.as_deref() == Some("shards") && followed,
        "the app serves from {tier:?}, followed the cut-over to map v2: {followed}\n{}",
        c.diagnostics()
    );
    // The old map is retired, the new one written.
    assert!(shard_map(&c, 1).await.is_none(), "map v1 outlived Retire");
    let map = shard_map(&c, 2).await.expect("map v2");
    assert_eq!(map.shards.len(), 4);
    c.writes_go_on().await;

    // Every acknowledged write, in the shard map v2 names for it.
    let table = map.slot_table().expect("slot table");
    let ledger = c.load.pause().await.expect("pause the load");
    let (live, strays) =
        app::check_ledger_owned(&shards, &ledger, |code| table[map.slot_of(code) as usize])
            .await
            .unwrap_or_else(|e| panic!("after 2 -> 4 shards: {e:#}\n{}", c.diagnostics()));
    c.load.resume();
    let per_shard = app::links_in(&shards).await.expect("links");
    let mut counts = [0usize; 4];
    for places in per_shard.values() {
        for (i, _, _) in places {
            counts[*i] += 1;
        }
    }
    eprintln!(
        "after 2 -> 4 shards: {} acknowledged writes, {live} live links verified; rows per shard {counts:?}; {strays} rows kept by the sweep on shards that no longer own them",
        ledger.acked
    );
    assert!(
        counts[2] > 0 && counts[3] > 0,
        "the new shards got their slots: {counts:?}"
    );
    // Nothing holding data went, but the unsharded tier 2 -> 3 retired.
    assert_only_retired(&c, &[&format!("{SP}-postgres")], Some(retain_2_3), false);
    c.finish().await;
}

#[tokio::test]
async fn delete_policy_keeps_the_postgres_volume_until_the_retain_window_ends() {
    let extra = "  deletionPolicy: Delete\n  transitions: {retainOldTierFor: 20s}\n";
    let mut c = Climb::start("e2e-del", 2, extra).await;
    let primary_set = format!("{SP}-postgres");
    // The StatefulSet controller creates the primary's claim from its template.
    let claim = wait_for("the primary's claim", Duration::from_secs(60), || {
        let uids = c.guard.uids();
        let suffix = format!("-{primary_set}-0");
        async move {
            Ok(uids
                .into_iter()
                .find(|((k, n), _)| *k == Holder::Claim && n.ends_with(&suffix)))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.diagnostics()));
    let ((_, claim_name), claim_uid) = claim;

    c.apply(3).await;
    let retain = c
        .watch
        .wait("2 -> 3 in Retain", TIMEOUT, |s| {
            s.blocked.is_some()
                || (s.transition == Some((2, 3, TransitionStep::Retain))
                    && s.retain_until.is_some())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.diagnostics()));
    assert!(retain.blocked.is_none(), "{}", c.diagnostics());
    let until = retain.retain_until.expect("retainUntil");
    // Until the window ends, the claim is the same one and not being deleted.
    let mut looks = 0;
    while k8s_openapi::jiff::Timestamp::now() < until {
        let uids = c.guard.uids();
        assert_eq!(
            uids.get(&(Holder::Claim, claim_name.clone())),
            Some(&claim_uid),
            "{claim_name} during the retain window\n{}",
            c.diagnostics()
        );
        assert!(
            c.guard.events().iter().all(|e| e.name != claim_name),
            "{claim_name} deleted before {until}: {:?}",
            c.guard.events()
        );
        looks += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.settle(3, retain.at, None).await;
    c.check("after 2 -> 3 (Delete)", &c.dbs.shard_urls().expect("urls"))
        .await;
    // After the window, Delete takes the volume with its StatefulSet.
    let gone = wait_for("the claim deleted after the window", TIMEOUT, || {
        let events = c.guard.events();
        let name = claim_name.clone();
        async move { Ok(events.into_iter().find(|e| e.name == name)) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.diagnostics()));
    assert!(
        gone.wall >= until && gone.uid == claim_uid,
        "{claim_name} went at {} ({:?}), the window ended at {until}",
        gone.wall,
        gone.what
    );
    assert_only_retired(&c, &[&primary_set], Some(until), true);
    eprintln!(
        "Delete during 2 -> 3: {claim_name} ({claim_uid}) kept through the window ({looks} looks), {:?} at {} (window end {until})",
        gone.what, gone.wall
    );
    c.finish().await;
}

#[tokio::test]
async fn stepping_3_to_2_needs_approval_then_brings_the_data_back() {
    let mut c = Climb::start("e2e-down", 3, "  transitions: {retainOldTierFor: 5s}\n").await;
    let shards = c.dbs.shard_urls().expect("urls");
    c.check("phase 3", &shards).await;
    let holders = c.guard.uids();

    c.apply(2).await;
    let blocked = c
        .watch
        .wait("TransitionBlocked", TIMEOUT, |s| s.blocked.is_some())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.diagnostics()));
    let (reason, message) = blocked.blocked.clone().expect("blocked");
    assert_eq!(reason, "ApprovalRequired", "{message}");
    assert!(
        message.contains("3-to-2"),
        "the message says how: {message}"
    );
    // It stays so: nothing moves, nothing is deleted, the app stays on the shards.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = c.watch.latest().expect("status");
    assert_eq!(now.active, Some(3), "{now}");
    assert!(now.transition.is_none(), "no transition started: {now}");
    assert!(now.blocked.is_some(), "still blocked: {now}");
    assert!(c.runner.runs().is_empty(), "no migration ran");
    assert!(
        c.guard.data_events().is_empty(),
        "{:?}\n{}",
        c.guard.events(),
        c.diagnostics()
    );
    assert_eq!(c.guard.uids(), holders, "the same data holders");
    c.writes_go_on().await;
    c.check("3 -> 2 awaiting approval", &shards).await;

    // Approved: the data goes back to the unsharded tier.
    let patch = serde_json::json!({"metadata": {"annotations": {"ladder.dev/approve-transition": "3-to-2"}}});
    let since = Instant::now();
    c.ns.sps()
        .patch(SP, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    c.settle(2, since, Some("ApprovalRequired")).await;
    let runs = c.runner.runs();
    assert!(
        runs.len() == 1 && runs[0].exit_code == 0,
        "one migration, successful:\n{}",
        c.runner.logs()
    );
    let tier = c.app.tier(&app::http()).await;
    assert!(
        tier.as_deref().is_some_and(|t| !t.contains("shard")),
        "the app serves from {tier:?}\n{}",
        c.diagnostics()
    );
    c.writes_go_on().await;
    c.check("after 3 -> 2", &[c.dbs.url().expect("url")]).await;
    let retain = c.retain_until(3, 2);
    assert_only_retired(&c, &[&format!("{SP}-pg-shard-")], Some(retain), false);
    c.finish().await;
}

/// The steps of each transition in `history`, in the order seen, split
/// where a transition (by `from`, `to`) starts or ends.
fn step_runs(history: &[Snapshot]) -> Vec<((i32, i32), Vec<TransitionStep>)> {
    let mut runs: Vec<((i32, i32), Vec<TransitionStep>)> = Vec::new();
    let mut open = false;
    for s in history {
        match s.transition {
            Some((from, to, step)) => {
                match runs.last_mut() {
                    Some((ft, steps)) if open && *ft == (from, to) => {
                        if steps.last() != Some(&step) {
                            steps.push(step);
                        }
                    }
                    _ => runs.push(((from, to), vec![step])),
                }
                open = true;
            }
            None => open = false,
        }
    }
    runs
}

/// The demo's climb with the shipped examples (phase 1 with a 20Gi volume
/// override, then phase 2 without it, so the primary's StatefulSet is
/// re-created to grow its volume), by three ScalingPhases in turn beside a
/// fourth, with a client reading the object every 100 ms (as the demo's
/// `kubectl get` loop does): a transition's stored step only goes forward.
///
/// Known to fail now and then: `make demo` showed this climb going back
/// from CutOver to WaitTargetReady (same `startedAt`) twice in two runs,
/// which looks like a decision taken on a cached ScalingPhase older than
/// the operator's own last status write; here it has not failed yet (see
/// the transitions helper's report).
#[tokio::test]
async fn the_examples_climb_1_to_2_with_steps_that_only_go_forward() {
    let client = client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::new(&client, "e2e-examples")
        .await
        .expect("ns");
    let op = Operator::start(&ns.name).await.expect("operator");
    let read = |f: &str, name: &str| {
        std::fs::read_to_string(ladder_e2e::repo_root().join("examples").join(f))
            .expect("example")
            .replace("name: shop", &format!("name: {name}"))
    };
    ns.apply_sp(&read("phase-1-growth.yaml", "other"))
        .await
        .expect("a second ScalingPhase");
    let mut runs = Vec::new();
    let mut histories = String::new();
    for name in ["shop", "shop-b", "shop-c"] {
        let sps = ns.sps();
        let polled = name.to_owned();
        let reader = tokio::spawn(async move {
            loop {
                let _ = sps.get(&polled).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut watch = SpWatch::start(ns.sps(), name);
        for (phase, file) in [(1, "phase-1-growth.yaml"), (2, "phase-2-regional.yaml")] {
            let since = Instant::now();
            ns.apply_sp(&read(file, name)).await.expect("apply");
            let s = watch
                .wait(&format!("{name}: phase {phase} settled"), TIMEOUT, |s| {
                    s.at >= since
                        && (s.blocked.is_some()
                            || (s.ready && s.active == Some(phase) && s.transition.is_none()))
                })
                .await
                .unwrap_or_else(|e| panic!("{e:#}\n{}", op.log_text()));
            assert!(s.blocked.is_none(), "{name}: {s}");
        }
        reader.abort();
        let history = watch.history();
        runs.extend(step_runs(&history));
        histories.push_str(&format!("{name}:\n{}\n", describe(&history)));
    }
    eprintln!("transitions seen: {runs:?}");
    assert_eq!(runs.len(), 3, "one 1 -> 2 transition each: {runs:?}");
    for (ft, steps) in &runs {
        let backward = steps.windows(2).find(|w| w[1] < w[0]);
        assert!(
            backward.is_none(),
            "{ft:?} went back from {:?} to {:?} ({steps:?}):\n{histories}",
            backward.map(|w| w[0]),
            backward.map(|w| w[1]),
        );
    }
    drop(op);
    ns.delete().await;
}
