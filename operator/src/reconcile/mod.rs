//! The reconciler: a short driver of named steps ([`steps`]).
//!
//! 1. **validate** (pure): [`crate::validate::validate`] → `Validated` or an
//!    `InvalidSpec` condition + Event, then wait for the spec to change;
//! 2. **where it stands** (pure): the active phase, the promoter's decision
//!    ([`crate::promoter`], over LoadReports in reflector stores) and the
//!    effective target;
//! 3. **observe** (pure, [`observe`]): readiness and presence of the
//!    children, read from the reflector stores the controller keeps
//!    ([`stores`]), never by a GET per workload;
//! 4. **decide** (pure): [`crate::transition::decide`], from the stored
//!    `status.transition`, the readiness of what was applied and the
//!    migration Job's state: which phases to render side by side; the active
//!    phase moves only when a transition reaches Done;
//! 5. **render** (pure): [`crate::render::render`];
//! 6. **plan** (pure, [`plan`]) then **write** (client): the whole set when
//!    it changed or the drift check is due ([`crate::apply::apply`], then a
//!    prune of what the stores show is no longer rendered), only the
//!    missing children when some went away, nothing otherwise (an idle
//!    operator makes no request);
//! 7. **status** (pure compute; the client patches only when it changed,
//!    and only from an observation that includes its own last writes) and
//!    the Events.
//!
//! What reaches the reconciler is filtered at the source: the ScalingPhase
//! watch passes changes of generation, annotations, finalizers and
//! deletion ([`trigger`]), not the operator's own status writes; the
//! children's watches pass what can change readiness, and deletions
//! ([`stores`]); bursts are debounced ([`DEBOUNCE`]).
//!
//! Deletion goes through the finalizer [`FINALIZER`]: it keeps (Retain) or
//! deletes (Delete) volumes and credentials before garbage collection runs.

pub mod observe;
pub mod plan;
pub mod stores;
pub mod watches;

mod load;
mod report;
mod shapes;
mod steps;
mod volumes;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{self, Event};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use crate::apply::{self, ApplyError};
use crate::integrations::Integrations;
use crate::metrics::Metrics;
use crate::promoter::History;
use crate::validate::World;
use ladder_crds::load_report::LoadReport;
use ladder_crds::scalingphase::{DeletionPolicy, ScalingPhase};
use observe::ChildKey;
use stores::Stores;

/// Finalizer that decides what happens to data on deletion.
pub const FINALIZER: &str = "ladder.dev/data-retention";
/// How often an unchanged ScalingPhase is re-applied anyway, to undo edits
/// of children that the watches do not report (only deletions are).
pub const DRIFT_CHECK: Duration = Duration::from_secs(300);
/// How long the watches get to deliver the operator's own writes before a
/// child still missing from the stores counts as missing.
pub const SETTLE: Duration = Duration::from_secs(3);
/// How long after its own writes the operator reports only a finished
/// rollout: a rollout that completes within it costs one status write, not
/// one per step; a slower one is reported as rolling out when it ends.
pub const QUIET_ROLLOUT: Duration = Duration::from_secs(10);
/// Triggers of one ScalingPhase within this long of each other make one
/// reconcile (the burst of watch events after an apply, a rollout's
/// status updates).
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// Requeue while components are not ready (workload watches usually wake us earlier).
const NOT_READY_REQUEUE: Duration = Duration::from_secs(30);
/// How often the promoter samples the load at the latest.
const PROMOTER_SAMPLE: Duration = Duration::from_secs(10);
/// Requeue while a transition moves from step to step.
const TRANSITION_REQUEUE: Duration = Duration::from_secs(2);

/// Why a reconcile failed. Invalid specs are not errors: they become a
/// condition and the reconcile waits for a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying or pruning children failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Reading what the stores do not hold (a finished Job's pods, volume
    /// claims of retired tiers) failed.
    #[error("failed to read {kind} {name}: {source}")]
    Observe {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// Writing status failed.
    #[error("failed to patch status of {name}: {source}")]
    Status {
        /// ScalingPhase name.
        name: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// A phase needed by the transition in progress cannot be rendered.
    #[error("render: {0}")]
    Render(String),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Apply(e) => e.category(),
            Error::Observe { .. } => "observe",
            Error::Render(_) => "render",
            Error::Status { .. } => "status",
            // The finalizer helper wraps the reconcile's own errors.
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.category()
                }
                _ => "finalizer",
            },
        }
    }
}

