//! The simulator's output: a table of decision changes with a summary line,
//! or one JSON document for machines.

use std::io::Write;

use serde::Serialize;

use super::{Change, Event, Outcome, Summary};
use crate::promoter::{self, Policy};

/// `+HH:MM:SS`, or `+Nd HH:MM:SS` past a day.
pub fn fmt_offset(secs: i64) -> String {
    let (d, rest) = (secs / 86_400, secs % 86_400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if d > 0 {
        format!("+{d}d {hms}")
    } else {
        format!("+{hms}")
    }
}

fn fmt_tps(t: Option<f64>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| format!("{t:.1}"))
}

fn fmt_changes(v: &[Change]) -> String {
    v.iter()
        .map(|c| format!("{}->{} at {}", c.from, c.to, fmt_offset(c.offset_seconds)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line describing the policy.
pub fn describe_policy(p: &Policy) -> String {
    format!(
        "mode {:?}, phases {}..{}, promote at {:.0}% of the ceiling for {}s, demote below {:.0}% of the lower ceiling for {}s, minDwell {}s, at most {} changes per 24h, budget {}",
        p.mode,
        p.min_phase,
        p.max_phase,
        p.promote_at * 100.0,
        p.promote_after,
        p.demote_below * 100.0,
        p.demote_after,
        p.min_dwell,
        p.max_per_day,
        p.budget
            .map_or_else(|| "none".to_owned(), |b| format!("${b}/month"))
    )
}

/// The summary as one line.
pub fn summary_line(s: &Summary) -> String {
    let list = |v: &[Change]| {
        if v.is_empty() {
            String::new()
        } else {
            format!(" ({})", fmt_changes(v))
        }
    };
    format!(
        "summary: {} samples over {} ({} without data), max {:.1} TPS; {} promotions{}; {} demotions{}; {} held for approval{}; {} refusals; phase {} -> {} (recommended {})",
        s.samples,
        fmt_offset(s.duration_seconds).trim_start_matches('+'),
        s.gap_samples,
        s.max_tps,
        s.promotions.len(),
        list(&s.promotions),
        s.demotions.len(),
        list(&s.demotions),
        s.held.len(),
        list(&s.held),
        s.refusals,
        s.start_phase,
        s.final_phase,
        s.final_recommended
    )
}

/// Writes the table: a policy line, one line per event, the summary.
pub fn write_table(out: &mut impl Write, policy: &Policy, o: &Outcome) -> std::io::Result<()> {
    writeln!(out, "policy: {}", describe_policy(policy))?;
    let when = |e: &Event| {
        e.time
            .clone()
            .unwrap_or_else(|| fmt_offset(e.offset_seconds))
    };
    let width = o
        .events
        .iter()
        .map(|e| when(e).len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:<width$}  {:>9}  {:>6}  {:>3}  {:>6}  {:<9}  DETAIL",
        "TIME", "TPS", "ACTIVE", "REC", "TARGET", "EVENT"
    )?;
    for e in &o.events {
        writeln!(
            out,
            "{:<width$}  {:>9}  {:>6}  {:>3}  {:>6}  {:<9}  {}",
            when(e),
            fmt_tps(e.tps),
            e.active,
            e.recommended,
            e.target.map_or_else(|| "-".to_owned(), |t| t.to_string()),
            e.kind.as_str(),
            e.detail
        )?;
    }
    writeln!(out, "{}", summary_line(&o.summary))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonPolicy {
    mode: String,
    min_phase: i32,
    max_phase: i32,
    promote_at: f64,
    demote_below: f64,
    promote_after_seconds: i64,
    demote_after_seconds: i64,
    min_dwell_seconds: i64,
    max_transitions_per_day: usize,
    monthly_budget_usd: Option<i64>,
    promote_thresholds: Vec<f64>,
    demote_thresholds: Vec<f64>,
}

#[derive(Serialize)]
struct JsonDoc<'a> {
    policy: JsonPolicy,
    events: &'a [Event],
    summary: &'a Summary,
}

/// Writes one JSON document.
pub fn write_json(out: &mut impl Write, p: &Policy, o: &Outcome) -> anyhow::Result<()> {
    let doc = JsonDoc {
        policy: JsonPolicy {
            mode: format!("{:?}", p.mode),
            min_phase: p.min_phase,
            max_phase: p.max_phase,
            promote_at: p.promote_at,
            demote_below: p.demote_below,
            promote_after_seconds: p.promote_after,
            demote_after_seconds: p.demote_after,
            min_dwell_seconds: p.min_dwell,
            max_transitions_per_day: p.max_per_day,
            monthly_budget_usd: p.budget,
            // Index n: the threshold that moves phase n up (or down to n-1).
            promote_thresholds: (0..5)
                .map(|n| p.promote_at * promoter::ceiling(n))
                .collect(),
            demote_thresholds: (0..5)
                .map(|n| {
                    if n == 0 {
                        0.0
                    } else {
                        p.demote_below * promoter::ceiling(n - 1)
                    }
                })
                .collect(),
        },
        events: &o.events,
        summary: &o.summary,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}
