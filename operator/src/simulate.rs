//! `ladder-operator simulate`: replays a load trace through the promoter, so
//! a user can tune `spec.autoscale` by looking before switching Auto on.
//!
//! The loop feeds [`promoter::decide`], the very function the reconciler
//! runs, one [`promoter::Sample`] every `--step` seconds (the operator
//! samples every 10 s), with the same inputs the reconciler builds: the
//! active phase, the stored `targetPhase`, the time of the last phase change
//! (for `minDwell`) and all phase changes (for `maxTransitionsPerDay`), and
//! the catalogue's cost of each phase. In Auto mode the target goes through
//! [`validate::effective_phase`] like in the operator, and the simulated
//! active phase moves one step toward it at once (a real transition takes
//! minutes; the simulator skips them). A step down that moves data
//! ([`transition::moves_data`]) is held for approval, as the transition
//! machine holds it, unless `spec.transitions.allowDemotion` (or the
//! approval annotation in the manifest) allows it.
//!
//! What the simulator does not model: the minutes a transition takes, an
//! operator restart (the history starts empty), and LoadReport filtering
//! (the trace is taken as the summed TPS of believable reports).

mod output;
mod plot;
pub mod trace;

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use ladder_crds::scalingphase::{AutoscaleMode, ScalingPhase, ScalingPhaseStatus};
use serde::Serialize;

use crate::promoter::{self, History, Inputs, Policy, Sample, reasons};
use crate::{transition, validate};
pub use output::{describe_policy, fmt_offset, summary_line, write_json, write_table};
pub use trace::{Origin, Shape, Trace};

/// The operator's sampling period (reconcile.rs's `PROMOTER_SAMPLE`).
pub const DEFAULT_STEP_SECS: i64 = 10;

/// Most samples one run feeds the promoter (a month at 2 s): a trace spanning
/// years at a small step is refused rather than run for hours.
pub const MAX_SAMPLES: i64 = 1_500_000;

/// Arguments of `ladder-operator simulate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
A trace is a CSV of `timestamp,tps` rows: the timestamp is RFC 3339 or seconds from the start
(one form per file), the TPS a number >= 0 or empty for \"no data\" (a gap, which never demotes).
Each row holds until the next one. Blank lines and `#` comments are skipped; a bad row is refused
with its line number.

Example: ladder-operator simulate --policy examples/traces/autoscale.yaml \\
           --trace examples/traces/launch-day.csv --plot launch-day.svg")]
pub struct SimulateArgs {
    /// A ScalingPhase manifest: its spec.autoscale, spec.monthlyBudgetUsd and
    /// spec.transitions are the policy.
    #[arg(long)]
    pub policy: PathBuf,
    /// The load: a CSV of `timestamp,tps` rows.
    #[arg(
        long,
        required_unless_present = "synthetic",
        conflicts_with = "synthetic"
    )]
    pub trace: Option<PathBuf>,
    /// A built-in, deterministic load shape instead of a trace.
    #[arg(long, value_enum)]
    pub synthetic: Option<Shape>,
    /// How long the synthetic shape runs (e.g. `90m`, `48h`; default: the shape's own).
    #[arg(long, requires = "synthetic")]
    pub duration: Option<String>,
    /// Seed of the `noise` shape.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The phase active at the start (default: spec.phase).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=4))]
    pub start_phase: Option<i32>,
    /// Seconds between two samples (the operator samples every 10 s); a row
    /// that lasts less than a step may fall between two samples.
    #[arg(long, default_value_t = DEFAULT_STEP_SECS, value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub step: i64,
    /// Simulate another mode than the manifest's (e.g. what Auto would do).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Also draw the trace, each phase's thresholds and the phase changes into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Recommendations only: the active phase never moves.
    Recommend,
    /// The target follows the recommendation through dwell, flap and money budgets.
    Auto,
}

/// `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per decision change, then a summary.
    Table,
    /// One JSON document with the policy, the events and the summary.
    Json,
}

/// What happened at one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Fresh data stopped (a gap starts).
    NoData,
    /// Fresh data is back.
    Data,
    /// The recommended phase changed.
    Recommend,
    /// A move waits for `minDwell`.
    Dwell,
    /// Auto mode refused a move (flap or money budget).
    Refused,
    /// `status.targetPhase` changed.
    Target,
    /// The active phase went up one step.
    Promote,
    /// The active phase went down one step.
    Demote,
    /// A step down that moves data waits for approval.
    Held,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::NoData => "no-data",
            Kind::Data => "data",
            Kind::Recommend => "recommend",
            Kind::Dwell => "dwell",
            Kind::Refused => "refused",
            Kind::Target => "target",
            Kind::Promote => "promote",
            Kind::Demote => "demote",
            Kind::Held => "held",
        }
    }
}

