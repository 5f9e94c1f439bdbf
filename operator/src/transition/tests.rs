use super::*;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("valid")
}

fn facts<'a>(active: i32, target: i32, current: Option<&'a TransitionStatus>) -> Facts<'a> {
    Facts {
        now: ts(0),
        active,
        target,
        current,
        shape_ready: false,
        job: JobState::Absent,
        approval: None,
        rollback: None,
        allow_demotion: false,
        retain_secs: 3600,
        step_timeout_secs: 600,
        name: "shop",
        shards: None,
        want_shards: Some(4),
    }
}

fn good_result() -> MigrationResult {
    MigrationResult {
        outcome: "CutOver".into(),
        verified: true,
        tables: vec![TableResult {
            table: "links".into(),
            partition: None,
            source_rows: 42,
            target_rows: 42,
            source_checksum: serde_json::json!("abc"),
            target_checksum: serde_json::json!("abc"),
        }],
        fence_millis: Some(12),
        message: None,
    }
}

/// Drives the machine until it stops changing or `max` decisions, with a
/// world in which everything succeeds. Returns the steps seen.
fn run_to_end(active: i32, target: i32) -> (Vec<(i32, i32, TransitionStep)>, i32) {
    let mut active = active;
    let mut current: Option<TransitionStatus> = None;
    let mut seen = Vec::new();
    let mut now = 0;
    for _ in 0..200 {
        now += 10;
        let job = match current.as_ref().map(|t| t.step) {
            Some(TransitionStep::Migrate | TransitionStep::Verify) => {
                JobState::Succeeded(Some(good_result()))
            }
            _ => JobState::Absent,
        };
        let f = Facts {
            now: ts(now),
            shape_ready: true,
            job,
            ..facts(active, target, current.as_ref())
        };
        let p = decide(&f);
        assert!(p.blocked.is_none(), "blocked: {:?}", p.blocked);
        if let Some(t) = &p.transition {
            seen.push((t.from, t.to, t.step));
        }
        // Retain waits for its window: jump the clock past it.
        if p.transition.as_ref().map(|t| t.step) == Some(TransitionStep::Retain) {
            now += 3600;
        }
        active = p.active;
        if p.finished.is_some() {
            active = p.finished.map(|(_, to)| to).unwrap_or(active);
        }
        current = p.transition;
        if current.is_none() && active == target {
            break;
        }
    }
    (seen, active)
}

#[test]
fn steady_when_at_target() {
    let p = decide(&facts(2, 2, None));
    assert_eq!(p, Plan::steady(2));
}

#[test]
fn climb_that_moves_data_walks_every_step() {
    let (seen, active) = run_to_end(0, 1);
    assert_eq!(active, 1);
    let steps: Vec<_> = seen.iter().map(|s| s.2).collect();
    assert_eq!(
        steps,
        vec![
            TransitionStep::PrepareTarget,
            TransitionStep::WaitTargetReady,
            TransitionStep::Migrate,
            TransitionStep::Verify,
            TransitionStep::CutOver,
            TransitionStep::Retain,
            TransitionStep::Retire,
            TransitionStep::Done,
        ]
    );
}

#[test]
fn step_without_data_skips_migration() {
    let (seen, active) = run_to_end(1, 2);
    assert_eq!(active, 2);
    let steps: Vec<_> = seen.iter().map(|s| s.2).collect();
    assert_eq!(
        steps,
        vec![
            TransitionStep::PrepareTarget,
            TransitionStep::WaitTargetReady,
            TransitionStep::CutOver,
            TransitionStep::Retire,
            TransitionStep::Done,
        ]
    );
}

#[test]
fn a_jump_walks_one_phase_at_a_time() {
    let (seen, active) = run_to_end(0, 3);
    assert_eq!(active, 3);
    let pairs: Vec<(i32, i32)> = seen
        .iter()
        .filter(|s| s.2 == TransitionStep::PrepareTarget)
        .map(|s| (s.0, s.1))
        .collect();
    assert_eq!(pairs, vec![(0, 1), (1, 2), (2, 3)]);
}

