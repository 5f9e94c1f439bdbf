//! The operator's Helm chart (charts/ladder-operator): it lints, its CRDs are
//! the generated ones, and it installs on the local control plane with the
//! operator Deployment becoming available.
//!
//! Needs `LADDER_HELM` (hack/test.sh builds helm and sets it) and a KUBECONFIG
//! for the local control plane.

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use ladder_e2e::repo_root;

fn helm() -> Command {
    let helm = std::env::var("LADDER_HELM")
        .expect("LADDER_HELM must name a helm binary (hack/build-helm.sh prints one)");
    let mut cmd = Command::new(helm);
    cmd.current_dir(repo_root());
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let root = repo_root();
    let generated =
        std::fs::read_to_string(root.join("crds/manifests/ladder.dev_crds.yaml")).expect("crds/");
    let in_chart =
        std::fs::read_to_string(root.join("charts/ladder-operator/crds/ladder.dev_crds.yaml"))
            .expect("chart crds/");
    assert!(
        generated == in_chart,
        "the chart's CRDs differ from crds/: run `make crds`"
    );
}

#[test]
fn chart_lints_and_renders_the_operator() {
    run(helm().args([
        "lint",
        "--strict",
        "--kube-version",
        "v1.37.2",
        "charts/ladder-operator",
    ]));
    let rendered = run(helm().args([
        "template",
        "ladder",
        "charts/ladder-operator",
        "--namespace",
        "ladder-system",
        "--kube-version",
        "v1.37.2",
    ]));
    for kind in [
        "kind: Deployment",
        "kind: ClusterRole",
        "kind: ClusterRoleBinding",
        "kind: ServiceAccount",
    ] {
        assert!(rendered.contains(kind), "the chart renders no {kind}");
    }
    assert!(
        rendered.contains("- run"),
        "the operator container must run `ladder-operator run`"
    );
}

#[tokio::test]
async fn chart_installs_and_the_operator_deployment_becomes_available() {
    let client = ladder_e2e::client()
        .await
        .expect("KUBECONFIG for the local control plane");
    let release = format!("ladder-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let ns = format!("{release}-system");
    // CRDs are applied by the operator tests; keep this install to the chart's own objects.
    let out = helm()
        .args([
            "install",
            &release,
            "charts/ladder-operator",
            "--namespace",
            &ns,
            "--create-namespace",
        ])
        .args(["--skip-crds", "--wait", "--timeout", "120s"])
        .output()
        .expect("helm install");
    let uninstall = || {
        let _ = helm()
            .args(["uninstall", &release, "--namespace", &ns])
            .output();
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &ns, "--wait=false"])
            .output();
    };
    if !out.status.success() {
        uninstall();
        panic!(
            "helm install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let name = format!("{release}-ladder-operator");
    let deployment = deployments.get(&name).await.expect("operator deployment");
    let available = deployment.status.and_then(|s| s.available_replicas);
    let role = Api::<ClusterRole>::all(client.clone()).get(&name).await;
    uninstall();
    assert_eq!(
        available,
        Some(2),
        "both operator replicas become available"
    );
    let rules = role.expect("cluster role").rules.unwrap_or_default();
    assert!(
        rules.iter().any(|r| r
            .resources
            .as_ref()
            .is_some_and(|res| res.iter().any(|x| x == "scalingphases/status"))),
        "the operator may write ScalingPhase status"
    );
    assert!(
        !rules.iter().any(|r| r
            .resources
            .as_ref()
            .is_some_and(|res| res.iter().any(|x| x == "scalingphases"))
            && r.verbs.iter().any(|v| v == "create" || v == "delete")),
        "the operator never creates or deletes ScalingPhases: Git owns them"
    );
}