/// One decision change.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Seconds from the start of the trace.
    pub offset_seconds: i64,
    /// Wall-clock time, when the trace had RFC 3339 timestamps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The sample's TPS (`None`: no data).
    pub tps: Option<f64>,
    /// The active phase after the event.
    pub active: i32,
    /// The recommended phase.
    pub recommended: i32,
    /// `status.targetPhase` (Auto mode).
    pub target: Option<i32>,
    /// What changed.
    pub kind: Kind,
    /// Why, in the promoter's words.
    pub detail: String,
}

/// A step of the active phase (or one held for approval).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Seconds from the start.
    pub offset_seconds: i64,
    /// From this phase.
    pub from: i32,
    /// To this one.
    pub to: i32,
}

/// The run as a whole.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Samples fed to the promoter.
    pub samples: usize,
    /// Of which without data.
    pub gap_samples: usize,
    /// Seconds from the first to the last sample.
    pub duration_seconds: i64,
    /// The highest TPS seen.
    pub max_tps: f64,
    /// The phase at the start.
    pub start_phase: i32,
    /// Steps up.
    pub promotions: Vec<Change>,
    /// Steps down.
    pub demotions: Vec<Change>,
    /// Steps down held for approval (each counted once per episode).
    pub held: Vec<Change>,
    /// Moves refused by the flap or money budget (once per episode).
    pub refusals: usize,
    /// The active phase at the end.
    pub final_phase: i32,
    /// The recommendation at the end.
    pub final_recommended: i32,
}

/// Everything a run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Decision changes, in time order.
    pub events: Vec<Event>,
    /// Totals.
    pub summary: Summary,
    /// Every sample: (offset, TPS), for the plot.
    pub samples: Vec<(i64, Option<f64>)>,
}

/// Checks what the API server's schema would check of the policy fields, so
/// a manifest that the cluster would refuse is not silently defaulted here.
pub fn check_policy(sp: &ScalingPhase) -> Result<(), String> {
    let a = &sp.spec.autoscale;
    if !(0..=4).contains(&sp.spec.phase) {
        return Err(format!("spec.phase {} is not 0..4", sp.spec.phase));
    }
    for (name, v) in [("maxPhase", a.max_phase), ("minPhase", a.min_phase)] {
        if v.is_some_and(|v| !(0..=4).contains(&v)) {
            return Err(format!("spec.autoscale.{name} must be 0..4"));
        }
    }
    if a.promote_at.is_some_and(|v| !(0.1..=1.0).contains(&v)) {
        return Err("spec.autoscale.promoteAt must be within 0.1..1.0".into());
    }
    if a.demote_below.is_some_and(|v| !(0.0..=0.9).contains(&v)) {
        return Err("spec.autoscale.demoteBelow must be within 0.0..0.9".into());
    }
    if a.max_transitions_per_day
        .is_some_and(|v| !(1..=48).contains(&v))
    {
        return Err("spec.autoscale.maxTransitionsPerDay must be 1..48".into());
    }
    for (name, d) in [
        ("promoteAfter", &a.promote_after),
        ("demoteAfter", &a.demote_after),
        ("minDwell", &a.min_dwell),
    ] {
        if let Some(d) = d
            && d.seconds().is_none()
        {
            return Err(format!(
                "spec.autoscale.{name}: {:?} is not a duration like 90s, 5m or 1h30m",
                d.0
            ));
        }
    }
    Ok(())
}

/// Monthly cost of each phase, from the catalogue (as the reconciler does).
fn phase_costs() -> [i64; 5] {
    let mut cost = [0i64; 5];
    for (p, c) in (0i32..).zip(cost.iter_mut()) {
        *c = ladder_crds::catalogue::Phase::from_number(p)
            .map(|ph| ladder_crds::catalogue::profile(ph).base_monthly_cost_usd)
            .unwrap_or(0);
    }
    cost
}

