//! Report: the status the reconcile writes (only when it changed) and the
//! Events it publishes.
//!
//! Events mark what a human may want in `kubectl describe`: a refused
//! spec, a transition step, a finished or blocked transition, a promoter
//! recommendation, and readiness regained after a not-ready status. The
//! first Ready of a new ScalingPhase is only a status change (its `READY`
//! column): an Event for it would cost a request per ScalingPhase and tell
//! nothing the status does not.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::{Context, Error};
use crate::promoter;
use crate::status::{self, Observed};
use crate::transition;
use ladder_crds::scalingphase::{
    AutoscaleMode, ScalingPhase, ScalingPhaseStatus, TransitionStatus,
};

/// The current time as a Kubernetes timestamp.
pub(super) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Sets to null, at every depth of nested objects, the fields `before` has
/// and `next` lacks, so that a JSON merge patch of `next` over `before`
/// removes them. Arrays are replaced whole by a merge patch: left alone.
fn null_dropped(next: &mut serde_json::Value, before: &serde_json::Value) {
    let (Some(next), Some(before)) = (next.as_object_mut(), before.as_object()) else {
        return;
    };
    for (key, old) in before {
        match next.get_mut(key) {
            Some(new) => null_dropped(new, old),
            None => {
                next.insert(key.clone(), serde_json::Value::Null);
            }
        }
    }
}

/// Patches status when it differs from the stored one. Returns whether it wrote.
pub(super) async fn patch_status(
    sp: &ScalingPhase,
    ctx: &Context,
    next: ScalingPhaseStatus,
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
    // drops (a finished transition, a cleared target, a threshold the
    // latest recommendation does not name) are sent as null.
    let mut fields = serde_json::to_value(&next).unwrap_or_default();
    if let Some(before) = sp
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
    {
        null_dropped(&mut fields, &before);
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

/// Publishes an Event about `sp`; a failure is logged, never fatal.
pub(super) async fn publish(
    ctx: &Context,
    sp: &ScalingPhase,
    type_: EventType,
    reason: &str,
    note: &str,
) {
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

/// An invalid spec: a condition and an Event, then wait for a change.
pub(super) async fn refuse(
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
    ctx.forget(uid);
    Ok(Action::await_change())
}

/// The part of a status that records decisions rather than observations:
/// the transition in progress, the promoter's target and recommendation, a
/// blocked transition, the shard layout in use. A status that differs in these must be written at
/// once; one that differs only in what was observed may wait for an
/// observation that includes the operator's own last writes.
#[derive(Debug, PartialEq)]
pub(super) struct Decisions<'a> {
    transition: Option<&'a TransitionStatus>,
    target: Option<i32>,
    recommended: Option<i32>,
    blocked: Option<(&'a str, &'a str)>,
    /// The shard layout in use: a restart reshards from it.
    shards: (Option<i32>, Option<i32>),
}

impl<'a> Decisions<'a> {
    /// The decisions `s` records.
    pub(super) fn of(s: Option<&'a ScalingPhaseStatus>) -> Self {
        Self {
            transition: s.and_then(|s| s.transition.as_ref()),
            target: s.and_then(|s| s.target_phase),
            recommended: s.and_then(|s| s.recommended_phase),
            blocked: s.and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == status::types::TRANSITION_BLOCKED && c.status == "True")
                    .map(|c| (c.reason.as_str(), c.message.as_str()))
            }),
            shards: (
                s.and_then(|s| s.shards),
                s.and_then(|s| s.shard_map_version),
            ),
        }
    }
}

/// Two significant digits: status shows a figure, not every wiggle of it, so
/// a steady load causes no status writes.
pub(super) fn round2(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let magnitude = 10f64.powi(x.abs().log10().floor() as i32 - 1);
    (x / magnitude).round() * magnitude
}

