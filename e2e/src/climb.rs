//! The kit of the transition tests, the transition benchmark and the demo:
//! what it takes to climb a ScalingPhase with real data on this machine.
//!
//! - [`Databases`]: one set of fresh databases on the local PostgreSQL per
//!   test (the unsharded one and one per shard), and the runner's mapping
//!   ([`Databases::hosts`]) that puts them in place of the in-cluster
//!   `ladder` and `shard_<i>` databases, so tests running side by side never
//!   share rows.
//! - [`app_store`]: the `LADDER_STORE` the operator rendered into the app
//!   Deployment, mapped to loopback the way the runner maps a pod (hosts,
//!   the TLS directory, the shard map written to a local file), so the
//!   loopback app serves from exactly the tier the cluster would.
//! - [`SpWatch`]: every change of the ScalingPhase's status that matters to
//!   a transition (active phase, step, retain deadline, blocked reason,
//!   readiness), with when it was seen; a test waits on it, kills the
//!   operator at a step, or times the steps.
//! - [`DataGuard`]: every PersistentVolumeClaim and PostgreSQL StatefulSet of
//!   the namespace by UID, and every deletion or re-creation of one, with
//!   when it was seen, so a test can say that nothing holding data went
//!   before it was allowed to.
//!
//! Every connection goes to the local apiserver or the local services on
//! loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use ladder_crds::scalingphase::{ScalingPhase, TransitionStep};

use crate::runner::{Hosts, Mounts, map_text};

/// Every step of a transition, in order.
pub const STEPS: [TransitionStep; 8] = [
    TransitionStep::PrepareTarget,
    TransitionStep::WaitTargetReady,
    TransitionStep::Migrate,
    TransitionStep::Verify,
    TransitionStep::CutOver,
    TransitionStep::Retain,
    TransitionStep::Retire,
    TransitionStep::Done,
];

/// Shard databases created beside the unsharded one (the CRD's default
/// shard count is 4; 8 leaves room for an override).
pub const MAX_SHARDS: usize = 8;

/// Fresh databases on the local primary standing for one ScalingPhase's.
#[derive(Clone, Debug)]
pub struct Databases {
    /// The unsharded database (in place of `ladder`).
    pub name: String,
    /// How many shard databases (`<name>_shard_<i>`, in place of `shard_<i>`).
    pub shards: usize,
}

fn port_of(var: &str) -> anyhow::Result<u16> {
    let url = crate::service_env(var)
        .with_context(|| format!("{var} is not set: run hack/services.sh up"))?;
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("no port in {var}={url}"))
}

impl Databases {
    /// Creates `<prefix>_<random>` and `shards` shard databases beside it.
    pub async fn create(prefix: &str, shards: usize) -> anyhow::Result<Databases> {
        let admin = crate::service_env("LADDER_PG_PRIMARY_URL").context("LADDER_PG_PRIMARY_URL")?;
        let name = format!("{prefix}_{:08x}", rand::random::<u32>());
        let dbs = Databases { name, shards };
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
        for db in std::iter::once(dbs.name.clone()).chain((0..shards).map(|i| dbs.shard_db(i))) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
                .execute(&mut conn)
                .await
                .with_context(|| format!("create database {db}"))?;
        }
        Ok(dbs)
    }

    /// The name of shard database `i`.
    pub fn shard_db(&self, i: usize) -> String {
        format!("{}_shard_{i}", self.name)
    }

    /// The unsharded database's URL on the local primary.
    pub fn url(&self) -> anyhow::Result<String> {
        crate::app::primary_db_url(&self.name)
    }

    /// The shard databases' URLs on the local primary, in shard order.
    pub fn shard_urls(&self) -> anyhow::Result<Vec<String>> {
        (0..self.shards)
            .map(|i| crate::app::primary_db_url(&self.shard_db(i)))
            .collect()
    }

    /// The runner's mapping for ScalingPhase `sp` in `ns`, with these
    /// databases in place of the in-cluster ones (every access path: through
    /// PgBouncer, to a primary, to a read replica), then the local services
    /// for everything else.
    pub fn hosts(&self, sp: &str, ns: &str) -> anyhow::Result<Hosts> {
        let mut hosts = Hosts::local_services(sp, ns)?;
        let bouncer = port_of("LADDER_PGBOUNCER_URL")?;
        let primary = port_of("LADDER_PG_PRIMARY_URL")?;
        let replica = port_of("LADDER_PG_REPLICA_URL")?;
        let mut specific = Vec::new();
        let mut each = |db_in: &str, db_local: &str, primary_host: &str, set: &str| {
            // The rendered URLs name Services by `<name>.<namespace>.svc`.
            specific.push((
                format!("{sp}-pgbouncer.{ns}.svc:6432/{db_in}?"),
                format!("localhost:{bouncer}/{db_local}?"),
            ));
            specific.push((
                format!("{primary_host}.{ns}.svc:5432/{db_in}?"),
                format!("localhost:{primary}/{db_local}?"),
            ));
            for i in 0..8 {
                specific.push((
                    format!("{set}-{i}.{set}.{ns}.svc:5432/{db_in}?"),
                    format!("localhost:{replica}/{db_local}?"),
                ));
            }
        };
        each(
            "ladder",
            &self.name,
            &format!("{sp}-postgres"),
            &format!("{sp}-postgres-replica"),
        );
        for i in 0..self.shards {
            each(
                &format!("shard_{i}"),
                &self.shard_db(i),
                &format!("{sp}-pg-shard-{i}"),
                &format!("{sp}-pg-shard-{i}-replica"),
            );
        }
        specific.append(&mut hosts.rewrites);
        hosts.rewrites = specific;
        Ok(hosts)
    }
}

