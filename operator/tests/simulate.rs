//! `ladder-operator simulate` as a user runs it: the built binary on the
//! shipped example traces. Checks the decisions it prints, that the
//! committed outputs (`examples/traces/*.txt`) are still what it prints, that
//! `--plot` writes an SVG with the thresholds on it, and that bad input is
//! refused with its line number.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ladder-operator"))
        .current_dir(root())
        .arg("simulate")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = simulate(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(trace: &str) -> serde_json::Value {
    let out = ok(&[
        "--policy",
        "examples/traces/autoscale.yaml",
        "--trace",
        trace,
        "-o",
        "json",
    ]);
    serde_json::from_str(&out).expect("-o json prints JSON")
}

fn changes(v: &serde_json::Value, key: &str) -> Vec<(i64, i64, i64)> {
    v["summary"][key]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["offsetSeconds"].as_i64().expect("offset"),
                c["from"].as_i64().expect("from"),
                c["to"].as_i64().expect("to"),
            )
        })
        .collect()
}

#[test]
fn launch_day_climbs_to_phase_2_and_steps_back_at_night() {
    let v = json("examples/traces/launch-day.csv");
    // The 3-minute preview spike at 07:30 (+1:30) promotes nothing; the ramp
    // passes 8 TPS at about 09:20 and 80 TPS at about 13:13, each promoting
    // one promoteAfter (5m) later.
    assert_eq!(
        changes(&v, "promotions"),
        vec![(3 * 3600 + 25 * 60, 0, 1), (7 * 3600 + 18 * 60, 1, 2)]
    );
    // Below 30 TPS for an hour at night: 2 -> 1 moves no data, so it goes.
    assert_eq!(changes(&v, "demotions"), vec![(18 * 3600 + 26 * 60, 2, 1)]);
    assert!(changes(&v, "held").is_empty());
    // The redeploy's 21 minutes without data are seen as a gap, not as 0.
    assert_eq!(v["summary"]["gapSamples"], 126);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        vec!["promote", "no-data", "data", "promote", "demote"]
    );
    assert_eq!(v["events"][0]["time"], "2026-03-02T09:25:00Z");
}

#[test]
fn diurnal_week_holds_the_nightly_step_to_sqlite_for_approval() {
    let v = json("examples/traces/diurnal-week.csv");
    assert_eq!(
        changes(&v, "promotions"),
        vec![
            (8 * 3600 + 50 * 60, 0, 1),
            (3 * 86_400 + 13 * 3600 + 20 * 60, 1, 2)
        ]
    );
    assert_eq!(
        changes(&v, "demotions"),
        vec![(3 * 86_400 + 22 * 3600 + 55 * 60, 2, 1)]
    );
    // Nights under 3 TPS recommend phase 0, which moves data: held. The
    // morning load withdraws the held step, so each such night is held anew
    // (nobody is asked at noon to approve a step the load took back).
    let held = changes(&v, "held");
    assert_eq!(held.len(), 6, "{held:?}");
    assert!(held.iter().all(|h| (h.1, h.2) == (1, 0)));
    assert_eq!(v["summary"]["finalPhase"], 1);
}

#[test]
fn the_committed_outputs_are_what_the_simulator_prints() {
    for name in ["launch-day", "diurnal-week"] {
        let path = root().join(format!("examples/traces/{name}.txt"));
        let committed = std::fs::read_to_string(&path).expect("committed output");
        let (command, output) = committed.split_once('\n').expect("a command line first");
        let args: Vec<&str> = command
            .strip_prefix("$ ladder-operator simulate ")
            .expect("the command that produced it")
            .split_whitespace()
            .collect();
        assert_eq!(
            ok(&args),
            output,
            "{} is stale: regenerate it with the command on its first line",
            path.display()
        );
    }
}

#[test]
fn plot_writes_an_svg_with_the_thresholds_and_the_changes() {
    let dir = std::env::temp_dir().join(format!("ladder-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let svg = dir.join("launch-day.svg");
    let svg_arg = svg.to_str().expect("utf-8 path");
    ok(&[
        "--policy",
        "examples/traces/autoscale.yaml",
        "--trace",
        "examples/traces/launch-day.csv",
        "--plot",
        svg_arg,
    ]);
    let text = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
    assert!(text.trim_end().ends_with("</svg>"));
    for label in [
        "promote 0-&gt;1 at 8 TPS",
        "promote 1-&gt;2 at 80 TPS",
        "demote 2-&gt;1 below 30 TPS",
        "demote 1-&gt;0 below 3 TPS",
        "promotion",
        "demotion",
    ] {
        assert!(text.contains(label), "the chart lacks {label:?}");
    }
    // Well-formed enough: every opened element is closed.
    let opened = text.matches("<text").count();
    assert_eq!(opened, text.matches("</text>").count());
    assert!(text.matches("<polyline").count() >= 2, "the trace is drawn");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn synthetic_shapes_run_without_a_trace() {
    let out = ok(&[
        "--policy",
        "examples/traces/autoscale.yaml",
        "--synthetic",
        "noise",
    ]);
    assert!(
        out.contains("0 promotions; 0 demotions"),
        "noise around the threshold must not promote: {out}"
    );
    let out = ok(&[
        "--policy",
        "examples/traces/autoscale.yaml",
        "--synthetic",
        "spike",
    ]);
    assert!(out.contains("1 promotions (0->1 at +03:05:00)"), "{out}");
}

#[test]
fn bad_input_is_refused_with_its_line_number() {
    let dir = std::env::temp_dir().join(format!("ladder-simulate-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let csv = dir.join("bad.csv");
    std::fs::write(&csv, "timestamp,tps\n0,1\n60,lots\n").expect("write");
    let out = simulate(&[
        "--policy",
        "examples/traces/autoscale.yaml",
        "--trace",
        csv.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3:") && err.contains("lots"), "{err}");
    assert!(out.stdout.is_empty(), "nothing printed as if it had worked");
    // Off mode decides nothing: a clear refusal, not an empty table.
    let policy = dir.join("off.yaml");
    std::fs::write(
        &policy,
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop}\nspec: {phase: 0}\n",
    )
    .expect("write");
    let out = simulate(&[
        "--policy",
        policy.to_str().expect("utf-8"),
        "--synthetic",
        "ramp",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mode"));
    std::fs::remove_dir_all(&dir).ok();
}
