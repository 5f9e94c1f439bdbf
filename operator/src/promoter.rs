//! The promoter: decides from the observed load which phase a system should
//! be in, and (in Auto mode) sets `status.targetPhase`.
//!
//! Pure, like the transition machine: [`decide`] reads the policy
//! ([`Policy`], from `spec.autoscale`), a windowed load [`History`] and the
//! clock, and returns a [`Decision`]. The reconciler feeds it samples built
//! from fresh, believable LoadReports ([`sum_reports`]); the simulator
//! (`ladder-operator simulate`) feeds it a recorded trace. Both run the same
//! code.
//!
//! Rules (ROADMAP.md's thresholds):
//! - phase N's ceiling is 10^(N+1) TPS;
//! - promote when every sample over `promoteAfter` is at or above
//!   `promoteAt` × ceiling(N); demote when every sample over `demoteAfter` is
//!   below `demoteBelow` × ceiling(N-1);
//! - a window counts only when the history covers all of it, so a restarted
//!   operator (empty history) never decides anything before a full window;
//! - a gap (no fresh data) in a window never demotes and never promotes;
//! - Auto mode moves only after `minDwell` in the current phase, within
//!   `maxTransitionsPerDay`, and never into a phase whose estimated cost is
//!   above `spec.monthlyBudgetUsd`.

use std::collections::VecDeque;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use ladder_crds::load_report::LoadReport;
use ladder_crds::scalingphase::{AutoscaleMode, AutoscaleSpec, Recommendation};

/// Reasons of the promoter's conditions and refusals.
pub mod reasons {
    /// Auto mode would promote, but the next phase costs more than the budget.
    pub const OVER_BUDGET: &str = "OverBudget";
    /// Auto mode would move, but the day's transitions are used up.
    pub const FLAP_BUDGET: &str = "FlapBudgetExhausted";
    /// Fresh load data is there.
    pub const FRESH: &str = "LoadReportsFresh";
    /// No fresh load data: the phase holds.
    pub const NO_DATA: &str = "NoFreshLoadReports";
    /// The Prometheus load source answered with one sane number.
    pub const PROMETHEUS_FRESH: &str = "PrometheusQueryFresh";
    /// The Prometheus load source failed (unreachable, an error, no series,
    /// several series, or not a finite non-negative number).
    pub const PROMETHEUS_FAILED: &str = "PrometheusQueryFailed";
    /// Autoscaling is off.
    pub const OFF: &str = "AutoscaleOff";
    /// The minimum dwell time in the phase is running.
    pub const DWELL: &str = "MinimumDwell";
    /// A stabilization window is running.
    pub const WINDOW: &str = "StabilizationWindow";
    /// Nothing is waiting.
    pub const IDLE: &str = "NoCooldown";
}

/// The policy with its defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Off, Recommend or Auto.
    pub mode: AutoscaleMode,
    /// Lowest phase to recommend.
    pub min_phase: i32,
    /// Highest phase to recommend.
    pub max_phase: i32,
    /// Share of the current ceiling that promotes.
    pub promote_at: f64,
    /// Share of the lower ceiling that demotes.
    pub demote_below: f64,
    /// Promotion window, seconds.
    pub promote_after: i64,
    /// Demotion window, seconds.
    pub demote_after: i64,
    /// Minimum time in a phase before an automatic change, seconds.
    pub min_dwell: i64,
    /// Automatic changes allowed in any 24 hours.
    pub max_per_day: usize,
    /// Monthly budget in USD.
    pub budget: Option<i64>,
}

fn secs(d: Option<&ladder_crds::scalingphase::Duration>, default: i64) -> i64 {
    d.and_then(|d| d.seconds())
        .and_then(|s| i64::try_from(s).ok())
        .unwrap_or(default)
}

