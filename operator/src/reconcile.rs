//! The reconciler: a short driver of named steps.
//!
//! 1. **read world** (client): node regions from a reflector, optional
//!    integrations (KEDA, cert-manager, Prometheus Operator) from a watch on
//!    their CRDs ([`crate::integrations::detect`]);
//! 2. **validate** (pure): [`crate::validate::validate`] → `Validated` or an
//!    `InvalidSpec` condition + Event, then wait for the spec to change;
//! 3. **render** (pure): [`crate::render::render`];
//! 4. **apply** (client): [`crate::apply::apply`] then [`crate::apply::prune`],
//!    only when the rendered set changed or the drift-check interval passed
//!    (an idle operator makes no writes);
//! 5. **status** (pure compute, client patch only when it changed).
//!
//! Between validate and render sits the transition machine
//! ([`crate::transition::decide`], pure): from the stored
//! `status.transition`, the readiness of what was applied and the migration
//! Job's state, it decides which phases to render side by side, and the
//! active phase moves only when a transition reaches Done.
//!
//! Deletion goes through the finalizer [`FINALIZER`]: it keeps (Retain) or
//! deletes (Delete) volumes and credentials before garbage collection runs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{self, Event};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use crate::apply::{self, ApplyError};
use crate::integrations::Integrations;
use crate::load_source;
use crate::metrics::Metrics;
use crate::promoter::{self, History};
use crate::render::migration::{self, TierVolumes};
use crate::render::{self, Desired, ExpectedComponent};
use crate::status::{self, Observed};
use crate::transition::{self, Facts, JobState, MigrationResult, Shape};
use crate::validate::{self, World};
use ladder_crds::load_report::LoadReport;
use ladder_crds::scalingphase::AutoscaleMode;
use ladder_crds::scalingphase::{ComponentStatus, DeletionPolicy, ScalingPhase, TransitionStep};

