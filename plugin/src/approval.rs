//! Which demotion waits (or will wait) for an approval, and what `pause`
//! and `resume` should warn about. Pure: everything comes from the
//! ScalingPhase object.
//!
//! How approval works in the operator (docs/transitions.md): a step down
//! that moves data (1→0, 3→2, 4→3) starts only when the ScalingPhase carries
//! the annotation `ladder.dev/approve-transition: "<from>-to-<to>"` naming
//! that very step, or `spec.transitions.allowDemotion` is true. The operator
//! walks one phase at a time, so a jump of several phases down may need
//! several approvals, one per data-moving step; an approval never carries
//! over to another step. Argo CD's `approve-transition` action writes the
//! same annotation.

use kube::ResourceExt;

use ladder_crds::scalingphase::ScalingPhase;
use ladder_operator::status::types;
use ladder_operator::transition::{self, APPROVE_ANNOTATION, blocked};
use ladder_operator::validate::effective_phase;

/// One step of a phase change, `from` → `to` (always one phase apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The phase left.
    pub from: i32,
    /// The phase entered.
    pub to: i32,
}

impl Step {
    /// The annotation value that approves this step: `"<from>-to-<to>"`.
    pub fn value(self) -> String {
        format!("{}-to-{}", self.from, self.to)
    }

    /// Parses `"<from>-to-<to>"`; the step must be one phase down, between 0 and 4.
    pub fn parse(s: &str) -> Result<Step, String> {
        let bad = || format!("{s:?} is not a step down such as 3-to-2");
        let (from, to) = s.trim().split_once("-to-").ok_or_else(bad)?;
        let from: i32 = from.parse().map_err(|_| bad())?;
        let to: i32 = to.parse().map_err(|_| bad())?;
        if !(1..=4).contains(&from) || to != from - 1 {
            return Err(format!(
                "{s:?}: an approval names one step down between phases 4 and 0, such as 3-to-2"
            ));
        }
        Ok(Step { from, to })
    }

    /// Whether the step changes the data tier (and so, going down, needs approval).
    pub fn moves_data(self) -> bool {
        transition::moves_data(self.from, self.to)
    }
}

/// The steps, one phase at a time, from `from` to `to` (empty when equal).
pub fn steps(from: i32, to: i32) -> Vec<Step> {
    let mut out = Vec::new();
    let mut at = from;
    while at != to {
        let next = if to > at { at + 1 } else { at - 1 };
        out.push(Step { from: at, to: next });
        at = next;
    }
    out
}

/// The phase the operator steps from next: the end of the transition in
/// progress, else the active phase. `None` before the first status.
pub fn stepping_from(sp: &ScalingPhase) -> Option<i32> {
    let s = sp.status.as_ref()?;
    match &s.transition {
        Some(t) => Some(t.to),
        None => s.active_phase,
    }
}

/// The next data-moving step down that needs an approval, or why there is none.
pub fn next_approval(sp: &ScalingPhase) -> Result<Step, String> {
    let name = sp.name_any();
    if sp.spec.transitions.allow_demotion {
        return Err(format!(
            "{name} has spec.transitions.allowDemotion: true, so demotions need no approval"
        ));
    }
    let Some(from) = stepping_from(sp) else {
        return Err(format!(
            "{name} has no status.activePhase yet: the operator has not reconciled it"
        ));
    };
    let target = effective_phase(sp);
    if target >= from {
        return Err(format!(
            "nothing to approve: {name} is not stepping down (phase {from}, target {target}); only demotions that move data need an approval"
        ));
    }
    steps(from, target)
        .into_iter()
        .find(|s| s.moves_data())
        .ok_or_else(|| {
            format!("nothing to approve: no step from phase {from} down to {target} moves data")
        })
}

/// A resharding to fewer shards that waits (or will wait) for an approval:
/// phase 3 stays the target, and the spec asks for fewer shards than
/// `status.shards`. Its annotation value, `"shards-<from>-to-<to>"`. `None`
/// with `allowDemotion`, or while a transition runs (it is decided after).
pub fn reshard_approval(sp: &ScalingPhase) -> Option<String> {
    if sp.spec.transitions.allow_demotion {
        return None;
    }
    let s = sp.status.as_ref()?;
    if s.transition.is_some()
        || s.active_phase != Some(transition::SHARDED)
        || effective_phase(sp) != transition::SHARDED
    {
        return None;
    }
    let cur = s.shards?;
    let want = ladder_operator::validate::validate(sp, &Default::default())
        .ok()?
        .0
        .postgres?
        .shards;
    (want < cur).then(|| format!("shards-{cur}-to-{want}"))
}

/// The approval annotation's current value.
pub fn approved_value(sp: &ScalingPhase) -> Option<&str> {
    sp.annotations().get(APPROVE_ANNOTATION).map(|v| v.trim())
}

/// Whether the operator reports that it waits for an approval now.
pub fn waiting_for_approval(sp: &ScalingPhase) -> bool {
    sp.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == types::TRANSITION_BLOCKED
                && c.status == "True"
                && c.reason == blocked::APPROVAL_REQUIRED
        })
    })
}