/// What this process last wrote for one ScalingPhase.
#[derive(Clone, Debug)]
struct Applied {
    /// Hash of the rendered set of the last whole-set apply.
    hash: String,
    /// The active phase of that apply.
    active: i32,
    /// When that whole-set apply was.
    full_at: Instant,
    /// When any child was last written (whole set or repair).
    write_at: Instant,
    /// Repairs in a row without a reconcile that found nothing missing.
    repairs: u32,
    /// The generation each written child had after its last write.
    written: BTreeMap<ChildKey, i64>,
}

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Node metadata (for regions).
    pub nodes: Store<PartialObjectMeta<Node>>,
    /// Optional integrations, kept current by [`crate::integrations::detect`].
    pub integrations: watch::Receiver<Integrations>,
    /// The children, as the watches last saw them.
    pub stores: Stores,
    /// Per ScalingPhase uid: what this process last wrote.
    applied: Arc<Mutex<HashMap<String, Applied>>>,
    /// Where the promoter reads load from (LoadReports and the app pods
    /// that may write them); `None` when not wired (tests).
    load: Option<LoadSources>,
    /// Per ScalingPhase uid: the promoter's windowed load history.
    histories: Arc<Mutex<HashMap<String, History>>>,
    /// Per ScalingPhase uid: failed reconciles in a row (for the backoff).
    failures: Arc<Mutex<HashMap<String, u32>>>,
    /// HTTP client of the Prometheus load source.
    prom: reqwest::Client,
}

/// The reflector stores the promoter reads.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // kube's Store has no Debug
pub struct LoadSources {
    /// Every LoadReport the operator can see.
    pub reports: Store<LoadReport>,
    /// Metadata of the app pods (label `app.kubernetes.io/component=app`).
    pub pods: Store<PartialObjectMeta<Pod>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("integrations", &*self.integrations.borrow())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        nodes: Store<PartialObjectMeta<Node>>,
        integrations: watch::Receiver<Integrations>,
        stores: Stores,
    ) -> Self {
        Self {
            client,
            metrics,
            recorder,
            nodes,
            integrations,
            stores,
            applied: Arc::default(),
            load: None,
            histories: Arc::default(),
            failures: Arc::default(),
            prom: crate::load_source::client(),
        }
    }

    /// Lets the promoter read LoadReports and app pods from these stores.
    pub fn with_load(mut self, load: LoadSources) -> Self {
        self.load = Some(load);
        self
    }

    fn world(&self) -> World {
        let regions: BTreeSet<String> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                n.metadata
                    .labels
                    .as_ref()?
                    .get("topology.kubernetes.io/region")
                    .cloned()
            })
            .collect();
        World {
            node_regions: regions.into_iter().collect(),
            integrations: *self.integrations.borrow(),
        }
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<String, Applied>> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the plan needs of the last writes.
    fn last(&self, uid: &str) -> Option<plan::Last> {
        self.applied().get(uid).map(|a| plan::Last {
            hash: a.hash.clone(),
            since_full: a.full_at.elapsed(),
            since_write: a.write_at.elapsed(),
            repairs: a.repairs,
        })
    }

    fn written(&self, uid: &str) -> BTreeMap<ChildKey, i64> {
        self.applied()
            .get(uid)
            .map(|a| a.written.clone())
            .unwrap_or_default()
    }

    fn since_write(&self, uid: &str) -> Option<Duration> {
        self.applied().get(uid).map(|a| a.write_at.elapsed())
    }

    fn applied_active(&self, uid: &str) -> Option<i32> {
        self.applied().get(uid).map(|a| a.active)
    }

    fn record_full(&self, uid: &str, hash: &str, active: i32, written: &[apply::Written]) {
        let now = Instant::now();
        let mut map = self.applied();
        let a = map.entry(uid.to_owned()).or_insert_with(|| Applied {
            hash: String::new(),
            active,
            full_at: now,
            write_at: now,
            repairs: 0,
            written: BTreeMap::new(),
        });
        a.hash = hash.to_owned();
        a.active = active;
        a.full_at = now;
        a.write_at = now;
        a.repairs = 0;
        a.written = generations(written);
    }

    fn record_repair(&self, uid: &str, written: &[apply::Written]) {
        if let Some(a) = self.applied().get_mut(uid) {
            a.write_at = Instant::now();
            a.repairs = a.repairs.saturating_add(1);
            a.written.extend(generations(written));
        }
    }

    /// A reconcile found nothing missing: the next loss is repaired at once.
    fn repaired_none(&self, uid: &str) {
        if let Some(a) = self.applied().get_mut(uid) {
            a.repairs = 0;
        }
    }

    fn forget(&self, uid: &str) {
        self.applied().remove(uid);
    }
}