impl Policy {
    /// From `spec.autoscale` and `spec.monthlyBudgetUsd`.
    pub fn from_spec(a: &AutoscaleSpec, budget: Option<i64>) -> Policy {
        Policy {
            mode: a.mode,
            min_phase: a.min_phase.unwrap_or(0).clamp(0, 4),
            max_phase: a.max_phase.unwrap_or(4).clamp(0, 4),
            promote_at: a.promote_at.unwrap_or(0.8),
            demote_below: a.demote_below.unwrap_or(0.3),
            promote_after: secs(a.promote_after.as_ref(), 300),
            demote_after: secs(a.demote_after.as_ref(), 3600),
            min_dwell: secs(a.min_dwell.as_ref(), 1800),
            max_per_day: usize::try_from(a.max_transitions_per_day.unwrap_or(4)).unwrap_or(4),
            budget,
        }
    }

    /// The longest window the policy looks back over.
    pub fn horizon(&self) -> i64 {
        self.promote_after.max(self.demote_after)
    }

    /// Which side of `phase`'s thresholds a load is on: above the
    /// promotion threshold, below the demotion one, or between (`None`:
    /// no data).
    pub fn band(&self, phase: i32, tps: Option<f64>) -> Option<std::cmp::Ordering> {
        tps.map(|t| {
            if t >= self.promote_at * ceiling(phase) {
                std::cmp::Ordering::Greater
            } else if t < self.demote_below * ceiling(phase - 1) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Equal
            }
        })
    }
}

/// Phase `n`'s TPS ceiling from the roadmap: 10, 100, 1,000, 10,000, 100,000.
pub fn ceiling(phase: i32) -> f64 {
    10f64.powi(phase.clamp(0, 4) + 1)
}

/// One observation: the summed TPS of fresh reports, or `None` when there
/// was no fresh, believable report at that time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// When.
    pub at: Timestamp,
    /// Summed TPS, if any data was fresh.
    pub tps: Option<f64>,
}

/// The windowed load history of one ScalingPhase, in memory. After a restart
/// it starts empty, so no decision is made before a full window has been
/// observed again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    samples: VecDeque<Sample>,
}

/// Samples closer together than this are merged (the newest wins), so a
/// burst of reconciles does not grow the history.
pub const MIN_SAMPLE_GAP_SECS: i64 = 5;

impl History {
    /// Adds a sample and forgets what is older than `horizon` seconds (plus
    /// one sample before it, which proves the window is covered).
    pub fn push(&mut self, s: Sample, horizon: i64) {
        self.push_merging(s, horizon, |_, _| false);
    }

    /// Adds a sample taken while `phase` is active. A sample merged into
    /// the newest one (see [`MIN_SAMPLE_GAP_SECS`]) on the same side of
    /// the phase's thresholds keeps the newest one's time: the load has been
    /// there since then, and a window must not restart because the reports
    /// come often. Across a threshold the newer sample wins, as in
    /// [`History::push`].
    pub fn record(&mut self, s: Sample, policy: &Policy, phase: i32) {
        self.push_merging(s, policy.horizon(), |a, b| {
            policy.band(phase, a.tps) == policy.band(phase, b.tps)
        });
    }

    fn push_merging(&mut self, s: Sample, horizon: i64, same: impl Fn(&Sample, &Sample) -> bool) {
        if self.samples.back().is_some_and(|last| s.at <= last.at) {
            return;
        }
        // Measured from the sample *before* the newest: otherwise samples
        // that come every 2 s would keep replacing the newest one and the
        // history would never grow.
        let len = self.samples.len();
        if len >= 2
            && let Some(before) = self.samples.get(len - 2)
            && s.at.duration_since(before.at).as_secs() < MIN_SAMPLE_GAP_SECS
        {
            if let Some(last) = self.samples.back_mut() {
                if same(last, &s) {
                    last.tps = s.tps;
                } else {
                    *last = s;
                }
            }
            return;
        }
        self.samples.push_back(s);
        let cutoff = s.at - SignedDuration::from_secs(horizon);
        while self.samples.len() > 2 && self.samples.get(1).is_some_and(|x| x.at <= cutoff) {
            self.samples.pop_front();
        }
    }

