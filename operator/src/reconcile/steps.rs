//! The steps of one reconcile of a live ScalingPhase, in order (see the
//! list in [`super`]). Each step is a function; only [`write_children`],
//! [`read_job`], the stale-volume guard and the status/Event step talk to
//! the apiserver.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::DRIFT_CHECK;
use super::observe::{self, ChildKey, JobSeen, Observation};
use super::plan::{self, Plan};
use super::report::{self, now};
use super::shapes::{render_shape, validated_at};
use super::volumes;
use super::{
    Context, Error, NOT_READY_REQUEUE, PROMOTER_SAMPLE, QUIET_ROLLOUT, TRANSITION_REQUEUE,
};
use crate::apply::{self, ApplyError};
use crate::promoter;
use crate::render::{self, Desired, Kind};
use crate::status::{self, Observed};
use crate::transition::{self, Facts, JobState, MigrationResult, Shape};
use crate::validate::{self, World};
use ladder_crds::scalingphase::{AutoscaleMode, ScalingPhase, TransitionStep};

/// One reconcile of a ScalingPhase that is not being deleted.
pub(super) async fn apply_phase(sp: &ScalingPhase, ctx: &Context) -> Result<Action, Error> {
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let uid = sp.uid().unwrap_or_default();
    let old = sp.status.as_ref();
    // Read once: validation, rendering and pruning see the same facts.
    let world = ctx.world();

    // 1. validate (pure) the declared spec, at its effective target phase.
    let declared = match validate::validate(sp, &world) {
        Ok((v, _)) => v.phase.number(),
        Err(invalid) => return report::refuse(sp, ctx, &uid, invalid.to_string()).await,
    };

    // 2. where the ScalingPhase stands (pure): the active phase and the
    //    effective target, with the promoter's decision.
    let active = active_phase(sp, ctx, declared);
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
    let target = target_phase(sp, decision.as_ref(), declared);
    let stored = old.and_then(|s| s.transition.as_ref());

    // 3. observe (pure) what the last decision applied, from the stores;
    //    and the migration Job (its pod's result only once it finished).
    let want_shards = validated_at(sp, &world, transition::SHARDED, None)
        .ok()
        .and_then(|(v, _)| v.postgres.map(|pg| pg.shards));
    let in_use = shards_in_use(sp, active, want_shards);
    let shape_now = transition::current_shape(active, stored);
    let shards_now = transition::current_shards(active, stored, in_use);
    let rendered_now = match render_shape(sp, &world, shape_now, shards_now) {
        Ok(d) => d,
        Err(message) => return report::refuse(sp, ctx, &uid, message).await,
    };
    let seen_now = observe::observe(&ctx.stores, &ns, &rendered_now, &ctx.written(&uid));
    let job = read_job(ctx, &ns, stored).await?;
    let mut facts = facts(sp, active, target, &seen_now, job, &name);
    facts.shards = in_use;
    facts.want_shards = want_shards;

    // 4. decide (pure) the transition step; a step back onto retired
    //    volumes is refused (client: only when a transition starts).
    let mut decided = decide(sp, &facts, shape_now, shards_now);
    if decided.entered == Some(TransitionStep::PrepareTarget)
        && let Some(t) = &decided.transition
        && let Some(stale) = volumes::stale_volumes(sp, &world, ctx, &ns, t).await?
    {
        decided = transition::Plan {
            transition: None,
            shape: shape_now,
            shards: shards_now,
            entered: None,
            blocked: Some(transition::Blocked {
                reason: transition::blocked::STALE_VOLUMES,
                message: format!(
                    "{} would start on volumes a past transition retired ({stale}); they hold stale data. Back them up and delete them (or remove their {} label to reuse them knowingly) to go on",
                    if transition::is_reshard(t) {
                        format!("resharding {}", transition::step_label(t))
                    } else {
                        format!("phase {}", t.to)
                    },
                    transition::RETIRED_BY_LABEL
                ),
            }),
            ..decided
        };
    }

    // 5. render (pure) what the decision needs.
    let now_view = (shape_now, shards_now);
    let desired = render_decided(sp, &world, &mut decided, now_view, rendered_now);
    let decided_view = (decided.shape, decided.shards);
    let (active_v, active_profile) = validated_at(sp, &world, decided.active, decided.shards)
        .map_err(|e| Error::Render(e.to_string()))?;

    // 6. plan (pure) the writes, then write the children (client).
    let hash = render::short_hash(desired.to_yaml().as_bytes());
    let phase_changed = decided_view != now_view
        || old
            .and_then(|s| s.active_phase)
            .is_some_and(|p| p != decided.active);
    let seen = if decided_view == now_view {
        seen_now
    } else {
        observe::observe(&ctx.stores, &ns, &desired, &ctx.written(&uid))
    };
    let plan = plan::plan(
        sp.spec.paused,
        &hash,
        ctx.last(&uid).as_ref(),
        phase_changed,
        &seen,
    );
    let wrote = match write_children(sp, ctx, &plan, &desired, &hash, decided.active, &world).await
    {
        Ok(wrote) => wrote,
        Err(e) => {
            let next = status::compute(
                old,
                sp.metadata.generation,
                Observed::ApplyFailed(e.reason(), e.to_string()),
                now(),
            );
            report::patch_status(sp, ctx, next).await?;
            return Err(e.into());
        }
    };
    if !sp.spec.paused
        && decided.retire.is_some()
        && let Some(t) = &decided.transition
    {
        volumes::retire_volumes(sp, &world, ctx, &ns, t).await?;
    }

    // 7. observe again (pure) after writing: the stores lag the writes.
    let seen = if wrote {
        observe::observe(&ctx.stores, &ns, &desired, &ctx.written(&uid))
    } else {
        seen
    };
    if seen.missing.is_empty() {
        ctx.repaired_none(&uid);
    }

    // 8. status (pure compute; patched only when it changed) and Events.
    let all_ready = seen.all_ready();
    // Within QUIET_ROLLOUT of its own writes, the operator reports only a
    // finished rollout: what the stores show before is either out of date
    // or a moment of a rollout about to finish (one status write, not two).
    let since_write = ctx.since_write(&uid);
    let fresh = since_write.is_some_and(|d| d < QUIET_ROLLOUT);
    let settled = !fresh || (seen.settled() && all_ready);
    let written_status = report_status(
        sp,
        ctx,
        &decided,
        decision.as_ref(),
        &facts,
        seen,
        settled,
        (&active_v, &active_profile),
    )
    .await?;

    // 9. requeue.
    let mut after = requeue_after(&decided, all_ready, &facts);
    if let Some(d) = &decision {
        // Sample the load at least this often (LoadReport changes wake us
        // too), and look again the moment a running window ends: waiting for
        // the next report would add up to a report interval to the reaction.
        after = after.min(PROMOTER_SAMPLE);
        if let Some(due) = d.due {
            let left = due.duration_since(sampled_at);
            let left = Duration::try_from(left).unwrap_or_default() + WINDOW_SLACK;
            after = after.min(left);
        }
    }
    match plan {
        Plan::Settle(left) => after = after.min(left),
        _ if !written_status => {
            let left = since_write.map_or(QUIET_ROLLOUT, |d| QUIET_ROLLOUT.saturating_sub(d));
            after = after.min(left.max(Duration::from_millis(100)));
        }
        _ => {}
    }
    Ok(Action::requeue(after))
}