/// The app Deployment's `LADDER_STORE`, mapped to loopback as the runner maps
/// a pod: hosts by `hosts`, the TLS mount to the local services' TLS
/// directory, and every mounted ConfigMap (the shard map) written, mapped,
/// under `work`. The result is what the loopback app is started with.
pub async fn app_store(
    client: &Client,
    ns: &str,
    sp: &str,
    hosts: &Hosts,
    work: &Path,
) -> anyhow::Result<String> {
    let dep = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&format!("{sp}-app"))
        .await
        .context("the app Deployment")?;
    let pod = dep.spec.template.spec.context("pod spec")?;
    let container = pod.containers.first().context("a container")?;
    let store = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "LADDER_STORE")
        .and_then(|e| e.value.clone())
        .context("LADDER_STORE in the app Deployment")?;
    let volumes = pod.volumes.unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut pairs: Vec<(String, PathBuf)> = Vec::new();
    let mut files: Vec<(PathBuf, BTreeMap<String, String>)> = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(vol) = volumes.iter().find(|v| v.name == m.name) else {
            continue;
        };
        if let Some(cm) = &vol.config_map {
            let dir = work.join(&vol.name);
            std::fs::create_dir_all(&dir)?;
            let data = cms
                .get(&cm.name)
                .await
                .with_context(|| format!("ConfigMap {}", cm.name))?
                .data
                .unwrap_or_default();
            files.push((dir.clone(), data));
            pairs.push((m.mount_path.clone(), dir));
        } else if vol.secret.is_some()
            && let Some(tls) = &hosts.tls_dir
        {
            pairs.push((m.mount_path.clone(), tls.clone()));
        }
    }
    let mounts = Mounts::new(pairs);
    for (dir, data) in files {
        for (k, v) in data {
            std::fs::write(dir.join(&k), map_text(&v, &hosts.rewrites, &mounts))?;
        }
    }
    Ok(map_text(&store, &hosts.rewrites, &mounts))
}

/// What a transition test looks at in a ScalingPhase's status.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When the watch saw it.
    pub at: Instant,
    /// The same, on the wall clock.
    pub wall: Timestamp,
    /// `status.activePhase`.
    pub active: Option<i32>,
    /// `status.transition`: from, to, step.
    pub transition: Option<(i32, i32, TransitionStep)>,
    /// `status.transition.retainUntil`.
    pub retain_until: Option<Timestamp>,
    /// `TransitionBlocked=True`: reason and message.
    pub blocked: Option<(String, String)>,
    /// `Ready=True` for the current generation.
    pub ready: bool,
    /// The promoter's view: `status.observedTPS`, `status.recommendedPhase`
    /// and (Auto mode) `status.targetPhase`.
    pub load: (Option<f64>, Option<i32>, Option<i32>),
    /// The shard layout in use (`status.shards`, `status.shardMapVersion`).
    pub shards: Option<(i32, i32)>,
}

impl Snapshot {
    fn of(sp: &ScalingPhase) -> Snapshot {
        let status = sp.status.clone().unwrap_or_default();
        let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
        Snapshot {
            at: Instant::now(),
            wall: Timestamp::now(),
            active: status.active_phase,
            transition: status.transition.as_ref().map(|t| (t.from, t.to, t.step)),
            retain_until: status
                .transition
                .as_ref()
                .and_then(|t| t.retain_until.as_ref())
                .map(|t| t.0),
            blocked: cond("TransitionBlocked")
                .filter(|c| c.status == "True")
                .map(|c| (c.reason.clone(), c.message.clone())),
            ready: cond("Ready").is_some_and(|c| {
                c.status == "True" && c.observed_generation == sp.metadata.generation
            }),
            load: (
                status.observed_tps,
                status.recommended_phase,
                status.target_phase,
            ),
            shards: status.shards.zip(status.shard_map_version),
        }
    }