    /// The newest sample.
    pub fn last(&self) -> Option<Sample> {
        self.samples.back().copied()
    }

    /// The samples of the last `window` seconds, when the history covers the
    /// whole window (its oldest sample is at or before the window's start).
    fn window(&self, now: Timestamp, window: i64) -> Option<Vec<Sample>> {
        let start = now - SignedDuration::from_secs(window);
        let first = self.samples.front()?;
        if first.at > start {
            return None;
        }
        // The sample in force at the window's start, and every later one.
        let from = self
            .samples
            .iter()
            .rposition(|s| s.at <= start)
            .unwrap_or(0);
        Some(self.samples.iter().skip(from).copied().collect())
    }

    /// When the current run of samples that all satisfy `ok` began.
    fn run_since(&self, ok: impl Fn(f64) -> bool) -> Option<Timestamp> {
        let mut since = None;
        for s in self.samples.iter().rev() {
            match s.tps {
                Some(t) if ok(t) => since = Some(s.at),
                _ => break,
            }
        }
        since
    }
}

/// What the promoter looks at besides the policy and the history.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// Now.
    pub now: Timestamp,
    /// The active phase.
    pub active: i32,
    /// `spec.phase`.
    pub declared: i32,
    /// The stored `status.targetPhase`.
    pub target: Option<i32>,
    /// When the active phase became active (the last history entry).
    pub phase_since: Option<Timestamp>,
    /// Times of the phase changes so far (status.history), for the flap budget.
    pub changes: &'a [Timestamp],
    /// Estimated monthly cost of each phase 0..=4.
    pub cost: [i64; 5],
}

