//! The transition machine: how the cluster moves from the active phase toward
//! the effective target, one phase at a time, without losing data.
//!
//! [`decide`] is a pure function of what the reconciler observed ([`Facts`]:
//! the stored `status.transition`, readiness of what is applied, the
//! migration Job's state and result, the approval annotation, the clock) to
//! the next [`Plan`]: which objects to render ([`Shape`]), the transition
//! status to store, whether the transition is blocked and why. All I/O stays
//! in the reconciler, so every step, every restart point and every failure is
//! unit-tested here, and a restarted operator resumes from `status.transition`
//! alone.
//!
//! The steps (see [`TransitionStep`]):
//!
//! ```text
//! PrepareTarget → WaitTargetReady → Migrate → Verify → CutOver → Retain → Retire → Done
//!                                  (only when the data tier changes)  (ditto)
//! ```
//!
//! The invariant that matters: until Verify has passed, the old tier is in
//! every rendered shape and the app is pointed at it, so nothing that holds
//! data is deleted, scaled down or re-pointed, whatever `deletionPolicy` says.
//! The old tier leaves the rendered shape only at Retire, after the
//! retention window.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
pub use ladder_crds::scalingphase::ShardLayout;
use ladder_crds::scalingphase::{TransitionStatus, TransitionStep};
use serde::Deserialize;

/// Annotation that approves a demotion which moves data: `"<from>-to-<to>"`.
pub const APPROVE_ANNOTATION: &str = "ladder.dev/approve-transition";
/// Annotation that reverses a cut-over while the old tier is retained:
/// `"<from>-to-<to>"` names the step to undo. The writes made on the new tier
/// since the cut-over are migrated back and verified, then the app is cut
/// over to the old tier again. While it stays, the step is not re-attempted.
pub const ROLLBACK_ANNOTATION: &str = "ladder.dev/rollback-transition";
/// Label on the migration Job's pods (the e2e runner and kwok key on it).
pub const JOB_LABEL: &str = "ladder.dev/job";
/// Value of [`JOB_LABEL`] on migration pods.
pub const JOB_MIGRATE: &str = "migrate";
/// Label on volumes of a retired tier: the transition that retired them.
pub const RETIRED_BY_LABEL: &str = "ladder.dev/retired-by";
/// Annotation on volumes of a retired tier: when they were retired.
pub const RETIRED_AT_ANNOTATION: &str = "ladder.dev/retired-at";

/// Default for `spec.transitions.retainOldTierFor`: 24 hours.
pub const DEFAULT_RETAIN_SECS: u64 = 24 * 3600;
/// Default for `spec.transitions.stepTimeout`: 30 minutes.
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 30 * 60;

/// Why a transition cannot go on. Each is a `TransitionBlocked` reason.
pub mod blocked {
    /// A demotion that moves data waits for the approval annotation.
    pub const APPROVAL_REQUIRED: &str = "ApprovalRequired";
    /// The migration Job failed.
    pub const MIGRATION_FAILED: &str = "MigrationFailed";
    /// The migration's verification did not pass (or reported nothing).
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// The target tier did not become ready within the step timeout.
    pub const TARGET_NOT_READY: &str = "TargetNotReady";
    /// The migration Job has been running longer than the step timeout.
    pub const MIGRATION_SLOW: &str = "MigrationTimedOut";
    /// The spec of a phase on the way does not validate.
    pub const INVALID_STEP: &str = "InvalidTargetPhase";
    /// The step toward the target was rolled back and the rollback
    /// annotation still names it: it is not re-attempted.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// The rollback annotation names a step that cannot be rolled back now.
    pub const ROLLBACK_REFUSED: &str = "RollbackNotPossible";
    /// The tier a step returns to still has volumes a past transition
    /// retired: starting on them would serve stale data.
    pub const STALE_VOLUMES: &str = "StaleVolumes";
}

/// The data tier a phase keeps its rows in. Changing it moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataTier {
    /// Phase 0: SQLite in the app's volume.
    Sqlite,
    /// Phases 1 and 2: one PostgreSQL primary (phase 2 adds read replicas).
    Postgres,
    /// Phase 3: sharded PostgreSQL.
    Shards,
    /// Phase 4: CockroachDB.
    Distributed,
}

impl DataTier {
    /// The tier of a phase number.
    pub fn of(phase: i32) -> DataTier {
        match phase {
            i32::MIN..=0 => DataTier::Sqlite,
            1 | 2 => DataTier::Postgres,
            3 => DataTier::Shards,
            _ => DataTier::Distributed,
        }
    }
}

/// Whether the step `from` → `to` changes the data tier.
pub fn moves_data(from: i32, to: i32) -> bool {
    DataTier::of(from) != DataTier::of(to)
}

/// The phase whose data tier is sharded (and can be resharded).
pub const SHARDED: i32 = 3;

/// The shard map version a climb into phase 3 writes.
pub const FIRST_MAP_VERSION: i32 = 1;

/// The name of the migration Job of a step.
pub fn job_name(scaling_phase: &str, from: i32, to: i32) -> String {
    format!("{scaling_phase}-migrate-{from}-to-{to}")
}

/// Whether a transition is a resharding: phase 3 to phase 3, from one shard
/// layout (count and map version) to another.
pub fn is_reshard(t: &TransitionStatus) -> bool {
    t.from == SHARDED && t.to == SHARDED && t.from_shards.is_some() && t.to_shards.is_some()
}

/// The name of the migration Job of a transition: per phase step, or per
/// pair of shard map versions for a resharding (a later resharding never
/// reads an earlier one's finished Job).
pub fn transition_job_name(scaling_phase: &str, t: &TransitionStatus) -> String {
    match (is_reshard(t), t.from_shards, t.to_shards) {
        (true, Some(a), Some(b)) => reshard_job_name(scaling_phase, a, b),
        _ => job_name(scaling_phase, t.from, t.to),
    }
}

/// The name of the Job that sweeps the rows left behind on reused shards
/// once shard map `map_version` is the only one (see
/// [`crate::render::migration::sweep_job`]).
pub fn sweep_job_name(scaling_phase: &str, map_version: i32) -> String {
    format!("{scaling_phase}-sweep-shards-v{map_version}")
}

/// The name of a resharding's migration Job.
pub fn reshard_job_name(scaling_phase: &str, from: ShardLayout, to: ShardLayout) -> String {
    format!(
        "{scaling_phase}-reshard-v{}-to-v{}",
        from.map_version, to.map_version
    )
}

/// How a step is named in the approval and rollback annotations and the
/// retired volumes' label: `"<from>-to-<to>"` for a phase step,
/// `"shards-<from>-to-<to>"` (shard counts) for a resharding.
pub fn step_label(t: &TransitionStatus) -> String {
    match (is_reshard(t), t.from_shards, t.to_shards) {
        (true, Some(a), Some(b)) => reshard_label(a.shards, b.shards),
        _ => format!("{}-to-{}", t.from, t.to),
    }
}

fn reshard_label(from: i32, to: i32) -> String {
    format!("shards-{from}-to-{to}")
}

/// How messages name one side of a transition.
fn side_name(t: &TransitionStatus, to_side: bool) -> String {
    let (phase, layout) = if to_side {
        (t.to, t.to_shards)
    } else {
        (t.from, t.from_shards)
    };
    match layout {
        Some(l) if is_reshard(t) => format!("{}-shard (map v{})", l.shards, l.map_version),
        _ => format!("phase {phase}"),
    }
}

/// The shape of a transition with both sides rendered: the app on the new
/// side (`serve_to`) or the old one, and the migration Job when `job`.
fn pair(t: &TransitionStatus, serve_to: bool, job: bool) -> Shape {
    match (is_reshard(t), t.from_shards, t.to_shards) {
        (true, Some(a), Some(b)) => {
            let (serve, other) = if serve_to { (b, a) } else { (a, b) };
            Shape::Reshard {
                serve,
                other,
                job: job.then_some((a, b)),
            }
        }
        _ => {
            let (serve, other) = if serve_to {
                (t.to, t.from)
            } else {
                (t.from, t.to)
            };
            Shape::Both {
                serve,
                other,
                job: job.then_some((t.from, t.to)),
            }
        }
    }
}