#[test]
fn old_tier_stays_and_app_stays_on_it_until_verified() {
    // Every plan before CutOver serves `from` and keeps `to` beside it.
    let (seen, _) = run_to_end(2, 3);
    assert!(seen.iter().any(|s| s.2 == TransitionStep::Verify));
    for step in [
        TransitionStep::PrepareTarget,
        TransitionStep::WaitTargetReady,
        TransitionStep::Migrate,
        TransitionStep::Verify,
    ] {
        let t = transition(2, 3, step);
        let f = facts(2, 3, Some(&t));
        let p = decide(&f);
        match p.shape {
            Shape::Both { serve, other, .. } => {
                assert_eq!((serve, other), (2, 3), "at {step:?}")
            }
            other => panic!("old tier dropped at {step:?}: {other:?}"),
        }
    }
    // Retain keeps the old tier too.
    let t = TransitionStatus {
        retain_until: Some(time(ts(100))),
        ..transition(2, 3, TransitionStep::Retain)
    };
    let p = decide(&facts(2, 3, Some(&t)));
    assert!(matches!(p.shape, Shape::Both { other: 2, .. }));
    assert!(p.retire.is_none());
}

fn transition(from: i32, to: i32, step: TransitionStep) -> TransitionStatus {
    TransitionStatus {
        from,
        to,
        step,
        moves_data: moves_data(from, to),
        started_at: time(ts(-100)),
        step_started_at: time(ts(-10)),
        job_name: Some(job_name("shop", from, to)),
        retain_until: None,
        rollback_of: None,
        message: String::new(),
        from_shards: (from == SHARDED).then_some(ShardLayout {
            shards: 4,
            map_version: 1,
        }),
        to_shards: (to == SHARDED).then_some(ShardLayout {
            shards: 4,
            map_version: 1,
        }),
    }
}

#[test]
fn restart_at_every_step_resumes_from_status() {
    // A fresh operator sees only status.transition: the decision is the
    // same as the one the old operator would have made.
    for step in [
        TransitionStep::PrepareTarget,
        TransitionStep::WaitTargetReady,
        TransitionStep::Migrate,
        TransitionStep::Verify,
        TransitionStep::CutOver,
        TransitionStep::Retain,
        TransitionStep::Retire,
        TransitionStep::Done,
    ] {
        let t = transition(0, 1, step);
        let f = Facts {
            shape_ready: true,
            job: JobState::Succeeded(Some(good_result())),
            ..facts(0, 1, Some(&t))
        };
        let a = decide(&f);
        let b = decide(&f.clone());
        assert_eq!(a, b, "not deterministic at {step:?}");
        if step != TransitionStep::Done {
            let next = a.transition.expect("still in transition");
            assert!(next.step >= step, "went back at {step:?}");
        } else {
            assert_eq!(a.finished, Some((0, 1)));
            assert_eq!(a.active, 1);
        }
    }
}

#[test]
fn failed_job_blocks_without_cut_over() {
    let t = transition(0, 1, TransitionStep::Migrate);
    let f = Facts {
        job: JobState::Failed("exit 1: connection refused".into()),
        ..facts(0, 1, Some(&t))
    };
    let p = decide(&f);
    let b = p.blocked.expect("blocked");
    assert_eq!(b.reason, blocked::MIGRATION_FAILED);
    assert!(b.message.contains("connection refused"));
    assert_eq!(p.transition.expect("kept").step, TransitionStep::Migrate);
    assert!(matches!(p.shape, Shape::Both { serve: 0, .. }));
}

#[test]
fn failed_verification_blocks_without_cut_over() {
    let t = transition(2, 3, TransitionStep::Verify);
    let mut bad = good_result();
    bad.tables[0].target_rows = 41;
    let f = Facts {
        job: JobState::Succeeded(Some(bad)),
        ..facts(2, 3, Some(&t))
    };
    let p = decide(&f);
    assert_eq!(
        p.blocked.clone().expect("blocked").reason,
        blocked::VERIFICATION_FAILED
    );
    assert!(matches!(p.shape, Shape::Both { serve: 2, .. }));
    // No result at all is a failed verification too.
    let f = Facts {
        job: JobState::Succeeded(None),
        ..facts(2, 3, Some(&t))
    };
    assert_eq!(
        decide(&f).blocked.expect("blocked").reason,
        blocked::VERIFICATION_FAILED
    );
    // And a job that says it could not verify.
    let f = Facts {
        job: JobState::Succeeded(Some(MigrationResult {
            outcome: "VerificationFailed".into(),
            ..good_result()
        })),
        ..facts(2, 3, Some(&t))
    };
    assert!(decide(&f).blocked.is_some());
}

