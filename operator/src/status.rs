//! Status, computed purely from what was observed; the reconciler patches it
//! only when the result differs from what is stored. Condition types and
//! reasons are constants here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use ladder_crds::catalogue::{Phase, PhaseProfile};
use ladder_crds::scalingphase::{ComponentStatus, HistoryEntry, MAX_HISTORY, ScalingPhaseStatus};

/// Condition types.
pub mod types {
    /// Every component of the active phase is ready.
    pub const READY: &str = "Ready";
    /// The operator is moving the cluster toward the spec.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a human: invalid spec, over budget, failing apply.
    pub const DEGRADED: &str = "Degraded";
    /// A phase transition (or a promotion) cannot go on by itself; the
    /// reason says why (`ApprovalRequired`, `MigrationFailed`, ...).
    pub const TRANSITION_BLOCKED: &str = "TransitionBlocked";
    /// Whether the promoter has fresh load data.
    pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
    /// A promoter window or dwell time is running.
    pub const COOLDOWN_ACTIVE: &str = "CooldownActive";
}

/// Condition reasons.
pub mod reasons {
    /// All components are ready.
    pub const ALL_READY: &str = "AllComponentsReady";
    /// Some components are not ready yet.
    pub const NOT_READY: &str = "ComponentsNotReady";
    /// Objects were applied and are rolling out.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Nothing left to do.
    pub const RECONCILED: &str = "Reconciled";
    /// The spec cannot be reconciled; see the message.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// `spec.paused` is true.
    pub const PAUSED: &str = "Paused";
    /// The estimated cost is above `spec.monthlyBudgetUSD`.
    pub const OVER_BUDGET: &str = "OverBudget";
    /// Applying objects failed (transient, retried).
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Nothing wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
}

/// What the reconciler observed, as input to [`compute`].
#[derive(Clone, Debug)]
pub enum Observed<'a> {
    /// The spec was invalid.
    Invalid(String),
    /// The phase was rendered (and applied unless paused).
    Rendered {
        /// The phase.
        profile: &'a PhaseProfile,
        /// Readiness of each expected workload.
        components: Vec<ComponentStatus>,
        /// Estimated monthly cost.
        cost: i64,
        /// Monthly budget, if set.
        budget: Option<i64>,
        /// `spec.paused`.
        paused: bool,
    },
    /// Applying failed: the condition reason and the message.
    ApplyFailed(&'static str, String),
}

fn condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    // Keep the transition time unless the status flipped.
    let last = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// Sets (adds or replaces) one condition of `s`, keeping its
/// `lastTransitionTime` unless its status flips.
pub fn set_condition(
    s: &mut ScalingPhaseStatus,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) {
    let c = condition(
        &s.conditions,
        type_,
        status,
        reason,
        message,
        generation,
        now,
    );
    match s.conditions.iter_mut().find(|x| x.type_ == type_) {
        Some(x) => *x = c,
        None => s.conditions.push(c),
    }
}

