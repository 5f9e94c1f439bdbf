//! The promoter's input (pure over reflector stores): the load the app
//! pods of a ScalingPhase report in LoadReports, sampled into a windowed
//! history per ScalingPhase, then [`promoter::decide`].

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use crate::promoter;
use crate::render;
use ladder_crds::scalingphase::{AutoscaleMode, ScalingPhase};

impl Context {
    /// Samples the load of `sp` (fresh, believable LoadReports summed) into
    /// its history and runs the promoter. `None` when autoscaling is off.
    pub(super) fn promote(
        &self,
        sp: &ScalingPhase,
        active: i32,
        now: Timestamp,
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
        let tps = self.load.as_ref().and_then(|load| {
            let pods = load.pods.state();
            let ours = |pod: &str| {
                pods.iter().any(|p| {
                    p.name_any() == pod
                        && p.namespace().as_deref() == Some(ns.as_str())
                        && p.labels().get(render::SCALINGPHASE_LABEL) == Some(&name)
                })
            };
            let reports = load.reports.state();
            let here = reports
                .iter()
                .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
                .filter(|r| {
                    // Reports naming another ScalingPhase of this namespace
                    // are that one's business, not rejections of ours.
                    r.spec.scaling_phase == name
                        || r.labels().get(render::SCALINGPHASE_LABEL) == Some(&name)
                })
                .map(|r| r.as_ref());
            let (sum, rejected) = promoter::sum_reports(&name, here, &ours, now);
            for reason in rejected {
                self.metrics.report_rejected(reason);
            }
            sum
        });
        let mut map = self
            .histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let history = map.entry(uid).or_default();
        history.push(promoter::Sample { at: now, tps }, policy.horizon());
        let status = sp.status.as_ref();
        let changes: Vec<Timestamp> = status
            .map(|s| s.history.iter().skip(1).map(|h| h.time.0).collect())
            .unwrap_or_default();
        let mut cost = [0i64; 5];
        for (p, c) in cost.iter_mut().enumerate() {
            *c = ladder_crds::catalogue::Phase::from_number(i32::try_from(p).unwrap_or(0))
                .map(|ph| ladder_crds::catalogue::profile(ph).base_monthly_cost_usd)
                .unwrap_or(0);
        }
        let inputs = promoter::Inputs {
            now,
            active,
            declared: sp.spec.phase,
            target: status.and_then(|s| s.target_phase),
            phase_since: status.and_then(|s| s.history.last()).map(|h| h.time.0),
            changes: &changes,
            cost,
        };
        Some(promoter::decide(&policy, history, &inputs))
    }
}