    fn same(&self, o: &Snapshot) -> bool {
        (
            self.active,
            self.transition,
            self.retain_until,
            &self.blocked,
            self.ready,
            self.load,
            self.shards,
        ) == (
            o.active,
            o.transition,
            o.retain_until,
            &o.blocked,
            o.ready,
            o.load,
            o.shards,
        )
    }

    /// The step stored, if a transition is in progress.
    pub fn step(&self) -> Option<TransitionStep> {
        self.transition.map(|(_, _, s)| s)
    }

    /// Ready in `phase` with no transition left (or its `Done`).
    pub fn settled_in(&self, phase: i32) -> bool {
        self.ready
            && self.active == Some(phase)
            && self.step().is_none_or(|s| s == TransitionStep::Done)
    }
}

impl std::fmt::Display for Snapshot {
    /// One line as `kubectl get sp -w` would show the transition columns.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = self.active.map_or("-".into(), |p| p.to_string());
        let ready = if self.ready { "True" } else { "False" };
        let transition = match self.transition {
            Some((from, to, step)) => format!("{from}->{to} {step:?}"),
            None => "-".into(),
        };
        write!(
            f,
            "PHASE {phase:<2} READY {ready:<5} TRANSITION {transition}"
        )?;
        if let Some((shards, version)) = self.shards {
            write!(f, "  SHARDS {shards} (map v{version})")?;
        }
        if let Some((reason, _)) = &self.blocked {
            write!(f, "  BLOCKED {reason}")?;
        }
        Ok(())
    }
}

/// A watch on one ScalingPhase's status; dropping it stops the watch.
#[derive(Debug)]
pub struct SpWatch {
    task: tokio::task::JoinHandle<()>,
    rx: tokio::sync::watch::Receiver<Option<Snapshot>>,
    history: Arc<Mutex<Vec<Snapshot>>>,
}

impl Drop for SpWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SpWatch {
    /// Starts watching ScalingPhase `name` of `api`'s namespace.
    pub fn start(api: Api<ScalingPhase>, name: &str) -> SpWatch {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let history = Arc::new(Mutex::new(Vec::new()));
        let h = history.clone();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(api, cfg));
            while let Some(ev) = stream.next().await {
                let sp = match ev {
                    Ok(watcher::Event::Apply(sp) | watcher::Event::InitApply(sp)) => sp,
                    Ok(_) => continue,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let snap = Snapshot::of(&sp);
                let mut h = h.lock().expect("history");
                if h.last().is_none_or(|l: &Snapshot| !l.same(&snap)) {
                    h.push(snap.clone());
                    let _ = tx.send(Some(snap));
                }
            }
        });
        SpWatch { task, rx, history }
    }

    /// Every distinct state seen so far, oldest first.
    pub fn history(&self) -> Vec<Snapshot> {
        self.history.lock().expect("history").clone()
    }

    /// The latest state seen.
    pub fn latest(&self) -> Option<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits until a state satisfies `pred` (the latest one first) and
    /// returns it. A state that went by between two looks is not missed:
    /// every change wakes the waiter, and the history is checked too.
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> anyhow::Result<Snapshot> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut checked = 0;
        loop {
            {
                let h = self.history.lock().expect("history");
                if let Some(s) = h[checked.min(h.len())..].iter().find(|s| pred(s)) {
                    return Ok(s.clone());
                }
                checked = h.len();
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the ScalingPhase watch stopped while waiting for {what}"),
                Err(_) => bail!(
                    "timed out after {timeout:?} waiting for {what}; last seen: {}",
                    self.latest().map_or("nothing".into(), |s| s.to_string())
                ),
            }
        }
    }

    /// When each step of transition `from` → `to` was first seen, in order.
    pub fn step_entries(&self, from: i32, to: i32) -> Vec<(TransitionStep, Instant)> {
        let mut out: Vec<(TransitionStep, Instant)> = Vec::new();
        for s in self.history() {
            if let Some((f, t, step)) = s.transition
                && (f, t) == (from, to)
                && out.last().is_none_or(|(last, _)| *last != step)
            {
                out.push((step, s.at));
            }
        }
        out
    }
}

/// Kinds of object [`DataGuard`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    /// A PersistentVolumeClaim (any: the SQLite volume, PostgreSQL's).
    Claim,
    /// A PostgreSQL StatefulSet (`*-postgres*`, `*-pg-shard-*`).
    Postgres,
}

/// Something that happened to an object holding data.
#[derive(Clone, Debug)]
pub struct DataEvent {
    /// Its kind.
    pub kind: Holder,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// What happened.
    pub what: DataChange,
    /// When the guard saw it.
    pub wall: Timestamp,
}

