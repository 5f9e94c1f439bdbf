//! `status` and `history`: what a ScalingPhase's status says, as one report
//! (phase, target, load against the phase's ceiling, the recommendation, the
//! transition step, approvals, cost, conditions, components, history).
//! Pure: built from the object and the clock, so the tables are unit-tested.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::approval;
use crate::table::{self, NONE, Table, age, fields, opt, section};
use ladder_crds::catalogue::{Phase, profile};
use ladder_crds::scalingphase::{
    ComponentStatus, HistoryEntry, Recommendation, ScalingPhase, TransitionStatus,
};
use ladder_operator::validate::effective_phase;

/// Everything `kubectl ladder status NAME` shows (also its `-o json|yaml`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// ScalingPhase name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `spec.phase`.
    pub declared_phase: i32,
    /// `status.activePhase`: the phase whose objects are applied.
    pub active_phase: Option<i32>,
    /// Its name (MVP, Growth, ...).
    pub active_phase_name: Option<String>,
    /// Where the operator is heading: `spec.phase`, raised by the promoter's
    /// `status.targetPhase` in Auto mode, capped by `autoscale.maxPhase`.
    pub effective_target: i32,
    /// `status.targetPhase` (Auto mode).
    pub target_phase: Option<i32>,
    /// `status.recommendedPhase`.
    pub recommended_phase: Option<i32>,
    /// `spec.autoscale.mode`.
    pub autoscale_mode: String,
    /// `spec.paused`.
    pub paused: bool,
    /// `status.observedTPS`.
    #[serde(rename = "observedTPS")]
    pub observed_tps: Option<f64>,
    /// The active phase's TPS ceiling from the roadmap.
    #[serde(rename = "phaseCeilingTPS")]
    pub phase_ceiling_tps: Option<u32>,
    /// Why the recommended phase is what it is.
    pub recommendation: Option<Recommendation>,
    /// The transition in progress.
    pub transition: Option<TransitionStatus>,
    /// Approvals: waiting, given, or needed later.
    pub approval: Option<String>,
    /// `status.readyComponents`.
    pub ready_components: Option<String>,
    /// Readiness of each workload.
    pub components: Vec<ComponentStatus>,
    /// `status.estimatedMonthlyCostUSD`.
    #[serde(rename = "estimatedMonthlyCostUSD")]
    pub estimated_monthly_cost_usd: Option<i64>,
    /// `spec.monthlyBudgetUsd`.
    pub monthly_budget_usd: Option<i64>,
    /// True when the status describes an older generation of the spec (the
    /// operator has not caught up with the last edit).
    pub stale: bool,
    /// Conditions.
    pub conditions: Vec<Condition>,
    /// The phase changes, oldest first.
    pub history: Vec<HistoryEntry>,
}

impl StatusReport {
    /// The report of one ScalingPhase.
    pub fn of(sp: &ScalingPhase) -> StatusReport {
        let s = sp.status.clone().unwrap_or_default();
        StatusReport {
            name: sp.name_any(),
            namespace: sp.namespace().unwrap_or_default(),
            declared_phase: sp.spec.phase,
            active_phase: s.active_phase,
            active_phase_name: s.active_phase_name.clone(),
            effective_target: effective_phase(sp),
            target_phase: s.target_phase,
            recommended_phase: s.recommended_phase,
            autoscale_mode: format!("{:?}", sp.spec.autoscale.mode),
            paused: sp.spec.paused,
            observed_tps: s.observed_tps,
            phase_ceiling_tps: s
                .active_phase
                .and_then(Phase::from_number)
                .map(|p| profile(p).tps_ceiling),
            recommendation: s.recommendation.clone(),
            transition: s.transition.clone(),
            approval: approval::summary(sp),
            ready_components: s.ready_components.clone(),
            components: s.components.clone(),
            estimated_monthly_cost_usd: s.estimated_monthly_cost_usd,
            monthly_budget_usd: sp.spec.monthly_budget_usd,
            stale: match (s.observed_generation, sp.metadata.generation) {
                (Some(seen), Some(now)) => seen < now,
                (None, Some(_)) => true,
                _ => false,
            },
            conditions: s.conditions,
            history: s.history,
        }
    }

