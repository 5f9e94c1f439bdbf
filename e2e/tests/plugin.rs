//! `kubectl ladder` (the `kubectl-ladder` binary) against the local control
//! plane, with the operator running: `status` and `history` read what the
//! operator wrote; `plan --to N` finds nothing to change at the running
//! phase (its server-side dry-runs agree with what the operator applied, and
//! write nothing), and names what a promotion creates and what a demotion
//! moves; `pause`/`resume` flip `spec.paused` (and warn that the test's own
//! server-side apply owns it); `approve` writes the annotation the operator
//! waits for, and the demotion starts.
//!
//! Needs a KUBECONFIG for the local control plane. The plugin talks only to
//! the apiserver on loopback.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use ladder_e2e::{Operator, TestNamespace, client, install_crds, plugin_bin, wait_for};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(180);

const SHOP: &str = "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop}\nspec: {phase: 1}\n";
const BLOG: &str = "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: blog}\nspec: {phase: 1}\n";

/// Runs `kubectl-ladder -n <ns> <args>`; `(success, stdout, stderr)`.
fn ladder(ns: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(plugin_bin().expect("kubectl-ladder builds"))
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("kubectl-ladder runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs it and expects success; its stdout.
fn ok(ns: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = ladder(ns, args);
    assert!(
        success,
        "kubectl ladder {args:?} failed:\n{stderr}\n{stdout}"
    );
    stdout
}

/// Runs it with `-o json` and parses the report.
fn json(ns: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let text = ok(ns, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{text}"))
}

fn objects<'a>(plan: &'a Value, action: &str, kind: &str) -> Vec<&'a str> {
    plan["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["action"] == action && o["kind"] == kind)
        .filter_map(|o| o["name"].as_str())
        .collect()
}

fn count(plan: &Value, action: &str) -> usize {
    plan["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["action"] == action)
        .count()
}

#[tokio::test]
async fn status_plan_pause_and_approve_on_live_scaling_phases() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-plugin").await?;
    let op = Operator::start(&ns.name).await?;
    let n = ns.name.as_str();

    // Nothing yet: the summary says so, a named object is an error.
    assert!(ok(n, &["status"]).contains("No ScalingPhases found"));
    let (success, _, stderr) = ladder(n, &["status", "shop"]);
    assert!(!success && stderr.contains("not found"), "{stderr}");

    ns.apply_sp(SHOP).await?;
    ns.wait_ready("shop", 1, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", op.log_text()))?;

    // status: the summary, the detail and its JSON agree with the object.
    let summary = ok(n, &["status"]);
    assert!(summary.starts_with("NAME   PHASE   TARGET"), "{summary}");
    assert!(
        summary
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("shop   1       1")),
        "{summary}"
    );
    let detail = ok(n, &["status", "shop"]);
    for want in [
        "Phase:           1 (Growth)\n",
        "Conditions:\n",
        "Components:\n",
        "History:\n",
    ] {
        assert!(detail.contains(want), "missing {want:?}:\n{detail}");
    }
    let s = json(n, &["status", "shop"]);
    let sp = ns.sps().get("shop").await?;
    let status = sp.status.clone().expect("status");
    assert_eq!(s["activePhase"], 1);
    assert_eq!(
        s["readyComponents"],
        status.ready_components.clone().expect("ready")
    );
    assert_eq!(
        s["components"].as_array().map(Vec::len),
        Some(status.components.len())
    );
    assert!(
        s["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    );
    assert_eq!(s["estimatedMonthlyCostUSD"], 25);
    let yaml = ok(n, &["status", "shop", "-o", "yaml"]);
    let from_yaml: Value = serde_yaml::from_str(&yaml)?;
    assert_eq!(from_yaml["activePhase"], 1);

    // history: one phase, active now.
    let h = json(n, &["history", "shop"]);
    let rows = h.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{h}");
    assert_eq!(rows[0]["phase"], 1);
    assert_eq!(rows[0]["current"], true);
    assert!(
        ok(n, &["history"]).contains("(active)"),
        "the only ScalingPhase is found by itself"
    );

    // plan at the running phase: the dry-run agrees with what the operator
    // applied, and writes nothing.
    let deploys = ns.api::<Deployment>();
    let app_before = deploys.get("shop-app").await?.resource_version();
    let sp_before = ns.sps().get("shop").await?.resource_version();
    let same = json(n, &["plan", "shop", "--to", "1"]);
    assert_eq!(same["serverDryRun"], true);
    assert_eq!(count(&same, "Create"), 0, "{same:#}");
    assert_eq!(count(&same, "Change"), 0, "{same:#}");
    assert_eq!(count(&same, "Retire"), 0, "{same:#}");
    assert_eq!(count(&same, "NotCompared"), 0, "{same:#}");
    assert!(count(&same, "Unchanged") > 10);
    assert_eq!(
        deploys.get("shop-app").await?.resource_version(),
        app_before
    );
    assert_eq!(ns.sps().get("shop").await?.resource_version(), sp_before);

    // plan a promotion: read replicas beside the primary, the app re-wired.
    let up = json(n, &["plan", "shop", "--to", "2"]);
    assert_eq!(up["steps"].as_array().map(Vec::len), Some(1));
    assert_eq!(up["steps"][0]["data"], Value::Null, "1 -> 2 moves no data");
    assert_eq!(
        objects(&up, "Create", "StatefulSet"),
        vec!["shop-postgres-replica"]
    );
    assert!(
        objects(&up, "Change", "Deployment").contains(&"shop-app"),
        "the app's store changes: {up:#}"
    );
    let text = ok(n, &["plan", "shop", "--to", "2"]);
    assert!(
        text.contains("Objects (changes found with a server-side dry-run):"),
        "{text}"
    );
    assert!(text.contains("Create   StatefulSet"), "{text}");

    // plan a demotion: it moves the data and waits for an approval.
    let down = json(n, &["plan", "shop", "--to", "0"]);
    let step = &down["steps"][0];
    assert_eq!(step["approval"], "required", "{down:#}");
    assert_eq!(step["data"]["migrationJob"], "shop-migrate-1-to-0");
    let source = &step["data"]["sourceVolumes"][0];
    assert_eq!(source["name"], "data-shop-postgres-0");
    let claim = ns
        .api::<PersistentVolumeClaim>()
        .get_opt("data-shop-postgres-0")
        .await?;
    assert_eq!(source["exists"], claim.is_some());
    assert!(objects(&down, "Retire", "StatefulSet").contains(&"shop-postgres"));
    assert_eq!(
        objects(&down, "Create", "PersistentVolumeClaim"),
        vec!["shop-app-data"]
    );
    let (success, _, stderr) = ladder(n, &["plan", "shop", "--to", "4"]);
    assert!(
        !success && stderr.contains("spec.auth"),
        "phase 4 needs auth: {stderr}"
    );

    // pause / resume: spec.paused flips; the test's apply owns the field.
    let paused = json(n, &["pause", "shop"]);
    assert_eq!(paused["changed"], true);
    assert!(
        paused["warnings"].to_string().contains("ladder-e2e"),
        "the test's server-side apply owns spec.paused: {paused}"
    );
    assert!(ns.sps().get("shop").await?.spec.paused);
    wait_for("the operator reports the pause", TIMEOUT, || async {
        let sp = ns.sps().get("shop").await?;
        Ok(sp.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Progressing" && c.reason == "Paused")
                .then_some(())
        }))
    })
    .await?;
    assert_eq!(
        json(n, &["pause", "shop"])["changed"],
        false,
        "already paused"
    );
    assert!(ok(n, &["status", "shop"]).contains("Paused:          true"));
    assert_eq!(json(n, &["resume", "shop"])["changed"], true);
    assert!(!ns.sps().get("shop").await?.spec.paused);

    // approve: nothing to approve while no demotion is pending.
    let (success, _, stderr) = ladder(n, &["approve", "shop"]);
    assert!(
        !success && stderr.contains("nothing to approve"),
        "{stderr}"
    );

    // A demotion that moves data waits; approving it starts it.
    ns.apply_sp(BLOG).await?;
    ns.wait_ready("blog", 1, TIMEOUT).await?;
    ns.apply_sp(&BLOG.replace("phase: 1", "phase: 0")).await?;
    wait_for("blog waits for approval", TIMEOUT, || async {
        let sp = ns.sps().get("blog").await?;
        Ok(waiting_for_approval(&sp).then_some(()))
    })
    .await?;
    assert!(
        ok(n, &["status", "blog"]).contains("Approval:        waiting for 1-to-0"),
        "the status names the step to approve"
    );
    let approved = json(n, &["approve", "blog"]);
    assert_eq!(approved["changed"], true, "{approved}");
    let sp = ns.sps().get("blog").await?;
    assert_eq!(
        sp.annotations()
            .get("ladder.dev/approve-transition")
            .map(String::as_str),
        Some("1-to-0")
    );
    wait_for("the approved demotion starts", TIMEOUT, || async {
        let sp = ns.sps().get("blog").await?;
        Ok(sp
            .status
            .as_ref()
            .and_then(|s| s.transition.as_ref())
            .filter(|t| t.from == 1 && t.to == 0)
            .map(|_| ()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", op.log_text()))?;
    assert!(!waiting_for_approval(&ns.sps().get("blog").await?));
    let again = json(n, &["approve", "blog", "--step", "1-to-0"]);
    assert_eq!(again["changed"], false, "already approved");

    // Two ScalingPhases: a command without a name asks for one.
    let (success, _, stderr) = ladder(n, &["history"]);
    assert!(!success && stderr.contains("name one"), "{stderr}");
    let listed = ok(n, &["status"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let everywhere = ok(n, &["status", "-A"]);
    assert!(everywhere.starts_with("NAMESPACE"), "{everywhere}");
    assert!(
        everywhere
            .lines()
            .any(|l| l.starts_with(n) && l.split_whitespace().nth(1) == Some("blog")),
        "{everywhere}"
    );

    ns.delete().await;
    Ok(())
}

/// TransitionBlocked=True with reason ApprovalRequired.
fn waiting_for_approval(sp: &ladder_crds::scalingphase::ScalingPhase) -> bool {
    sp.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "TransitionBlocked" && c.status == "True" && c.reason == "ApprovalRequired"
        })
    })
}

/// deploy/krew/ladder.yaml installs the plugin with krew itself (built from
/// the Go module proxy by hack/build-krew.sh): hack/krew.sh packs the binary
/// and writes the manifest with the archive's sha256, krew validates the
/// manifest, checks the sha256 and installs; the installed binary runs. The
/// written manifest differs from the committed one only in its sha256 (the
/// release step, `hack/krew.sh --write`, puts the release archive's there).
#[test]
fn krew_installs_the_plugin_from_its_manifest() {
    let root = ladder_e2e::repo_root();
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?} failed:\n{text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let krew = run(&mut Command::new(root.join("hack/build-krew.sh")))
        .trim()
        .to_owned();
    let dir = std::env::temp_dir().join(format!("ladder-krew-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = plugin_bin().expect("kubectl-ladder builds");
    let printed = run(Command::new(root.join("hack/krew.sh"))
        .arg("--bin")
        .arg(&bin)
        .arg("--out")
        .arg(&dir));
    let mut lines = printed.lines();
    let (archive, manifest) = (
        lines.next().expect("archive path"),
        lines.next().expect("manifest path"),
    );
    let committed =
        std::fs::read_to_string(root.join("deploy/krew/ladder.yaml")).expect("manifest");
    let written = std::fs::read_to_string(manifest).expect("written manifest");
    let differing: Vec<(&str, &str)> = committed
        .lines()
        .zip(written.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(committed.lines().count(), written.lines().count());
    assert!(
        differing.len() <= 1
            && differing
                .iter()
                .all(|(a, _)| a.trim_start().starts_with("sha256: ")),
        "only the sha256 may differ: {differing:?}"
    );
    assert!(
        committed.contains(&format!("version: v{}", env!("CARGO_PKG_VERSION"))),
        "the manifest's version is the workspace version"
    );
    run(Command::new(&krew)
        .env("KREW_ROOT", dir.join("root"))
        .arg("install")
        .arg(format!("--manifest={manifest}"))
        .arg(format!("--archive={archive}"))
        .stdin(std::process::Stdio::null()));
    let version = run(Command::new(dir.join("root/bin/kubectl-ladder")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("kubectl-ladder {}", env!("CARGO_PKG_VERSION"))
    );
    // A manifest whose sha256 does not match the archive is refused.
    let wrong = dir.join("wrong.yaml");
    let bad = written
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("sha256: ") {
                format!("    sha256: {}", "0".repeat(64))
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&wrong, bad).expect("write");
    let refused = Command::new(&krew)
        .env("KREW_ROOT", dir.join("root2"))
        .arg("install")
        .arg(format!("--manifest={}", wrong.display()))
        .arg(format!("--archive={archive}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("krew runs");
    assert!(!refused.status.success(), "a wrong sha256 was accepted");
    let _ = std::fs::remove_dir_all(&dir);
}