#[test]
fn deleted_job_is_rerun() {
    let t = transition(0, 1, TransitionStep::Verify);
    let p = decide(&facts(0, 1, Some(&t)));
    assert!(p.blocked.is_none());
    assert_eq!(p.transition.expect("kept").step, TransitionStep::Migrate);
}

#[test]
fn demotion_that_moves_data_needs_approval() {
    let p = decide(&facts(3, 2, None));
    assert_eq!(
        p.blocked.clone().expect("blocked").reason,
        blocked::APPROVAL_REQUIRED
    );
    assert_eq!(p.shape, Shape::Steady(3));
    assert!(p.transition.is_none());
    // The wrong approval does not count.
    let f = Facts {
        approval: Some("3-to-1"),
        ..facts(3, 2, None)
    };
    assert!(decide(&f).blocked.is_some());
    let f = Facts {
        approval: Some("3-to-2"),
        ..facts(3, 2, None)
    };
    let p = decide(&f);
    assert!(p.blocked.is_none());
    assert_eq!(p.transition.expect("started").to, 2);
    let f = Facts {
        allow_demotion: true,
        ..facts(1, 0, None)
    };
    assert!(decide(&f).blocked.is_none());
}

#[test]
fn demotion_without_data_needs_no_approval() {
    let p = decide(&facts(2, 1, None));
    assert!(p.blocked.is_none());
    let t = p.transition.expect("started");
    assert!(!t.moves_data);
}

#[test]
fn target_not_ready_times_out_but_keeps_waiting() {
    let t = transition(1, 2, TransitionStep::WaitTargetReady);
    let f = Facts {
        now: ts(10_000),
        ..facts(1, 2, Some(&t))
    };
    let p = decide(&f);
    assert_eq!(
        p.blocked.clone().expect("blocked").reason,
        blocked::TARGET_NOT_READY
    );
    assert_eq!(
        p.transition.expect("kept").step,
        TransitionStep::WaitTargetReady
    );
}

#[test]
fn abandoned_before_data_moves_when_the_target_goes_back() {
    let t = transition(0, 1, TransitionStep::WaitTargetReady);
    let p = decide(&facts(0, 0, Some(&t)));
    assert_eq!(p, Plan::steady(0));
    // Once the migration runs it finishes (then a reverse step follows).
    let t = transition(0, 1, TransitionStep::Migrate);
    let p = decide(&facts(0, 0, Some(&t)));
    assert!(p.transition.is_some());
}

#[test]
fn retain_waits_for_its_window() {
    let t = TransitionStatus {
        retain_until: Some(time(ts(100))),
        ..transition(0, 1, TransitionStep::Retain)
    };
    let p = decide(&facts(0, 1, Some(&t)));
    assert_eq!(p.transition.expect("kept").step, TransitionStep::Retain);
    let f = Facts {
        now: ts(101),
        ..facts(0, 1, Some(&t))
    };
    let p = decide(&f);
    assert_eq!(p.retire, Some((0, 1)));
    assert_eq!(p.shape, Shape::Steady(1));
    // retainOldTierFor lowered to 5s in the spec: the step has lasted 10s,
    // so the retention ends now, before the stored retainUntil.
    let f = Facts {
        retain_secs: 5,
        ..facts(0, 1, Some(&t))
    };
    assert_eq!(decide(&f).retire, Some((0, 1)));
}

