use super::*;
use ladder_crds::load_report::LoadReportSpec;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).expect("valid")
}

fn auto() -> Policy {
    Policy {
        mode: AutoscaleMode::Auto,
        min_phase: 0,
        max_phase: 4,
        promote_at: 0.8,
        demote_below: 0.3,
        promote_after: 300,
        demote_after: 3600,
        min_dwell: 1800,
        max_per_day: 4,
        budget: None,
    }
}

const COST: [i64; 5] = [0, 25, 800, 8000, 50_000];

fn inputs<'a>(now: i64, active: i32, changes: &'a [Timestamp]) -> Inputs<'a> {
    Inputs {
        now: ts(now),
        active,
        declared: 0,
        target: None,
        phase_since: None,
        changes,
        cost: COST,
    }
}

/// Feeds `f(t)` every 15 s from 0 to `until` and decides at `until`.
fn run(policy: &Policy, active: i32, until: i64, f: impl Fn(i64) -> Option<f64>) -> Decision {
    let mut h = History::default();
    let mut t = 0;
    while t <= until {
        h.push(
            Sample {
                at: ts(t),
                tps: f(t),
            },
            policy.horizon(),
        );
        t += 15;
    }
    decide(policy, &h, &inputs(until, active, &[]))
}

#[test]
fn ceilings_follow_the_roadmap() {
    assert_eq!(
        (0..5).map(ceiling).collect::<Vec<_>>(),
        vec![10.0, 100.0, 1_000.0, 10_000.0, 100_000.0]
    );
}

#[test]
fn a_sustained_step_promotes_after_the_window() {
    let p = auto();
    // 9 TPS on phase 0 (ceiling 10, promote at 8) since t=0.
    let d = run(&p, 0, 290, |_| Some(9.0));
    assert_eq!(d.recommended, 0, "before the window is full");
    assert!(d.cooldown.0);
    let d = run(&p, 0, 300, |_| Some(9.0));
    assert_eq!(d.recommended, 1);
    assert_eq!(d.target, Some(1));
    assert_eq!(d.recommendation.threshold, Some(8.0));
    assert_eq!(d.recommendation.window_seconds, 300);
}

#[test]
fn a_spike_shorter_than_the_window_does_not_promote() {
    let p = auto();
    let d = run(&p, 1, 600, |t| {
        Some(if (300..400).contains(&t) { 500.0 } else { 20.0 })
    });
    assert_eq!(d.recommended, 1);
    assert_eq!(d.target, Some(1));
}

#[test]
fn a_ramp_promotes_once_past_the_threshold_for_the_window() {
    let p = auto();
    // 0.1 TPS more per second: 80 at t=800 on phase 1 (promote at 80).
    let d = run(&p, 1, 1099, |t| Some(t as f64 / 10.0));
    assert_eq!(d.recommended, 1);
    let d = run(&p, 1, 1110, |t| Some(t as f64 / 10.0));
    assert_eq!(d.recommended, 2);
}

#[test]
fn noise_around_each_threshold_never_flaps() {
    for phase in 0..4 {
        let p = auto();
        let up = 0.8 * ceiling(phase);
        // Alternates 5% above and below the promotion threshold.
        let d = run(&p, phase, 7200, |t| {
            Some(if (t / 15) % 2 == 0 {
                up * 1.05
            } else {
                up * 0.95
            })
        });
        assert_eq!(d.recommended, phase, "phase {phase}");
    }
    for phase in 1..5 {
        let p = auto();
        let down = 0.3 * ceiling(phase - 1);
        let d = run(&p, phase, 7200, |t| {
            Some(if (t / 15) % 2 == 0 {
                down * 1.05
            } else {
                down * 0.95
            })
        });
        assert_eq!(d.recommended, phase, "phase {phase}");
    }
}

#[test]
fn gaps_never_demote_and_say_why() {
    let p = auto();
    // Idle load, but one gap in the last hour.
    let d = run(&p, 2, 7200, |t| if t == 6000 { None } else { Some(0.0) });
    assert_eq!(d.recommended, 2);
    // No data at all now.
    let d = run(&p, 2, 7200, |t| if t > 7000 { None } else { Some(0.0) });
    assert_eq!(d.recommended, 2);
    assert!(!d.metrics.0);
    assert_eq!(d.metrics.1, reasons::NO_DATA);
    assert_eq!(d.observed_tps, None);
}

#[test]
fn sustained_idle_demotes_after_the_longer_window() {
    let p = auto();
    let d = run(&p, 2, 3500, |_| Some(1.0));
    assert_eq!(d.recommended, 2);
    let d = run(&p, 2, 3615, |_| Some(1.0));
    assert_eq!(d.recommended, 1);
}

