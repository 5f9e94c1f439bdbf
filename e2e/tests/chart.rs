//! The operator's Helm chart (charts/ladder-operator, with its ladder-crds
//! subchart), tested with the real helm and kubectl against the local
//! control plane:
//!
//! - its CRDs are the generated ones, and render unchanged through the
//!   subchart's template;
//! - it lints; values.schema.json refuses bad values (lint, template and
//!   install); the rendered roles hold no `escalate`, `bind`, `impersonate` or
//!   wildcard;
//! - install, upgrade from the previous chart version (whose CRD differs:
//!   the upgrade must update the live CRD, which Helm never does for a
//!   `crds/` folder), uninstall (the CRDs stay);
//! - what the chart's ServiceAccount may do, asked of the apiserver with
//!   `kubectl auth can-i --as=system:serviceaccount:...`, in cluster mode
//!   (Secrets limited by rbac.secretNamespaces) and in namespaced mode;
//! - the operator, started from the chart's rendered Deployment args and
//!   env as a local process with the ServiceAccount's token, brings a phase-0
//!   ScalingPhase to Ready (kwok runs no containers, so the Deployment's own
//!   pods never run the binary).
//!
//! Needs `LADDER_HELM` (hack/test.sh builds helm and sets it) and a KUBECONFIG
//! for the local control plane.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use ladder_e2e::{TestNamespace, repo_root};

const CHART: &str = "charts/ladder-operator";
const CRDS_IN_CHART: &str = "charts/ladder-operator/charts/ladder-crds/files/ladder.dev_crds.yaml";

fn helm() -> Command {
    let helm = std::env::var("LADDER_HELM")
        .expect("LADDER_HELM must name a helm binary (hack/build-helm.sh prints one)");
    let mut cmd = Command::new(helm);
    cmd.current_dir(repo_root());
    cmd
}

fn kubectl() -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.current_dir(repo_root());
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn template(extra: &[&str]) -> Output {
    helm()
        .args(["template", "ladder", CHART, "--namespace", "ladder-system"])
        .args(["--kube-version", "v1.37.2"])
        .args(extra)
        .output()
        .expect("helm template")
}