/// Finalizer that decides what happens to data on deletion.
pub const FINALIZER: &str = "ladder.dev/data-retention";
/// How often an unchanged ScalingPhase is re-applied anyway, to repair drift
/// (someone edited or deleted a child that is not watched).
pub const DRIFT_CHECK: Duration = Duration::from_secs(300);
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
    /// Reading a workload's readiness failed.
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
            Error::Finalizer(_) => "finalizer",
        }
    }
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
    /// Per ScalingPhase uid: hash of the last applied desired set and when.
    applied: Arc<Mutex<HashMap<String, (String, Instant)>>>,
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
    ) -> Self {
        Self {
            client,
            metrics,
            recorder,
            nodes,
            integrations,
            applied: Arc::default(),
            load: None,
            histories: Arc::default(),
            failures: Arc::default(),
            prom: load_source::client(),
        }
    }

    /// Lets the promoter read LoadReports and app pods from these stores.
    pub fn with_load(mut self, load: LoadSources) -> Self {
        self.load = Some(load);
        self
    }

    /// Samples the load of `sp` (fresh, believable LoadReports summed) into
    /// its history and runs the promoter. `None` when autoscaling is off.
    ///
    /// `external` is the reading of `spec.autoscale.source` when one is set
    /// (the TPS, or why there is none); LoadReports are then not summed.
    fn promote(
        &self,
        sp: &ScalingPhase,
        active: i32,
        now: Timestamp,
        external: Option<Result<f64, String>>,
    ) -> Option<promoter::Decision> {
        let policy = promoter::Policy::from_spec(&sp.spec.autoscale, sp.spec.monthly_budget_usd);
        let uid = sp.uid().unwrap_or_default();
        if policy.mode == AutoscaleMode::Off {
            self.histories
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&uid);
            return None;
        }
        let ns = sp.namespace().unwrap_or_default();
        let name = sp.name_any();
        let external_reading = external.clone();
        let tps = match external {
            Some(reading) => reading.ok(),
            None => self.reports_tps(&ns, &name, now),
        };
        let mut map = self
            .histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let history = map.entry(uid).or_default();
        history.push(promoter::Sample { at: now, tps }, policy.horizon());
        let changes = phase_changes(sp);
        let inputs = Self::promoter_inputs(sp, active, now, &changes);
        let mut decision = promoter::decide(&policy, history, &inputs);
        if let Some(reading) = external_reading {
            decision.metrics = match reading {
                Ok(v) => (
                    true,
                    promoter::reasons::PROMETHEUS_FRESH,
                    format!("{} TPS from the Prometheus query", round2(v)),
                ),
                Err(e) => (
                    false,
                    promoter::reasons::PROMETHEUS_FAILED,
                    format!(
                        "the Prometheus query failed: {e}; the phase holds (missing data never demotes)"
                    )
                    .chars()
                    .take(1000)
                    .collect(),
                ),
            };
        }
        Some(decision)
    }

    /// Fresh, believable LoadReports of `name` summed (the default source).
    fn reports_tps(&self, ns: &str, name: &str, now: Timestamp) -> Option<f64> {
        self.load.as_ref().and_then(|load| {
            let pods = load.pods.state();
            let ours = |pod: &str| {
                pods.iter().any(|p| {
                    p.name_any() == pod
                        && p.namespace().as_deref() == Some(ns)
                        && p.labels()
                            .get(render::SCALINGPHASE_LABEL)
                            .map(String::as_str)
                            == Some(name)
                })
            };
            let reports = load.reports.state();
            let here = reports
                .iter()
                .filter(|r| r.namespace().as_deref() == Some(ns))
                .filter(|r| {
                    // Reports naming another ScalingPhase of this namespace
                    // are that one's business, not rejections of ours.
                    r.spec.scaling_phase == name
                        || r.labels()
                            .get(render::SCALINGPHASE_LABEL)
                            .map(String::as_str)
                            == Some(name)
                })
                .map(|r| r.as_ref());
            let (sum, rejected) = promoter::sum_reports(name, here, &ours, now);
            for reason in rejected {
                self.metrics.report_rejected(reason);
            }
            sum
        })
    }

    /// Rebuilds the history of `sp` from its Prometheus source when there is
    /// none in memory (after a restart), then reads the query now.
    async fn read_prometheus(
        &self,
        sp: &ScalingPhase,
        src: &ladder_crds::scalingphase::PrometheusSource,
        now: Timestamp,
    ) -> Result<f64, String> {
        let uid = sp.uid().unwrap_or_default();
        let policy = promoter::Policy::from_spec(&sp.spec.autoscale, sp.spec.monthly_budget_usd);
        let empty = self
            .histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&uid)
            .is_none_or(|h| h.last().is_none());
        if empty {
            let start = now - SignedDuration::from_secs(policy.horizon());
            let step = u64::try_from(promoter::MIN_SAMPLE_GAP_SECS * 3).unwrap_or(15);
            match load_source::range(&self.prom, src, start, now, step).await {
                Ok(samples) => {
                    let mut map = self
                        .histories
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let history = map.entry(uid).or_default();
                    for (at, v) in samples.into_iter().filter(|(at, _)| *at < now) {
                        history.push(promoter::Sample { at, tps: Some(v) }, policy.horizon());
                    }
                }
                Err(e) => {
                    warn!(name = %sp.name_any(), error = %e, "could not rebuild the load history from Prometheus")
                }
            }
        }
        load_source::instant(&self.prom, src, now).await
    }

    /// The promoter's inputs besides the history; `changes` are the times
    /// of the phase changes in `status.history` (see [`phase_changes`]).
    fn promoter_inputs<'a>(
        sp: &ScalingPhase,
        active: i32,
        now: Timestamp,
        changes: &'a [Timestamp],
    ) -> promoter::Inputs<'a> {
        let status = sp.status.as_ref();
        let mut cost = [0i64; 5];
        for (p, c) in cost.iter_mut().enumerate() {
            *c = ladder_crds::catalogue::Phase::from_number(i32::try_from(p).unwrap_or(0))
                .map(|ph| ladder_crds::catalogue::profile(ph).base_monthly_cost_usd)
                .unwrap_or(0);
        }
        promoter::Inputs {
            now,
            active,
            declared: sp.spec.phase,
            target: status.and_then(|s| s.target_phase),
            phase_since: status.and_then(|s| s.history.last()).map(|h| h.time.0),
            changes,
            cost,
        }
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

    /// Whether to apply, and whether to prune after applying.
    ///
    /// Pruning lists every child kind, the most expensive step, so it runs
    /// only when something can be stale: the rendered set changed, the phase
    /// changed since the last status, or the drift-check interval passed. The
    /// first apply of an unchanged phase after a restart does not prune; the
    /// drift check does it `DRIFT_CHECK` later.
    fn plan(&self, uid: &str, hash: &str, phase_changed: bool) -> Option<bool> {
        let map = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(uid) {
            Some((h, at)) if h == hash && at.elapsed() <= DRIFT_CHECK => None,
            Some(_) => Some(true),
            None => Some(phase_changed),
        }
    }

    fn record(&self, uid: &str, hash: Option<String>) {
        let mut map = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match hash {
            Some(h) => map.insert(uid.to_owned(), (h, Instant::now())),
            None => map.remove(uid),
        };
    }
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
            Event::Apply(sp) => apply_phase(&sp, &ctx).await,
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