    /// The detailed text of `status NAME`.
    pub fn render(&self, now: Timestamp) -> String {
        let phase = match (self.active_phase, &self.active_phase_name) {
            (Some(p), Some(n)) => format!("{p} ({n})"),
            (Some(p), None) => p.to_string(),
            _ => "not reconciled yet".into(),
        };
        let mut target = self.effective_target.to_string();
        if Some(self.effective_target) != self.active_phase {
            target.push_str(&format!(" (declared {})", self.declared_phase));
        }
        let load = match (self.observed_tps, self.phase_ceiling_tps) {
            (Some(tps), Some(ceiling)) if ceiling > 0 => format!(
                "{} TPS, {:.0}% of the phase's ceiling ({ceiling} TPS)",
                number(tps),
                100.0 * tps / f64::from(ceiling)
            ),
            (Some(tps), _) => format!("{} TPS", number(tps)),
            (None, _) if self.autoscale_mode == "Off" => {
                "not measured (autoscale.mode: Off)".into()
            }
            (None, _) => "no fresh LoadReports".into(),
        };
        let recommendation = self.recommendation.as_ref().map(|r| {
            let mut text = format!("phase {}: {}", r.phase, r.reason);
            if let Some(since) = &r.since {
                text.push_str(&format!(" (for {})", age(since.0, now)));
            }
            text
        });
        let transition = self.transition.as_ref().map(|t| {
            format!(
                "{} → {}, step {:?} for {} (started {} ago){}: {}",
                t.from,
                t.to,
                t.step,
                age(t.step_started_at.0, now),
                age(t.started_at.0, now),
                if t.moves_data { ", moves data" } else { "" },
                t.message
            )
        });
        let cost = self.estimated_monthly_cost_usd.map(|c| {
            let mut text = format!("${c}/month");
            if let Some(b) = self.monthly_budget_usd {
                text.push_str(&format!(
                    " (budget ${b}/month{})",
                    if c > b { ", OVER" } else { "" }
                ));
            }
            text
        });
        let mut pairs = vec![
            ("Name", self.name.clone()),
            ("Namespace", self.namespace.clone()),
            ("Phase", phase),
            ("Target", target),
            (
                "Autoscale",
                match self.recommended_phase {
                    Some(r) => format!("{} (recommends phase {r})", self.autoscale_mode),
                    None => self.autoscale_mode.clone(),
                },
            ),
            ("Paused", self.paused.to_string()),
            ("Load", load),
            ("Recommendation", recommendation.unwrap_or_default()),
            ("Transition", transition.unwrap_or_else(|| "none".into())),
        ];
        if let Some(a) = &self.approval {
            pairs.push(("Approval", a.clone()));
        }
        pairs.push(("Cost", cost.unwrap_or_default()));
        pairs.push(("Ready", opt(self.ready_components.as_deref())));
        if self.stale {
            pairs.push((
                "Note",
                "this status describes an older generation: the operator has not caught up with the last spec change".into(),
            ));
        }
        let mut out = fields(&pairs);
        let mut conditions = Table::new(&["type", "status", "reason", "age", "message"]);
        for c in &self.conditions {
            conditions.row([
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                age(c.last_transition_time.0, now),
                c.message.clone(),
            ]);
        }
        out.push_str(&section("Conditions", &render_if_any(&conditions)));
        let mut components = Table::new(&["kind", "name", "ready", "message"]);
        for c in &self.components {
            components.row([
                c.kind.clone(),
                c.name.clone(),
                c.ready.to_string(),
                c.message.clone(),
            ]);
        }
        out.push_str(&section("Components", &render_if_any(&components)));
        out.push_str(&section(
            "History",
            &render_if_any(&history_table(&self.history, now)),
        ));
        out
    }
}