#[test]
fn rollback_while_retained_reverses_the_cut_over_and_then_holds() {
    let retained = TransitionStatus {
        retain_until: Some(time(ts(3600))),
        ..transition(0, 1, TransitionStep::Retain)
    };
    // Without the annotation (or naming another step) Retain just waits.
    for annotation in [None, Some("1-to-2"), Some("1-to-0")] {
        let f = Facts {
            rollback: annotation,
            ..facts(0, 1, Some(&retained))
        };
        let p = decide(&f);
        assert_eq!(p.transition.expect("kept").step, TransitionStep::Retain);
        assert!(p.blocked.is_none(), "{annotation:?}");
    }
    // With it: a reverse step 1 -> 0 starts at Migrate (both tiers are up),
    // the app stays on the new tier until the delta is verified.
    let f = Facts {
        rollback: Some(" 0-to-1 "),
        shape_ready: true,
        ..facts(0, 1, Some(&retained))
    };
    let p = decide(&f);
    let back = p.transition.clone().expect("reverse transition");
    assert_eq!(
        (back.from, back.to, back.step),
        (1, 0, TransitionStep::Migrate)
    );
    assert_eq!(back.rollback_of.as_deref(), Some("0-to-1"));
    assert_eq!(back.job_name, Some(job_name("shop", 1, 0)));
    assert_eq!(
        p.shape,
        Shape::Both {
            serve: 1,
            other: 0,
            job: Some((1, 0))
        }
    );
    assert!(p.blocked.is_none() && p.retire.is_none());
    // Repeated with the stored reverse transition, the annotation does
    // not start another reversal.
    let again = decide(&Facts {
        rollback: Some("0-to-1"),
        ..facts(1, 1, Some(&back))
    });
    assert_eq!(
        again.transition.expect("kept").rollback_of.as_deref(),
        Some("0-to-1")
    );

    // Walk the reverse step to its end: verify, cut over, retain, retire.
    let mut current = Some(back);
    let mut active = 1;
    let mut now = 0;
    let mut steps = Vec::new();
    for _ in 0..20 {
        let Some(t) = current.clone() else { break };
        now += 10;
        let f = Facts {
            now: ts(now),
            shape_ready: true,
            job: JobState::Succeeded(Some(good_result())),
            rollback: Some("0-to-1"),
            ..facts(active, 1, Some(&t))
        };
        let p = decide(&f);
        assert!(p.blocked.is_none(), "{:?}", p.blocked);
        if let Some(n) = &p.transition {
            steps.push(n.step);
            if n.step == TransitionStep::Retain {
                now += 3600;
            }
        }
        active = p.finished.map_or(p.active, |(_, to)| to);
        current = p.transition;
    }
    assert_eq!(active, 0);
    assert!(steps.contains(&TransitionStep::Retire), "{steps:?}");
    // Back on phase 0 with spec.phase still 1: held while the annotation
    // names the step, tried again once it is removed.
    let p = decide(&Facts {
        rollback: Some("0-to-1"),
        ..facts(0, 1, None)
    });
    assert_eq!(p.blocked.expect("held").reason, blocked::ROLLED_BACK);
    assert_eq!((p.shape, p.transition), (Shape::Steady(0), None));
    let p = decide(&facts(0, 1, None));
    assert_eq!(
        p.transition.expect("climbs again").step,
        TransitionStep::PrepareTarget
    );
}

#[test]
fn rollback_is_refused_with_a_reason_when_nothing_can_be_reversed() {
    // Before the cut-over nothing is undone; a step without data has no
    // tier to go back to; after Retire the old tier is gone. The
    // transition goes on; the condition says why the annotation is ignored.
    for (from, to, step) in [
        (0, 1, TransitionStep::Migrate),
        (0, 1, TransitionStep::WaitTargetReady),
        (1, 2, TransitionStep::CutOver),
        (0, 1, TransitionStep::Retire),
    ] {
        let t = transition(from, to, step);
        let named = format!("{from}-to-{to}");
        let f = Facts {
            rollback: Some(&named),
            job: JobState::Running,
            ..facts(from, to, Some(&t))
        };
        let refused = rollback_refused(&f).expect("refused");
        assert_eq!(refused.reason, blocked::ROLLBACK_REFUSED, "{step:?}");
        let p = decide(&f);
        assert_eq!(p.blocked.expect("shown").reason, blocked::ROLLBACK_REFUSED);
        if let Some(n) = p.transition {
            assert_eq!((n.from, n.to), (from, to), "went on at {step:?}");
            assert!(n.rollback_of.is_none());
        }
    }
}