/// The active phase: from status; before the first status write, the phase
/// this process last applied, else the one the app Deployment runs
/// (`LADDER_PHASE`), else the declared target (a new ScalingPhase starts at
/// its target: there is no data to move yet). So a spec change made before
/// the first status write still goes through the transition machine.
fn active_phase(sp: &ScalingPhase, ctx: &Context, declared: i32) -> i32 {
    if let Some(p) = sp.status.as_ref().and_then(|s| s.active_phase) {
        return p;
    }
    let uid = sp.uid().unwrap_or_default();
    ctx.applied_active(&uid)
        .or_else(|| {
            observe::applied_phase(
                &ctx.stores,
                &sp.namespace().unwrap_or_default(),
                &sp.name_any(),
            )
        })
        .unwrap_or(declared)
}

/// Past the end of a promoter window: the sample that ends it must be older
/// than the window when the reconciler looks.
const WINDOW_SLACK: Duration = Duration::from_millis(50);
/// The shard layout phase 3 uses now: from status; in phase 3 without one
/// (a ScalingPhase created at phase 3, or status written by an operator
/// before resharding existed), the spec's shard count on map v1, which is
/// what such an operator rendered (CEL refused a change of the count then).
fn shards_in_use(
    sp: &ScalingPhase,
    active: i32,
    want_shards: Option<i32>,
) -> Option<transition::ShardLayout> {
    if active != transition::SHARDED {
        return None;
    }
    let status = sp.status.as_ref();
    let stored = status.and_then(|s| s.shards.zip(s.shard_map_version));
    match stored {
        Some((shards, map_version)) => Some(transition::ShardLayout {
            shards,
            map_version,
        }),
        None => want_shards.map(|shards| transition::ShardLayout {
            shards,
            map_version: transition::FIRST_MAP_VERSION,
        }),
    }
}