/// Writes the promoter's decision into the next status.
pub(super) fn apply_decision(
    next: &mut ScalingPhaseStatus,
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

/// Sets the transition conditions (`TransitionBlocked`, `Progressing`
/// while a transition moves) of the next status from the decided plan.
pub(super) fn transition_conditions(
    next: &mut ScalingPhaseStatus,
    plan: &transition::Plan,
    decision: Option<&promoter::Decision>,
    generation: Option<i64>,
    at: &Time,
) {
    match &plan.blocked {
        Some(b) => status::set_condition(
            next,
            status::types::TRANSITION_BLOCKED,
            true,
            b.reason,
            b.message.clone(),
            generation,
            at,
        ),
        None if decision.is_some_and(|d| d.refused.is_some()) => {
            if let Some((reason, message)) = decision.and_then(|d| d.refused.clone()) {
                status::set_condition(
                    next,
                    status::types::TRANSITION_BLOCKED,
                    true,
                    reason,
                    message,
                    generation,
                    at,
                );
            }
        }
        None => status::set_condition(
            next,
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
            at,
        ),
    }
    if let Some(t) = &plan.transition
        && plan.blocked.is_none()
    {
        status::set_condition(
            next,
            status::types::PROGRESSING,
            true,
            "Transitioning",
            format!("phase {} to {}: {:?}: {}", t.from, t.to, t.step, t.message),
            generation,
            at,
        );
    }
}

/// The promoter's Events and counters: a new recommendation, a refused
/// promotion, a new target.
pub(super) async fn announce_promoter(
    ctx: &Context,
    sp: &ScalingPhase,
    d: &promoter::Decision,
    active: i32,
) {
    let old = sp.status.as_ref();
    ctx.metrics.promoter_view(
        &sp.namespace().unwrap_or_default(),
        &sp.name_any(),
        d.observed_tps,
        d.recommended,
    );
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

/// The transition machine's Events and counters: a step entered, a
/// transition done, a new block.
pub(super) async fn announce_transition(
    ctx: &Context,
    sp: &ScalingPhase,
    plan: &transition::Plan,
    step_started: Option<(ladder_crds::scalingphase::TransitionStep, f64)>,
) {
    let before_blocked = sp.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::types::TRANSITION_BLOCKED && c.status == "True")
            .map(|c| c.reason.clone())
    });
    if let Some(step) = plan.entered {
        if let Some((previous, seconds)) = step_started {
            ctx.metrics.transition_step(previous, seconds);
        }
        let msg = plan
            .transition
            .as_ref()
            .map(|t| format!("phase {} to {}: {step:?}: {}", t.from, t.to, t.message))
            .unwrap_or_default();
        publish(ctx, sp, EventType::Normal, "TransitionStep", &msg).await;
    }
    let stored = sp.status.as_ref().and_then(|s| s.transition.as_ref());
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
        && before_blocked.as_deref() != Some(b.reason)
    {
        if let Some(t) = &plan.transition
            && b.reason != transition::blocked::ROLLBACK_REFUSED
        {
            ctx.metrics.transition_finished(t.from, t.to, b.reason);
        }
        publish(ctx, sp, EventType::Warning, b.reason, &b.message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_figures_are_rounded_to_two_digits() {
        assert_eq!(round2(123.4), 120.0);
        assert_eq!(round2(9.87), 9.9);
        assert_eq!(round2(0.0), 0.0);
        assert!((round2(0.01234) - 0.012).abs() < 1e-12);
    }

    #[test]
    fn a_merge_patch_removes_nested_fields_the_new_status_drops() {
        let before = serde_json::json!({
            "targetPhase": 2,
            "recommendation": {"phase": 1, "threshold": 10.0, "since": "t"},
            "conditions": [{"type": "Ready"}],
        });
        let mut next = serde_json::json!({
            "recommendation": {"phase": 1},
            "conditions": [],
        });
        null_dropped(&mut next, &before);
        assert_eq!(
            next,
            serde_json::json!({
                "targetPhase": null,
                "recommendation": {"phase": 1, "threshold": null, "since": null},
                "conditions": [],
            })
        );
    }
}