#[test]
fn result_check_reads_the_migrators_json() {
    let r: MigrationResult = serde_json::from_str(
        r#"{"outcome":"CutOver","verified":true,"tables":[{"table":"links","partition":0,"sourceRows":3,"targetRows":3,"sourceChecksum":"9","targetChecksum":"9"}],"fenceMillis":5}"#,
    )
    .expect("parses");
    assert_eq!(r.check(), Ok(3));
}

const TWO_V1: ShardLayout = ShardLayout {
    shards: 2,
    map_version: 1,
};
const FOUR_V2: ShardLayout = ShardLayout {
    shards: 4,
    map_version: 2,
};

/// Drives the machine as the reconciler does: status keeps the plan's
/// transition and the shard layout in use; everything succeeds. Checks
/// on every decision that what a restarted operator would render from
/// the stored status alone ([`current_shape`], [`current_shards`]) is
/// what the decision rendered. Returns every plan and the final
/// (active, layout in use).
fn drive(
    active: i32,
    target: i32,
    in_use: Option<ShardLayout>,
    want: i32,
    f0: impl Fn(Facts<'_>) -> Facts<'_>,
) -> (Vec<Plan>, i32, Option<ShardLayout>) {
    let (mut active, mut in_use) = (active, in_use);
    let mut current: Option<TransitionStatus> = None;
    let mut plans = Vec::new();
    let mut now = 0;
    for _ in 0..200 {
        now += 10;
        let job = match current.as_ref().map(|t| t.step) {
            Some(TransitionStep::Migrate | TransitionStep::Verify) => {
                JobState::Succeeded(Some(good_result()))
            }
            _ => JobState::Absent,
        };
        let f = f0(Facts {
            now: ts(now),
            shape_ready: true,
            job,
            shards: in_use,
            want_shards: Some(want),
            ..facts(active, target, current.as_ref())
        });
        let p = decide(&f);
        assert!(p.blocked.is_none(), "blocked: {:?}", p.blocked);
        assert_eq!(
            current_shape(p.active, p.transition.as_ref()),
            p.shape,
            "a restart would render another shape than {p:?}"
        );
        assert_eq!(
            current_shards(p.active, p.transition.as_ref(), p.shards_in_use()),
            p.shards,
            "a restart would render other shards than {p:?}"
        );
        if p.transition.as_ref().map(|t| t.step) == Some(TransitionStep::Retain) {
            now += 3600;
        }
        active = p.finished.map_or(p.active, |(_, to)| to);
        in_use = p.shards_in_use();
        current = p.transition.clone();
        let done = current.is_none() && p.finished.is_none();
        plans.push(p);
        if done {
            break;
        }
    }
    (plans, active, in_use)
}

fn steps_of(plans: &[Plan]) -> Vec<TransitionStep> {
    plans
        .iter()
        .filter_map(|p| p.transition.as_ref().map(|t| t.step))
        .collect()
}

#[test]
fn a_shard_count_change_reshards_through_every_step() {
    let (plans, active, in_use) = drive(3, 3, Some(TWO_V1), 4, |f| f);
    assert_eq!((active, in_use), (3, Some(FOUR_V2)));
    assert_eq!(
        steps_of(&plans),
        vec![
            TransitionStep::PrepareTarget,
            TransitionStep::WaitTargetReady,
            TransitionStep::Migrate,
            TransitionStep::Verify,
            TransitionStep::CutOver,
            TransitionStep::Retain,
            TransitionStep::Retire,
            TransitionStep::Done,
        ]
    );
    for p in &plans {
        let Some(t) = &p.transition else { continue };
        assert!(is_reshard(t) && t.moves_data, "{t:?}");
        assert_eq!((t.from_shards, t.to_shards), (Some(TWO_V1), Some(FOUR_V2)));
        assert_eq!(step_label(t), "shards-2-to-4");
        let old_serves = Shape::Reshard {
            serve: TWO_V1,
            other: FOUR_V2,
            job: None,
        };
        let new_serves = Shape::Reshard {
            serve: FOUR_V2,
            other: TWO_V1,
            job: Some((TWO_V1, FOUR_V2)),
        };
        match t.step {
            // The new shards and map beside the old; the app on the old.
            TransitionStep::PrepareTarget | TransitionStep::WaitTargetReady => {
                assert_eq!(p.shape, old_serves, "{:?}", t.step);
                assert_eq!(p.shards_in_use(), Some(TWO_V1));
            }
            // The Job copies the moved slots; the app stays on the old map.
            TransitionStep::Migrate | TransitionStep::Verify => {
                assert_eq!(
                    p.shape,
                    Shape::Reshard {
                        serve: TWO_V1,
                        other: FOUR_V2,
                        job: Some((TWO_V1, FOUR_V2)),
                    },
                    "{:?}",
                    t.step
                );
                assert_eq!(t.job_name.as_deref(), Some("shop-reshard-v1-to-v2"));
                assert_eq!(p.shards_in_use(), Some(TWO_V1));
            }
            // Cut over to the new map; the old map stays until Retire.
            TransitionStep::CutOver | TransitionStep::Retain => {
                assert_eq!(p.shape, new_serves, "{:?}", t.step);
                assert_eq!(p.shards_in_use(), Some(FOUR_V2));
                assert!(p.retire.is_none());
            }
            TransitionStep::Retire | TransitionStep::Done => {
                assert_eq!(p.shape, Shape::Steady(3));
                assert_eq!(p.shards, Some(FOUR_V2));
            }
        }
        if t.step == TransitionStep::Retire {
            assert_eq!(p.retire, Some((3, 3)), "the old map is retired now");
        }
    }
    let finished: Vec<_> = plans.iter().filter_map(|p| p.finished).collect();
    assert_eq!(finished, vec![(3, 3)]);
    // Steady afterwards: nothing more to do.
    let f = Facts {
        shards: Some(FOUR_V2),
        want_shards: Some(4),
        ..facts(3, 3, None)
    };
    let p = decide(&f);
    assert_eq!(
        (p.transition, p.shape, p.shards),
        (None, Shape::Steady(3), Some(FOUR_V2))
    );
}

#[test]
fn a_climb_into_phase_3_records_map_v1_and_a_later_step_leaves_from_it() {
    let (plans, active, in_use) = drive(2, 3, None, 4, |f| f);
    let four_v1 = ShardLayout {
        shards: 4,
        map_version: FIRST_MAP_VERSION,
    };
    assert_eq!((active, in_use), (3, Some(four_v1)));
    assert!(
        plans
            .iter()
            .filter_map(|p| p.transition.as_ref())
            .all(|t| { !is_reshard(t) && t.to_shards == Some(four_v1) && t.from_shards.is_none() })
    );
    // 3 -> 4 leaves the layout in use.
    let (plans, active, in_use) = drive(3, 4, Some(FOUR_V2), 4, |f| f);
    assert_eq!((active, in_use), (4, None));
    let t = plans[0].transition.clone().expect("started");
    assert_eq!((t.from_shards, t.to_shards), (Some(FOUR_V2), None));
    assert_eq!(plans[0].shards, Some(FOUR_V2), "phase 3 beside 4 keeps v2");
    // A phase step comes first; the shard count is changed in phase 3.
    let (plans, _, in_use) = drive(2, 3, None, 2, |f| f);
    assert_eq!(in_use, Some(TWO_V1));
    assert!(
        plans
            .iter()
            .filter_map(|p| p.transition.as_ref())
            .all(|t| !is_reshard(t))
    );
}

fn reshard(step: TransitionStep, from: ShardLayout, to: ShardLayout) -> TransitionStatus {
    TransitionStatus {
        from_shards: Some(from),
        to_shards: Some(to),
        moves_data: true,
        job_name: Some(reshard_job_name("shop", from, to)),
        ..transition(3, 3, step)
    }
}

fn reshard_facts<'a>(t: Option<&'a TransitionStatus>, in_use: ShardLayout, want: i32) -> Facts<'a> {
    Facts {
        shards: Some(in_use),
        want_shards: Some(want),
        shape_ready: true,
        job: JobState::Succeeded(Some(good_result())),
        ..facts(3, 3, t)
    }
}

