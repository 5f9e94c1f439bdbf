//! The simulation loop over small traces whose answers follow from the
//! policy's windows by hand.

use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};

use super::trace::{Origin, Point, Trace};
use super::*;

/// A ScalingPhase from a spec in YAML.
fn sp(spec: &str) -> ScalingPhase {
    let spec: ScalingPhaseSpec = serde_yaml::from_str(spec).expect("spec parses");
    ScalingPhase::new("shop", spec)
}

const AUTO: &str = "phase: 0
autoscale: {mode: Auto, promoteAfter: 5m, demoteAfter: 1h, minDwell: 30m, maxTransitionsPerDay: 4}";

/// One row every 10 s from 0 to `end` with `f(t)`.
fn trace(end: i64, f: impl Fn(i64) -> Option<f64>) -> Trace {
    Trace {
        origin: Origin::Relative,
        points: (0..=end / 10)
            .map(|i| Point {
                offset: i * 10,
                tps: f(i * 10),
            })
            .collect(),
    }
}

fn moves(v: &[Change]) -> Vec<(i64, i32, i32)> {
    v.iter().map(|c| (c.offset_seconds, c.from, c.to)).collect()
}

#[test]
fn a_ramp_climbs_0_1_2_when_each_window_is_full() {
    // 0.01 TPS more per second: 8 TPS (phase 0's threshold) at t=800,
    // 80 TPS (phase 1's) at t=8000; each promotes one promoteAfter later.
    #[allow(clippy::cast_precision_loss)]
    let o = simulate(&sp(AUTO), &trace(10_000, |t| Some(t as f64 / 100.0)), 0, 10);
    assert_eq!(
        moves(&o.summary.promotions),
        vec![(1100, 0, 1), (8300, 1, 2)]
    );
    assert!(o.summary.demotions.is_empty());
    assert_eq!(o.summary.final_phase, 2);
    // A promotion is one line carrying the promoter's reason.
    let promote: Vec<_> = o
        .events
        .iter()
        .filter(|e| e.offset_seconds == 1100)
        .collect();
    assert_eq!(promote.len(), 1, "{promote:?}");
    assert_eq!(promote[0].kind, Kind::Promote);
    assert!(promote[0].detail.contains("phase 0 -> 1"));
    assert!(
        promote[0].detail.contains("for 300s"),
        "{}",
        promote[0].detail
    );
}

#[test]
fn a_fast_ramp_waits_for_min_dwell_before_the_next_step() {
    // 0.1 TPS per second: 8 TPS at t=80 (promote at 380), 80 TPS at t=800
    // (window full at 1100), but phase 1 became active at 380: the next step
    // waits for minDwell, until 380 + 1800.
    #[allow(clippy::cast_precision_loss)]
    let o = simulate(&sp(AUTO), &trace(3000, |t| Some(t as f64 / 10.0)), 0, 10);
    assert_eq!(
        moves(&o.summary.promotions),
        vec![(380, 0, 1), (2180, 1, 2)]
    );
    let dwell: Vec<_> = o.events.iter().filter(|e| e.kind == Kind::Dwell).collect();
    assert_eq!(dwell.len(), 1, "one line when the wait starts");
    assert_eq!(dwell[0].offset_seconds, 1100);
}

#[test]
fn a_spike_shorter_than_promote_after_does_not_promote() {
    let spike = |len: i64| {
        trace(4000, move |t| {
            Some(if (1000..1000 + len).contains(&t) {
                40.0
            } else {
                5.0
            })
        })
    };
    let o = simulate(&sp(AUTO), &spike(290), 0, 10);
    assert!(o.summary.promotions.is_empty(), "{:?}", o.events);
    assert!(
        o.events.is_empty(),
        "not even a recommendation: {:?}",
        o.events
    );
    // Just longer than the window: promotes when the window is full.
    let o = simulate(&sp(AUTO), &spike(310), 0, 10);
    assert_eq!(moves(&o.summary.promotions), vec![(1300, 0, 1)]);
}