/// The promoter's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// When the clock alone could change this decision (a running window
    /// or dwell time ends), if it could: the reconciler looks again then,
    /// rather than at the next report or sample.
    pub due: Option<Timestamp>,
    /// The TPS to show (the newest fresh sample).
    pub observed_tps: Option<f64>,
    /// The phase the load suggests.
    pub recommended: i32,
    /// The evidence.
    pub recommendation: Recommendation,
    /// `status.targetPhase` to store (Auto mode only; `None` clears it).
    pub target: Option<i32>,
    /// MetricsAvailable: (status, reason, message).
    pub metrics: (bool, &'static str, String),
    /// CooldownActive: (status, reason, message).
    pub cooldown: (bool, &'static str, String),
    /// A move Auto mode refused: (reason, message).
    pub refused: Option<(&'static str, String)>,
}

/// Decides. Pure: the same inputs give the same decision.
pub fn decide(policy: &Policy, history: &History, i: &Inputs<'_>) -> Decision {
    let current = i.active;
    let observed_tps = history.last().and_then(|s| s.tps);
    let metrics = match (policy.mode, observed_tps) {
        (AutoscaleMode::Off, _) => (false, reasons::OFF, "autoscale.mode is Off".to_owned()),
        (_, Some(t)) => (
            true,
            reasons::FRESH,
            format!("{t:.1} TPS from fresh LoadReports"),
        ),
        (_, None) => (
            false,
            reasons::NO_DATA,
            "no fresh, believable LoadReport: the phase holds (missing data never demotes)"
                .to_owned(),
        ),
    };
    let up_at = policy.promote_at * ceiling(current);
    let down_below = policy.demote_below * ceiling(current - 1);
    let hold = |reason: String, tps: f64| Recommendation {
        phase: current,
        reason,
        tps,
        threshold: None,
        window_seconds: 0,
        since: None,
    };
    let all = |w: &[Sample], ok: &dyn Fn(f64) -> bool| {
        !w.is_empty() && w.iter().all(|s| s.tps.is_some_and(ok))
    };
    let mut recommendation = hold(
        format!("load within phase {current}'s band ({down_below:.0}..{up_at:.0} TPS)"),
        observed_tps.unwrap_or(0.0),
    );
    let mut waiting: Option<String> = None;
    let mut due: Option<Timestamp> = None;
    let window_end = |ok: &dyn Fn(f64) -> bool, secs: i64| {
        history
            .run_since(ok)
            .map(|since| since + SignedDuration::from_secs(secs))
    };
    if current < policy.max_phase.min(4) {
        match history.window(i.now, policy.promote_after) {
            Some(w) if all(&w, &|t| t >= up_at) => {
                let sustained = w.iter().filter_map(|s| s.tps).fold(f64::INFINITY, f64::min);
                recommendation = Recommendation {
                    phase: current + 1,
                    reason: format!(
                        "load stayed at or above {:.0}% of phase {current}'s ceiling ({up_at:.0} TPS) for {}s",
                        policy.promote_at * 100.0,
                        policy.promote_after
                    ),
                    tps: sustained,
                    threshold: Some(up_at),
                    window_seconds: policy.promote_after,
                    since: history.run_since(|t| t >= up_at).map(Time),
                };
            }
            _ => {
                if observed_tps.is_some_and(|t| t >= up_at) {
                    due = window_end(&|t| t >= up_at, policy.promote_after);
                    waiting = Some(format!(
                        "load is above {up_at:.0} TPS; promoting once it stays there for {}s",
                        policy.promote_after
                    ));
                }
            }
        }
    }
    if recommendation.phase == current && current > policy.min_phase.max(0) {
        match history.window(i.now, policy.demote_after) {
            Some(w) if all(&w, &|t| t < down_below) => {
                let sustained = w.iter().filter_map(|s| s.tps).fold(0.0, f64::max);
                recommendation = Recommendation {
                    phase: current - 1,
                    reason: format!(
                        "load stayed below {:.0}% of phase {}'s ceiling ({down_below:.0} TPS) for {}s",
                        policy.demote_below * 100.0,
                        current - 1,
                        policy.demote_after
                    ),
                    tps: sustained,
                    threshold: Some(down_below),
                    window_seconds: policy.demote_after,
                    since: history.run_since(|t| t < down_below).map(Time),
                };
            }
            _ => {
                if observed_tps.is_some_and(|t| t < down_below) {
                    due = window_end(&|t| t < down_below, policy.demote_after);
                    waiting = Some(format!(
                        "load is below {down_below:.0} TPS; recommending phase {} once it stays there for {}s",
                        current - 1,
                        policy.demote_after
                    ));
                }
            }
        }
    }
    let recommended = recommendation.phase;
    let mut refused = None;
    let mut cooldown = match &waiting {
        Some(m) => (true, reasons::WINDOW, m.clone()),
        None => (
            false,
            reasons::IDLE,
            "no window or dwell time is running".to_owned(),
        ),
    };
    // Auto mode: the target follows the recommendation through the gates.
    let mut target = match policy.mode {
        AutoscaleMode::Auto => Some(i.target.unwrap_or(current)),
        _ => None,
    };
    // A demotion decided earlier (perhaps held for approval) that the load
    // no longer asks for is withdrawn, so nobody approves a step the load
    // has since taken back. Only on evidence: the latest sample must show
    // the load back at or above the demotion threshold. A gap in the data
    // (the app's Pods roll during the very step down, and their reports
    // are not believed until the new Pods report) withdraws nothing, as
    // missing data never moves a phase.
    if policy.mode == AutoscaleMode::Auto
        && target.is_some_and(|t| t < current)
        && recommended >= current
        && observed_tps.is_some_and(|t| t >= down_below)
    {
        target = Some(current);
    }
    if policy.mode == AutoscaleMode::Auto && recommended != current && target != Some(recommended) {
        let dwelled = i
            .phase_since
            .is_none_or(|t| i.now.duration_since(t).as_secs() >= policy.min_dwell);
        let day_ago = i.now - SignedDuration::from_secs(86_400);
        let recent = i.changes.iter().filter(|t| **t > day_ago).count();
        let next_cost = i.cost[usize::try_from(recommended.clamp(0, 4)).unwrap_or(0)];
        if !dwelled {
            due = i
                .phase_since
                .map(|t| t + SignedDuration::from_secs(policy.min_dwell));
            cooldown = (
                true,
                reasons::DWELL,
                format!(
                    "phase {current} became active less than {}s ago (minDwell); phase {recommended} waits",
                    policy.min_dwell
                ),
            );
        } else if recent >= policy.max_per_day {
            refused = Some((
                reasons::FLAP_BUDGET,
                format!(
                    "{recent} phase changes in the last 24h reached maxTransitionsPerDay={}; phase {recommended} waits",
                    policy.max_per_day
                ),
            ));
        } else if recommended > current && policy.budget.is_some_and(|b| next_cost > b) {
            refused = Some((
                reasons::OVER_BUDGET,
                format!(
                    "phase {recommended} is estimated at ${next_cost}/month, above the budget of ${}/month",
                    policy.budget.unwrap_or(0)
                ),
            ));
        } else {
            target = Some(recommended);
        }
    }
    // Within the policy's bounds; the reconciler never goes below
    // spec.phase whatever the target says (validate::effective_phase).
    let target = target.map(|t| t.clamp(policy.min_phase, policy.max_phase.max(policy.min_phase)));
    Decision {
        due: due.filter(|t| *t > i.now),
        observed_tps,
        recommended,
        recommendation,
        target,
        metrics,
        cooldown,
        refused,
    }
}

/// Why a LoadReport was not believed.
pub mod rejected {
    /// Older than twice its window.
    pub const STALE: &str = "stale";
    /// Negative, NaN or infinite.
    pub const ABSURD: &str = "absurd";
    /// More TPS than one instance can plausibly serve in any phase.
    pub const IMPLAUSIBLE: &str = "implausible";
    /// Names another ScalingPhase.
    pub const OTHER_SCALINGPHASE: &str = "otherScalingPhase";
    /// Its owner is not a Pod of this ScalingPhase's app.
    pub const NOT_OUR_POD: &str = "notOwnedByOurPod";
    /// Its time does not parse.
    pub const BAD_TIME: &str = "badTime";
}

/// The most TPS one app instance may claim: twice the top phase's ceiling.
/// Anything above is a lie or a bug, never a reason to climb.
pub const MAX_INSTANCE_TPS: f64 = 2.0 * 100_000.0;

/// Sums the TPS of the reports that may be believed for ScalingPhase `sp`,
/// whose app pods are `our_pods`. Returns the sum (when at least one report
/// was fresh) and the rejected reports' reasons.
pub fn sum_reports<'a>(
    sp: &str,
    reports: impl IntoIterator<Item = &'a LoadReport>,
    our_pods: &dyn Fn(&str) -> bool,
    now: Timestamp,
) -> (Option<f64>, Vec<&'static str>) {
    let mut sum: Option<f64> = None;
    let mut rejected = Vec::new();
    for r in reports {
        let s = &r.spec;
        if s.scaling_phase != sp {
            rejected.push(rejected::OTHER_SCALINGPHASE);
            continue;
        }
        let owner = r
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Pod")
            .map(|o| o.name.as_str());
        if !owner.is_some_and(our_pods) {
            rejected.push(rejected::NOT_OUR_POD);
            continue;
        }
        let Ok(at) = s.reported_at.parse::<Timestamp>() else {
            rejected.push(rejected::BAD_TIME);
            continue;
        };
        let max_age = i64::from(s.window_seconds.max(1)) * 2;
        if now.duration_since(at).as_secs() > max_age || at > now + SignedDuration::from_secs(60) {
            rejected.push(rejected::STALE);
            continue;
        }
        let t = s.transactions_per_second;
        if !t.is_finite() || t < 0.0 || !s.requests_per_second.is_finite() {
            rejected.push(rejected::ABSURD);
            continue;
        }
        if t > MAX_INSTANCE_TPS {
            rejected.push(rejected::IMPLAUSIBLE);
            continue;
        }
        sum = Some(sum.unwrap_or(0.0) + t);
    }
    (sum, rejected)
}

#[cfg(test)]
mod tests;
