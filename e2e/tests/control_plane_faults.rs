//! The control plane fails while the operator walks a phase change (1 → 2,
//! the transition machine with no data to move): kube-apiserver is stopped
//! and started again, and, in a separate test, etcd alone. Each outage is
//! longer than the leader's renew deadline, so the operator also loses its
//! term, stands by and takes its own Lease back, all in one process.
//!
//! Afterwards the ScalingPhase must reach Ready in phase 2 with the history
//! [1, 2], the operator must be the same process (no restart), every child
//! that existed when the fault hit must still have its UID (nothing deleted
//! and recreated), so must every data volume, and the live children must be exactly the ones `render`
//! prints for the spec (no duplicate, nothing left behind).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use ladder_e2e::faults::{CONTROL_PLANE, Component, Outage};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, operator_bin, wait_for};

const TIMEOUT: Duration = Duration::from_secs(240);
/// Longer than the e2e operator's renew deadline (4 s of a 6 s Lease).
const OUTAGE: Duration = Duration::from_secs(8);

/// Phase `phase` with PostgreSQL's volume pinned at phase 2's size: a
/// growing volume legitimately replaces the StatefulSet (orphaning its pods
/// and claims, see operator_lifecycle.rs), which would hide a replacement
/// caused by the fault.
fn manifest(phase: i32) -> String {
    format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: shop}}\n\
         spec:\n  phase: {phase}\n  overrides:\n    postgres:\n      storage: {{size: 50Gi}}\n"
    )
}

/// (kind, name) → uid of one typed kind's children of ScalingPhase `shop`.
async fn children_of<K>(
    ns: &TestNamespace,
    out: &mut BTreeMap<(String, String), String>,
) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let lp = ListParams::default().labels("ladder.dev/scalingphase=shop");
    for o in ns.api::<K>().list(&lp).await? {
        out.insert(
            (K::kind(&()).into_owned(), o.name_any()),
            o.uid().unwrap_or_default(),
        );
    }
    Ok(())
}

/// The data volumes, which `render` does not print (the StatefulSets'
/// claim templates make them) but which must never be replaced. Pods may be:
/// a template change rolls them.
async fn volumes(ns: &TestNamespace) -> anyhow::Result<BTreeMap<String, String>> {
    let claims = ns
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await?;
    Ok(claims
        .into_iter()
        .map(|c| (c.name_any(), c.uid().unwrap_or_default()))
        .collect())
}

/// Every child of the kinds `render` prints (Secrets included).
async fn children(ns: &TestNamespace) -> anyhow::Result<BTreeMap<(String, String), String>> {
    let mut out = BTreeMap::new();
    children_of::<Deployment>(ns, &mut out).await?;
    children_of::<StatefulSet>(ns, &mut out).await?;
    children_of::<Service>(ns, &mut out).await?;
    children_of::<ConfigMap>(ns, &mut out).await?;
    children_of::<Secret>(ns, &mut out).await?;
    children_of::<ServiceAccount>(ns, &mut out).await?;
    children_of::<NetworkPolicy>(ns, &mut out).await?;
    children_of::<PodDisruptionBudget>(ns, &mut out).await?;
    children_of::<HorizontalPodAutoscaler>(ns, &mut out).await?;
    children_of::<Role>(ns, &mut out).await?;
    children_of::<RoleBinding>(ns, &mut out).await?;
    Ok(out)
}

const KINDS: [&str; 11] = [
    "Deployment",
    "StatefulSet",
    "Service",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "Role",
    "RoleBinding",
];

/// The (kind, name) pairs `ladder-operator render` prints for `manifest`,
/// with the cluster's regions and optional integrations.
async fn rendered(
    client: &kube::Client,
    manifest: &str,
) -> anyhow::Result<BTreeSet<(String, String)>> {
    let regions: BTreeSet<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|n| n.labels().get("topology.kubernetes.io/region").cloned())
        .collect();
    let crds: BTreeSet<String> = Api::<CustomResourceDefinition>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let file = std::env::temp_dir().join(format!("ladder-faults-{}.yaml", rand::random::<u32>()));
    std::fs::write(&file, manifest)?;
    let mut cmd = std::process::Command::new(operator_bin()?);
    cmd.arg("render")
        .arg(&file)
        .arg("--regions")
        .arg(regions.into_iter().collect::<Vec<_>>().join(","));
    if crds.contains("scaledobjects.keda.sh") {
        cmd.arg("--keda");
    }
    if crds.contains("certificates.cert-manager.io") {
        cmd.arg("--cert-manager");
    }
    if crds.contains("servicemonitors.monitoring.coreos.com") {
        cmd.arg("--service-monitors");
    }
    let out = cmd.output()?;
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut set = BTreeSet::new();
    for line in text.lines() {
        // "# generated Secret NAME: ..."
        if let Some((name, _)) = line
            .strip_prefix("# generated Secret ")
            .and_then(|rest| rest.split_once(':'))
        {
            set.insert(("Secret".to_owned(), name.to_owned()));
        }
    }
    for doc in text.split("\n---\n") {
        let v: serde_json::Value = serde_yaml::from_str(doc).unwrap_or_default();
        let (Some(kind), Some(name)) = (v["kind"].as_str(), v["metadata"]["name"].as_str()) else {
            continue;
        };
        if KINDS.contains(&kind) {
            set.insert((kind.to_owned(), name.to_owned()));
        }
    }
    Ok(set)
}