#[test]
fn restart_in_the_middle_of_a_window_waits_a_full_window() {
    let p = auto();
    // The old process saw 250 s of high load; the new one starts empty.
    let mut h = History::default();
    for t in (250..=500).step_by(15) {
        h.push(
            Sample {
                at: ts(t),
                tps: Some(9.0),
            },
            p.horizon(),
        );
    }
    let d = decide(&p, &h, &inputs(500, 0, &[]));
    assert_eq!(
        d.recommended, 0,
        "a restart never triggers a transition by itself"
    );
    for t in (515..=560).step_by(15) {
        h.push(
            Sample {
                at: ts(t),
                tps: Some(9.0),
            },
            p.horizon(),
        );
    }
    assert_eq!(decide(&p, &h, &inputs(560, 0, &[])).recommended, 1);
}

#[test]
fn recommend_mode_sets_no_target() {
    let p = Policy {
        mode: AutoscaleMode::Recommend,
        ..auto()
    };
    let d = run(&p, 0, 600, |_| Some(9.5));
    assert_eq!(d.recommended, 1);
    assert_eq!(d.target, None);
    let p = Policy {
        mode: AutoscaleMode::Off,
        ..auto()
    };
    let d = run(&p, 0, 600, |_| Some(9.5));
    assert_eq!(d.target, None);
    assert!(!d.metrics.0);
}

#[test]
fn budget_dwell_and_flap_budget_gate_auto_mode() {
    let p = Policy {
        budget: Some(500),
        ..auto()
    };
    let d = run(&p, 1, 600, |_| Some(95.0));
    assert_eq!(d.recommended, 2);
    assert_eq!(d.target, Some(1));
    assert_eq!(d.refused.as_ref().map(|r| r.0), Some(reasons::OVER_BUDGET));

    let p = auto();
    let mut h = History::default();
    for t in (0..=600).step_by(15) {
        h.push(
            Sample {
                at: ts(t),
                tps: Some(95.0),
            },
            p.horizon(),
        );
    }
    let i = Inputs {
        phase_since: Some(ts(0)),
        ..inputs(600, 1, &[])
    };
    let d = decide(&p, &h, &i);
    assert_eq!(d.target, Some(1));
    assert_eq!(d.cooldown.1, reasons::DWELL);

    let changes = [ts(-80_000), ts(-60_000), ts(-40_000), ts(-20_000)];
    let d = decide(&p, &h, &inputs(600, 1, &changes));
    assert_eq!(d.target, Some(1));
    assert_eq!(d.refused.as_ref().map(|r| r.0), Some(reasons::FLAP_BUDGET));
    // Older changes don't count.
    let changes = [ts(-200_000), ts(-100_000)];
    assert_eq!(decide(&p, &h, &inputs(600, 1, &changes)).target, Some(2));
}

#[test]
fn a_held_demotion_is_withdrawn_when_the_load_comes_back() {
    let p = Policy {
        min_dwell: 0,
        ..auto()
    };
    let mut h = History::default();
    for t in (0..=600).step_by(15) {
        h.push(
            Sample {
                at: ts(t),
                tps: Some(50.0),
            },
            p.horizon(),
        );
    }
    // The stored target says 0 (a demotion held for approval); the load
    // is back within phase 1's band.
    let i = Inputs {
        target: Some(0),
        ..inputs(600, 1, &[])
    };
    let d = decide(&p, &h, &i);
    assert_eq!(d.recommended, 1);
    assert_eq!(d.target, Some(1));
}

/// The 2026-11-30 e2e failure: Auto decided 2 -> 1, and while the step ran
/// the app's Pods rolled, so the last sample had no believable report. The
/// demotion must stand (and, once phase 1 is active, the target with it):
/// a gap in the data is not the load coming back.
#[test]
fn a_gap_in_the_data_does_not_withdraw_a_decided_demotion() {
    let p = Policy {
        min_dwell: 0,
        min_phase: 1,
        ..auto()
    };
    let mut h = History::default();
    for t in (0..=3600).step_by(15) {
        h.push(
            Sample {
                at: ts(t),
                tps: Some(5.0),
            },
            p.horizon(),
        );
    }
    h.push(
        Sample {
            at: ts(3615),
            tps: None,
        },
        p.horizon(),
    );
    let during = Inputs {
        target: Some(1),
        ..inputs(3615, 2, &[])
    };
    let d = decide(&p, &h, &during);
    assert_eq!(
        d.recommended, 2,
        "a window with a gap recommends nothing new"
    );
    assert_eq!(d.target, Some(1), "the decided demotion stands");
    // Phase 1 active, no data yet: the target stays where the step went.
    let after = Inputs {
        target: Some(1),
        ..inputs(3615, 1, &[])
    };
    assert_eq!(decide(&p, &h, &after).target, Some(1));
    // The load really back above the threshold withdraws it (as before).
    h.push(
        Sample {
            at: ts(3630),
            tps: Some(400.0),
        },
        p.horizon(),
    );
    let back = Inputs {
        target: Some(1),
        ..inputs(3630, 2, &[])
    };
    assert_eq!(decide(&p, &h, &back).target, Some(2));
}