/// The shard layout phase 3 is rendered with in `shape` during `t` (see
/// [`Plan::shards`]).
fn layout_in(shape: Shape, t: &TransitionStatus) -> Option<ShardLayout> {
    match shape {
        Shape::Reshard { serve, .. } => Some(serve),
        Shape::Steady(p) if p != SHARDED => None,
        Shape::Steady(p) if p == t.to => t.to_shards,
        Shape::Steady(_) => t.from_shards,
        Shape::Both { serve, other, .. } if serve != SHARDED && other != SHARDED => None,
        Shape::Both { .. } => t.to_shards.or(t.from_shards),
    }
}

/// What `ladder-app migrate --result-file` writes (the Job pod's
/// termination message).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationResult {
    /// `CutOver`, `VerificationFailed` or `Error`.
    #[serde(default)]
    pub outcome: String,
    /// Whether every table and partition matched.
    #[serde(default)]
    pub verified: bool,
    /// Per table and partition: counts and checksums of both sides.
    #[serde(default)]
    pub tables: Vec<TableResult>,
    /// How long writes were fenced, in milliseconds.
    #[serde(default)]
    pub fence_millis: Option<u64>,
    /// A human summary.
    #[serde(default)]
    pub message: Option<String>,
}

/// One table of one target partition, as the migrator verified it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableResult {
    /// Table name.
    #[serde(default)]
    pub table: String,
    /// Target partition (shard) index, when partitioned.
    #[serde(default)]
    pub partition: Option<serde_json::Value>,
    /// Rows in the source (routed by the target map).
    #[serde(default)]
    pub source_rows: i64,
    /// Rows in the target partition.
    #[serde(default)]
    pub target_rows: i64,
    /// Order-independent checksum of the source rows.
    #[serde(default)]
    pub source_checksum: serde_json::Value,
    /// The same of the target rows.
    #[serde(default)]
    pub target_checksum: serde_json::Value,
}

impl MigrationResult {
    /// The operator's own check of the Job's result: the Job must say it cut
    /// over after verifying, and every table it reports must match on both
    /// sides. `Err` carries what a human needs to know.
    pub fn check(&self) -> Result<u64, String> {
        if self.outcome != "CutOver" || !self.verified {
            return Err(format!(
                "the migration reported outcome {:?}, verified={}{}",
                self.outcome,
                self.verified,
                self.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
        if self.tables.is_empty() {
            return Err("the migration reported no verified tables".into());
        }
        let mut rows: u64 = 0;
        for t in &self.tables {
            if t.source_rows != t.target_rows || t.source_checksum != t.target_checksum {
                return Err(format!(
                    "table {} partition {}: source {} rows / checksum {}, target {} rows / checksum {}",
                    t.table,
                    t.partition.clone().unwrap_or(serde_json::Value::Null),
                    t.source_rows,
                    t.source_checksum,
                    t.target_rows,
                    t.target_checksum
                ));
            }
            rows = rows.saturating_add(u64::try_from(t.target_rows).unwrap_or(0));
        }
        Ok(rows)
    }
}

/// The migration Job as observed.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Not created (or deleted by a human to retry).
    Absent,
    /// Created, not finished.
    Running,
    /// Finished with exit 0; the result its pod reported, if any.
    Succeeded(Option<MigrationResult>),
    /// Failed; why (the pod's termination message or the Job's condition).
    Failed(String),
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// Now.
    pub now: Timestamp,
    /// The active phase (`status.activePhase`).
    pub active: i32,
    /// The effective target (see `validate::effective_phase`).
    pub target: i32,
    /// The stored transition, if one is in progress.
    pub current: Option<&'a TransitionStatus>,
    /// Every workload of the shape applied last is ready.
    pub shape_ready: bool,
    /// The migration Job of the current step.
    pub job: JobState,
    /// The value of the approval annotation, if set.
    pub approval: Option<&'a str>,
    /// The value of the rollback annotation, if set.
    pub rollback: Option<&'a str>,
    /// `spec.transitions.allowDemotion`.
    pub allow_demotion: bool,
    /// `spec.transitions.retainOldTierFor`, in seconds.
    pub retain_secs: u64,
    /// `spec.transitions.stepTimeout`, in seconds.
    pub step_timeout_secs: u64,
    /// The ScalingPhase's name (for the Job's name).
    pub name: &'a str,
    /// The shard layout phase 3 uses now (`status.shards` and
    /// `status.shardMapVersion`), when phase 3 is active.
    pub shards: Option<ShardLayout>,
    /// The shard count the spec asks for in phase 3 (`None`: the spec does
    /// not validate at phase 3).
    pub want_shards: Option<i32>,
}

/// Which phases' objects to render, and which one the app uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One phase, nothing else.
    Steady(i32),
    /// Two phases side by side: everything `serve` renders (the app points at
    /// its tier), plus the objects only `other` renders (its data tier),
    /// plus the migration Job when `job` is set.
    Both {
        /// The phase whose app wiring is applied.
        serve: i32,
        /// The phase whose extra objects are kept beside it.
        other: i32,
        /// Render the migration Job `from` → `to`.
        job: Option<(i32, i32)>,
    },
    /// Phase 3 with two shard layouts side by side (a resharding): everything
    /// phase 3 renders with the `serve` layout (the app uses its shard map),
    /// plus the objects only the `other` layout renders (its extra shards and
    /// its shard map), plus the migration Job when `job` is set. Shards both
    /// layouts name are the same StatefulSets.
    Reshard {
        /// The layout whose shard map the app uses.
        serve: ShardLayout,
        /// The layout kept beside it.
        other: ShardLayout,
        /// Render the migration Job `from` → `to`.
        job: Option<(ShardLayout, ShardLayout)>,
    },
}

/// The shape applied for a stored transition step: what the previous
/// decision rendered, whose readiness [`Facts::shape_ready`] reports.
pub fn current_shape(active: i32, t: Option<&TransitionStatus>) -> Shape {
    let Some(t) = t else {
        return Shape::Steady(active);
    };
    match t.step {
        TransitionStep::PrepareTarget | TransitionStep::WaitTargetReady => pair(t, false, false),
        TransitionStep::Migrate | TransitionStep::Verify => pair(t, false, t.moves_data),
        TransitionStep::CutOver | TransitionStep::Retain => pair(t, true, t.moves_data),
        TransitionStep::Retire | TransitionStep::Done => Shape::Steady(t.to),
    }
}

/// The shard layout of phase 3 in [`current_shape`] (see [`Plan::shards`]):
/// the stored transition's, else the one in use (`in_use`, from status).
pub fn current_shards(
    active: i32,
    t: Option<&TransitionStatus>,
    in_use: Option<ShardLayout>,
) -> Option<ShardLayout> {
    match t {
        Some(t) => layout_in(current_shape(active, Some(t)), t),
        None => in_use.filter(|_| active == SHARDED),
    }
}

/// A `TransitionBlocked` condition to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// One of [`blocked`].
    pub reason: &'static str,
    /// What a human should do.
    pub message: String,
}

/// What the reconciler does next.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The objects to render.
    pub shape: Shape,
    /// The phase to report as active.
    pub active: i32,
    /// The transition to store (`None`: no transition in progress).
    pub transition: Option<TransitionStatus>,
    /// Set when the transition cannot go on by itself.
    pub blocked: Option<Blocked>,
    /// A transition that finished with this decision: `(from, to)`.
    pub finished: Option<(i32, i32)>,
    /// The step entered with this decision, for an Event and the metrics.
    pub entered: Option<TransitionStep>,
    /// The old tier's volumes are retired with this decision (label them).
    pub retire: Option<(i32, i32)>,
    /// Rows the operator's own verification counted, when it passed now.
    pub verified_rows: Option<u64>,
    /// The shard layout phase 3 is rendered with in a `Steady` or `Both`
    /// shape (`None` when neither side is phase 3); in a `Reshard` shape,
    /// its `serve` layout.
    pub shards: Option<ShardLayout>,
}