#[test]
fn a_gap_never_demotes() {
    // Phase 2 and idle: without gaps it steps down to 1 after demoteAfter.
    let o = simulate(&sp(AUTO), &trace(7200, |_| Some(0.0)), 2, 10);
    assert_eq!(moves(&o.summary.demotions), vec![(3600, 2, 1)]);
    // The same idle load with a short gap every 50 minutes: no window of an
    // hour is ever all data, so nothing demotes.
    let o = simulate(
        &sp(AUTO),
        &trace(7200, |t| if t % 3000 == 0 { None } else { Some(0.0) }),
        2,
        10,
    );
    assert!(o.summary.demotions.is_empty(), "{:?}", o.events);
    assert_eq!(o.summary.final_phase, 2);
    assert_eq!(o.summary.gap_samples, 3);
    // No data at all: one line saying so, and the phase holds.
    let o = simulate(&sp(AUTO), &trace(7200, |_| None), 2, 10);
    assert_eq!(o.summary.final_phase, 2);
    assert_eq!(o.events.len(), 1, "{:?}", o.events);
    assert_eq!(o.events[0].kind, Kind::NoData);
}

#[test]
fn a_demotion_that_moves_data_is_held_unless_allowed() {
    let idle = trace(7200, |_| Some(0.5));
    let o = simulate(&sp(AUTO), &idle, 1, 10);
    assert!(o.summary.demotions.is_empty());
    assert_eq!(moves(&o.summary.held), vec![(3600, 1, 0)]);
    assert_eq!(o.summary.final_phase, 1, "held, not moved");
    let held: Vec<_> = o.events.iter().filter(|e| e.kind == Kind::Held).collect();
    assert_eq!(held.len(), 1, "printed once, not at every sample");
    assert!(held[0].detail.contains("held for approval"));

    let allowed = format!("{AUTO}\ntransitions: {{allowDemotion: true}}");
    let o = simulate(&sp(&allowed), &idle, 1, 10);
    assert_eq!(moves(&o.summary.demotions), vec![(3600, 1, 0)]);
    assert!(o.summary.held.is_empty());

    // The approval annotation for exactly this step also lets it go.
    let mut approved = sp(AUTO);
    approved.metadata.annotations = Some(
        [(
            transition::APPROVE_ANNOTATION.to_owned(),
            "1-to-0".to_owned(),
        )]
        .into_iter()
        .collect(),
    );
    let o = simulate(&approved, &idle, 1, 10);
    assert_eq!(moves(&o.summary.demotions), vec![(3600, 1, 0)]);

    // 2 -> 1 keeps the data on PostgreSQL: not held. The next step down is
    // recommended at once (the last hour was idle) but waits for minDwell
    // after the step to 1, then is held.
    let o = simulate(&sp(AUTO), &idle, 2, 10);
    assert_eq!(moves(&o.summary.demotions), vec![(3600, 2, 1)]);
    assert_eq!(moves(&o.summary.held), vec![(3600 + 1800, 1, 0)]);
}

#[test]
fn the_flap_budget_counts_the_simulated_changes() {
    // Short windows and a square wave between 9 and 0.5 TPS every 20 minutes
    // would flip between phases 0 and 1 every 20 minutes; after 4 changes in
    // 24 hours the promoter refuses.
    let spec = "phase: 0
autoscale: {mode: Auto, promoteAfter: 1m, demoteAfter: 2m, minDwell: 1m, maxTransitionsPerDay: 4}
transitions: {allowDemotion: true}";
    let o = simulate(
        &sp(spec),
        &trace(6 * 3600, |t| {
            Some(if (t / 1200) % 2 == 0 { 9.0 } else { 0.5 })
        }),
        0,
        10,
    );
    assert_eq!(moves(&o.summary.promotions), vec![(60, 0, 1), (2460, 0, 1)]);
    assert_eq!(
        moves(&o.summary.demotions),
        vec![(1320, 1, 0), (3720, 1, 0)]
    );
    // Every later high half-period (from 4800 s on, each 2400 s) is refused
    // once, when its window is full.
    assert_eq!(o.summary.refusals, 7, "{:?}", o.events);
    let refused = o
        .events
        .iter()
        .find(|e| e.kind == Kind::Refused)
        .expect("a refusal line");
    assert_eq!(refused.offset_seconds, 4860);
    assert!(refused.detail.starts_with(reasons::FLAP_BUDGET));
}