/// A running window says when it ends, so the reconciler can look again
/// then; a decision nothing but the load can change has no due time.
#[test]
fn a_running_window_is_due_at_its_end() {
    let p = Policy {
        min_dwell: 0,
        promote_after: 10,
        ..auto()
    };
    let sample = |t: i64, tps: f64| Sample {
        at: ts(t),
        tps: Some(tps),
    };
    let mut h = History::default();
    // Reports every 2 s: the sample at 4 s merges into the one at 2 s,
    // which keeps its time (both above 8 TPS); the newest value shows.
    for (t, tps) in [(0, 5.0), (2, 9.0), (4, 9.5)] {
        h.record(sample(t, tps), &p, 0);
    }
    assert_eq!(h.last().and_then(|s| s.tps), Some(9.5));
    let d = decide(&p, &h, &inputs(4, 0, &[]));
    assert_eq!(d.recommended, 0);
    assert_eq!(d.due, Some(ts(12)), "the run above 8 TPS began at 2 s");
    h.record(sample(12, 9.0), &p, 0);
    let d = decide(&p, &h, &inputs(12, 0, &[]));
    assert_eq!((d.recommended, d.due), (1, None));
    // Merged across a threshold, the newer sample wins: the run starts later.
    let mut crossing = History::default();
    for (t, tps) in [(0, 5.0), (2, 5.0), (4, 9.0)] {
        crossing.record(sample(t, tps), &p, 0);
    }
    assert_eq!(decide(&p, &crossing, &inputs(4, 0, &[])).due, Some(ts(14)));
    // Within the band: nothing is due.
    let mut quiet = History::default();
    quiet.record(sample(0, 5.0), &p, 0);
    assert_eq!(decide(&p, &quiet, &inputs(1, 0, &[])).due, None);
}

#[test]
fn max_and_min_phase_bound_the_recommendation() {
    let p = Policy {
        max_phase: 1,
        ..auto()
    };
    assert_eq!(run(&p, 1, 600, |_| Some(1e6)).recommended, 1);
    let p = Policy {
        min_phase: 2,
        ..auto()
    };
    assert_eq!(run(&p, 2, 7200, |_| Some(0.0)).recommended, 2);
}

fn report(sp: &str, owner: &str, tps: f64, at: i64) -> LoadReport {
    let mut r = LoadReport::new(
        owner,
        LoadReportSpec {
            scaling_phase: sp.into(),
            phase: 0,
            tier: "sqlite".into(),
            instance: owner.into(),
            window_seconds: 60,
            requests_per_second: tps,
            transactions_per_second: tps,
            p99_latency_ms: 1.0,
            error_rate: 0.0,
            reported_at: ts(at).to_string(),
        },
    );
    r.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: owner.into(),
            uid: "u".into(),
            ..Default::default()
        },
    ]);
    r
}

#[test]
fn only_fresh_believable_reports_of_our_pods_are_summed() {
    let ours = |p: &str| p.starts_with("shop-app-");
    let reports = [
        report("shop", "shop-app-a", 4.0, 0),
        report("shop", "shop-app-b", 5.5, -30),
        report("shop", "shop-app-c", 7.0, -500),   // stale
        report("other", "shop-app-d", 7.0, 0),     // names another
        report("shop", "intruder", 1000.0, 0),     // not our pod
        report("shop", "shop-app-e", f64::NAN, 0), // absurd
        report("shop", "shop-app-f", -3.0, 0),     // absurd
        report("shop", "shop-app-g", 9e9, 0),      // a lying instance
    ];
    let (sum, rejected) = sum_reports("shop", reports.iter(), &ours, ts(0));
    assert_eq!(sum, Some(9.5));
    assert_eq!(
        rejected,
        vec![
            rejected::STALE,
            rejected::OTHER_SCALINGPHASE,
            rejected::NOT_OUR_POD,
            rejected::ABSURD,
            rejected::ABSURD,
            rejected::IMPLAUSIBLE
        ]
    );
    let (sum, _) = sum_reports("shop", reports[2..3].iter(), &ours, ts(0));
    assert_eq!(sum, None, "only stale reports: no data, not zero");
}

#[test]
fn frequent_samples_still_fill_the_window() {
    // Reports every 2 s (faster than the merge gap) must still promote.
    let p = Policy {
        promote_after: 10,
        ..auto()
    };
    let mut h = History::default();
    let mut t = 0;
    while t <= 14 {
        h.push(
            Sample {
                at: ts(t),
                tps: Some(9.0),
            },
            p.horizon(),
        );
        t += 2;
    }
    assert!(h.samples.len() >= 3, "{:?}", h.samples.len());
    assert_eq!(decide(&p, &h, &inputs(14, 0, &[])).recommended, 1);
}

#[test]
fn history_stays_bounded() {
    let p = auto();
    let mut h = History::default();
    for t in (0..100_000).step_by(15) {
        h.push(
            Sample {
                at: ts(t),
                tps: Some(1.0),
            },
            p.horizon(),
        );
    }
    assert!(h.samples.len() <= 3600 / 15 + 3, "{}", h.samples.len());
}