#[test]
fn a_restarted_operator_resumes_a_resharding_at_every_step() {
    let steps = [
        TransitionStep::PrepareTarget,
        TransitionStep::WaitTargetReady,
        TransitionStep::Migrate,
        TransitionStep::Verify,
        TransitionStep::CutOver,
        TransitionStep::Retain,
        TransitionStep::Retire,
        TransitionStep::Done,
    ];
    for (i, step) in steps.iter().copied().enumerate() {
        let t = TransitionStatus {
            retain_until: Some(time(ts(-1))),
            ..reshard(step, TWO_V1, FOUR_V2)
        };
        // status.shards as the previous decision wrote it.
        let in_use = if step >= TransitionStep::CutOver {
            FOUR_V2
        } else {
            TWO_V1
        };
        let f = reshard_facts(Some(&t), in_use, 4);
        let a = decide(&f);
        assert_eq!(a, decide(&f.clone()), "not deterministic at {step:?}");
        match a.transition.clone() {
            Some(next) => {
                assert_eq!(next.step, steps[i + 1], "at {step:?}");
                assert_eq!(
                    (next.from_shards, next.to_shards),
                    (Some(TWO_V1), Some(FOUR_V2))
                );
            }
            None => {
                assert_eq!(step, TransitionStep::Done);
                assert_eq!((a.finished, a.shards), (Some((3, 3)), Some(FOUR_V2)));
            }
        }
        // Until the cut-over the app stays on the old map, and nothing
        // holding data leaves the rendered shape before Retire.
        if step < TransitionStep::Verify {
            assert_eq!(a.shards_in_use(), Some(TWO_V1), "at {step:?}");
        }
        if step < TransitionStep::Retain {
            assert!(
                a.retire.is_none() && !matches!(a.shape, Shape::Steady(_)),
                "at {step:?}"
            );
        }
    }
}