fn render_if_any(t: &Table) -> String {
    if t.is_empty() {
        String::new()
    } else {
        t.render()
    }
}

/// A TPS figure: whole numbers without decimals, others with up to two.
fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// One line of `status` without a name: every ScalingPhase of the namespace.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Active phase.
    pub active_phase: Option<i32>,
    /// Effective target.
    pub effective_target: i32,
    /// Recommended phase.
    pub recommended_phase: Option<i32>,
    /// Ready components.
    pub ready_components: Option<String>,
    /// Observed TPS.
    #[serde(rename = "observedTPS")]
    pub observed_tps: Option<f64>,
    /// `from→to step` of the transition in progress.
    pub transition: Option<String>,
    /// Estimated monthly cost.
    #[serde(rename = "estimatedMonthlyCostUSD")]
    pub estimated_monthly_cost_usd: Option<i64>,
    /// Paused.
    pub paused: bool,
    /// Creation time.
    pub created: Option<String>,
}

impl SummaryRow {
    /// The row of one ScalingPhase.
    pub fn of(sp: &ScalingPhase) -> SummaryRow {
        let r = StatusReport::of(sp);
        SummaryRow {
            namespace: r.namespace,
            name: r.name,
            active_phase: r.active_phase,
            effective_target: r.effective_target,
            recommended_phase: r.recommended_phase,
            ready_components: r.ready_components,
            observed_tps: r.observed_tps,
            transition: r
                .transition
                .map(|t| format!("{}→{} {:?}", t.from, t.to, t.step)),
            estimated_monthly_cost_usd: r.estimated_monthly_cost_usd,
            paused: r.paused,
            created: sp
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
        }
    }
}

/// The table of `status` without a name (`namespaces`: with a NAMESPACE column).
pub fn summary_table(rows: &[SummaryRow], namespaces: bool, now: Timestamp) -> String {
    let mut headers = vec![
        "name",
        "phase",
        "target",
        "recommended",
        "ready",
        "tps",
        "transition",
        "cost/mo",
        "paused",
        "age",
    ];
    if namespaces {
        headers.insert(0, "namespace");
    }
    let mut t = Table::new(&headers);
    for r in rows {
        let mut cells = vec![
            r.name.clone(),
            opt(r.active_phase),
            r.effective_target.to_string(),
            opt(r.recommended_phase),
            opt(r.ready_components.as_deref()),
            r.observed_tps.map(number).unwrap_or_else(|| NONE.into()),
            opt(r.transition.as_deref()),
            r.estimated_monthly_cost_usd
                .map(|c| format!("${c}"))
                .unwrap_or_else(|| NONE.into()),
            r.paused.to_string(),
            r.created
                .as_deref()
                .and_then(|c| c.parse::<Timestamp>().ok())
                .map(|c| age(c, now))
                .unwrap_or_else(|| NONE.into()),
        ];
        if namespaces {
            cells.insert(0, r.namespace.clone());
        }
        t.row(cells);
    }
    t.render()
}

/// One phase of `history`: when it became active and how long it stayed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    /// The phase.
    pub phase: i32,
    /// Its name.
    pub name: String,
    /// When its objects were first applied (RFC 3339).
    pub entered: String,
    /// Seconds it stayed active (until the next entry, or until now for the
    /// active one).
    pub active_for_seconds: i64,
    /// Whether it is the active phase.
    pub current: bool,
}

/// The rows of `history`, oldest first.
pub fn history_rows(history: &[HistoryEntry], now: Timestamp) -> Vec<HistoryRow> {
    history
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let until = history.get(i + 1).map_or(now, |next| next.time.0);
            HistoryRow {
                phase: h.phase,
                name: h.name.clone(),
                entered: h.time.0.to_string(),
                active_for_seconds: until.duration_since(h.time.0).as_secs().max(0),
                current: i + 1 == history.len(),
            }
        })
        .collect()
}