#[test]
fn recommend_mode_never_moves() {
    let spec = AUTO.replace("mode: Auto", "mode: Recommend");
    #[allow(clippy::cast_precision_loss)]
    let o = simulate(
        &sp(&spec),
        &trace(10_000, |t| Some(t as f64 / 100.0)),
        0,
        10,
    );
    assert!(o.summary.promotions.is_empty());
    assert_eq!(o.summary.final_phase, 0);
    assert_eq!(o.summary.final_recommended, 1);
    let rec: Vec<_> = o
        .events
        .iter()
        .filter(|e| e.kind == Kind::Recommend)
        .collect();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].offset_seconds, 1100);
    assert!(o.events.iter().all(|e| e.target.is_none()));
}

#[test]
fn the_budget_refuses_a_promotion() {
    let spec = format!("{AUTO}\nmonthlyBudgetUsd: 500");
    let o = simulate(&sp(&spec), &trace(3000, |_| Some(95.0)), 1, 10);
    assert!(o.summary.promotions.is_empty());
    assert_eq!(o.summary.refusals, 1);
    assert!(
        o.events
            .iter()
            .any(|e| e.kind == Kind::Refused && e.detail.starts_with(reasons::OVER_BUDGET))
    );
}

#[test]
fn wall_clock_traces_show_wall_clock_times() {
    let t = trace::parse_csv(
        "2026-03-02T09:00:00Z,9\n2026-03-02T09:10:00Z,9\n2026-03-02T09:20:00Z,9\n",
    )
    .expect("parses");
    let o = simulate(&sp(AUTO), &t, 0, 10);
    let e = &o.events[0];
    assert_eq!(e.kind, Kind::Promote);
    assert_eq!(e.time.as_deref(), Some("2026-03-02T09:05:00Z"));
}

#[test]
fn bad_policies_are_refused() {
    let bad = AUTO.replace("promoteAfter: 5m", "promoteAfter: 5x");
    let e = check_policy(&sp(&bad)).expect_err("bad duration");
    assert!(e.contains("promoteAfter"), "{e}");
    let bad = AUTO.replace("mode: Auto", "mode: Auto, promoteAt: 1.5");
    assert!(check_policy(&sp(&bad)).is_err());
    assert!(check_policy(&sp(AUTO)).is_ok());
}

#[test]
fn table_and_json_carry_the_events_and_the_summary() {
    #[allow(clippy::cast_precision_loss)]
    let o = simulate(&sp(AUTO), &trace(10_000, |t| Some(t as f64 / 100.0)), 0, 10);
    let policy = Policy::from_spec(&sp(AUTO).spec.autoscale, None);
    let mut table = Vec::new();
    write_table(&mut table, &policy, &o).expect("writes");
    let table = String::from_utf8(table).expect("utf-8");
    assert!(table.contains("+00:18:20"), "{table}");
    assert!(
        table.contains("2 promotions (0->1 at +00:18:20, 1->2 at +02:18:20)"),
        "{table}"
    );
    let mut json = Vec::new();
    write_json(&mut json, &policy, &o).expect("writes");
    let v: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    assert_eq!(v["summary"]["promotions"][1]["offsetSeconds"], 8300);
    assert_eq!(v["events"][0]["kind"], "promote");
    assert_eq!(v["policy"]["promoteThresholds"][1], 80.0);
}

#[test]
fn offsets_read_as_clock_times() {
    assert_eq!(fmt_offset(0), "+00:00:00");
    assert_eq!(fmt_offset(3661), "+01:01:01");
    assert_eq!(fmt_offset(86_400 + 59), "+1d 00:00:59");
}