async fn survives(component: Component, prefix: &str) -> anyhow::Result<()> {
    let _serial = CONTROL_PLANE.lock().await;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, prefix).await?;
    let mut op = Operator::start(&ns.name).await?;
    let pid = op.pid();
    ns.apply_sp(&manifest(1)).await?;
    ns.wait_ready("shop", 1, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_text()))?;

    // Start the phase change, and fail the control plane as soon as the
    // transition machine has begun.
    ns.apply_sp(&manifest(2)).await?;
    let sps = ns.sps();
    let step = wait_for("the transition to begin", TIMEOUT, || {
        let sps = sps.clone();
        async move {
            let sp = sps.get("shop").await?;
            Ok(sp.status.and_then(|s| s.transition).map(|t| t.step))
        }
    })
    .await?;
    let at_fault = children(&ns).await?;
    let data_at_fault = volumes(&ns).await?;
    let outage = Outage::begin(component).await?;
    tokio::time::sleep(OUTAGE).await;
    outage.end().await?;
    eprintln!("{component:?} stopped for {OUTAGE:?} at transition step {step:?}");

    let sp = ns
        .wait_ready("shop", 2, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_text()))?;
    let status = sp.status.clone().expect("status");
    let history: Vec<i32> = status.history.iter().map(|h| h.phase).collect();
    assert_eq!(history, vec![1, 2], "one step, recorded once");
    assert!(status.transition.is_none(), "{:?}", status.transition);
    assert!(op.is_running(), "the operator exited:\n{}", op.log_text());
    assert_eq!(op.pid(), pid);
    let log = op.log_text();
    assert!(
        log.contains("lost the leader Lease") && log.contains("leading again"),
        "the outage outlasted the renew deadline: the operator must have stood down and led again, in-process:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // Settled: nothing changes any more (compare two looks a reconcile apart).
    let after = wait_for("children settled", TIMEOUT, || {
        let ns = &ns;
        async move {
            let a = children(ns).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let b = children(ns).await?;
            Ok((a == b).then_some(b))
        }
    })
    .await?;
    let recreated: Vec<_> = at_fault
        .iter()
        .filter(|(k, uid)| after.get(*k).is_some_and(|u| u != *uid))
        .map(|(k, _)| k)
        .collect();
    assert!(
        recreated.is_empty(),
        "deleted and created again: {recreated:?}"
    );
    let data_after = volumes(&ns).await?;
    let lost: Vec<_> = data_at_fault
        .iter()
        .filter(|(k, uid)| data_after.get(*k) != Some(*uid))
        .map(|(k, _)| k)
        .collect();
    assert!(lost.is_empty(), "data volumes replaced or gone: {lost:?}");
    let live: BTreeSet<_> = after.keys().cloned().collect();
    let want = rendered(&client, &manifest(2)).await?;
    let extra: Vec<_> = live.difference(&want).collect();
    let missing: Vec<_> = want.difference(&live).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "live children differ from the rendered ones: extra {extra:?}, missing {missing:?}"
    );
    eprintln!(
        "{component:?}: {} children, none recreated; {} kept their UID across the fault",
        live.len(),
        at_fault.keys().filter(|k| after.contains_key(*k)).count()
    );
    drop(op);
    ns.delete().await;
    Ok(())
}

#[tokio::test]
async fn a_phase_change_survives_an_apiserver_restart() -> anyhow::Result<()> {
    survives(Component::Apiserver, "e2e-fault-apiserver").await
}

#[tokio::test]
async fn a_phase_change_survives_an_etcd_restart() -> anyhow::Result<()> {
    survives(Component::Etcd, "e2e-fault-etcd").await
}