impl Plan {
    fn steady(active: i32) -> Plan {
        Plan {
            shape: Shape::Steady(active),
            active,
            transition: None,
            blocked: None,
            finished: None,
            entered: None,
            retire: None,
            verified_rows: None,
            shards: None,
        }
    }

    /// The shard layout the app uses under this plan (for
    /// `status.shardMapVersion`): phase 3's when the app is on phase 3.
    pub fn shards_in_use(&self) -> Option<ShardLayout> {
        let serving = match self.shape {
            Shape::Steady(p) | Shape::Both { serve: p, .. } => p,
            Shape::Reshard { .. } => SHARDED,
        };
        self.shards.filter(|_| serving == SHARDED)
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn elapsed_secs(since: &Time, now: Timestamp) -> u64 {
    let d = now.duration_since(since.0);
    u64::try_from(d.as_secs()).unwrap_or(0)
}

/// Whether a demotion `from` → `to` has been approved.
pub fn approved(f: &Facts<'_>, from: i32, to: i32) -> bool {
    approved_step(f, &format!("{from}-to-{to}"))
}

/// Whether the step named `label` (see [`step_label`]) has been approved.
fn approved_step(f: &Facts<'_>, label: &str) -> bool {
    f.allow_demotion || f.approval.is_some_and(|a| a.trim() == label)
}

/// The next step. Pure: the same facts always give the same plan.
pub fn decide(f: &Facts<'_>) -> Plan {
    let mut plan = step(f);
    if plan.blocked.is_none() {
        plan.blocked = rollback_refused(f);
    }
    plan
}

fn step(f: &Facts<'_>) -> Plan {
    let Some(t) = f.current else {
        return start(f);
    };
    if let Some(p) = rollback(f, t) {
        return p;
    }
    // Before any row has moved, a target that no longer wants this step
    // abandons it: the new tier was only prepared, the app never left the old.
    let wanted = if is_reshard(t) {
        f.target == SHARDED && f.want_shards == t.to_shards.map(|l| l.shards)
    } else if t.to > t.from {
        f.target >= t.to
    } else {
        f.target <= t.to
    };
    if !wanted
        && matches!(
            t.step,
            TransitionStep::PrepareTarget | TransitionStep::WaitTargetReady
        )
    {
        let mut p = Plan::steady(t.from);
        p.shards = t.from_shards.filter(|_| t.from == SHARDED);
        return p;
    }
    let mut plan = advance(f, t);
    plan.shards = layout_in(plan.shape, t);
    plan
}

/// The next step of the transition `t` (wanted, not rolled back).
fn advance(f: &Facts<'_>, t: &TransitionStatus) -> Plan {
    let (from, to) = (t.from, t.to);
    let (from_s, to_s) = (side_name(t, false), side_name(t, true));
    let mut next = t.clone();
    let mut plan = Plan {
        shape: pair(t, false, false),
        active: from,
        ..Plan::steady(from)
    };
    let timed_out = elapsed_secs(&t.step_started_at, f.now) > f.step_timeout_secs;
    let enter =
        |next: &mut TransitionStatus, plan: &mut Plan, step: TransitionStep, msg: String| {
            next.step = step;
            next.step_started_at = time(f.now);
            next.message = msg;
            plan.entered = Some(step);
        };
    match t.step {
        TransitionStep::PrepareTarget => {
            enter(
                &mut next,
                &mut plan,
                TransitionStep::WaitTargetReady,
                format!("waiting for the {to_s} tier to be ready beside {from_s}"),
            );
        }
        TransitionStep::WaitTargetReady => {
            if f.shape_ready {
                if t.moves_data {
                    let job = transition_job_name(f.name, t);
                    next.job_name = Some(job.clone());
                    enter(
                        &mut next,
                        &mut plan,
                        TransitionStep::Migrate,
                        format!("copying data from {from_s} to {to_s} (Job {job})"),
                    );
                    plan.shape = pair(t, false, true);
                } else {
                    enter(
                        &mut next,
                        &mut plan,
                        TransitionStep::CutOver,
                        format!("pointing the app at the {to_s} tier"),
                    );
                    plan.shape = pair(t, true, false);
                }
            } else if timed_out {
                plan.blocked = Some(Blocked {
                    reason: blocked::TARGET_NOT_READY,
                    message: format!(
                        "the {to_s} tier is not ready after {}s; the app keeps using {from_s}. See status.components",
                        f.step_timeout_secs
                    ),
                });
            }
        }
        TransitionStep::Migrate => {
            plan.shape = pair(t, false, true);
            match &f.job {
                JobState::Absent | JobState::Running => {
                    if timed_out {
                        plan.blocked = Some(Blocked {
                            reason: blocked::MIGRATION_SLOW,
                            message: format!(
                                "the migration Job {} has run for more than {}s; the app keeps using {from_s}",
                                next.job_name.clone().unwrap_or_default(),
                                f.step_timeout_secs
                            ),
                        });
                    }
                }
                JobState::Failed(why) => {
                    plan.blocked = Some(Blocked {
                        reason: blocked::MIGRATION_FAILED,
                        message: format!(
                            "the migration Job {} failed: {why}. {from_s} keeps serving; fix the cause and delete the Job to retry",
                            next.job_name.clone().unwrap_or_default()
                        ),
                    });
                }
                JobState::Succeeded(_) => {
                    enter(
                        &mut next,
                        &mut plan,
                        TransitionStep::Verify,
                        "checking the migration's verification".into(),
                    );
                }
            }
        }
        TransitionStep::Verify => {
            plan.shape = pair(t, false, true);
            let result = match &f.job {
                JobState::Succeeded(Some(r)) => r.check(),
                JobState::Succeeded(None) => Err("the migration Job reported no result".to_owned()),
                JobState::Absent => {
                    Err("the migration Job is gone before its result was checked".to_owned())
                }
                JobState::Running => Err("the migration Job is running again".to_owned()),
                JobState::Failed(why) => Err(why.clone()),
            };
            match result {
                Ok(rows) => {
                    plan.verified_rows = Some(rows);
                    enter(
                        &mut next,
                        &mut plan,
                        TransitionStep::CutOver,
                        format!("verified {rows} rows; pointing the app at the {to_s} tier"),
                    );
                    plan.shape = pair(t, true, true);
                }
                Err(why) if f.job == JobState::Absent || f.job == JobState::Running => {
                    // A deleted Job is re-created: go back to Migrate.
                    enter(
                        &mut next,
                        &mut plan,
                        TransitionStep::Migrate,
                        format!("re-running the migration: {why}"),
                    );
                }
                Err(why) => {
                    plan.blocked = Some(Blocked {
                        reason: blocked::VERIFICATION_FAILED,
                        message: format!(
                            "{why}. The app stays on {from_s}; nothing was cut over. Delete the Job to retry"
                        ),
                    });
                }
            }
        }
        TransitionStep::CutOver => {
            plan.shape = pair(t, true, t.moves_data);
            if f.shape_ready {
                if t.moves_data {
                    let until = f
                        .now
                        .checked_add(SignedDuration::from_secs(
                            i64::try_from(f.retain_secs).unwrap_or(i64::MAX / 2),
                        ))
                        .unwrap_or(f.now);
                    next.retain_until = Some(time(until));
                    enter(
                        &mut next,
                        &mut plan,
                        TransitionStep::Retain,
                        format!(
                            "the app uses {to_s}; the {from_s} tier is kept read-only until {until}"
                        ),
                    );
                } else {
                    enter(
                        &mut next,
                        &mut plan,
                        TransitionStep::Retire,
                        format!("retiring what {to_s} no longer needs"),
                    );
                    plan.shape = Shape::Steady(to);
                    plan.retire = Some((from, to));
                }
            }
        }
        TransitionStep::Retain => {
            plan.shape = pair(t, true, true);
            // A retention shortened in the spec since (retainOldTierFor
            // lowered) ends early; a longer one does not extend it.
            let due = t.retain_until.as_ref().is_none_or(|u| f.now >= u.0)
                || elapsed_secs(&t.step_started_at, f.now) >= f.retain_secs;
            if due {
                enter(
                    &mut next,
                    &mut plan,
                    TransitionStep::Retire,
                    format!("retiring the {from_s} tier per deletionPolicy"),
                );
                plan.shape = Shape::Steady(to);
                plan.retire = Some((from, to));
            }
        }
        TransitionStep::Retire => {
            plan.shape = Shape::Steady(to);
            enter(
                &mut next,
                &mut plan,
                TransitionStep::Done,
                format!("{to_s} is active"),
            );
        }
        TransitionStep::Done => {
            let mut p = Plan::steady(to);
            p.finished = Some((from, to));
            return p;
        }
    }
    plan.transition = Some(next);
    plan
}

/// Whether the rollback annotation names the step `label`.
fn names(annotation: Option<&str>, label: &str) -> bool {
    annotation.is_some_and(|a| a.trim() == label)
}

/// The rollback annotation during a transition: a cut-over that moved data
/// and whose old tier is still kept (CutOver, Retain) is reversed by a new
/// transition that starts at Migrate (both tiers are up and Ready), copies
/// the new tier's writes back and cuts over again. Named too early (before
/// the cut-over) or too late (the old tier retired), it is refused with a
/// reason and the transition goes on.
fn rollback(f: &Facts<'_>, t: &TransitionStatus) -> Option<Plan> {
    let (from, to) = (t.from, t.to);
    let label = step_label(t);
    if t.rollback_of.is_some() || !names(f.rollback, &label) {
        return None;
    }
    let reversible =
        t.moves_data && matches!(t.step, TransitionStep::CutOver | TransitionStep::Retain);
    if !reversible {
        // Before the cut-over there is nothing to undo (lowering the
        // target abandons or reverses the step by the normal rules); after
        // Retain the old tier is gone. Go on, and say why not.
        return None;
    }
    let now = time(f.now);
    let mut back = TransitionStatus {
        from: to,
        to: from,
        step: TransitionStep::Migrate,
        moves_data: true,
        started_at: now.clone(),
        step_started_at: now,
        job_name: None,
        retain_until: None,
        rollback_of: Some(label.clone()),
        message: String::new(),
        from_shards: t.to_shards,
        to_shards: t.from_shards,
    };
    let job = transition_job_name(f.name, &back);
    back.job_name = Some(job.clone());
    back.message = format!(
        "rolling back {label}: copying the writes made on {} back to {} (Job {job})",
        side_name(t, true),
        side_name(t, false)
    );
    let shape = pair(&back, false, true);
    Some(Plan {
        shape,
        active: to,
        shards: layout_in(shape, &back),
        transition: Some(back),
        entered: Some(TransitionStep::Migrate),
        ..Plan::steady(to)
    })
}

/// Why the rollback annotation is ignored during this transition, if it
/// names it but the step cannot be reversed now.
pub fn rollback_refused(f: &Facts<'_>) -> Option<Blocked> {
    let t = f.current?;
    let label = step_label(t);
    if t.rollback_of.is_some() || !names(f.rollback, &label) {
        return None;
    }
    let why = if !t.moves_data {
        "it moves no data: lower spec.phase instead".to_owned()
    } else {
        match t.step {
            TransitionStep::CutOver | TransitionStep::Retain => return None,
            TransitionStep::Retire | TransitionStep::Done => {
                "the old tier is already retired".to_owned()
            }
            _ => "nothing has been cut over yet: lower spec.phase to abandon it".to_owned(),
        }
    };
    Some(Blocked {
        reason: blocked::ROLLBACK_REFUSED,
        message: format!("{ROLLBACK_ANNOTATION}={label} cannot be honoured: {why}"),
    })
}

/// No transition in progress: stay, start one step toward the target, or,
/// in phase 3 with a shard count the spec changed, start a resharding.
fn start(f: &Facts<'_>) -> Plan {
    let in_use = f.shards.filter(|_| f.active == SHARDED);
    let steady = || Plan {
        shards: in_use,
        ..Plan::steady(f.active)
    };
    let now = time(f.now);
    let mut t = TransitionStatus {
        from: f.active,
        to: f.active,
        step: TransitionStep::PrepareTarget,
        moves_data: true,
        started_at: now.clone(),
        step_started_at: now,
        job_name: None,
        retain_until: None,
        rollback_of: None,
        message: String::new(),
        from_shards: in_use,
        to_shards: None,
    };
    let demotion;
    if f.active == f.target {
        // A resharding: a new map version beside the one in use.
        let (Some(cur), Some(want)) = (in_use, f.want_shards) else {
            return steady();
        };
        if cur.shards == want {
            return steady();
        }
        t.to_shards = Some(ShardLayout {
            shards: want,
            map_version: cur.map_version.saturating_add(1),
        });
        demotion = want < cur.shards;
    } else {
        let from = f.active;
        let to = if f.target > from { from + 1 } else { from - 1 };
        t.to = to;
        t.moves_data = moves_data(from, to);
        t.to_shards = f
            .want_shards
            .filter(|_| to == SHARDED)
            .map(|shards| ShardLayout {
                shards,
                map_version: FIRST_MAP_VERSION,
            });
        demotion = to < from && t.moves_data;
    }
    let label = step_label(&t);
    if names(f.rollback, &label) {
        let mut p = steady();
        p.blocked = Some(Blocked {
            reason: blocked::ROLLED_BACK,
            message: if is_reshard(&t) {
                format!(
                    "the resharding {label} was rolled back ({ROLLBACK_ANNOTATION}={label}): set spec.overrides.postgres.shards back in Git, or remove the annotation to try it again"
                )
            } else {
                format!(
                    "the step {label} was rolled back ({ROLLBACK_ANNOTATION}={label}): set spec.phase to {} in Git, or remove the annotation to try the step again",
                    t.from
                )
            },
        });
        return p;
    }
    if demotion && !approved_step(f, &label) {
        let mut p = steady();
        p.blocked = Some(Blocked {
            reason: blocked::APPROVAL_REQUIRED,
            message: if is_reshard(&t) {
                format!(
                    "going from {} shards down to {} moves data and retires shards: annotate the ScalingPhase with {APPROVE_ANNOTATION}={label} (or set spec.transitions.allowDemotion) to go on",
                    t.from_shards.map_or(0, |l| l.shards),
                    t.to_shards.map_or(0, |l| l.shards)
                )
            } else {
                format!(
                    "stepping down from phase {} to {} moves data: annotate the ScalingPhase with {APPROVE_ANNOTATION}={label} (or set spec.transitions.allowDemotion) to go on",
                    t.from, t.to
                )
            },
        });
        return p;
    }
    t.message = format!(
        "preparing the {} tier beside {}",
        side_name(&t, true),
        side_name(&t, false)
    );
    let shape = pair(&t, false, false);
    Plan {
        shape,
        active: f.active,
        shards: layout_in(shape, &t),
        transition: Some(t),
        entered: Some(TransitionStep::PrepareTarget),
        ..Plan::steady(f.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn facts<'a>(active: i32, target: i32, current: Option<&'a TransitionStatus>) -> Facts<'a> {
        Facts {
            now: ts(0),
            active,
            target,
            current,
            shape_ready: false,
            job: JobState::Absent,
            approval: None,
            rollback: None,
            allow_demotion: false,
            retain_secs: 3600,
            step_timeout_secs: 600,
            name: "shop",
            shards: None,
            want_shards: Some(4),
        }
    }

    fn good_result() -> MigrationResult {
        MigrationResult {
            outcome: "CutOver".into(),
            verified: true,
            tables: vec![TableResult {
                table: "links".into(),
                partition: None,
                source_rows: 42,
                target_rows: 42,
                source_checksum: serde_json::json!("abc"),
                target_checksum: serde_json::json!("abc"),
            }],
            fence_millis: Some(12),
            message: None,
        }
    }

    /// Drives the machine until it stops changing or `max` decisions, with a
    /// world in which everything succeeds. Returns the steps seen.
    fn run_to_end(active: i32, target: i32) -> (Vec<(i32, i32, TransitionStep)>, i32) {
        let mut active = active;
        let mut current: Option<TransitionStatus> = None;
        let mut seen = Vec::new();
        let mut now = 0;
        for _ in 0..200 {
            now += 10;
            let job = match current.as_ref().map(|t| t.step) {
                Some(TransitionStep::Migrate | TransitionStep::Verify) => {
                    JobState::Succeeded(Some(good_result()))
                }
                _ => JobState::Absent,
            };
            let f = Facts {
                now: ts(now),
                shape_ready: true,
                job,
                ..facts(active, target, current.as_ref())
            };
            let p = decide(&f);
            assert!(p.blocked.is_none(), "blocked: {:?}", p.blocked);
            if let Some(t) = &p.transition {
                seen.push((t.from, t.to, t.step));
            }
            // Retain waits for its window: jump the clock past it.
            if p.transition.as_ref().map(|t| t.step) == Some(TransitionStep::Retain) {
                now += 3600;
            }
            active = p.active;
            if p.finished.is_some() {
                active = p.finished.map(|(_, to)| to).unwrap_or(active);
            }
            current = p.transition;
            if current.is_none() && active == target {
                break;
            }
        }
        (seen, active)
    }

    #[test]
    fn steady_when_at_target() {
        let p = decide(&facts(2, 2, None));
        assert_eq!(p, Plan::steady(2));
    }

    #[test]
    fn climb_that_moves_data_walks_every_step() {
        let (seen, active) = run_to_end(0, 1);
        assert_eq!(active, 1);
        let steps: Vec<_> = seen.iter().map(|s| s.2).collect();
        assert_eq!(
            steps,
            vec![
                TransitionStep::PrepareTarget,
                TransitionStep::WaitTargetReady,
                TransitionStep::Migrate,
                TransitionStep::Verify,
                TransitionStep::CutOver,
                TransitionStep::Retain,
                TransitionStep::Retire,
                TransitionStep::Done,
            ]
        );
    }

    #[test]
    fn step_without_data_skips_migration() {
        let (seen, active) = run_to_end(1, 2);
        assert_eq!(active, 2);
        let steps: Vec<_> = seen.iter().map(|s| s.2).collect();
        assert_eq!(
            steps,
            vec![
                TransitionStep::PrepareTarget,
                TransitionStep::WaitTargetReady,
                TransitionStep::CutOver,
                TransitionStep::Retire,
                TransitionStep::Done,
            ]
        );
    }

    #[test]
    fn a_jump_walks_one_phase_at_a_time() {
        let (seen, active) = run_to_end(0, 3);
        assert_eq!(active, 3);
        let pairs: Vec<(i32, i32)> = seen
            .iter()
            .filter(|s| s.2 == TransitionStep::PrepareTarget)
            .map(|s| (s.0, s.1))
            .collect();
        assert_eq!(pairs, vec![(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn old_tier_stays_and_app_stays_on_it_until_verified() {
        // Every plan before CutOver serves `from` and keeps `to` beside it.
        let (seen, _) = run_to_end(2, 3);
        assert!(seen.iter().any(|s| s.2 == TransitionStep::Verify));
        for step in [
            TransitionStep::PrepareTarget,
            TransitionStep::WaitTargetReady,
            TransitionStep::Migrate,
            TransitionStep::Verify,
        ] {
            let t = transition(2, 3, step);
            let f = facts(2, 3, Some(&t));
            let p = decide(&f);
            match p.shape {
                Shape::Both { serve, other, .. } => {
                    assert_eq!((serve, other), (2, 3), "at {step:?}")
                }
                other => panic!("old tier dropped at {step:?}: {other:?}"),
            }
        }
        // Retain keeps the old tier too.
        let t = TransitionStatus {
            retain_until: Some(time(ts(100))),
            ..transition(2, 3, TransitionStep::Retain)
        };
        let p = decide(&facts(2, 3, Some(&t)));
        assert!(matches!(p.shape, Shape::Both { other: 2, .. }));
        assert!(p.retire.is_none());
    }

    fn transition(from: i32, to: i32, step: TransitionStep) -> TransitionStatus {
        TransitionStatus {
            from,
            to,
            step,
            moves_data: moves_data(from, to),
            started_at: time(ts(-100)),
            step_started_at: time(ts(-10)),
            job_name: Some(job_name("shop", from, to)),
            retain_until: None,
            rollback_of: None,
            message: String::new(),
            from_shards: (from == SHARDED).then_some(ShardLayout {
                shards: 4,
                map_version: 1,
            }),
            to_shards: (to == SHARDED).then_some(ShardLayout {
                shards: 4,
                map_version: 1,
            }),
        }
    }

    #[test]
    fn restart_at_every_step_resumes_from_status() {
        // A fresh operator sees only status.transition: the decision is the
        // same as the one the old operator would have made.
        for step in [
            TransitionStep::PrepareTarget,
            TransitionStep::WaitTargetReady,
            TransitionStep::Migrate,
            TransitionStep::Verify,
            TransitionStep::CutOver,
            TransitionStep::Retain,
            TransitionStep::Retire,
            TransitionStep::Done,
        ] {
            let t = transition(0, 1, step);
            let f = Facts {
                shape_ready: true,
                job: JobState::Succeeded(Some(good_result())),
                ..facts(0, 1, Some(&t))
            };
            let a = decide(&f);
            let b = decide(&f.clone());
            assert_eq!(a, b, "not deterministic at {step:?}");
            if step != TransitionStep::Done {
                let next = a.transition.expect("still in transition");
                assert!(next.step >= step, "went back at {step:?}");
            } else {
                assert_eq!(a.finished, Some((0, 1)));
                assert_eq!(a.active, 1);
            }
        }
    }

    #[test]
    fn failed_job_blocks_without_cut_over() {
        let t = transition(0, 1, TransitionStep::Migrate);
        let f = Facts {
            job: JobState::Failed("exit 1: connection refused".into()),
            ..facts(0, 1, Some(&t))
        };
        let p = decide(&f);
        let b = p.blocked.expect("blocked");
        assert_eq!(b.reason, blocked::MIGRATION_FAILED);
        assert!(b.message.contains("connection refused"));
        assert_eq!(p.transition.expect("kept").step, TransitionStep::Migrate);
        assert!(matches!(p.shape, Shape::Both { serve: 0, .. }));
    }

    #[test]
    fn failed_verification_blocks_without_cut_over() {
        let t = transition(2, 3, TransitionStep::Verify);
        let mut bad = good_result();
        bad.tables[0].target_rows = 41;
        let f = Facts {
            job: JobState::Succeeded(Some(bad)),
            ..facts(2, 3, Some(&t))
        };
        let p = decide(&f);
        assert_eq!(
            p.blocked.clone().expect("blocked").reason,
            blocked::VERIFICATION_FAILED
        );
        assert!(matches!(p.shape, Shape::Both { serve: 2, .. }));
        // No result at all is a failed verification too.
        let f = Facts {
            job: JobState::Succeeded(None),
            ..facts(2, 3, Some(&t))
        };
        assert_eq!(
            decide(&f).blocked.expect("blocked").reason,
            blocked::VERIFICATION_FAILED
        );
        // And a job that says it could not verify.
        let f = Facts {
            job: JobState::Succeeded(Some(MigrationResult {
                outcome: "VerificationFailed".into(),
                ..good_result()
            })),
            ..facts(2, 3, Some(&t))
        };
        assert!(decide(&f).blocked.is_some());
    }

    #[test]
    fn deleted_job_is_rerun() {
        let t = transition(0, 1, TransitionStep::Verify);
        let p = decide(&facts(0, 1, Some(&t)));
        assert!(p.blocked.is_none());
        assert_eq!(p.transition.expect("kept").step, TransitionStep::Migrate);
    }

    #[test]
    fn demotion_that_moves_data_needs_approval() {
        let p = decide(&facts(3, 2, None));
        assert_eq!(
            p.blocked.clone().expect("blocked").reason,
            blocked::APPROVAL_REQUIRED
        );
        assert_eq!(p.shape, Shape::Steady(3));
        assert!(p.transition.is_none());
        // The wrong approval does not count.
        let f = Facts {
            approval: Some("3-to-1"),
            ..facts(3, 2, None)
        };
        assert!(decide(&f).blocked.is_some());
        let f = Facts {
            approval: Some("3-to-2"),
            ..facts(3, 2, None)
        };
        let p = decide(&f);
        assert!(p.blocked.is_none());
        assert_eq!(p.transition.expect("started").to, 2);
        let f = Facts {
            allow_demotion: true,
            ..facts(1, 0, None)
        };
        assert!(decide(&f).blocked.is_none());
    }

    #[test]
    fn demotion_without_data_needs_no_approval() {
        let p = decide(&facts(2, 1, None));
        assert!(p.blocked.is_none());
        let t = p.transition.expect("started");
        assert!(!t.moves_data);
    }

    #[test]
    fn target_not_ready_times_out_but_keeps_waiting() {
        let t = transition(1, 2, TransitionStep::WaitTargetReady);
        let f = Facts {
            now: ts(10_000),
            ..facts(1, 2, Some(&t))
        };
        let p = decide(&f);
        assert_eq!(
            p.blocked.clone().expect("blocked").reason,
            blocked::TARGET_NOT_READY
        );
        assert_eq!(
            p.transition.expect("kept").step,
            TransitionStep::WaitTargetReady
        );
    }

    #[test]
    fn abandoned_before_data_moves_when_the_target_goes_back() {
        let t = transition(0, 1, TransitionStep::WaitTargetReady);
        let p = decide(&facts(0, 0, Some(&t)));
        assert_eq!(p, Plan::steady(0));
        // Once the migration runs it finishes (then a reverse step follows).
        let t = transition(0, 1, TransitionStep::Migrate);
        let p = decide(&facts(0, 0, Some(&t)));
        assert!(p.transition.is_some());
    }

    #[test]
    fn retain_waits_for_its_window() {
        let t = TransitionStatus {
            retain_until: Some(time(ts(100))),
            ..transition(0, 1, TransitionStep::Retain)
        };
        let p = decide(&facts(0, 1, Some(&t)));
        assert_eq!(p.transition.expect("kept").step, TransitionStep::Retain);
        let f = Facts {
            now: ts(101),
            ..facts(0, 1, Some(&t))
        };
        let p = decide(&f);
        assert_eq!(p.retire, Some((0, 1)));
        assert_eq!(p.shape, Shape::Steady(1));
        // retainOldTierFor lowered to 5s in the spec: the step has lasted 10s,
        // so the retention ends now, before the stored retainUntil.
        let f = Facts {
            retain_secs: 5,
            ..facts(0, 1, Some(&t))
        };
        assert_eq!(decide(&f).retire, Some((0, 1)));
    }

    #[test]
    fn rollback_while_retained_reverses_the_cut_over_and_then_holds() {
        let retained = TransitionStatus {
            retain_until: Some(time(ts(3600))),
            ..transition(0, 1, TransitionStep::Retain)
        };
        // Without the annotation (or naming another step) Retain just waits.
        for annotation in [None, Some("1-to-2"), Some("1-to-0")] {
            let f = Facts {
                rollback: annotation,
                ..facts(0, 1, Some(&retained))
            };
            let p = decide(&f);
            assert_eq!(p.transition.expect("kept").step, TransitionStep::Retain);
            assert!(p.blocked.is_none(), "{annotation:?}");
        }
        // With it: a reverse step 1 -> 0 starts at Migrate (both tiers are up),
        // the app stays on the new tier until the delta is verified.
        let f = Facts {
            rollback: Some(" 0-to-1 "),
            shape_ready: true,
            ..facts(0, 1, Some(&retained))
        };
        let p = decide(&f);
        let back = p.transition.clone().expect("reverse transition");
        assert_eq!(
            (back.from, back.to, back.step),
            (1, 0, TransitionStep::Migrate)
        );
        assert_eq!(back.rollback_of.as_deref(), Some("0-to-1"));
        assert_eq!(back.job_name, Some(job_name("shop", 1, 0)));
        assert_eq!(
            p.shape,
            Shape::Both {
                serve: 1,
                other: 0,
                job: Some((1, 0))
            }
        );
        assert!(p.blocked.is_none() && p.retire.is_none());
        // Repeated with the stored reverse transition, the annotation does
        // not start another reversal.
        let again = decide(&Facts {
            rollback: Some("0-to-1"),
            ..facts(1, 1, Some(&back))
        });
        assert_eq!(
            again.transition.expect("kept").rollback_of.as_deref(),
            Some("0-to-1")
        );

        // Walk the reverse step to its end: verify, cut over, retain, retire.
        let mut current = Some(back);
        let mut active = 1;
        let mut now = 0;
        let mut steps = Vec::new();
        for _ in 0..20 {
            let Some(t) = current.clone() else { break };
            now += 10;
            let f = Facts {
                now: ts(now),
                shape_ready: true,
                job: JobState::Succeeded(Some(good_result())),
                rollback: Some("0-to-1"),
                ..facts(active, 1, Some(&t))
            };
            let p = decide(&f);
            assert!(p.blocked.is_none(), "{:?}", p.blocked);
            if let Some(n) = &p.transition {
                steps.push(n.step);
                if n.step == TransitionStep::Retain {
                    now += 3600;
                }
            }
            active = p.finished.map_or(p.active, |(_, to)| to);
            current = p.transition;
        }
        assert_eq!(active, 0);
        assert!(steps.contains(&TransitionStep::Retire), "{steps:?}");
        // Back on phase 0 with spec.phase still 1: held while the annotation
        // names the step, tried again once it is removed.
        let p = decide(&Facts {
            rollback: Some("0-to-1"),
            ..facts(0, 1, None)
        });
        assert_eq!(p.blocked.expect("held").reason, blocked::ROLLED_BACK);
        assert_eq!((p.shape, p.transition), (Shape::Steady(0), None));
        let p = decide(&facts(0, 1, None));
        assert_eq!(
            p.transition.expect("climbs again").step,
            TransitionStep::PrepareTarget
        );
    }

    #[test]
    fn rollback_is_refused_with_a_reason_when_nothing_can_be_reversed() {
        // Before the cut-over nothing is undone; a step without data has no
        // tier to go back to; after Retire the old tier is gone. The
        // transition goes on; the condition says why the annotation is ignored.
        for (from, to, step) in [
            (0, 1, TransitionStep::Migrate),
            (0, 1, TransitionStep::WaitTargetReady),
            (1, 2, TransitionStep::CutOver),
            (0, 1, TransitionStep::Retire),
        ] {
            let t = transition(from, to, step);
            let named = format!("{from}-to-{to}");
            let f = Facts {
                rollback: Some(&named),
                job: JobState::Running,
                ..facts(from, to, Some(&t))
            };
            let refused = rollback_refused(&f).expect("refused");
            assert_eq!(refused.reason, blocked::ROLLBACK_REFUSED, "{step:?}");
            let p = decide(&f);
            assert_eq!(p.blocked.expect("shown").reason, blocked::ROLLBACK_REFUSED);
            if let Some(n) = p.transition {
                assert_eq!((n.from, n.to), (from, to), "went on at {step:?}");
                assert!(n.rollback_of.is_none());
            }
        }
    }

    #[test]
    fn result_check_reads_the_migrators_json() {
        let r: MigrationResult = serde_json::from_str(
            r#"{"outcome":"CutOver","verified":true,"tables":[{"table":"links","partition":0,"sourceRows":3,"targetRows":3,"sourceChecksum":"9","targetChecksum":"9"}],"fenceMillis":5}"#,
        )
        .expect("parses");
        assert_eq!(r.check(), Ok(3));
    }

    const TWO_V1: ShardLayout = ShardLayout {
        shards: 2,
        map_version: 1,
    };
    const FOUR_V2: ShardLayout = ShardLayout {
        shards: 4,
        map_version: 2,
    };

    /// Drives the machine as the reconciler does: status keeps the plan's
    /// transition and the shard layout in use; everything succeeds. Checks
    /// on every decision that what a restarted operator would render from
    /// the stored status alone ([`current_shape`], [`current_shards`]) is
    /// what the decision rendered. Returns every plan and the final
    /// (active, layout in use).
    fn drive(
        active: i32,
        target: i32,
        in_use: Option<ShardLayout>,
        want: i32,
        f0: impl Fn(Facts<'_>) -> Facts<'_>,
    ) -> (Vec<Plan>, i32, Option<ShardLayout>) {
        let (mut active, mut in_use) = (active, in_use);
        let mut current: Option<TransitionStatus> = None;
        let mut plans = Vec::new();
        let mut now = 0;
        for _ in 0..200 {
            now += 10;
            let job = match current.as_ref().map(|t| t.step) {
                Some(TransitionStep::Migrate | TransitionStep::Verify) => {
                    JobState::Succeeded(Some(good_result()))
                }
                _ => JobState::Absent,
            };
            let f = f0(Facts {
                now: ts(now),
                shape_ready: true,
                job,
                shards: in_use,
                want_shards: Some(want),
                ..facts(active, target, current.as_ref())
            });
            let p = decide(&f);
            assert!(p.blocked.is_none(), "blocked: {:?}", p.blocked);
            assert_eq!(
                current_shape(p.active, p.transition.as_ref()),
                p.shape,
                "a restart would render another shape than {p:?}"
            );
            assert_eq!(
                current_shards(p.active, p.transition.as_ref(), p.shards_in_use()),
                p.shards,
                "a restart would render other shards than {p:?}"
            );
            if p.transition.as_ref().map(|t| t.step) == Some(TransitionStep::Retain) {
                now += 3600;
            }
            active = p.finished.map_or(p.active, |(_, to)| to);
            in_use = p.shards_in_use();
            current = p.transition.clone();
            let done = current.is_none() && p.finished.is_none();
            plans.push(p);
            if done {
                break;
            }
        }
        (plans, active, in_use)
    }

    fn steps_of(plans: &[Plan]) -> Vec<TransitionStep> {
        plans
            .iter()
            .filter_map(|p| p.transition.as_ref().map(|t| t.step))
            .collect()
    }

    #[test]
    fn a_shard_count_change_reshards_through_every_step() {
        let (plans, active, in_use) = drive(3, 3, Some(TWO_V1), 4, |f| f);
        assert_eq!((active, in_use), (3, Some(FOUR_V2)));
        assert_eq!(
            steps_of(&plans),
            vec![
                TransitionStep::PrepareTarget,
                TransitionStep::WaitTargetReady,
                TransitionStep::Migrate,
                TransitionStep::Verify,
                TransitionStep::CutOver,
                TransitionStep::Retain,
                TransitionStep::Retire,
                TransitionStep::Done,
            ]
        );
        for p in &plans {
            let Some(t) = &p.transition else { continue };
            assert!(is_reshard(t) && t.moves_data, "{t:?}");
            assert_eq!((t.from_shards, t.to_shards), (Some(TWO_V1), Some(FOUR_V2)));
            assert_eq!(step_label(t), "shards-2-to-4");
            let old_serves = Shape::Reshard {
                serve: TWO_V1,
                other: FOUR_V2,
                job: None,
            };
            let new_serves = Shape::Reshard {
                serve: FOUR_V2,
                other: TWO_V1,
                job: Some((TWO_V1, FOUR_V2)),
            };
            match t.step {
                // The new shards and map beside the old; the app on the old.
                TransitionStep::PrepareTarget | TransitionStep::WaitTargetReady => {
                    assert_eq!(p.shape, old_serves, "{:?}", t.step);
                    assert_eq!(p.shards_in_use(), Some(TWO_V1));
                }
                // The Job copies the moved slots; the app stays on the old map.
                TransitionStep::Migrate | TransitionStep::Verify => {
                    assert_eq!(
                        p.shape,
                        Shape::Reshard {
                            serve: TWO_V1,
                            other: FOUR_V2,
                            job: Some((TWO_V1, FOUR_V2)),
                        },
                        "{:?}",
                        t.step
                    );
                    assert_eq!(t.job_name.as_deref(), Some("shop-reshard-v1-to-v2"));
                    assert_eq!(p.shards_in_use(), Some(TWO_V1));
                }
                // Cut over to the new map; the old map stays until Retire.
                TransitionStep::CutOver | TransitionStep::Retain => {
                    assert_eq!(p.shape, new_serves, "{:?}", t.step);
                    assert_eq!(p.shards_in_use(), Some(FOUR_V2));
                    assert!(p.retire.is_none());
                }
                TransitionStep::Retire | TransitionStep::Done => {
                    assert_eq!(p.shape, Shape::Steady(3));
                    assert_eq!(p.shards, Some(FOUR_V2));
                }
            }
            if t.step == TransitionStep::Retire {
                assert_eq!(p.retire, Some((3, 3)), "the old map is retired now");
            }
        }
        let finished: Vec<_> = plans.iter().filter_map(|p| p.finished).collect();
        assert_eq!(finished, vec![(3, 3)]);
        // Steady afterwards: nothing more to do.
        let f = Facts {
            shards: Some(FOUR_V2),
            want_shards: Some(4),
            ..facts(3, 3, None)
        };
        let p = decide(&f);
        assert_eq!(
            (p.transition, p.shape, p.shards),
            (None, Shape::Steady(3), Some(FOUR_V2))
        );
    }

    #[test]
    fn a_climb_into_phase_3_records_map_v1_and_a_later_step_leaves_from_it() {
        let (plans, active, in_use) = drive(2, 3, None, 4, |f| f);
        let four_v1 = ShardLayout {
            shards: 4,
            map_version: FIRST_MAP_VERSION,
        };
        assert_eq!((active, in_use), (3, Some(four_v1)));
        assert!(plans.iter().filter_map(|p| p.transition.as_ref()).all(|t| {
            !is_reshard(t) && t.to_shards == Some(four_v1) && t.from_shards.is_none()
        }));
        // 3 -> 4 leaves the layout in use.
        let (plans, active, in_use) = drive(3, 4, Some(FOUR_V2), 4, |f| f);
        assert_eq!((active, in_use), (4, None));
        let t = plans[0].transition.clone().expect("started");
        assert_eq!((t.from_shards, t.to_shards), (Some(FOUR_V2), None));
        assert_eq!(plans[0].shards, Some(FOUR_V2), "phase 3 beside 4 keeps v2");
        // A phase step comes first; the shard count is changed in phase 3.
        let (plans, _, in_use) = drive(2, 3, None, 2, |f| f);
        assert_eq!(in_use, Some(TWO_V1));
        assert!(
            plans
                .iter()
                .filter_map(|p| p.transition.as_ref())
                .all(|t| !is_reshard(t))
        );
    }

    fn reshard(step: TransitionStep, from: ShardLayout, to: ShardLayout) -> TransitionStatus {
        TransitionStatus {
            from_shards: Some(from),
            to_shards: Some(to),
            moves_data: true,
            job_name: Some(reshard_job_name("shop", from, to)),
            ..transition(3, 3, step)
        }
    }

    fn reshard_facts<'a>(
        t: Option<&'a TransitionStatus>,
        in_use: ShardLayout,
        want: i32,
    ) -> Facts<'a> {
        Facts {
            shards: Some(in_use),
            want_shards: Some(want),
            shape_ready: true,
            job: JobState::Succeeded(Some(good_result())),
            ..facts(3, 3, t)
        }
    }

    #[test]
    fn a_restarted_operator_resumes_a_resharding_at_every_step() {
        let steps = [
            TransitionStep::PrepareTarget,
            TransitionStep::WaitTargetReady,
            TransitionStep::Migrate,
            TransitionStep::Verify,
            TransitionStep::CutOver,
            TransitionStep::Retain,
            TransitionStep::Retire,
            TransitionStep::Done,
        ];
        for (i, step) in steps.iter().copied().enumerate() {
            let t = TransitionStatus {
                retain_until: Some(time(ts(-1))),
                ..reshard(step, TWO_V1, FOUR_V2)
            };
            // status.shards as the previous decision wrote it.
            let in_use = if step >= TransitionStep::CutOver {
                FOUR_V2
            } else {
                TWO_V1
            };
            let f = reshard_facts(Some(&t), in_use, 4);
            let a = decide(&f);
            assert_eq!(a, decide(&f.clone()), "not deterministic at {step:?}");
            match a.transition.clone() {
                Some(next) => {
                    assert_eq!(next.step, steps[i + 1], "at {step:?}");
                    assert_eq!(
                        (next.from_shards, next.to_shards),
                        (Some(TWO_V1), Some(FOUR_V2))
                    );
                }
                None => {
                    assert_eq!(step, TransitionStep::Done);
                    assert_eq!((a.finished, a.shards), (Some((3, 3)), Some(FOUR_V2)));
                }
            }
            // Until the cut-over the app stays on the old map, and nothing
            // holding data leaves the rendered shape before Retire.
            if step < TransitionStep::Verify {
                assert_eq!(a.shards_in_use(), Some(TWO_V1), "at {step:?}");
            }
            if step < TransitionStep::Retain {
                assert!(
                    a.retire.is_none() && !matches!(a.shape, Shape::Steady(_)),
                    "at {step:?}"
                );
            }
        }
    }

    #[test]
    fn a_failed_resharding_keeps_the_old_map_serving() {
        let t = reshard(TransitionStep::Migrate, TWO_V1, FOUR_V2);
        let f = Facts {
            job: JobState::Failed("exit code 1".into()),
            ..reshard_facts(Some(&t), TWO_V1, 4)
        };
        let p = decide(&f);
        assert_eq!(
            p.blocked.clone().expect("blocked").reason,
            blocked::MIGRATION_FAILED
        );
        assert_eq!(p.shards_in_use(), Some(TWO_V1));
        let t = reshard(TransitionStep::Verify, TWO_V1, FOUR_V2);
        let bad = MigrationResult {
            verified: false,
            ..good_result()
        };
        let f = Facts {
            job: JobState::Succeeded(Some(bad)),
            ..reshard_facts(Some(&t), TWO_V1, 4)
        };
        let p = decide(&f);
        assert_eq!(
            p.blocked.clone().expect("blocked").reason,
            blocked::VERIFICATION_FAILED
        );
        assert_eq!(p.shards_in_use(), Some(TWO_V1));
        assert_eq!(p.transition.expect("kept").step, TransitionStep::Verify);
    }

    #[test]
    fn fewer_shards_need_an_approval() {
        let four_v1 = ShardLayout {
            shards: 4,
            map_version: 1,
        };
        let two_v2 = ShardLayout {
            shards: 2,
            map_version: 2,
        };
        for wrong in [
            None,
            Some("3-to-2"),
            Some("shards-4-to-3"),
            Some("shards-2-to-4"),
        ] {
            let f = Facts {
                approval: wrong,
                ..reshard_facts(None, four_v1, 2)
            };
            let p = decide(&f);
            let b = p.blocked.expect("blocked");
            assert_eq!(b.reason, blocked::APPROVAL_REQUIRED, "{wrong:?}");
            assert!(
                b.message
                    .contains("ladder.dev/approve-transition=shards-4-to-2"),
                "{}",
                b.message
            );
            assert_eq!(
                (p.transition, p.shape, p.shards),
                (None, Shape::Steady(3), Some(four_v1))
            );
        }
        for f in [
            Facts {
                approval: Some(" shards-4-to-2 "),
                ..reshard_facts(None, four_v1, 2)
            },
            Facts {
                allow_demotion: true,
                ..reshard_facts(None, four_v1, 2)
            },
        ] {
            let p = decide(&f);
            assert!(p.blocked.is_none());
            let t = p.transition.expect("started");
            assert_eq!((t.from_shards, t.to_shards), (Some(four_v1), Some(two_v2)));
            assert_eq!(t.step, TransitionStep::PrepareTarget);
        }
        // More shards need none.
        let p = decide(&reshard_facts(None, TWO_V1, 4));
        assert!(p.blocked.is_none() && p.transition.is_some());
        // A shrink retires the dropped shards only at Retire, after Retain.
        let (plans, _, in_use) = drive(3, 3, Some(four_v1), 2, |f| Facts {
            allow_demotion: true,
            ..f
        });
        assert_eq!(in_use, Some(two_v2));
        let first_retire = plans
            .iter()
            .position(|p| p.retire.is_some())
            .expect("retired");
        assert_eq!(
            plans[first_retire].transition.as_ref().map(|t| t.step),
            Some(TransitionStep::Retire)
        );
    }

    #[test]
    fn a_resharding_is_abandoned_before_data_moves_when_the_count_goes_back() {
        for step in [
            TransitionStep::PrepareTarget,
            TransitionStep::WaitTargetReady,
        ] {
            let t = reshard(step, TWO_V1, FOUR_V2);
            let p = decide(&reshard_facts(Some(&t), TWO_V1, 2));
            assert_eq!(
                (p.transition, p.shape, p.shards),
                (None, Shape::Steady(3), Some(TWO_V1))
            );
            // Toward yet another count: abandoned too, the next look starts it.
            let p = decide(&reshard_facts(Some(&t), TWO_V1, 8));
            assert!(p.transition.is_none());
            let p = decide(&reshard_facts(None, TWO_V1, 8));
            assert_eq!(
                p.transition.expect("started").to_shards,
                Some(ShardLayout {
                    shards: 8,
                    map_version: 2
                })
            );
        }
        // Once the migration runs it finishes.
        let t = reshard(TransitionStep::Migrate, TWO_V1, FOUR_V2);
        let p = decide(&reshard_facts(Some(&t), TWO_V1, 2));
        assert_eq!(p.transition.expect("kept").step, TransitionStep::Verify);
    }

    #[test]
    fn a_retained_resharding_rolls_back_to_the_old_map_and_then_holds() {
        let t = TransitionStatus {
            retain_until: Some(time(ts(3600))),
            ..reshard(TransitionStep::Retain, TWO_V1, FOUR_V2)
        };
        let f = Facts {
            rollback: Some("shards-2-to-4"),
            ..reshard_facts(Some(&t), FOUR_V2, 4)
        };
        let p = decide(&f);
        assert!(p.blocked.is_none());
        let back = p.transition.clone().expect("rolling back");
        assert_eq!(
            (back.from_shards, back.to_shards),
            (Some(FOUR_V2), Some(TWO_V1))
        );
        assert_eq!(back.step, TransitionStep::Migrate);
        assert_eq!(back.rollback_of.as_deref(), Some("shards-2-to-4"));
        assert_eq!(back.job_name.as_deref(), Some("shop-reshard-v2-to-v1"));
        assert_eq!(
            p.shape,
            Shape::Reshard {
                serve: FOUR_V2,
                other: TWO_V1,
                job: Some((FOUR_V2, TWO_V1))
            }
        );
        // Rolled back (2 shards, map v1 in use), the annotation holds the
        // spec's 4 shards off.
        let f = Facts {
            rollback: Some("shards-2-to-4"),
            ..reshard_facts(None, TWO_V1, 4)
        };
        let p = decide(&f);
        assert_eq!(p.blocked.expect("held").reason, blocked::ROLLED_BACK);
        assert!(p.transition.is_none());
        // Before the cut-over there is nothing to roll back.
        let t = reshard(TransitionStep::Migrate, TWO_V1, FOUR_V2);
        let f = Facts {
            rollback: Some("shards-2-to-4"),
            job: JobState::Running,
            ..reshard_facts(Some(&t), TWO_V1, 4)
        };
        assert_eq!(
            decide(&f).blocked.expect("refused").reason,
            blocked::ROLLBACK_REFUSED
        );
    }
}
