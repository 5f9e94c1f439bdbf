//! Ladder's Argo CD health check and actions
//! (deploy/argocd/resource_customizations/ladder.dev/ScalingPhase), run by
//! the Lua interpreter Argo CD embeds (gopher-lua, in deploy/argocd's Go
//! tests): on Argo CD's testdata layout, and on real ScalingPhases put in
//! each state on the local control plane. This test runs those Go tests
//! with the local control plane's KUBECONFIG and fails unless each one ran
//! and passed (a skipped live test fails here).

use std::process::Command;

use ladder_e2e::repo_root;

#[test]
fn argocd_health_and_actions_pass_in_gopher_lua_on_testdata_and_live_objects() {
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG for the local control plane");
    let root = repo_root();
    let out = Command::new("go")
        .args(["test", "-count=1", "-v", "./..."])
        .current_dir(root.join("deploy/argocd"))
        .env("KUBECONFIG", kubeconfig)
        .env("LADDER_ROOT", &root)
        .env("LADDER_ARGOCD_LIVE", "1")
        .output()
        .expect("go (hack/toolchain.sh checks it is on PATH)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go test in deploy/argocd failed:\n{text}"
    );
    for test in [
        "TestHealthTestdata",
        "TestActionTestdata",
        "TestArgocdCmSnippet",
        "TestLiveObjects",
    ] {
        assert!(
            text.contains(&format!("--- PASS: {test}")),
            "{test} did not pass (skipped?):\n{text}"
        );
    }
    // Cases whose status fields the installed CRD does not have yet.
    for line in text.lines().filter(|l| l.contains("PENDING")) {
        eprintln!("{}", line.trim());
    }
}