/// What happened to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataChange {
    /// It got a deletion timestamp. `orphan`: deleted with
    /// `propagationPolicy: Orphan` (its pods and claims stay, as when the
    /// operator re-creates a StatefulSet to grow its volumes).
    Deleting {
        /// The `orphan` finalizer was set.
        orphan: bool,
    },
    /// It is gone.
    Gone,
    /// An object of the same name with another UID appeared: the old one
    /// (and its data) was replaced.
    Replaced {
        /// The UID it had before.
        was: String,
    },
}

#[derive(Debug, Default)]
struct GuardState {
    uids: BTreeMap<(Holder, String), String>,
    events: Vec<DataEvent>,
}

/// Watches every claim and PostgreSQL StatefulSet of a namespace.
#[derive(Debug)]
pub struct DataGuard {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    state: Arc<Mutex<GuardState>>,
}

impl Drop for DataGuard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn is_postgres(name: &str) -> bool {
    name.contains("-postgres") || name.contains("-pg-shard-")
}

fn note(state: &Mutex<GuardState>, kind: Holder, meta: &kube::api::ObjectMeta, gone: bool) {
    let name = meta.name.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let mut st = state.lock().expect("guard");
    let event = |what: DataChange| DataEvent {
        kind,
        name: name.clone(),
        uid: uid.clone(),
        what,
        wall: Timestamp::now(),
    };
    if gone {
        st.events.push(event(DataChange::Gone));
        return;
    }
    if let Some(was) = st
        .uids
        .get(&(kind, name.clone()))
        .filter(|w| **w != uid)
        .cloned()
    {
        st.events.push(event(DataChange::Replaced { was }));
    }
    if meta.deletion_timestamp.is_some()
        && !st
            .events
            .iter()
            .any(|e| e.uid == uid && matches!(e.what, DataChange::Deleting { .. }))
    {
        let orphan = meta.finalizers.iter().flatten().any(|f| f == "orphan");
        st.events.push(event(DataChange::Deleting { orphan }));
    }
    st.uids.insert((kind, name), uid);
}

impl DataGuard {
    /// Starts watching `ns`; returns once both watches have listed what exists.
    pub async fn start(client: &Client, ns: &str) -> anyhow::Result<DataGuard> {
        let state = Arc::new(Mutex::new(GuardState::default()));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        let (s1, r1) = (state.clone(), ready_tx.clone());
        let claims = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(pvcs, watcher::Config::default()));
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        note(&s1, Holder::Claim, &o.metadata, false);
                    }
                    Ok(watcher::Event::Delete(o)) => note(&s1, Holder::Claim, &o.metadata, true),
                    Ok(watcher::Event::InitDone) => {
                        let _ = r1.send(()).await;
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let (s2, r2) = (state.clone(), ready_tx);
        let postgres = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(sets, watcher::Config::default()));
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))
                        if is_postgres(&o.name_any()) =>
                    {
                        note(&s2, Holder::Postgres, &o.metadata, false);
                    }
                    Ok(watcher::Event::Delete(o)) if is_postgres(&o.name_any()) => {
                        note(&s2, Holder::Postgres, &o.metadata, true);
                    }
                    Ok(watcher::Event::InitDone) => {
                        let _ = r2.send(()).await;
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let guard = DataGuard {
            tasks: vec![claims, postgres],
            state,
        };
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
                .await
                .context("the data guard's watches did not list within 30 s")?;
        }
        Ok(guard)
    }

    /// The UID of every holder seen, by kind and name.
    pub fn uids(&self) -> BTreeMap<(Holder, String), String> {
        self.state.lock().expect("guard").uids.clone()
    }

    /// Every deletion and replacement seen, oldest first.
    pub fn events(&self) -> Vec<DataEvent> {
        self.state.lock().expect("guard").events.clone()
    }

    /// The events that may have lost data: every one but a StatefulSet
    /// deleted with its pods and claims orphaned, its disappearance and its
    /// re-creation under the same name (the claims, which the guard also
    /// watches, are the data).
    pub fn data_events(&self) -> Vec<DataEvent> {
        let events = self.events();
        let orphaned = |uid: &str| {
            events.iter().any(|e| {
                e.kind == Holder::Postgres
                    && e.uid == uid
                    && e.what == DataChange::Deleting { orphan: true }
            })
        };
        events
            .iter()
            .filter(|e| {
                !(e.kind == Holder::Postgres
                    && match &e.what {
                        DataChange::Deleting { orphan } => *orphan,
                        DataChange::Gone => orphaned(&e.uid),
                        DataChange::Replaced { was } => orphaned(was),
                    })
            })
            .cloned()
            .collect()
    }
}

/// The ScalingPhase's transition in one line per step, for a failure message.
pub fn describe(history: &[Snapshot]) -> String {
    let start = history.first().map(|s| s.at);
    history
        .iter()
        .map(|s| {
            let t = start.map_or(0.0, |t0| s.at.duration_since(t0).as_secs_f64());
            format!("  {t:7.2}s  {s}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