fn generations(written: &[apply::Written]) -> BTreeMap<ChildKey, i64> {
    written
        .iter()
        .filter_map(|w| Some(((w.kind, w.name.clone()), w.generation?)))
        .collect()
}

/// The ScalingPhase watch's predicate: what can change a reconcile's
/// outcome. Generation (the spec, and deletion, which bumps it), the
/// annotations (the transition approval), the finalizers (the first
/// reconcile adds ours) and the deletion mark. Status is not in it: the
/// operator's own status writes do not wake it again.
pub fn trigger(sp: &ScalingPhase) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sp.metadata.generation.hash(&mut h);
    sp.metadata.annotations.hash(&mut h);
    sp.metadata.finalizers.hash(&mut h);
    sp.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .hash(&mut h);
    Some(h.finish())
}

/// Entry point for the Controller.
#[instrument(skip_all, fields(name = %sp.name_any(), namespace = sp.namespace().unwrap_or_default()))]
pub async fn reconcile(sp: Arc<ScalingPhase>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let ns = sp.namespace().unwrap_or_default();
    let uid = sp.uid().unwrap_or_default();
    let api: Api<ScalingPhase> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer::finalizer(&api, FINALIZER, sp, |event| async {
        match event {
            Event::Apply(sp) => steps::apply_phase(&sp, &ctx).await,
            Event::Cleanup(sp) => cleanup(&sp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(start.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&uid);
    }
    result
}

/// Permanent problems never reach here (they are conditions); everything
/// here is transient: count it and back off.
pub fn error_policy(sp: Arc<ScalingPhase>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.category());
    let uid = sp.uid().unwrap_or_default();
    let attempt = {
        let mut failures = ctx
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(uid).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let jitter: f64 = rand::random();
    let delay = backoff(attempt, jitter);
    warn!(name = %sp.name_any(), category = error.category(), attempt, retry_in = ?delay, %error, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Exponential backoff per object: 1 s, 2 s, 4 s ... capped at 5 minutes,
/// with up to +50% jitter (`jitter` in 0..1) so objects that failed together
/// (an apiserver restart) do not retry in lockstep.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    const CAP_SECS: f64 = 300.0;
    let base = 2f64
        .powi(i32::try_from(attempt.saturating_sub(1).min(16)).unwrap_or(16))
        .min(CAP_SECS);
    Duration::from_secs_f64((base * (1.0 + 0.5 * jitter.clamp(0.0, 1.0))).min(CAP_SECS))
}

/// Deletion: keep (Retain) or delete (Delete) volumes and credentials,
/// then let the finalizer go.
async fn cleanup(sp: &ScalingPhase, ctx: &Context) -> Result<Action, Error> {
    let retain = sp.spec.deletion_policy == DeletionPolicy::Retain;
    let uid = sp.uid().unwrap_or_default();
    apply::release_data(
        &ctx.client,
        &sp.namespace().unwrap_or_default(),
        &sp.name_any(),
        &uid,
        retain,
    )
    .await?;
    ctx.forget(&uid);
    ctx.metrics
        .conditions
        .forget(&sp.namespace().unwrap_or_default(), &sp.name_any());
    info!(retain, "released data before deletion");
    Ok(Action::await_change())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(5, 0.0), Duration::from_secs(16));
        assert_eq!(backoff(40, 0.0), Duration::from_secs(300));
        assert_eq!(backoff(40, 1.0), Duration::from_secs(300));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(6));
        assert!(backoff(3, 0.5) > backoff(3, 0.0));
    }

    #[test]
    fn the_trigger_ignores_status_and_sees_spec_approval_and_deletion() {
        let sp: ScalingPhase = serde_yaml::from_str(
            "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop, generation: 1}\nspec: {phase: 0}\n",
        )
        .expect("parses");
        let mut with_status = sp.clone();
        with_status.status = Some(Default::default());
        with_status.metadata.resource_version = Some("42".into());
        assert_eq!(trigger(&sp), trigger(&with_status));
        let mut newer = sp.clone();
        newer.metadata.generation = Some(2);
        assert_ne!(trigger(&sp), trigger(&newer));
        let mut approved = sp.clone();
        approved.metadata.annotations = Some(
            [(
                crate::transition::APPROVE_ANNOTATION.to_owned(),
                "1-to-0".to_owned(),
            )]
            .into_iter()
            .collect(),
        );
        assert_ne!(trigger(&sp), trigger(&approved));
        let mut finalized = sp.clone();
        finalized.metadata.finalizers = Some(vec![FINALIZER.into()]);
        assert_ne!(trigger(&sp), trigger(&finalized));
    }
}