/// What the status shows about approvals: waiting, approved, or needed later.
pub fn summary(sp: &ScalingPhase) -> Option<String> {
    let value = match reshard_approval(sp) {
        Some(v) => v,
        None => next_approval(sp).ok()?.value(),
    };
    let name = sp.name_any();
    Some(if approved_value(sp) == Some(value.as_str()) {
        format!("{value} approved ({APPROVE_ANNOTATION})")
    } else if waiting_for_approval(sp) {
        format!("waiting for {value}: run `kubectl ladder approve {name}`")
    } else {
        format!("{value} will need an approval (`kubectl ladder approve {name}`)")
    })
}

/// Other writers that own `spec.paused` through server-side apply (a GitOps
/// tool, `kubectl apply --server-side`): they set it back on their next
/// apply, so a pause by hand does not last. Argo CD's tracking annotation
/// says the same for client-side syncs.
pub fn paused_owners(sp: &ScalingPhase, me: &str) -> Vec<String> {
    let mut owners: Vec<String> = sp
        .managed_fields()
        .iter()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter(|m| m.manager.as_deref() != Some(me))
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:paused"))
                .is_some()
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    if sp
        .annotations()
        .contains_key("argocd.argoproj.io/tracking-id")
        && !owners.iter().any(|o| o.contains("argocd"))
    {
        owners.push("Argo CD (argocd.argoproj.io/tracking-id)".into());
    }
    owners.sort();
    owners.dedup();
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;
    use ladder_crds::scalingphase::{ScalingPhaseStatus, TransitionStatus, TransitionStep};

    fn sp(declared: i32, active: Option<i32>) -> ScalingPhase {
        let mut sp: ScalingPhase = serde_yaml::from_str(&format!(
            "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: shop, namespace: default}}\nspec: {{phase: {declared}}}\n"
        ))
        .expect("parses");
        sp.status = active.map(|a| ScalingPhaseStatus {
            active_phase: Some(a),
            ..ScalingPhaseStatus::default()
        });
        sp
    }

    fn at() -> Time {
        Time(Timestamp::from_second(1_800_000_000).expect("valid"))
    }

    #[test]
    fn steps_walk_one_phase_at_a_time() {
        assert_eq!(steps(2, 2), vec![]);
        assert_eq!(
            steps(0, 2),
            vec![Step { from: 0, to: 1 }, Step { from: 1, to: 2 }]
        );
        assert_eq!(
            steps(3, 1),
            vec![Step { from: 3, to: 2 }, Step { from: 2, to: 1 }]
        );
    }

    #[test]
    fn step_values_parse_back_and_only_single_steps_down_are_accepted() {
        let s = Step::parse("3-to-2").expect("valid");
        assert_eq!(s, Step { from: 3, to: 2 });
        assert_eq!(s.value(), "3-to-2");
        for bad in [
            "3-to-1",
            "1-to-2",
            "0-to--1",
            "5-to-4",
            "three-to-two",
            "3to2",
            "",
        ] {
            assert!(Step::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_demotion_that_moves_data_needs_its_own_step_approved() {
        assert_eq!(next_approval(&sp(0, Some(1))), Ok(Step { from: 1, to: 0 }));
        assert_eq!(next_approval(&sp(3, Some(4))), Ok(Step { from: 4, to: 3 }));
        // 3 → 1 walks 3→2 (moves data: shards to one primary), then 2→1.
        assert_eq!(next_approval(&sp(1, Some(3))), Ok(Step { from: 3, to: 2 }));
        // 2 → 0: 2→1 moves no data; 1→0 does, and is the one to approve.
        assert_eq!(next_approval(&sp(0, Some(2))), Ok(Step { from: 1, to: 0 }));
    }

    #[test]
    fn nothing_to_approve_says_why() {
        let up = next_approval(&sp(2, Some(1))).expect_err("a promotion");
        assert!(up.contains("not stepping down"), "{up}");
        let same = next_approval(&sp(1, Some(1))).expect_err("steady");
        assert!(same.contains("nothing to approve"), "{same}");
        let no_data = next_approval(&sp(1, Some(2))).expect_err("2 -> 1 moves no data");
        assert!(no_data.contains("moves data"), "{no_data}");
        let fresh = next_approval(&sp(0, None)).expect_err("no status");
        assert!(fresh.contains("not reconciled"), "{fresh}");
        let mut allowed = sp(0, Some(1));
        allowed.spec.transitions.allow_demotion = true;
        let a = next_approval(&allowed).expect_err("allowed");
        assert!(a.contains("allowDemotion"), "{a}");
    }

    #[test]
    fn a_running_transition_counts_from_its_end() {
        let mut s = sp(1, Some(3));
        if let Some(st) = s.status.as_mut() {
            st.transition = Some(TransitionStatus {
                from: 3,
                to: 2,
                step: TransitionStep::Migrate,
                moves_data: true,
                started_at: at(),
                step_started_at: at(),
                job_name: None,
                retain_until: None,
                rollback_of: None,
                message: String::new(),
                from_shards: None,
                to_shards: None,
            });
        }
        // 3→2 runs (it was approved); 2→1 moves no data: nothing left to approve.
        assert!(next_approval(&s).is_err());
        s.spec.phase = 0;
        assert_eq!(next_approval(&s), Ok(Step { from: 1, to: 0 }));
    }

    #[test]
    fn the_summary_follows_the_annotation_and_the_condition() {
        let mut s = sp(0, Some(1));
        assert!(
            summary(&s)
                .expect("pending")
                .contains("will need an approval")
        );
        if let Some(st) = s.status.as_mut() {
            st.conditions.push(Condition {
                type_: "TransitionBlocked".into(),
                status: "True".into(),
                reason: "ApprovalRequired".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: at(),
            });
        }
        assert!(waiting_for_approval(&s));
        assert_eq!(
            summary(&s).as_deref(),
            Some("waiting for 1-to-0: run `kubectl ladder approve shop`")
        );
        s.metadata.annotations =
            Some([(APPROVE_ANNOTATION.to_owned(), "1-to-0".to_owned())].into());
        assert!(
            summary(&s)
                .expect("approved")
                .starts_with("1-to-0 approved")
        );
        // An approval of another step does not count.
        s.metadata.annotations =
            Some([(APPROVE_ANNOTATION.to_owned(), "3-to-2".to_owned())].into());
        assert!(summary(&s).expect("waiting").starts_with("waiting"));
        assert_eq!(summary(&sp(1, Some(1))), None);
    }

    fn sharded(spec_shards: i32, in_use: i32) -> ScalingPhase {
        let mut s: ScalingPhase = serde_yaml::from_str(&format!(
            "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: shop, namespace: default, uid: 11111111-2222-3333-4444-555555555555}}\nspec: {{phase: 3, overrides: {{postgres: {{shards: {spec_shards}}}}}}}\n"
        ))
        .expect("parses");
        s.status = Some(ScalingPhaseStatus {
            active_phase: Some(3),
            shards: Some(in_use),
            shard_map_version: Some(1),
            ..ScalingPhaseStatus::default()
        });
        s
    }

    #[test]
    fn fewer_shards_need_their_own_approval() {
        let s = sharded(2, 4);
        assert_eq!(reshard_approval(&s).as_deref(), Some("shards-4-to-2"));
        assert_eq!(
            summary(&s).as_deref(),
            Some("shards-4-to-2 will need an approval (`kubectl ladder approve shop`)")
        );
        let mut approved = s.clone();
        approved.metadata.annotations =
            Some([(APPROVE_ANNOTATION.to_owned(), "shards-4-to-2".to_owned())].into());
        assert!(
            summary(&approved)
                .expect("approved")
                .starts_with("shards-4-to-2 approved")
        );
        // More shards, the same count, allowDemotion, or a transition that
        // runs: nothing to approve (now).
        assert_eq!(reshard_approval(&sharded(8, 4)), None);
        assert_eq!(reshard_approval(&sharded(4, 4)), None);
        let mut allowed = s.clone();
        allowed.spec.transitions.allow_demotion = true;
        assert_eq!(reshard_approval(&allowed), None);
        let mut running = s.clone();
        if let Some(st) = running.status.as_mut() {
            st.transition = Some(TransitionStatus {
                from: 2,
                to: 3,
                step: TransitionStep::Retain,
                moves_data: true,
                started_at: at(),
                step_started_at: at(),
                job_name: None,
                retain_until: None,
                rollback_of: None,
                message: String::new(),
                from_shards: None,
                to_shards: None,
            });
        }
        assert_eq!(reshard_approval(&running), None);
    }

    #[test]
    fn paused_owners_are_other_appliers_of_spec_paused() {
        let mut s = sp(1, Some(1));
        let entry = |manager: &str, op: &str, fields: serde_json::Value| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some(op.into()),
                fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                    fields,
                )),
                ..Default::default()
            }
        };
        s.metadata.managed_fields = Some(vec![
            entry(
                "argocd-controller",
                "Apply",
                serde_json::json!({"f:spec": {"f:paused": {}, "f:phase": {}}}),
            ),
            entry(
                "helm",
                "Apply",
                serde_json::json!({"f:spec": {"f:phase": {}}}),
            ),
            entry(
                "kubectl-edit",
                "Update",
                serde_json::json!({"f:spec": {"f:paused": {}}}),
            ),
            entry(
                "kubectl-ladder",
                "Apply",
                serde_json::json!({"f:spec": {"f:paused": {}}}),
            ),
        ]);
        assert_eq!(
            paused_owners(&s, "kubectl-ladder"),
            vec!["argocd-controller"]
        );
        s.metadata.managed_fields = None;
        assert!(paused_owners(&s, "kubectl-ladder").is_empty());
        s.metadata.annotations = Some(
            [(
                "argocd.argoproj.io/tracking-id".to_owned(),
                "shop:ladder.dev/ScalingPhase:default/shop".to_owned(),
            )]
            .into(),
        );
        assert_eq!(paused_owners(&s, "kubectl-ladder").len(), 1);
    }
}