fn base_time(origin: Origin) -> Timestamp {
    match origin {
        Origin::At(t) => t,
        // Any fixed instant: only differences are ever shown.
        Origin::Relative => Timestamp::from_second(1_767_225_600).unwrap_or(Timestamp::UNIX_EPOCH),
    }
}

/// The state the promoter compares from one sample to the next.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    data: bool,
    recommended: i32,
    target: Option<i32>,
    dwell: bool,
    refused: Option<&'static str>,
}

/// Runs the trace through the promoter. `sp` supplies the policy (with its
/// mode), `spec.phase` and `spec.transitions`; `start` is the active phase at
/// the first sample.
pub fn simulate(sp: &ScalingPhase, trace: &Trace, start: i32, step: i64) -> Outcome {
    let policy = Policy::from_spec(&sp.spec.autoscale, sp.spec.monthly_budget_usd);
    let auto = policy.mode == AutoscaleMode::Auto;
    let step = step.max(1);
    let base = base_time(trace.origin);
    let cost = phase_costs();
    // effective_phase reads status.targetPhase: keep it in a working copy.
    let mut work = sp.clone();
    work.status = Some(ScalingPhaseStatus::default());
    let approval = sp
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(transition::APPROVE_ANNOTATION))
        .map(|s| s.trim().to_owned());

    let mut history = History::default();
    let mut active = start;
    let mut target: Option<i32> = None;
    let mut phase_since: Option<Timestamp> = None;
    let mut changes: Vec<Timestamp> = Vec::new();
    let mut seen = Seen {
        data: true,
        recommended: start,
        // The operator's first write; not a change worth a line.
        target: auto.then_some(start),
        dwell: false,
        refused: None,
    };
    let mut held: Option<(i32, i32)> = None;
    let mut events = Vec::new();
    let mut samples = Vec::new();
    let mut summary = Summary {
        samples: 0,
        gap_samples: 0,
        duration_seconds: 0,
        max_tps: 0.0,
        start_phase: start,
        promotions: Vec::new(),
        demotions: Vec::new(),
        held: Vec::new(),
        refusals: 0,
        final_phase: start,
        final_recommended: start,
    };

    for k in 0..=trace.end() / step {
        let offset = k * step;
        let now = base + SignedDuration::from_secs(offset);
        let tps = trace.at(offset);
        samples.push((offset, tps));
        summary.samples += 1;
        summary.duration_seconds = offset;
        match tps {
            Some(t) => summary.max_tps = summary.max_tps.max(t),
            None => summary.gap_samples += 1,
        }
        history.record(Sample { at: now, tps }, &policy, active);
        let d = promoter::decide(
            &policy,
            &history,
            &Inputs {
                now,
                active,
                declared: sp.spec.phase,
                target,
                phase_since,
                changes: &changes,
                cost,
            },
        );
        // The operator stores targetPhase only in Auto mode.
        target = if auto { d.target } else { None };
        let mut tick: Vec<Event> = Vec::new();
        let mut emit = |kind: Kind, active: i32, detail: String| {
            tick.push(Event {
                offset_seconds: offset,
                time: match trace.origin {
                    Origin::At(_) => Some(now.to_string()),
                    Origin::Relative => None,
                },
                tps,
                active,
                recommended: d.recommended,
                target,
                kind,
                detail,
            });
        };
        let now_seen = Seen {
            data: d.observed_tps.is_some(),
            recommended: d.recommended,
            target,
            dwell: d.cooldown.1 == reasons::DWELL,
            refused: d.refused.as_ref().map(|r| r.0),
        };
        if now_seen.data != seen.data {
            if now_seen.data {
                emit(Kind::Data, active, d.metrics.2.clone());
            } else {
                emit(Kind::NoData, active, d.metrics.2.clone());
            }
        }
        if now_seen.recommended != seen.recommended {
            emit(Kind::Recommend, active, d.recommendation.reason.clone());
        }
        if now_seen.dwell && !seen.dwell {
            emit(Kind::Dwell, active, d.cooldown.2.clone());
        }
        if let Some((reason, message)) = &d.refused
            && seen.refused != Some(*reason)
        {
            summary.refusals += 1;
            emit(Kind::Refused, active, format!("{reason}: {message}"));
        }
        if now_seen.target != seen.target {
            let detail = match target {
                Some(t) => format!("targetPhase {t}"),
                None => "targetPhase cleared".to_owned(),
            };
            emit(Kind::Target, active, detail);
        }
        seen = now_seen;

        let goal = if auto {
            work.status
                .get_or_insert_with(Default::default)
                .target_phase = target;
            validate::effective_phase(&work)
        } else {
            active
        };
        let to = if goal > active {
            active + 1
        } else {
            active - 1
        };
        let approved = sp.spec.transitions.allow_demotion
            || approval.as_deref() == Some(format!("{active}-to-{to}").as_str());
        if goal == active {
            held = None;
        } else if to < active && transition::moves_data(active, to) && !approved {
            if held != Some((active, to)) {
                held = Some((active, to));
                summary.held.push(Change {
                    offset_seconds: offset,
                    from: active,
                    to,
                });
                emit(
                    Kind::Held,
                    active,
                    format!(
                        "stepping down from phase {active} to {to} moves data: held for approval ({}={active}-to-{to} or spec.transitions.allowDemotion)",
                        transition::APPROVE_ANNOTATION
                    ),
                );
            }
        } else {
            held = None;
            let from = active;
            active = to;
            phase_since = Some(now);
            changes.push(now);
            let why = if d.recommended == to {
                d.recommendation.reason.clone()
            } else {
                format!("following targetPhase {goal}")
            };
            let change = Change {
                offset_seconds: offset,
                from,
                to,
            };
            if to > from {
                summary.promotions.push(change);
                emit(Kind::Promote, to, format!("phase {from} -> {to}: {why}"));
            } else {
                summary.demotions.push(change);
                emit(Kind::Demote, to, format!("phase {from} -> {to}: {why}"));
            }
        }
        // A move carries its recommendation and target: one line, not three.
        if let Some(moved) = tick
            .iter()
            .find(|e| matches!(e.kind, Kind::Promote | Kind::Demote))
            .map(|e| e.active)
        {
            tick.retain(|e| {
                !(matches!(e.kind, Kind::Recommend | Kind::Target)
                    && e.recommended == moved
                    && e.target.is_none_or(|t| t == moved))
            });
        }
        events.append(&mut tick);
    }
    summary.final_phase = active;
    summary.final_recommended = seen.recommended;
    Outcome {
        events,
        summary,
        samples,
    }
}