async fn apply_phase(sp: &ScalingPhase, ctx: &Context) -> Result<Action, Error> {
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let uid = sp.uid().unwrap_or_default();
    let generation = sp.metadata.generation;
    let old = sp.status.as_ref();
    // Read once: validation, rendering and pruning see the same facts.
    let world = ctx.world();
    // 1. validate the declared spec (at its effective target phase).
    let (v, _) = match validate::validate(sp, &world) {
        Ok(ok) => ok,
        Err(invalid) => return refuse(sp, ctx, &uid, invalid.to_string()).await,
    };
    let declared_target = v.phase.number();
    // A new ScalingPhase starts at its target: there is no data to move yet.
    // When no status says so (a first reconcile that applied but never
    // wrote status), the app Deployment's LADDER_PHASE does: a spec change
    // then still goes through the transition machine.
    let active = match old.and_then(|s| s.active_phase) {
        Some(p) => p,
        None => applied_phase(&ctx.client, &ns, &name)
            .await?
            .unwrap_or(declared_target),
    };
    // The promoter (pure) over the load observed so far.
    let sampled_at = Timestamp::now();
    let external = match sp
        .spec
        .autoscale
        .source
        .as_ref()
        .and_then(|s| s.prometheus.as_ref())
    {
        Some(src) if sp.spec.autoscale.mode != AutoscaleMode::Off => {
            Some(ctx.read_prometheus(sp, src, sampled_at).await)
        }
        _ => None,
    };
    let decision = ctx.promote(sp, active, sampled_at, external);
    let target = match decision.as_ref().and_then(|d| d.target) {
        Some(t) if sp.spec.autoscale.mode == AutoscaleMode::Auto => {
            let declared = sp.spec.phase;
            let cap = sp.spec.autoscale.max_phase.unwrap_or(4);
            if t > declared {
                t.min(cap).max(declared)
            } else {
                declared
            }
        }
        _ => declared_target,
    };
    let stored = old.and_then(|s| s.transition.as_ref());

    // 2. observe what the last decision applied, and the migration Job.
    let shape_now = transition::current_shape(active, stored);
    let rendered_now = match render_shape(sp, &world, shape_now) {
        Ok(d) => d,
        Err(message) => return refuse(sp, ctx, &uid, message).await,
    };
    let (components_now, missing_now) = observe(&ctx.client, &ns, &rendered_now.expected).await?;
    let job = match stored.and_then(|t| t.job_name.as_deref()) {
        Some(job) if stored.is_some_and(|t| t.moves_data) => {
            observe_job(&ctx.client, &ns, job).await?
        }
        _ => JobState::Absent,
    };
    let policy = &sp.spec.transitions;
    let facts = Facts {
        now: Timestamp::now(),
        active,
        target,
        current: stored,
        shape_ready: !missing_now && components_now.iter().all(|c| c.ready),
        job,
        approval: sp
            .annotations()
            .get(transition::APPROVE_ANNOTATION)
            .map(String::as_str),
        rollback: sp
            .annotations()
            .get(transition::ROLLBACK_ANNOTATION)
            .map(String::as_str),
        allow_demotion: policy.allow_demotion,
        retain_secs: policy
            .retain_old_tier_for
            .as_ref()
            .and_then(|d| d.seconds())
            .unwrap_or(transition::DEFAULT_RETAIN_SECS),
        step_timeout_secs: policy
            .step_timeout
            .as_ref()
            .and_then(|d| d.seconds())
            .unwrap_or(transition::DEFAULT_STEP_TIMEOUT_SECS),
        name: &name,
    };

    // 3. decide (pure). Paused: the stored step stays as it is.
    let mut plan = if sp.spec.paused {
        transition::Plan {
            shape: shape_now,
            active,
            transition: stored.cloned(),
            blocked: None,
            finished: None,
            entered: None,
            retire: None,
            verified_rows: None,
        }
    } else {
        transition::decide(&facts)
    };
    if plan.entered == Some(TransitionStep::PrepareTarget)
        && let Some(t) = &plan.transition
        && let Some(stale) = stale_volumes(sp, &world, ctx, &ns, t.from, t.to).await?
    {
        plan = transition::Plan {
            transition: None,
            shape: shape_now,
            entered: None,
            blocked: Some(transition::Blocked {
                reason: transition::blocked::STALE_VOLUMES,
                message: format!(
                    "phase {} would start on volumes a past transition retired ({stale}); they hold stale data. Back them up and delete them (or remove their {} label to reuse them knowingly) to go on",
                    t.to,
                    transition::RETIRED_BY_LABEL
                ),
            }),
            ..plan
        };
    }

    // 4. render (pure) what the decision needs.
    let desired = if plan.shape == shape_now {
        rendered_now
    } else {
        match render_shape(sp, &world, plan.shape) {
            Ok(d) => d,
            Err(message) => {
                plan.shape = shape_now;
                plan.transition = stored.cloned();
                plan.entered = None;
                plan.retire = None;
                plan.blocked = Some(transition::Blocked {
                    reason: transition::blocked::INVALID_STEP,
                    message,
                });
                rendered_now
            }
        }
    };
    let (active_v, active_profile) =
        validated_at(sp, &world, plan.active).map_err(|e| Error::Render(e.to_string()))?;

    // 5. apply (client), only when the rendered set changed.
    let mut applied_now = false;
    if !sp.spec.paused {
        let hash = render::short_hash(desired.to_yaml().as_bytes());
        let phase_changed = plan.shape != shape_now
            || old
                .and_then(|s| s.active_phase)
                .is_some_and(|p| p != plan.active);
        if let Some(prune) = ctx.plan(&uid, &hash, phase_changed) {
            if let Err(e) = apply::apply(&ctx.client, &ns, &desired, &ctx.metrics).await {
                let next = status::compute(
                    old,
                    generation,
                    Observed::ApplyFailed(e.reason(), e.to_string()),
                    now(),
                );
                patch_status(sp, ctx, next).await?;
                return Err(e.into());
            }
            if prune {
                apply::prune(
                    &ctx.client,
                    &ns,
                    &name,
                    &uid,
                    &desired,
                    world.integrations,
                    &ctx.metrics,
                )
                .await?;
            }
            ctx.record(&uid, Some(hash));
            applied_now = true;
            info!(phase = plan.active, shape = ?plan.shape, objects = desired.len(), "applied");
        }
        if let Some((from, to)) = plan.retire {
            retire_volumes(sp, &world, ctx, &ns, from, to).await?;
        }
    }
    let (components, missing) = if plan.shape == shape_now {
        (components_now, missing_now)
    } else {
        observe(&ctx.client, &ns, &desired.expected).await?
    };
    if missing && !applied_now && !sp.spec.paused {
        // A workload vanished since the last apply: apply again right away.
        ctx.record(&uid, None);
        return Ok(Action::requeue(Duration::from_millis(100)));
    }

    // 6. status (pure compute, patched only when it changed).
    let all_ready = components.iter().all(|c| c.ready);
    let observed = Observed::Rendered {
        profile: &active_profile,
        components,
        cost: active_v.estimated_monthly_cost(&active_profile),
        budget: active_v.monthly_budget_usd,
        paused: sp.spec.paused,
    };
    let before_ready = old
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == status::types::READY)
        })
        .map(|c| c.status == "True");
    let before_blocked = old.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::types::TRANSITION_BLOCKED && c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    });
    let at = now();
    let mut next = status::compute(old, generation, observed, at.clone());
    next.transition = plan.transition.clone();
    apply_decision(&mut next, decision.as_ref(), sp, generation, &at);
    if let Some(d) = &decision {
        ctx.metrics
            .promoter_view(&ns, &name, d.observed_tps, d.recommended);
        let before = old.and_then(|s| s.recommended_phase);
        if before != Some(d.recommended) {
            let direction = if d.recommended > active {
                "up"
            } else if d.recommended < active {
                "down"
            } else {
                "hold"
            };
            if direction != "hold" {
                ctx.metrics.promotion(direction, "recommended");
            }
            publish(
                ctx,
                sp,
                EventType::Normal,
                "Recommendation",
                &format!("phase {}: {}", d.recommended, d.recommendation.reason),
            )
            .await;
        }
        if let Some((reason, message)) = &d.refused
            && !old.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == status::types::TRANSITION_BLOCKED && c.reason == *reason)
            })
        {
            ctx.metrics
                .promotion(if d.recommended > active { "up" } else { "down" }, reason);
            publish(ctx, sp, EventType::Warning, reason, message).await;
        }
        if d.target != old.and_then(|s| s.target_phase) && d.target.is_some() {
            ctx.metrics.promotion(
                if d.target > Some(active) {
                    "up"
                } else {
                    "down"
                },
                "applied",
            );
        }
    }
    match &plan.blocked {
        Some(b) => status::set_condition(
            &mut next,
            status::types::TRANSITION_BLOCKED,
            true,
            b.reason,
            b.message.clone(),
            generation,
            &at,
        ),
        None if decision.as_ref().is_some_and(|d| d.refused.is_some()) => {
            if let Some((reason, message)) = decision.as_ref().and_then(|d| d.refused.clone()) {
                status::set_condition(
                    &mut next,
                    status::types::TRANSITION_BLOCKED,
                    true,
                    reason,
                    message,
                    generation,
                    &at,
                );
            }
        }
        None => status::set_condition(
            &mut next,
            status::types::TRANSITION_BLOCKED,
            false,
            if plan.transition.is_some() {
                "TransitionProceeding"
            } else {
                "NoTransition"
            },
            plan.transition
                .as_ref()
                .map(|t| t.message.clone())
                .unwrap_or_else(|| format!("phase {} is the effective target", plan.active)),
            generation,
            &at,
        ),
    }
    if let Some(t) = &plan.transition
        && plan.blocked.is_none()
    {
        status::set_condition(
            &mut next,
            status::types::PROGRESSING,
            true,
            "Transitioning",
            format!("phase {} to {}: {:?}: {}", t.from, t.to, t.step, t.message),
            generation,
            &at,
        );
    }
    ctx.metrics.active_phase(&ns, &name, plan.active);
    if let Some(step) = plan.entered {
        if let Some(t) = stored {
            ctx.metrics.transition_step(
                t.step,
                facts.now.duration_since(t.step_started_at.0).as_secs_f64(),
            );
        }
        let msg = plan
            .transition
            .as_ref()
            .map(|t| format!("phase {} to {}: {step:?}: {}", t.from, t.to, t.message))
            .unwrap_or_default();
        publish(ctx, sp, EventType::Normal, "TransitionStep", &msg).await;
    }
    if let Some(t) = &plan.transition
        && t.rollback_of.is_some()
        && stored.is_some_and(|s| s.rollback_of.is_none())
    {
        // The forward step ends here, undone; the reverse one begins.
        ctx.metrics.transition_finished(t.to, t.from, "rolled_back");
    }
    if let Some((from, to)) = plan.finished {
        ctx.metrics.transition_finished(from, to, "completed");
        publish(
            ctx,
            sp,
            EventType::Normal,
            "TransitionDone",
            &format!("phase {from} to {to} finished: phase {to} is active"),
        )
        .await;
    }
    if let Some(b) = &plan.blocked
        && before_blocked.as_ref().map(|(r, _)| r.as_str()) != Some(b.reason)
    {
        if let Some(t) = &plan.transition
            && b.reason != transition::blocked::ROLLBACK_REFUSED
        {
            ctx.metrics.transition_finished(t.from, t.to, b.reason);
        }
        publish(ctx, sp, EventType::Warning, b.reason, &b.message).await;
    }
    if patch_status(sp, ctx, next).await? && all_ready && before_ready != Some(true) {
        publish(
            ctx,
            sp,
            EventType::Normal,
            status::reasons::ALL_READY,
            &format!("phase {} is ready", plan.active),
        )
        .await;
    }
    let mut after = requeue_after(&plan, all_ready, &facts);
    if decision.is_some() {
        // Sample the load at least this often (LoadReport changes wake us too).
        after = after.min(PROMOTER_SAMPLE);
    }
    Ok(Action::requeue(after))
}