/// The effective target: the declared phase, or the promoter's target
/// above it (capped) under `autoscale.mode: Auto`.
fn target_phase(sp: &ScalingPhase, decision: Option<&promoter::Decision>, declared: i32) -> i32 {
    match decision.and_then(|d| d.target) {
        Some(t) if sp.spec.autoscale.mode == AutoscaleMode::Auto => {
            let cap = sp.spec.autoscale.max_phase.unwrap_or(4);
            if t > sp.spec.phase {
                t.min(cap).max(sp.spec.phase)
            } else {
                sp.spec.phase
            }
        }
        _ => declared,
    }
}

/// The facts the transition machine decides on.
fn facts<'a>(
    sp: &'a ScalingPhase,
    active: i32,
    target: i32,
    seen: &Observation,
    job: JobState,
    name: &'a str,
) -> Facts<'a> {
    let policy = &sp.spec.transitions;
    Facts {
        now: Timestamp::now(),
        active,
        target,
        current: sp.status.as_ref().and_then(|s| s.transition.as_ref()),
        shape_ready: seen.missing.is_empty() && seen.all_ready(),
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
        name,
        shards: None,
        want_shards: None,
    }
}

/// The transition machine's plan; paused, the stored step stays as it is.
fn decide(
    sp: &ScalingPhase,
    facts: &Facts<'_>,
    shape_now: Shape,
    shards_now: Option<transition::ShardLayout>,
) -> transition::Plan {
    if sp.spec.paused {
        transition::Plan {
            shape: shape_now,
            shards: shards_now,
            active: facts.active,
            transition: facts.current.cloned(),
            blocked: None,
            finished: None,
            entered: None,
            retire: None,
            verified_rows: None,
        }
    } else {
        transition::decide(facts)
    }
}

/// Renders the decided shape. A phase on the way that does not validate
/// blocks the transition where it stands (and the current shape is kept).
fn render_decided(
    sp: &ScalingPhase,
    world: &World,
    decided: &mut transition::Plan,
    (shape_now, shards_now): (Shape, Option<transition::ShardLayout>),
    rendered_now: Desired,
) -> Desired {
    if (decided.shape, decided.shards) == (shape_now, shards_now) {
        return rendered_now;
    }
    match render_shape(sp, world, decided.shape, decided.shards) {
        Ok(d) => d,
        Err(message) => {
            decided.shape = shape_now;
            decided.shards = shards_now;
            decided.transition = sp.status.as_ref().and_then(|s| s.transition.clone());
            decided.entered = None;
            decided.retire = None;
            decided.blocked = Some(transition::Blocked {
                reason: transition::blocked::INVALID_STEP,
                message,
            });
            rendered_now
        }
    }
}

/// Writes the children the plan asks for. Returns whether it wrote any.
async fn write_children(
    sp: &ScalingPhase,
    ctx: &Context,
    plan: &Plan,
    desired: &Desired,
    hash: &str,
    active: i32,
    world: &World,
) -> Result<bool, ApplyError> {
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let uid = sp.uid().unwrap_or_default();
    match plan {
        Plan::Hold | Plan::UpToDate | Plan::Settle(_) => Ok(false),
        Plan::ApplyAll { prune, why } => {
            // Generated Secrets the stores show exist are left out (checking
            // them would only cost a GET each), except a leaf certificate not
            // yet checked for the hosts it must name now, or due for renewal:
            // `apply` re-issues it (crate::apply::secrets::reissue_reason).
            let mut todo = desired.clone();
            let now = time::OffsetDateTime::now_utc();
            todo.generated_secrets.retain(|s| {
                match (ctx.stores.secret_annotations(&ns, &s.name), &s.content) {
                    (None, _) => !plan::present(&ctx.stores, Kind::Secret, &ns, &s.name),
                    (Some(notes), render::SecretContent::Tls { dns_names, .. }) => {
                        !apply::secrets::leaf_checked(&notes, dns_names, now)
                    }
                    (Some(_), _) => false,
                }
            });
            let written = apply::apply(&ctx.client, &ns, &todo, &ctx.metrics).await?;
            if *prune {
                for (kind, child) in plan::stale(&ctx.stores, &ns, &name, &uid, desired) {
                    apply::delete(&ctx.client, &ns, kind, &child, &ctx.metrics).await?;
                }
                apply::prune_third_party(
                    &ctx.client,
                    &ns,
                    &name,
                    &uid,
                    desired,
                    world.integrations,
                    &ctx.metrics,
                )
                .await?;
            }
            ctx.record_full(&uid, hash, active, &written);
            info!(
                phase = active,
                objects = desired.len(),
                ?why,
                prune,
                "applied"
            );
            Ok(true)
        }
        Plan::Repair(missing) => {
            let keys: BTreeSet<ChildKey> = missing.iter().cloned().collect();
            let written =
                apply::apply(&ctx.client, &ns, &plan::only(desired, &keys), &ctx.metrics).await?;
            ctx.record_repair(&uid, &written);
            info!(children = ?missing, "re-created missing children");
            Ok(true)
        }
    }
}