/// The next status. `now` is used only for fields that change (a flipped
/// condition, a new history entry), so computing twice from the same
/// observation gives the same status and causes no write.
pub fn compute(
    old: Option<&ScalingPhaseStatus>,
    generation: Option<i64>,
    observed: Observed<'_>,
    now: Time,
) -> ScalingPhaseStatus {
    let mut s = old.cloned().unwrap_or_default();
    let prev = s.conditions.clone();
    // Conditions of other writers (transitions, the promoter) are kept.
    let others: Vec<Condition> = prev
        .iter()
        .filter(|c| {
            ![types::READY, types::PROGRESSING, types::DEGRADED].contains(&c.type_.as_str())
        })
        .cloned()
        .collect();
    s.observed_generation = generation;
    let cond =
        |t: &str, st: bool, r: &str, m: String| condition(&prev, t, st, r, m, generation, &now);
    match observed {
        Observed::Invalid(message) => {
            s.conditions = vec![
                cond(types::READY, false, reasons::INVALID_SPEC, message.clone()),
                cond(
                    types::PROGRESSING,
                    false,
                    reasons::INVALID_SPEC,
                    "waiting for a valid spec".into(),
                ),
                cond(types::DEGRADED, true, reasons::INVALID_SPEC, message),
            ];
        }
        Observed::ApplyFailed(reason, message) => {
            s.conditions = vec![
                cond(
                    types::READY,
                    false,
                    reason,
                    format!("the spec is not applied: {message}"),
                ),
                cond(types::PROGRESSING, true, reason, "retrying".into()),
                cond(types::DEGRADED, true, reason, message),
            ];
        }
        Observed::Rendered {
            profile,
            components,
            cost,
            budget,
            paused,
        } => {
            let phase: Phase = profile.phase;
            let total = components.len();
            let ready_n = components.iter().filter(|c| c.ready).count();
            let all_ready = ready_n == total;
            let not_ready: Vec<String> = components
                .iter()
                .filter(|c| !c.ready)
                .map(|c| format!("{} {}: {}", c.kind, c.name, c.message))
                .collect();
            if s.active_phase != Some(phase.number()) && !paused {
                s.history.push(HistoryEntry {
                    phase: phase.number(),
                    name: phase.name().into(),
                    time: now.clone(),
                });
                let excess = s.history.len().saturating_sub(MAX_HISTORY);
                s.history.drain(..excess);
                s.active_phase = Some(phase.number());
                s.active_phase_name = Some(phase.name().into());
            }
            s.ready_components = Some(format!("{ready_n}/{total}"));
            s.components = components;
            s.estimated_monthly_cost_usd = Some(cost);
            let ready_msg = if all_ready {
                format!("phase {phase}: {total} components ready")
            } else {
                let mut m = format!(
                    "{} of {total} not ready: {}",
                    total - ready_n,
                    not_ready.join("; ")
                );
                m.truncate(1000);
                m
            };
            let (prog, prog_reason, prog_msg) = if paused {
                (
                    false,
                    reasons::PAUSED,
                    "spec.paused is true: no child is changed".to_owned(),
                )
            } else if all_ready {
                (
                    false,
                    reasons::RECONCILED,
                    format!("phase {phase} is applied and ready"),
                )
            } else {
                (
                    true,
                    reasons::ROLLING_OUT,
                    format!("waiting for {} components", total - ready_n),
                )
            };
            let over = budget.is_some_and(|b| cost > b);
            let (deg_reason, deg_msg) = if over {
                (
                    reasons::OVER_BUDGET,
                    format!(
                        "estimated ${cost}/month is above the budget of ${}/month",
                        budget.unwrap_or(0)
                    ),
                )
            } else {
                (reasons::AS_EXPECTED, "no problem found".to_owned())
            };
            s.conditions = vec![
                cond(
                    types::READY,
                    all_ready,
                    if all_ready {
                        reasons::ALL_READY
                    } else {
                        reasons::NOT_READY
                    },
                    ready_msg,
                ),
                cond(types::PROGRESSING, prog, prog_reason, prog_msg),
                cond(types::DEGRADED, over, deg_reason, deg_msg),
            ];
        }
    }
    s.conditions.extend(others);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use ladder_crds::catalogue::profile;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    fn comp(ready: bool) -> ComponentStatus {
        ComponentStatus {
            kind: "Deployment".into(),
            name: "x".into(),
            ready,
            message: String::new(),
        }
    }

    fn rendered(p: &PhaseProfile, ready: bool) -> Observed<'_> {
        Observed::Rendered {
            profile: p,
            components: vec![comp(true), comp(ready)],
            cost: 25,
            budget: None,
            paused: false,
        }
    }

    #[test]
    fn same_observation_gives_same_status() {
        let p = profile(Phase::Growth);
        let first = compute(None, Some(1), rendered(&p, true), t(100));
        let second = compute(Some(&first), Some(1), rendered(&p, true), t(200));
        assert_eq!(first, second, "no timestamps move when nothing changed");
        assert_eq!(first.ready_components.as_deref(), Some("2/2"));
        assert_eq!(first.history.len(), 1);
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let p = profile(Phase::Growth);
        let a = compute(None, Some(1), rendered(&p, false), t(100));
        let b = compute(Some(&a), Some(1), rendered(&p, true), t(200));
        let ready = |s: &ScalingPhaseStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == types::READY)
                .cloned()
                .expect("ready")
        };
        assert_eq!(ready(&a).status, "False");
        assert_eq!(ready(&b).status, "True");
        assert_eq!(ready(&b).last_transition_time, t(200));
        let c = compute(Some(&b), Some(2), rendered(&p, true), t(300));
        assert_eq!(ready(&c).last_transition_time, t(200));
        assert_eq!(ready(&c).observed_generation, Some(2));
    }

    #[test]
    fn invalid_spec_is_degraded_with_reason() {
        let s = compute(
            None,
            Some(3),
            Observed::Invalid("spec.phase: must be 0-4".into()),
            t(1),
        );
        let degraded = s
            .conditions
            .iter()
            .find(|c| c.type_ == types::DEGRADED)
            .expect("degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", reasons::INVALID_SPEC)
        );
        assert!(degraded.message.contains("spec.phase"));
    }

    #[test]
    fn history_is_bounded() {
        let mut s = None;
        for i in 0..30 {
            let p = profile(if i % 2 == 0 {
                Phase::Mvp
            } else {
                Phase::Growth
            });
            s = Some(compute(s.as_ref(), Some(i), rendered(&p, true), t(i)));
        }
        assert_eq!(s.expect("status").history.len(), MAX_HISTORY);
    }

    #[test]
    fn over_budget_degrades() {
        let p = profile(Phase::Regional);
        let o = Observed::Rendered {
            profile: &p,
            components: vec![comp(true)],
            cost: 800,
            budget: Some(100),
            paused: false,
        };
        let s = compute(None, Some(1), o, t(1));
        assert!(
            s.conditions
                .iter()
                .any(|c| c.reason == reasons::OVER_BUDGET && c.status == "True")
        );
    }
}