/// Two significant digits: status shows a figure, not every wiggle of it, so
/// a steady load causes no status writes.
fn round2(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let magnitude = 10f64.powi(x.abs().log10().floor() as i32 - 1);
    (x / magnitude).round() * magnitude
}

/// Times of the phase changes recorded in `status.history` (its first entry
/// is the phase the object started in, not a change).
fn phase_changes(sp: &ScalingPhase) -> Vec<Timestamp> {
    sp.status
        .as_ref()
        .map(|s| s.history.iter().skip(1).map(|h| h.time.0).collect())
        .unwrap_or_default()
}

/// Writes the promoter's decision into the next status.
fn apply_decision(
    next: &mut ladder_crds::scalingphase::ScalingPhaseStatus,
    decision: Option<&promoter::Decision>,
    sp: &ScalingPhase,
    generation: Option<i64>,
    at: &Time,
) {
    let Some(d) = decision else {
        next.observed_tps = None;
        next.recommended_phase = None;
        next.recommendation = None;
        next.target_phase = None;
        next.conditions.retain(|c| {
            c.type_ != status::types::METRICS_AVAILABLE && c.type_ != status::types::COOLDOWN_ACTIVE
        });
        return;
    };
    next.observed_tps = d.observed_tps.map(round2);
    next.recommended_phase = Some(d.recommended);
    let mut rec = d.recommendation.clone();
    rec.tps = round2(rec.tps);
    rec.reason = rec.reason.chars().take(1000).collect();
    next.recommendation = Some(rec);
    next.target_phase = if sp.spec.autoscale.mode == AutoscaleMode::Auto {
        d.target
    } else {
        None
    };
    let (ok, reason, message) = &d.metrics;
    let message = match d.observed_tps {
        Some(t) if *ok && *reason == promoter::reasons::FRESH => {
            format!("{} TPS from fresh LoadReports", round2(t))
        }
        _ => message.clone(),
    };
    status::set_condition(
        next,
        status::types::METRICS_AVAILABLE,
        *ok,
        reason,
        message,
        generation,
        at,
    );
    let (on, reason, message) = &d.cooldown;
    status::set_condition(
        next,
        status::types::COOLDOWN_ACTIVE,
        *on,
        reason,
        message.clone(),
        generation,
        at,
    );
}