/// Computes the next status, publishes the Events it implies, and writes
/// it when it changed. Returns whether the status is as observed now
/// (written, or already so).
///
/// Within [`QUIET_ROLLOUT`] of the operator's own writes (`settled` false), what
/// the stores show is out of date ("not created yet" for what was just
/// created) or a rollout in progress, so the write waits for the next
/// reconcile, which the watch events of the rollout bring within moments
/// (and a requeue at the end of the window at the latest), unless a
/// decision (a transition step, a target, a block) must be recorded now.
#[allow(clippy::too_many_arguments)]
async fn report_status(
    sp: &ScalingPhase,
    ctx: &Context,
    decided: &transition::Plan,
    decision: Option<&promoter::Decision>,
    facts: &Facts<'_>,
    seen: Observation,
    settled: bool,
    (active_v, active_profile): (&validate::Validated, &ladder_crds::catalogue::PhaseProfile),
) -> Result<bool, Error> {
    let old = sp.status.as_ref();
    let generation = sp.metadata.generation;
    let all_ready = seen.all_ready();
    let observed = Observed::Rendered {
        profile: active_profile,
        components: seen.components,
        cost: active_v.estimated_monthly_cost(active_profile),
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
    let at = now();
    let mut next = status::compute(old, generation, observed, at.clone());
    next.transition = decided.transition.clone();
    let in_use = decided.shards_in_use();
    next.shards = in_use.map(|l| l.shards);
    next.shard_map_version = in_use.map(|l| l.map_version);
    report::apply_decision(&mut next, decision, sp, generation, &at);
    report::transition_conditions(&mut next, decided, decision, generation, &at);
    if !settled && report::Decisions::of(Some(&next)) == report::Decisions::of(old) {
        return Ok(false);
    }
    if let Some(d) = decision {
        report::announce_promoter(ctx, sp, d, facts.active).await;
    }
    ctx.metrics.active_phase(
        &sp.namespace().unwrap_or_default(),
        &sp.name_any(),
        decided.active,
    );
    let step_started = facts.current.map(|t| {
        (
            t.step,
            facts.now.duration_since(t.step_started_at.0).as_secs_f64(),
        )
    });
    report::announce_transition(ctx, sp, decided, step_started).await;
    if report::patch_status(sp, ctx, next).await? && all_ready && before_ready == Some(false) {
        report::publish(
            ctx,
            sp,
            EventType::Normal,
            status::reasons::ALL_READY,
            &format!("phase {} is ready", decided.active),
        )
        .await;
    }
    Ok(true)
}

/// How soon to look again: quickly while a transition moves, at the end of
/// the retention window while it waits, slowly when blocked or idle.
pub(super) fn requeue_after(plan: &transition::Plan, all_ready: bool, f: &Facts<'_>) -> Duration {
    // A transition just finished: the next step of a walk, or a hold (a
    // rolled-back step), is decided on the next look. The operator's own
    // status write does not wake it (the ScalingPhase watch filters it out).
    if plan.finished.is_some() {
        return TRANSITION_REQUEUE;
    }
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

/// Reads the migration Job of the stored transition: its state from the
/// store; once it finished, its pod's termination message (the migrator's
/// JSON result) with one LIST.
async fn read_job(
    ctx: &Context,
    ns: &str,
    stored: Option<&ladder_crds::scalingphase::TransitionStatus>,
) -> Result<JobState, Error> {
    let Some(name) = stored
        .filter(|t| t.moves_data)
        .and_then(|t| t.job_name.as_deref())
    else {
        return Ok(JobState::Absent);
    };
    let (succeeded, condition) = match observe::job(&ctx.stores, ns, name) {
        JobSeen::State(s) => return Ok(s),
        JobSeen::Done {
            succeeded,
            condition,
        } => (succeeded, condition),
    };
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .map_err(|source| Error::Observe {
            kind: "Job",
            name: name.to_owned(),
            source,
        })?;
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
        (None, None) => condition.unwrap_or_else(|| "the Job failed".into()),
    };
    Ok(JobState::Failed(why))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            shards: None,
            want_shards: None,
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
        // Done with one step: look again soon, the next one (or a hold)
        // is only decided then.
        let mut finished = idle.clone();
        finished.finished = Some((1, 0));
        assert_eq!(requeue_after(&finished, true, &f), TRANSITION_REQUEUE);
    }
}