#[test]
fn a_failed_resharding_keeps_the_old_map_serving() {
    let t = reshard(TransitionStep::Migrate, TWO_V1, FOUR_V2);
    let f = Facts {
        job: JobState::Failed("exit code 1".into()),
        ..reshard_facts(Some(&t), TWO_V1, 4)
    };
    let p = decide(&f);
    assert_eq!(
        p.blocked.clone().expect("blocked").reason,
        blocked::MIGRATION_FAILED
    );
    assert_eq!(p.shards_in_use(), Some(TWO_V1));
    let t = reshard(TransitionStep::Verify, TWO_V1, FOUR_V2);
    let bad = MigrationResult {
        verified: false,
        ..good_result()
    };
    let f = Facts {
        job: JobState::Succeeded(Some(bad)),
        ..reshard_facts(Some(&t), TWO_V1, 4)
    };
    let p = decide(&f);
    assert_eq!(
        p.blocked.clone().expect("blocked").reason,
        blocked::VERIFICATION_FAILED
    );
    assert_eq!(p.shards_in_use(), Some(TWO_V1));
    assert_eq!(p.transition.expect("kept").step, TransitionStep::Verify);
}

#[test]
fn fewer_shards_need_an_approval() {
    let four_v1 = ShardLayout {
        shards: 4,
        map_version: 1,
    };
    let two_v2 = ShardLayout {
        shards: 2,
        map_version: 2,
    };
    for wrong in [
        None,
        Some("3-to-2"),
        Some("shards-4-to-3"),
        Some("shards-2-to-4"),
    ] {
        let f = Facts {
            approval: wrong,
            ..reshard_facts(None, four_v1, 2)
        };
        let p = decide(&f);
        let b = p.blocked.expect("blocked");
        assert_eq!(b.reason, blocked::APPROVAL_REQUIRED, "{wrong:?}");
        assert!(
            b.message
                .contains("ladder.dev/approve-transition=shards-4-to-2"),
            "{}",
            b.message
        );
        assert_eq!(
            (p.transition, p.shape, p.shards),
            (None, Shape::Steady(3), Some(four_v1))
        );
    }
    for f in [
        Facts {
            approval: Some(" shards-4-to-2 "),
            ..reshard_facts(None, four_v1, 2)
        },
        Facts {
            allow_demotion: true,
            ..reshard_facts(None, four_v1, 2)
        },
    ] {
        let p = decide(&f);
        assert!(p.blocked.is_none());
        let t = p.transition.expect("started");
        assert_eq!((t.from_shards, t.to_shards), (Some(four_v1), Some(two_v2)));
        assert_eq!(t.step, TransitionStep::PrepareTarget);
    }
    // More shards need none.
    let p = decide(&reshard_facts(None, TWO_V1, 4));
    assert!(p.blocked.is_none() && p.transition.is_some());
    // A shrink retires the dropped shards only at Retire, after Retain.
    let (plans, _, in_use) = drive(3, 3, Some(four_v1), 2, |f| Facts {
        allow_demotion: true,
        ..f
    });
    assert_eq!(in_use, Some(two_v2));
    let first_retire = plans
        .iter()
        .position(|p| p.retire.is_some())
        .expect("retired");
    assert_eq!(
        plans[first_retire].transition.as_ref().map(|t| t.step),
        Some(TransitionStep::Retire)
    );
}