/// How soon to look again: quickly while a transition moves, at the end of
/// the retention window while it waits, slowly when blocked or idle.
fn requeue_after(plan: &transition::Plan, all_ready: bool, f: &Facts<'_>) -> Duration {
    match &plan.transition {
        Some(_) if plan.blocked.is_some() => Duration::from_secs(15),
        Some(t) if t.step == TransitionStep::Retain => t
            .retain_until
            .as_ref()
            .map(|u| u.0.duration_since(f.now).as_secs().clamp(1, 60))
            .and_then(|s| u64::try_from(s).ok())
            .map_or(Duration::from_secs(60), Duration::from_secs),
        Some(_) => TRANSITION_REQUEUE,
        None if plan.blocked.is_some() => Duration::from_secs(30),
        None if all_ready => DRIFT_CHECK,
        None => NOT_READY_REQUEUE,
    }
}

/// An invalid spec: a condition and an Event, then wait for a change.
async fn refuse(
    sp: &ScalingPhase,
    ctx: &Context,
    uid: &str,
    message: String,
) -> Result<Action, Error> {
    let next = status::compute(
        sp.status.as_ref(),
        sp.metadata.generation,
        Observed::Invalid(message.clone()),
        now(),
    );
    if patch_status(sp, ctx, next).await? {
        publish(
            ctx,
            sp,
            EventType::Warning,
            status::reasons::INVALID_SPEC,
            &message,
        )
        .await;
    }
    ctx.record(uid, None);
    Ok(Action::await_change())
}