/// Runs `ladder-operator simulate`.
pub fn run(args: &SimulateArgs, out: &mut impl Write) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("reading {}", args.policy.display()))?;
    let mut sp: ScalingPhase = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a ScalingPhase", args.policy.display()))?;
    check_policy(&sp).map_err(|e| anyhow::anyhow!("{}: {e}", args.policy.display()))?;
    match args.mode {
        Some(ModeArg::Auto) => sp.spec.autoscale.mode = AutoscaleMode::Auto,
        Some(ModeArg::Recommend) => sp.spec.autoscale.mode = AutoscaleMode::Recommend,
        None => {}
    }
    if sp.spec.autoscale.mode == AutoscaleMode::Off {
        anyhow::bail!(
            "{}: spec.autoscale.mode is Off, so the operator decides nothing; set Recommend or Auto, or pass --mode",
            args.policy.display()
        );
    }
    let trace = match (&args.trace, args.synthetic) {
        (Some(path), _) => {
            let csv = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            trace::parse_csv(&csv).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        (None, Some(shape)) => {
            let duration = match &args.duration {
                Some(d) => ladder_crds::scalingphase::Duration(d.clone())
                    .seconds()
                    .and_then(|s| i64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        anyhow::anyhow!("--duration {d:?} is not a duration like 90m or 48h")
                    })?,
                None => shape.default_duration(),
            };
            trace::synthetic(shape, duration, args.step, args.seed)
        }
        (None, None) => anyhow::bail!("give --trace or --synthetic"),
    };
    if trace.end() / args.step >= MAX_SAMPLES {
        anyhow::bail!(
            "the trace spans {}s: at --step {} that is more than {MAX_SAMPLES} samples; use a larger --step",
            trace.end(),
            args.step
        );
    }
    let start = args.start_phase.unwrap_or(sp.spec.phase);
    let policy = Policy::from_spec(&sp.spec.autoscale, sp.spec.monthly_budget_usd);
    let outcome = simulate(&sp, &trace, start, args.step);
    match args.output {
        Format::Table => write_table(out, &policy, &outcome)?,
        Format::Json => write_json(out, &policy, &outcome)?,
    }
    if let Some(path) = &args.plot {
        plot::plot(path, &policy, &outcome)
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
