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
//! Deletion goes through the finalizer [`FINALIZER`]: it keeps (Retain) or
//! deletes (Delete) volumes and credentials before garbage collection runs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{self, Event};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use crate::apply::{self, ApplyError};
use crate::integrations::Integrations;
use crate::metrics::Metrics;
use crate::render::{self, ExpectedComponent};
use crate::status::{self, Observed};
use crate::validate::{self, World};
use ladder_crds::scalingphase::{ComponentStatus, DeletionPolicy, ScalingPhase};

/// Finalizer that decides what happens to data on deletion.
pub const FINALIZER: &str = "ladder.dev/data-retention";
/// How often an unchanged ScalingPhase is re-applied anyway, to repair drift
/// (someone edited or deleted a child that is not watched).
pub const DRIFT_CHECK: Duration = Duration::from_secs(300);
/// Requeue while components are not ready (workload watches usually wake us earlier).
const NOT_READY_REQUEUE: Duration = Duration::from_secs(30);

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
    result
}

/// Permanent problems never reach here (they are conditions); everything
/// here is transient: count it and back off.
pub fn error_policy(sp: Arc<ScalingPhase>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.category());
    warn!(name = %sp.name_any(), category = error.category(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

async fn apply_phase(sp: &ScalingPhase, ctx: &Context) -> Result<Action, Error> {
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let uid = sp.uid().unwrap_or_default();
    let generation = sp.metadata.generation;
    let old = sp.status.as_ref();
    // Read once: validation, rendering and pruning see the same facts.
    let world = ctx.world();
    let (v, profile) = match validate::validate(sp, &world) {
        Ok(ok) => ok,
        Err(invalid) => {
            let message = invalid.to_string();
            let next = status::compute(old, generation, Observed::Invalid(message.clone()), now());
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
            ctx.record(&uid, None);
            return Ok(Action::await_change());
        }
    };
    let desired = render::render(&v, &profile);
    let mut applied_now = false;
    if !sp.spec.paused {
        let hash = render::short_hash(desired.to_yaml().as_bytes());
        let phase_changed = old
            .and_then(|s| s.active_phase)
            .is_some_and(|p| p != v.phase.number());
        if let Some(prune) = ctx.plan(&uid, &hash, phase_changed) {
            if let Err(e) = apply::apply(&ctx.client, &ns, &desired, &ctx.metrics).await {
                let next =
                    status::compute(old, generation, Observed::ApplyFailed(e.to_string()), now());
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
            info!(phase = %v.phase, objects = desired.len(), "applied");
        }
    }
    let (components, missing) = observe(&ctx.client, &ns, &desired.expected).await?;
    if missing && !applied_now && !sp.spec.paused {
        // A workload vanished since the last apply: apply again right away.
        ctx.record(&uid, None);
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let all_ready = components.iter().all(|c| c.ready);
    let observed = Observed::Rendered {
        profile: &profile,
        components,
        cost: v.estimated_monthly_cost(&profile),
        budget: v.monthly_budget_usd,
        paused: sp.spec.paused,
    };
    let before_ready = old
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == status::types::READY)
        })
        .map(|c| c.status == "True");
    let next = status::compute(old, generation, observed, now());
    if patch_status(sp, ctx, next).await? && all_ready && before_ready != Some(true) {
        publish(
            ctx,
            sp,
            EventType::Normal,
            status::reasons::ALL_READY,
            &format!("phase {} is ready", v.phase),
        )
        .await;
    }
    Ok(Action::requeue(if all_ready {
        DRIFT_CHECK
    } else {
        NOT_READY_REQUEUE
    }))
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
    if sp.status.as_ref() == Some(&next) {
        return Ok(false);
    }
    let api: Api<ScalingPhase> =
        Api::namespaced(ctx.client.clone(), &sp.namespace().unwrap_or_default());
    let body = serde_json::json!({"status": next});
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