/// The spec validated as if it declared `phase` (autoscaling aside): what
/// each side of a transition renders.
fn validated_at(
    sp: &ScalingPhase,
    world: &World,
    phase: i32,
) -> Result<(validate::Validated, ladder_crds::catalogue::PhaseProfile), validate::Invalid> {
    let mut at = sp.clone();
    at.spec.phase = phase;
    at.spec.autoscale.mode = ladder_crds::scalingphase::AutoscaleMode::Off;
    at.spec.autoscale.max_phase = None;
    at.spec.autoscale.min_phase = None;
    validate::validate(&at, world)
}

fn render_at(
    sp: &ScalingPhase,
    world: &World,
    phase: i32,
) -> Result<(validate::Validated, Desired), String> {
    let (v, profile) = validated_at(sp, world, phase)
        .map_err(|e| format!("phase {phase} of this spec is invalid: {e}"))?;
    let d = render::render(&v, &profile);
    Ok((v, d))
}

/// Renders a [`Shape`]: one phase, or two side by side with the migration Job.
fn render_shape(sp: &ScalingPhase, world: &World, shape: Shape) -> Result<Desired, String> {
    match shape {
        Shape::Steady(phase) => render_at(sp, world, phase).map(|(_, d)| d),
        Shape::Both { serve, other, job } => {
            let (v, serving) = render_at(sp, world, serve)?;
            let (_, beside) = render_at(sp, world, other)?;
            let job = match job {
                Some((from, to)) => {
                    let (from_d, to_d) = if from == serve {
                        (&serving, &beside)
                    } else {
                        (&beside, &serving)
                    };
                    let app = render::child_name(&v, "app");
                    let meta = render::meta(&v, "", "migrate", "migrate");
                    Some(
                        migration::migration_job(
                            &transition::job_name(&sp.name_any(), from, to),
                            &app,
                            &meta,
                            from_d,
                            to_d,
                        )
                        .map_err(|e| e.to_string())?,
                    )
                }
                None => None,
            };
            let mut d = migration::merge(serving, beside);
            d.jobs.extend(job);
            Ok(d)
        }
    }
}

/// The phase the app Deployment of `name` was rendered for, if it exists.
async fn applied_phase(client: &Client, ns: &str, name: &str) -> Result<Option<i32>, Error> {
    let app = format!("{name}-app");
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&app)
        .await
        .map_err(|source| Error::Observe {
            kind: "Deployment",
            name: app.clone(),
            source,
        })?;
    Ok(d.and_then(|d| {
        d.spec
            .template
            .spec?
            .containers
            .first()?
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == ladder_crds::contract::env::PHASE)?
            .value
            .as_ref()?
            .parse()
            .ok()
    }))
}