#[test]
fn a_resharding_is_abandoned_before_data_moves_when_the_count_goes_back() {
    for step in [
        TransitionStep::PrepareTarget,
        TransitionStep::WaitTargetReady,
    ] {
        let t = reshard(step, TWO_V1, FOUR_V2);
        let p = decide(&reshard_facts(Some(&t), TWO_V1, 2));
        assert_eq!(
            (p.transition, p.shape, p.shards),
            (None, Shape::Steady(3), Some(TWO_V1))
        );
        // Toward yet another count: abandoned too, the next look starts it.
        let p = decide(&reshard_facts(Some(&t), TWO_V1, 8));
        assert!(p.transition.is_none());
        let p = decide(&reshard_facts(None, TWO_V1, 8));
        assert_eq!(
            p.transition.expect("started").to_shards,
            Some(ShardLayout {
                shards: 8,
                map_version: 2
            })
        );
    }
    // Once the migration runs it finishes.
    let t = reshard(TransitionStep::Migrate, TWO_V1, FOUR_V2);
    let p = decide(&reshard_facts(Some(&t), TWO_V1, 2));
    assert_eq!(p.transition.expect("kept").step, TransitionStep::Verify);
}

#[test]
fn a_retained_resharding_rolls_back_to_the_old_map_and_then_holds() {
    let t = TransitionStatus {
        retain_until: Some(time(ts(3600))),
        ..reshard(TransitionStep::Retain, TWO_V1, FOUR_V2)
    };
    let f = Facts {
        rollback: Some("shards-2-to-4"),
        ..reshard_facts(Some(&t), FOUR_V2, 4)
    };
    let p = decide(&f);
    assert!(p.blocked.is_none());
    let back = p.transition.clone().expect("rolling back");
    assert_eq!(
        (back.from_shards, back.to_shards),
        (Some(FOUR_V2), Some(TWO_V1))
    );
    assert_eq!(back.step, TransitionStep::Migrate);
    assert_eq!(back.rollback_of.as_deref(), Some("shards-2-to-4"));
    assert_eq!(back.job_name.as_deref(), Some("shop-reshard-v2-to-v1"));
    assert_eq!(
        p.shape,
        Shape::Reshard {
            serve: FOUR_V2,
            other: TWO_V1,
            job: Some((FOUR_V2, TWO_V1))
        }
    );
    // Rolled back (2 shards, map v1 in use), the annotation holds the
    // spec's 4 shards off.
    let f = Facts {
        rollback: Some("shards-2-to-4"),
        ..reshard_facts(None, TWO_V1, 4)
    };
    let p = decide(&f);
    assert_eq!(p.blocked.expect("held").reason, blocked::ROLLED_BACK);
    assert!(p.transition.is_none());
    // Before the cut-over there is nothing to roll back.
    let t = reshard(TransitionStep::Migrate, TWO_V1, FOUR_V2);
    let f = Facts {
        rollback: Some("shards-2-to-4"),
        job: JobState::Running,
        ..reshard_facts(Some(&t), TWO_V1, 4)
    };
    assert_eq!(
        decide(&f).blocked.expect("refused").reason,
        blocked::ROLLBACK_REFUSED
    );
}