/// The table of `history` (and of the History section of `status`).
pub fn history_table(history: &[HistoryEntry], now: Timestamp) -> Table {
    let mut t = Table::new(&["phase", "name", "entered", "age", "active for"]);
    for (row, h) in history_rows(history, now).iter().zip(history) {
        let dwell =
            table::human_duration(u64::try_from(row.active_for_seconds).unwrap_or_default());
        t.row([
            row.phase.to_string(),
            row.name.clone(),
            row.entered.clone(),
            age(h.time.0, now),
            if row.current {
                format!("{dwell} (active)")
            } else {
                dwell
            },
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use ladder_crds::scalingphase::{ScalingPhaseStatus, TransitionStep};

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn shop() -> ScalingPhase {
        let mut sp: ScalingPhase = serde_yaml::from_str(
            "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop, namespace: prod, generation: 4}\nspec:\n  phase: 1\n  monthlyBudgetUsd: 900\n  autoscale: {mode: Auto, maxPhase: 3}\n",
        )
        .expect("parses");
        sp.metadata.creation_timestamp = Some(Time(ts(-86_400)));
        sp.status = Some(ScalingPhaseStatus {
            observed_generation: Some(4),
            active_phase: Some(1),
            active_phase_name: Some("Growth".into()),
            target_phase: Some(2),
            recommended_phase: Some(2),
            observed_tps: Some(85.0),
            recommendation: Some(Recommendation {
                phase: 2,
                reason: "85 TPS has stayed at or above 80 TPS for 5m".into(),
                tps: 85.0,
                threshold: Some(80.0),
                window_seconds: 300,
                since: Some(Time(ts(-400))),
            }),
            transition: Some(TransitionStatus {
                from: 1,
                to: 2,
                step: TransitionStep::WaitTargetReady,
                moves_data: false,
                started_at: Time(ts(-200)),
                step_started_at: Time(ts(-125)),
                job_name: None,
                retain_until: None,
                rollback_of: None,
                message: "waiting for the phase 2 tier to be ready beside phase 1".into(),
                from_shards: None,
                to_shards: None,
            }),
            shard_map_version: None,
            shards: None,
            ready_components: Some("4/5".into()),
            components: vec![
                ComponentStatus {
                    kind: "Deployment".into(),
                    name: "shop-app".into(),
                    ready: true,
                    message: "2/2 replicas ready".into(),
                },
                ComponentStatus {
                    kind: "StatefulSet".into(),
                    name: "shop-postgres-replica".into(),
                    ready: false,
                    message: "1/3 replicas ready".into(),
                },
            ],
            estimated_monthly_cost_usd: Some(25),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "ComponentsNotReady".into(),
                message: "1 of 5 not ready".into(),
                observed_generation: Some(4),
                last_transition_time: Time(ts(-60)),
            }],
            history: vec![
                HistoryEntry {
                    phase: 0,
                    name: "MVP".into(),
                    time: Time(ts(-86_000)),
                },
                HistoryEntry {
                    phase: 1,
                    name: "Growth".into(),
                    time: Time(ts(-3_600)),
                },
            ],
        });
        sp
    }

    #[test]
    fn the_report_reads_spec_and_status() {
        let r = StatusReport::of(&shop());
        assert_eq!(r.active_phase, Some(1));
        assert_eq!(
            r.effective_target, 2,
            "Auto raises the target to status.targetPhase"
        );
        assert_eq!(r.phase_ceiling_tps, Some(100));
        assert!(!r.stale);
        assert_eq!(r.monthly_budget_usd, Some(900));
        let json = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["observedTPS"], 85.0);
        assert_eq!(json["transition"]["step"], "WaitTargetReady");
        assert_eq!(json["estimatedMonthlyCostUSD"], 25);
    }

    #[test]
    fn the_detail_shows_load_against_the_ceiling_transition_and_tables() {
        let text = StatusReport::of(&shop()).render(ts(0));
        for want in [
            "Phase:           1 (Growth)\n",
            "Target:          2 (declared 1)\n",
            "Autoscale:       Auto (recommends phase 2)\n",
            "Load:            85 TPS, 85% of the phase's ceiling (100 TPS)\n",
            "Recommendation:  phase 2: 85 TPS has stayed at or above 80 TPS for 5m (for 6m40s)\n",
            "Transition:      1 → 2, step WaitTargetReady for 2m5s (started 3m20s ago): waiting for the phase 2 tier",
            "Cost:            $25/month (budget $900/month)\n",
            "Ready:           4/5\n",
            "Conditions:\n  TYPE    STATUS   REASON               AGE   MESSAGE\n  Ready   False    ComponentsNotReady   60s   1 of 5 not ready\n",
            "  StatefulSet   shop-postgres-replica   false   1/3 replicas ready\n",
            "  1       Growth   2027-01-15T07:00:00Z   60m   60m (active)\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(
            !text.contains("Approval:"),
            "a promotion needs no approval:\n{text}"
        );
        for line in text.lines() {
            assert_eq!(line, line.trim_end());
        }
    }

    #[test]
    fn an_unreconciled_object_says_so() {
        let mut sp = shop();
        sp.status = None;
        sp.spec.autoscale.mode = ladder_crds::scalingphase::AutoscaleMode::Off;
        let r = StatusReport::of(&sp);
        assert!(r.stale, "generation 4 was never observed");
        let text = r.render(ts(0));
        assert!(
            text.contains("Phase:           not reconciled yet\n"),
            "{text}"
        );
        assert!(text.contains("Load:            not measured (autoscale.mode: Off)\n"));
        assert!(text.contains("Conditions:\n  <none>\n"));
        assert!(text.contains("Note:"));
    }

    #[test]
    fn a_pending_demotion_shows_its_approval() {
        let mut sp = shop();
        sp.spec.phase = 0;
        sp.spec.autoscale = Default::default();
        if let Some(s) = sp.status.as_mut() {
            s.transition = None;
            s.target_phase = None;
        }
        let text = StatusReport::of(&sp).render(ts(0));
        assert!(
            text.contains(
                "Approval:        1-to-0 will need an approval (`kubectl ladder approve shop`)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_summary_has_one_row_per_scaling_phase() {
        let rows = vec![SummaryRow::of(&shop())];
        let text = summary_table(&rows, false, ts(0));
        assert_eq!(
            text,
            "NAME   PHASE   TARGET   RECOMMENDED   READY   TPS   TRANSITION            COST/MO   PAUSED   AGE\n\
             shop   1       2        2             4/5     85    1→2 WaitTargetReady   $25       false    24h\n"
        );
        let with_ns = summary_table(&rows, true, ts(0));
        assert!(with_ns.starts_with("NAMESPACE   NAME"));
        assert!(with_ns.contains("\nprod        shop"));
    }

    #[test]
    fn history_rows_measure_how_long_each_phase_stayed() {
        let sp = shop();
        let h = &sp.status.as_ref().expect("status").history;
        let rows = history_rows(h, ts(0));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].active_for_seconds, 86_000 - 3_600);
        assert!(!rows[0].current);
        assert_eq!(rows[1].active_for_seconds, 3_600);
        assert!(rows[1].current);
        let text = history_table(h, ts(0)).render();
        assert!(
            text.contains("0       MVP      2027-01-14T08:06:40Z   23h   22h\n"),
            "{text}"
        );
    }

    #[test]
    fn numbers_drop_needless_decimals() {
        assert_eq!(number(85.0), "85");
        assert_eq!(number(1.25), "1.25");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(12.3456), "12.35");
    }
}