/// Reads the migration Job and, when it finished, its pod's result.
async fn observe_job(client: &Client, ns: &str, name: &str) -> Result<JobState, Error> {
    let err = |source| Error::Observe {
        kind: "Job",
        name: name.to_owned(),
        source,
    };
    let Some(job) = Api::<Job>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(err)?
    else {
        return Ok(JobState::Absent);
    };
    let s = job.status.unwrap_or_default();
    let succeeded = s.succeeded.unwrap_or(0) > 0;
    let failed = s.failed.unwrap_or(0) > 0
        || s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True");
    if !succeeded && !failed {
        return Ok(JobState::Running);
    }
    // The pod's termination message is the migrator's JSON result.
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .map_err(err)?;
    let message = pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .map(|t| (t.exit_code, t.message.clone().unwrap_or_default()))
        .next_back();
    let result = message
        .as_ref()
        .and_then(|(_, m)| serde_json::from_str::<MigrationResult>(m.trim()).ok());
    if succeeded {
        return Ok(JobState::Succeeded(result));
    }
    let why = match (message, result) {
        (_, Some(r)) => format!("outcome {}: {}", r.outcome, r.message.unwrap_or_default()),
        (Some((exit, m)), None) => {
            let mut m: String = m.chars().take(300).collect();
            if m.is_empty() {
                m = "no message".into();
            }
            format!("exit code {exit}: {m}")
        }
        (None, None) => s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed")
            .and_then(|c| c.message.clone())
            .unwrap_or_else(|| "the Job failed".into()),
    };
    Ok(JobState::Failed(why))
}

/// The first claim of the tier `to` returns to that a past transition
/// retired, if any.
async fn stale_volumes(
    sp: &ScalingPhase,
    world: &World,
    ctx: &Context,
    ns: &str,
    from: i32,
    to: i32,
) -> Result<Option<String>, Error> {
    let (Ok((_, from_d)), Ok((_, to_d))) = (render_at(sp, world, from), render_at(sp, world, to))
    else {
        return Ok(None);
    };
    let coming = TierVolumes::only_in(&to_d, &from_d);
    if coming.is_empty() {
        return Ok(None);
    }
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
        .list_metadata(&ListParams::default().labels(transition::RETIRED_BY_LABEL))
        .await
        .map_err(|source| Error::Observe {
            kind: "PersistentVolumeClaim",
            name: String::new(),
            source,
        })?;
    Ok(claims
        .items
        .iter()
        .map(|c| c.name_any())
        .find(|n| coming.contains(n)))
}

/// Labels the volumes of the tier a transition retires: which transition,
/// and when. With `deletionPolicy: Retain` they stay; a later step back to
/// that tier refuses to start on them.
async fn retire_volumes(
    sp: &ScalingPhase,
    world: &World,
    ctx: &Context,
    ns: &str,
    from: i32,
    to: i32,
) -> Result<(), Error> {
    let (Ok((_, from_d)), Ok((_, to_d))) = (render_at(sp, world, from), render_at(sp, world, to))
    else {
        return Ok(());
    };
    let leaving = TierVolumes::only_in(&from_d, &to_d);
    if leaving.is_empty() {
        return Ok(());
    }
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns);
    let claims = api
        .list_metadata(&ListParams::default())
        .await
        .map_err(|source| Error::Observe {
            kind: "PersistentVolumeClaim",
            name: String::new(),
            source,
        })?;
    let by = format!("{from}-to-{to}");
    for c in claims
        .items
        .iter()
        .filter(|c| leaving.contains(&c.name_any()))
    {
        if c.labels().get(transition::RETIRED_BY_LABEL) == Some(&by) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {
            "labels": {(transition::RETIRED_BY_LABEL): by},
            "annotations": {(transition::RETIRED_AT_ANNOTATION): now().0.to_string()},
        }});
        api.patch_metadata(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| Error::Observe {
            kind: "PersistentVolumeClaim",
            name: c.name_any(),
            source,
        })?;
        info!(claim = %c.name_any(), %by, "volume of the retired tier labelled");
    }
    Ok(())
}

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
    ctx.record(&uid, None);
    ctx.metrics
        .conditions
        .forget(&sp.namespace().unwrap_or_default(), &sp.name_any());
    info!(retain, "released data before deletion");
    Ok(Action::await_change())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Patches status when it differs from the stored one. Returns whether it wrote.
