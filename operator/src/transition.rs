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
//!
//! Why this file is long (~910 lines, tests in `transition/tests.rs`): it is
//! one state machine, phases and shard layouts alike, and [`decide`] must be
//! read whole to see that no step can lose data; splitting it by step would
//! spread that argument over files.

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
mod tests;
