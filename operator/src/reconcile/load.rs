//! The promoter's input (pure over reflector stores): the load the app
//! pods of a ScalingPhase report in LoadReports, sampled into a windowed
//! history per ScalingPhase, then [`promoter::decide`]; or, when
//! `spec.autoscale.source.prometheus` is set, one PromQL query.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use tracing::warn;

use super::Context;
use super::report::round2;
use crate::load_source;
use crate::promoter;
use crate::render;
use ladder_crds::scalingphase::{AutoscaleMode, PrometheusSource, ScalingPhase};

impl Context {
    /// Samples the load of `sp` (fresh, believable LoadReports summed) into
    /// its history and runs the promoter. `None` when autoscaling is off.
    ///
    /// `external` is the reading of `spec.autoscale.source` when one is set
    /// (the TPS, or why there is none); LoadReports are then not summed.
    pub(super) fn promote(
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
        history.record(promoter::Sample { at: now, tps }, &policy, active);
        let changes = phase_changes(sp);
        let inputs = promoter_inputs(sp, active, now, &changes);
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
    pub(super) async fn read_prometheus(
        &self,
        sp: &ScalingPhase,
        src: &PrometheusSource,
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
}

/// Times of the phase changes recorded in `status.history` (its first entry
/// is the phase the object started in, not a change).
fn phase_changes(sp: &ScalingPhase) -> Vec<Timestamp> {
    sp.status
        .as_ref()
        .map(|s| s.history.iter().skip(1).map(|h| h.time.0).collect())
        .unwrap_or_default()
}

/// The promoter's inputs besides the history; `changes` are the times of
/// the phase changes in `status.history` (see [`phase_changes`]).
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