fn rendered(extra: &[&str]) -> Vec<serde_json::Value> {
    let out = template(extra);
    assert!(
        out.status.success(),
        "helm template {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    yaml_docs(&text)
}

/// The documents of a YAML stream, as JSON values (empty ones dropped).
fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    text.split("\n---")
        .filter_map(|d| {
            let v: serde_json::Value = serde_yaml::from_str(d).expect("yaml document");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn of_kind<'a>(objs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn release_name() -> String {
    format!("ladder-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Uninstalls a release and deletes its namespace when dropped (also on panic).
struct Release {
    name: String,
    ns: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm()
            .args(["uninstall", &self.name, "--namespace", &self.ns, "--wait"])
            .output();
        let _ = kubectl()
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .output();
    }
}

/// `kubectl auth can-i VERB RESOURCE -n NS --as=system:serviceaccount:SA_NS:SA`.
fn can_i(sa_ns: &str, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let mut cmd = kubectl();
    cmd.args(["auth", "can-i", verb, resource])
        .arg(format!("--as=system:serviceaccount:{sa_ns}:{sa}"));
    match ns {
        Some(ns) => cmd.args(["-n", ns]),
        None => cmd.arg("--all-namespaces"),
    };
    let out = cmd.output().expect("kubectl auth can-i");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl auth can-i {verb} {resource}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let root = repo_root();
    let generated =
        std::fs::read_to_string(root.join("crds/manifests/ladder.dev_crds.yaml")).expect("crds/");
    let in_chart = std::fs::read_to_string(root.join(CRDS_IN_CHART)).expect("chart crds");
    assert!(
        generated == in_chart,
        "the chart's CRDs differ from crds/: run `make crds`"
    );
    // The subchart's template re-serializes them: nothing may change but
    // the labels and the keep annotation.
    let want = yaml_docs(&generated);
    let objs = rendered(&[]);
    let mut got: Vec<serde_json::Value> = of_kind(&objs, "CustomResourceDefinition")
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(got.len(), want.len(), "every CRD is rendered");
    for crd in &mut got {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "CRDs are kept on uninstall (deleting one deletes every ScalingPhase)"
        );
        let meta = crd["metadata"].as_object_mut().expect("metadata");
        meta.remove("labels");
        meta.remove("annotations");
    }
    let (got, want) = (numbers_as_f64(got.into()), numbers_as_f64(want.into()));
    if let Some(path) = first_difference(&got, &want, String::new()) {
        panic!("the rendered CRDs differ from the generated ones at {path}");
    }
}

/// YAML `4.0` and `4` are one JSON number to the apiserver; Helm's
/// fromYaml/toYaml writes the first as the second.
fn numbers_as_f64(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Number(n), Value::Number),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(l), Some(r)) => {
                        if let Some(d) = first_difference(l, r, p) {
                            return Some(d);
                        }
                    }
                    (l, r) => return Some(format!("{p}: {l:?} vs {r:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, format!("{path}[{i}]"))),
        (l, r) if l == r => None,
        (l, r) => Some(format!("{path}: {l} vs {r}")),
    }
}

#[test]
fn chart_lints_and_renders_the_operator() {
    run(helm().args(["lint", "--strict", "--kube-version", "v1.37.2", CHART]));
    let objs = rendered(&[]);
    for kind in [
        "Deployment",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Service",
        "PodDisruptionBudget",
        "CustomResourceDefinition",
    ] {
        assert!(
            !of_kind(&objs, kind).is_empty(),
            "the chart renders no {kind}"
        );
    }
    let deploy = of_kind(&objs, "Deployment")[0];
    assert_eq!(deploy["spec"]["replicas"], 2, "two replicas by default");
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(args[0], "run", "the container runs `ladder-operator run`");
    assert!(args.contains(&"--leader-election=true"), "{args:?}");
    assert_eq!(
        container["image"], "ghcr.io/ladder-dev/ladder-operator:0.1.0",
        "the image tag defaults to appVersion"
    );
    let pod_sc = &deploy["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod_sc["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(
        of_kind(&objs, "ServiceMonitor").is_empty(),
        "ServiceMonitor is opt-in"
    );
    let with_monitor = rendered(&["--set", "metrics.serviceMonitor.enabled=true"]);
    let monitor = of_kind(&with_monitor, "ServiceMonitor");
    assert_eq!(monitor.len(), 1);
    let svc = of_kind(&with_monitor, "Service")[0];
    for (k, v) in monitor[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the metrics Service"
        );
    }
    assert!(
        of_kind(
            &rendered(&["--set", "crds.enabled=false"]),
            "CustomResourceDefinition"
        )
        .is_empty()
    );
    // One replica: no PDB (it would block every drain).
    let single = rendered(&[
        "--set",
        "replicaCount=1",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(of_kind(&single, "PodDisruptionBudget").is_empty());
    assert!(
        of_kind(&single, "Role").is_empty(),
        "no Lease role without election"
    );
}

#[test]
fn bad_values_are_refused_with_a_clear_message() {
    for (set, says) in [
        ("replicaCount=0", "replicaCount"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("bogus=1", "bogus"),
        ("watchNamespaces={a,b}", "watchNamespaces"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("metrics.port=80", "port"),
        ("image.digest=latest", "digest"),
    ] {
        let out = helm()
            .args([
                "lint",
                "--strict",
                "--kube-version",
                "v1.37.2",
                CHART,
                "--set",
                set,
            ])
            .output()
            .expect("helm lint");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "helm lint accepted {set}");
        assert!(
            text.contains(says),
            "helm lint refused {set} without naming {says}: {text}"
        );
        let out = template(&["--set", set]);
        assert!(!out.status.success(), "helm template accepted {set}");
    }
    // What the schema cannot say, the templates do.
    let out = template(&["--set", "leaderElection.enabled=false"]);
    assert!(
        !out.status.success(),
        "two replicas without leader election"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs leaderElection.enabled"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rendered_roles_are_least_privilege() {
    for extra in [
        &[][..],
        &["--set", "watchNamespaces={team-a}"][..],
        &["--set", "rbac.secretNamespaces={shop,blog}"][..],
    ] {
        let objs = rendered(extra);
        for role in of_kind(&objs, "ClusterRole")
            .into_iter()
            .chain(of_kind(&objs, "Role"))
        {
            let name = role["metadata"]["name"].as_str().expect("name");
            for rule in role["rules"].as_array().expect("rules") {
                let strings = |k: &str| -> Vec<String> {
                    rule[k]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|v| v.as_str().expect("str").to_owned())
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let verbs = strings("verbs");
                for bad in ["escalate", "bind", "impersonate", "deletecollection", "*"] {
                    assert!(
                        !verbs.iter().any(|v| v == bad),
                        "{name} {extra:?} grants {bad}"
                    );
                }
                assert!(
                    !strings("resources").iter().any(|r| r == "*"),
                    "{name}: resource *"
                );
                assert!(
                    !strings("apiGroups").iter().any(|r| r == "*"),
                    "{name}: group *"
                );
                let resources = strings("resources");
                if resources.iter().any(|r| r == "leases") {
                    assert_eq!(role["kind"], "Role", "{name}: Leases only in a Role");
                    assert_eq!(role["metadata"]["namespace"], "ladder-system");
                    assert!(
                        verbs == ["create"] || !strings("resourceNames").is_empty(),
                        "{name}: Lease verbs other than create are limited to the release's Lease"
                    );
                }
                if resources.iter().any(|r| r == "secrets") && role["kind"] == "ClusterRole" {
                    // Bound cluster-wide only when no secretNamespaces are given.
                    let bound_cluster_wide = of_kind(&objs, "ClusterRoleBinding")
                        .iter()
                        .any(|b| b["roleRef"]["name"] == name);
                    assert_eq!(
                        bound_cluster_wide,
                        extra.is_empty(),
                        "{name} {extra:?}: Secrets cluster-wide only without rbac.secretNamespaces"
                    );
                }
            }
        }
        if extra.len() == 2 && extra[1].starts_with("watchNamespaces") {
            for role in of_kind(&objs, "ClusterRole") {
                for rule in role["rules"].as_array().expect("rules") {
                    for r in rule["resources"].as_array().expect("resources") {
                        assert!(
                            ["nodes", "customresourcedefinitions"]
                                .contains(&r.as_str().expect("r")),
                            "namespaced mode: cluster-wide {r} in {}",
                            role["metadata"]["name"]
                        );
                    }
                    assert!(
                        rule["verbs"]
                            .as_array()
                            .expect("verbs")
                            .iter()
                            .all(|v| ["get", "list", "watch"].contains(&v.as_str().expect("v"))),
                        "namespaced mode: cluster-wide rules are read-only"
                    );
                }
            }
        }
    }
}

/// The chart as it was one version ago, for the upgrade test: the same
/// templates with an older CRD (one printer column fewer) and the previous
/// chart version. A copy in a temp dir; removed on drop.
struct PreviousChart {
    dir: PathBuf,
}

impl PreviousChart {
    fn make() -> Self {
        let dir =
            std::env::temp_dir().join(format!("ladder-chart-prev-{:08x}", rand::random::<u32>()));
        run(Command::new("cp")
            .arg("-r")
            .arg(repo_root().join(CHART))
            .arg(&dir));
        let crds = dir.join("charts/ladder-crds/files/ladder.dev_crds.yaml");
        let text = std::fs::read_to_string(&crds).expect("crds");
        // The Deletion column (jsonPath .spec.deletionPolicy) did not exist yet.
        let start = text
            .find("    - jsonPath: .spec.deletionPolicy\n")
            .expect("the Deletion printer column");
        let end = start
            + text[start..]
                .find("    name: v1alpha1\n")
                .expect("end of the printer columns");
        let older = format!("{}{}", &text[..start], &text[end..]);
        std::fs::write(&crds, older).expect("write older CRD");
        for chart in ["Chart.yaml", "charts/ladder-crds/Chart.yaml"] {
            let p = dir.join(chart);
            let t = std::fs::read_to_string(&p).expect("Chart.yaml");
            std::fs::write(&p, t.replace("version: 0.2.0", "version: 0.1.9")).expect("write");
        }
        Self { dir }
    }
    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PreviousChart {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn printer_columns(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

/// CRDs applied before (by `kubectl apply`, the operator tests, or chart
/// 0.1.0's crds/ folder) carry no Helm ownership: mark them as this
/// release's, the step the chart's README gives for upgrading from 0.1.0.
fn adopt_crds(release: &str, ns: &str) {
    for crd in ["scalingphases.ladder.dev", "loadreports.ladder.dev"] {
        let exists = kubectl()
            .args(["get", "crd", crd])
            .output()
            .expect("kubectl")
            .status
            .success();
        if !exists {
            continue;
        }
        run(kubectl().args([
            "label",
            "--overwrite",
            "crd",
            crd,
            "app.kubernetes.io/managed-by=Helm",
        ]));
        run(kubectl().args([
            "annotate",
            "--overwrite",
            "crd",
            crd,
            &format!("meta.helm.sh/release-name={release}"),
            &format!("meta.helm.sh/release-namespace={ns}"),
        ]));
    }
}

#[tokio::test]
async fn chart_installs_upgrades_its_crds_and_uninstalls_with_least_privilege() {
    let client = ladder_e2e::client()
        .await
        .expect("KUBECONFIG for the local control plane");
    let name = release_name();
    let release = Release {
        ns: format!("{name}-system"),
        name: name.clone(),
    };
    let ns = release.ns.clone();
    let apps = TestNamespace::new(&client, "chart-apps")
        .await
        .expect("a namespace for ScalingPhases");
    let secret_ns = format!("rbac.secretNamespaces={{{}}}", apps.name);
    adopt_crds(&name, &ns);

    // Install the previous chart version, whose CRD lacks a column.
    let previous = PreviousChart::make();
    run(helm()
        .args(["install", &name])
        .arg(previous.path())
        .args([
            "--namespace",
            &ns,
            "--create-namespace",
            "--set",
            &secret_ns,
        ])
        .args(["--wait", "--timeout", "120s"]));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let before = crds
        .get("scalingphases.ladder.dev")
        .await
        .expect("CRD installed");
    assert!(
        !printer_columns(&before).contains(&"Deletion".to_owned()),
        "the previous chart's CRD is installed: {:?}",
        printer_columns(&before)
    );

    // Upgrade: the CRD must change with it.
    run(helm()
        .args([
            "upgrade",
            &name,
            CHART,
            "--namespace",
            &ns,
            "--set",
            &secret_ns,
        ])
        .args(["--wait", "--timeout", "120s"]));
    let after = crds.get("scalingphases.ladder.dev").await.expect("CRD");
    assert!(
        printer_columns(&after).contains(&"Deletion".to_owned()),
        "helm upgrade did not update the CRD: {:?}",
        printer_columns(&after)
    );
    assert_eq!(
        after
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("helm.sh/chart")),
        Some(&"ladder-crds-0.2.0".to_owned())
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let full = format!("{name}-ladder-operator");
    let deployment = deployments.get(&full).await.expect("operator deployment");
    assert_eq!(
        deployment.status.and_then(|s| s.available_replicas),
        Some(2),
        "both operator replicas become available"
    );
    let role = Api::<ClusterRole>::all(client.clone())
        .get(&full)
        .await
        .expect("cluster role");
    assert!(role.rules.unwrap_or_default().iter().any(|r| {
        r.resources
            .as_ref()
            .is_some_and(|res| res.iter().any(|x| x == "scalingphases/status"))
    }));

    // What the ServiceAccount may do, asked of the apiserver.
    let sa = full.as_str();
    let yes = |verb: &str, res: &str, in_ns: Option<&str>| {
        assert!(
            can_i(&ns, sa, verb, res, in_ns),
            "the operator must be able to {verb} {res} in {in_ns:?}"
        );
    };
    let no = |verb: &str, res: &str, in_ns: Option<&str>| {
        assert!(
            !can_i(&ns, sa, verb, res, in_ns),
            "the operator must NOT be able to {verb} {res} in {in_ns:?}"
        );
    };
    let a = Some(apps.name.as_str());
    yes("patch", "scalingphases.ladder.dev/status", a);
    yes("create", "deployments.apps", a);
    yes("create", "secrets", a);
    yes("create", "roles.rbac.authorization.k8s.io", a);
    yes("list", "nodes", None);
    yes(
        "get",
        &format!("leases.coordination.k8s.io/{full}"),
        Some(&ns),
    );
    yes(
        "update",
        &format!("leases.coordination.k8s.io/{full}"),
        Some(&ns),
    );
    no("get", "secrets", Some("kube-system"));
    no("list", "secrets", Some("default"));
    no(
        "create",
        "clusterrolebindings.rbac.authorization.k8s.io",
        None,
    );
    no("create", "clusterroles.rbac.authorization.k8s.io", None);
    no("escalate", "roles.rbac.authorization.k8s.io", a);
    no("bind", "roles.rbac.authorization.k8s.io", a);
    no("impersonate", "serviceaccounts", a);
    no(
        "update",
        "leases.coordination.k8s.io/kube-controller-manager",
        Some("kube-system"),
    );
    no("create", "leases.coordination.k8s.io", Some("kube-system"));
    no(
        "update",
        "leases.coordination.k8s.io/someone-else",
        Some(&ns),
    );
    no("delete", "namespaces", None);
    no(
        "create",
        "customresourcedefinitions.apiextensions.k8s.io",
        None,
    );
    // Phase 4's people Roles need create on ScalingPhases (see values.yaml
    // rbac.phase4HumanRoles); without them the operator cannot create one.
    no("deletecollection", "scalingphases.ladder.dev", a);
    let list = run(kubectl()
        .args(["auth", "can-i", "--list", "-n", &apps.name])
        .arg(format!("--as=system:serviceaccount:{ns}:{sa}")));
    eprintln!(
        "kubectl auth can-i --list -n {} for the operator:\n{list}",
        apps.name
    );

    // Uninstall: the release's objects go, the CRDs stay (and so do ScalingPhases).
    run(helm().args(["uninstall", &name, "--namespace", &ns, "--wait"]));
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(&full)
            .await
            .expect("get")
            .is_none(),
        "uninstall removes the ClusterRole"
    );
    assert!(
        crds.get_opt("scalingphases.ladder.dev")
            .await
            .expect("get")
            .is_some(),
        "uninstall keeps the CRDs"
    );
    drop(release);
    apps.delete().await;
}

#[tokio::test]
async fn namespaced_mode_grants_roles_only_in_the_watched_namespace() {
    let client = ladder_e2e::client()
        .await
        .expect("KUBECONFIG for the local control plane");
    let name = release_name();
    let release = Release {
        ns: format!("{name}-system"),
        name: name.clone(),
    };
    let ns = release.ns.clone();
    let team = TestNamespace::new(&client, "chart-team").await.expect("ns");
    run(helm()
        .args([
            "install",
            &name,
            CHART,
            "--namespace",
            &ns,
            "--create-namespace",
        ])
        .args(["--set", &format!("watchNamespaces={{{}}}", team.name)])
        .args(["--set", "crds.enabled=false", "--wait", "--timeout", "120s"]));
    let sa = format!("{name}-ladder-operator");
    let t = Some(team.name.as_str());
    assert!(can_i(&ns, &sa, "create", "deployments.apps", t));
    assert!(can_i(&ns, &sa, "create", "secrets", t));
    assert!(can_i(
        &ns,
        &sa,
        "patch",
        "scalingphases.ladder.dev/status",
        t
    ));
    assert!(
        can_i(&ns, &sa, "watch", "nodes", None),
        "nodes are read cluster-wide"
    );
    assert!(!can_i(
        &ns,
        &sa,
        "create",
        "deployments.apps",
        Some("default")
    ));
    assert!(!can_i(&ns, &sa, "get", "secrets", Some("kube-system")));
    assert!(
        !can_i(&ns, &sa, "list", "scalingphases.ladder.dev", None),
        "not cluster-wide"
    );
    assert!(!can_i(
        &ns,
        &sa,
        "create",
        "clusterrolebindings.rbac.authorization.k8s.io",
        None
    ));
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(&sa)
        .await
        .expect("deployment");
    let env = deploy.spec.template.spec.expect("pod spec").containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "LADDER_WATCH_NAMESPACE" && e.value.as_deref() == t),
        "the operator is told to watch {t:?} only"
    );
    drop(release);
    team.delete().await;
}

/// The token of the chart's ServiceAccount, as a kubeconfig for the local
/// apiserver (same server and CA as the admin kubeconfig).
fn service_account_kubeconfig(ns: &str, sa: &str) -> PathBuf {
    let token = run(kubectl().args(["create", "token", sa, "-n", ns, "--duration", "1h"]));
    let admin = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let view = run(kubectl()
        .args(["config", "view", "--raw", "--minify", "-o", "json"])
        .env("KUBECONFIG", &admin));
    let view: serde_json::Value = serde_json::from_str(&view).expect("kubeconfig json");
    let cluster = &view["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": sa, "namespace": ns}}],
        "current-context": "sa",
    });
    let path = std::env::temp_dir().join(format!(
        "ladder-sa-{:08x}.kubeconfig",
        rand::random::<u32>()
    ));
    std::fs::write(&path, serde_json::to_vec(&config).expect("json")).expect("write kubeconfig");
    path
}

#[tokio::test]
async fn the_operator_runs_a_phase_with_only_the_charts_service_account() {
    let client = ladder_e2e::client()
        .await
        .expect("KUBECONFIG for the local control plane");
    ladder_e2e::install_crds(&client).await.expect("CRDs");
    let name = release_name();
    let release = Release {
        ns: format!("{name}-system"),
        name: name.clone(),
    };
    let ns = release.ns.clone();
    let apps = TestNamespace::new(&client, "chart-sa").await.expect("ns");
    run(helm()
        .args([
            "install",
            &name,
            CHART,
            "--namespace",
            &ns,
            "--create-namespace",
        ])
        .args(["--set", &format!("rbac.secretNamespaces={{{}}}", apps.name)])
        .args(["--set", "crds.enabled=false", "--wait", "--timeout", "120s"]));
    let sa = format!("{name}-ladder-operator");
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(&sa)
        .await
        .expect("deployment");
    let container = deploy.spec.template.spec.expect("pod spec").containers[0].clone();
    // The Deployment's own args and literal env; fieldRefs resolved as the kubelet would.
    let mut args = container.args.unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    for e in container.env.unwrap_or_default() {
        let value = match (
            e.value,
            e.value_from.and_then(|v| v.field_ref).map(|f| f.field_path),
        ) {
            (Some(v), _) => v,
            (None, Some(path)) if path == "metadata.name" => format!("{name}-local-0"),
            (None, Some(path)) if path == "metadata.namespace" => ns.clone(),
            (None, other) => panic!("unexpected env source for {}: {other:?}", e.name),
        };
        env.push((e.name, value));
    }
    // Loopback only: never 0.0.0.0 in a test.
    for (k, v) in &mut env {
        if k == "LADDER_HTTP_ADDR" {
            *v = "127.0.0.1:0".into();
        }
        if k == "LADDER_LOG_FORMAT" {
            *v = "text".into();
        }
    }
    assert_eq!(args.remove(0), "run");
    let kubeconfig = service_account_kubeconfig(&ns, &sa);
    let log = std::env::temp_dir().join(format!("ladder-chart-operator-{name}.log"));
    let mut child = Command::new(ladder_e2e::operator_bin().expect("operator binary"))
        .arg("run")
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KUBECONFIG", &kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the operator");
    let result = async {
        let text = std::fs::read_to_string(repo_root().join("examples/phase-0-mvp.yaml"))?;
        apps.apply_sp(&text).await?;
        apps.wait_ready("shop", 0, Duration::from_secs(90)).await?;
        anyhow::Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&kubeconfig);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    apps.delete().await;
    drop(release);
    if let Err(e) = result {
        panic!("phase 0 with the chart's ServiceAccount: {e:#}\noperator log:\n{log_text}");
    }
    assert!(
        !log_text.contains("forbidden"),
        "the operator was refused something:\n{log_text}"
    );
}