async fn patch_status(
    sp: &ScalingPhase,
    ctx: &Context,
    next: ladder_crds::scalingphase::ScalingPhaseStatus,
) -> Result<bool, Error> {
    // The condition gauges follow every computed status, written or not
    // (a restarted operator exports them before anything changes).
    ctx.metrics.conditions.set(
        &sp.namespace().unwrap_or_default(),
        &sp.name_any(),
        &next.conditions,
    );
    if sp.status.as_ref() == Some(&next) {
        return Ok(false);
    }
    let api: Api<ScalingPhase> =
        Api::namespaced(ctx.client.clone(), &sp.namespace().unwrap_or_default());
    // A merge patch keeps what it does not mention: fields the new status
    // drops (a finished transition, a cleared target) are sent as null.
    let mut fields = serde_json::to_value(&next).unwrap_or_default();
    if let (Some(map), Some(before)) = (
        fields.as_object_mut(),
        sp.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok()),
    ) {
        for key in before.as_object().into_iter().flat_map(|o| o.keys()) {
            map.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let body = serde_json::json!({ "status": fields });
    api.patch_status(
        &sp.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await
    .map_err(|source| Error::Status {
        name: sp.name_any(),
        source,
    })?;
    ctx.metrics.status_written();
    Ok(true)
}

async fn publish(ctx: &Context, sp: &ScalingPhase, type_: EventType, reason: &str, note: &str) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &sp.object_ref(&())).await {
        warn!(%e, "failed to publish event");
    }
}

/// Reads the readiness of every expected workload. The flag says whether
/// any is missing.
async fn observe(
    client: &Client,
    ns: &str,
    expected: &[ExpectedComponent],
) -> Result<(Vec<ComponentStatus>, bool), Error> {
    let mut out = Vec::with_capacity(expected.len());
    let mut missing = false;
    for e in expected {
        let err = |source| Error::Observe {
            kind: e.kind,
            name: e.name.clone(),
            source,
        };
        let (ready, message) = match e.kind {
            "Deployment" => match Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(&e.name)
                .await
                .map_err(err)?
            {
                None => (None, "not created yet".to_owned()),
                Some(d) => {
                    let s = d.status.unwrap_or_default();
                    let current = d.metadata.generation <= s.observed_generation;
                    let ready = s.ready_replicas.unwrap_or(0);
                    let updated = s.updated_replicas.unwrap_or(0);
                    (
                        Some(current && ready >= e.replicas && updated >= e.replicas),
                        format!("{ready}/{} replicas ready", e.replicas),
                    )
                }
            },
            "StatefulSet" => match Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(&e.name)
                .await
                .map_err(err)?
            {
                None => (None, "not created yet".to_owned()),
                Some(d) => {
                    let s = d.status.unwrap_or_default();
                    let current = d.metadata.generation <= s.observed_generation;
                    (
                        Some(current && s.ready_replicas.unwrap_or(0) >= e.replicas),
                        format!(
                            "{}/{} replicas ready",
                            s.ready_replicas.unwrap_or(0),
                            e.replicas
                        ),
                    )
                }
            },
            _ => match Api::<Job>::namespaced(client.clone(), ns)
                .get_opt(&e.name)
                .await
                .map_err(err)?
            {
                None => (None, "not created yet".to_owned()),
                Some(j) => {
                    let s = j.status.unwrap_or_default();
                    let done = s.succeeded.unwrap_or(0) >= e.replicas;
                    (
                        Some(done),
                        if done {
                            "completed".to_owned()
                        } else {
                            format!("{} failed attempts", s.failed.unwrap_or(0))
                        },
                    )
                }
            },
        };
        missing |= ready.is_none();
        out.push(ComponentStatus {
            kind: e.kind.into(),
            name: e.name.clone(),
            ready: ready.unwrap_or(false),
            message,
        });
    }
    Ok((out, missing))
}

#[cfg(test)]
mod tests {
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
    fn status_figures_are_rounded_to_two_digits() {
        assert_eq!(round2(123.4), 120.0);
        assert_eq!(round2(9.87), 9.9);
        assert_eq!(round2(0.0), 0.0);
        assert!((round2(0.01234) - 0.012).abs() < 1e-12);
    }

    #[test]
    fn requeue_is_fast_in_transition_and_slow_when_idle() {
        let f = Facts {
            now: Timestamp::from_second(1_800_000_000).expect("valid"),
            active: 1,
            target: 1,
            current: None,
            shape_ready: true,
            job: JobState::Absent,
            approval: None,
            rollback: None,
            allow_demotion: false,
            retain_secs: 60,
            step_timeout_secs: 60,
            name: "shop",
        };
        let idle = transition::decide(&f);
        assert_eq!(requeue_after(&idle, true, &f), DRIFT_CHECK);
        let moving = transition::decide(&Facts {
            target: 2,
            ..f.clone()
        });
        assert_eq!(requeue_after(&moving, true, &f), TRANSITION_REQUEUE);
        let blocked = transition::decide(&Facts {
            active: 1,
            target: 0,
            ..f.clone()
        });
        assert!(blocked.blocked.is_some());
        assert_eq!(requeue_after(&blocked, true, &f), Duration::from_secs(30));
    }
}
