//! Every phase of the roadmap, applied on its own, reaches Ready=True with
//! every pod Running under the `restricted` Pod Security profile; a step
//! that moves no data walks the transition machine to Done; a step that moves
//! data never cuts over before its migration is verified.
//!
//! The operator runs as the Helm chart's ServiceAccount with exactly the
//! chart's RBAC in namespaced mode ([`ChartIdentity`]), never as the admin:
//! a permission the chart lacks fails the phase that needs it, and a test
//! asks the apiserver what that identity may not do.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::ListParams;
use ladder_crds::scalingphase::TransitionStep;
use ladder_e2e::chart_sa::ChartIdentity;
use ladder_e2e::{Operator, TestNamespace, client, install_crds, repo_root, wait_for};

const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn example(phase: i32) -> String {
    let dir = repo_root().join("examples");
    let file = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("phase-{phase}-"))
        })
        .expect("an example per phase");
    std::fs::read_to_string(file.path()).expect("readable")
}

/// The chart's ServiceAccount and RBAC for `ns`, and the operator running as it.
async fn as_chart_sa(ns: &TestNamespace) -> anyhow::Result<(ChartIdentity, Operator)> {
    let sa = ChartIdentity::install(&ns.name, &[]).await?;
    let op = sa.start_operator(&[]).await?;
    Ok((sa, op))
}

/// Nothing the operator asked for was refused.
fn never_forbidden(op: &Operator) {
    let log = op.log_text();
    assert!(
        !log.contains("forbidden"),
        "the chart's RBAC refused the operator something:\n{log}"
    );
}

async fn phase_on_its_own(phase: i32) -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, &format!("e2e-phase{phase}")).await?;
    let (_sa, op) = as_chart_sa(&ns).await?;
    ns.apply_sp(&example(phase)).await?;
    let sp = ns
        .wait_ready("shop", phase, READY_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", op.log_text()))?;
    let pods = ns.wait_pods_running(READY_TIMEOUT).await?;
    let status = sp.status.expect("status");
    assert!(
        status.components.iter().all(|c| c.ready),
        "{:?}",
        status.components
    );
    assert_eq!(
        status.ready_components,
        Some(format!("{0}/{0}", status.components.len()))
    );
    assert!(
        pods >= status.components.len(),
        "{pods} pods for {} components",
        status.components.len()
    );
    for c in ["Ready", "Progressing", "Degraded"] {
        assert!(
            status
                .conditions
                .iter()
                .any(|x| x.type_ == c && x.observed_generation == sp.metadata.generation),
            "{c}"
        );
    }
    // Every workload is labelled and owned by the ScalingPhase.
    let deploys = ns.api::<Deployment>().list(&ListParams::default()).await?;
    let stss = ns.api::<StatefulSet>().list(&ListParams::default()).await?;
    let owner_uid = sp.metadata.uid.clone();
    for meta in deploys
        .items
        .iter()
        .map(|d| &d.metadata)
        .chain(stss.items.iter().map(|s| &s.metadata))
    {
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("ladder")
        );
        assert_eq!(
            labels.get("ladder.dev/scalingphase").map(String::as_str),
            Some("shop")
        );
        assert!(
            meta.owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == owner_uid.as_ref() && o.controller == Some(true))
        );
    }
    let pvcs = ns
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await?;
    assert!(!pvcs.items.is_empty(), "every phase keeps data on a volume");
    assert!(
        pvcs.items
            .iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
    );
    never_forbidden(&op);
    ns.delete().await;
    Ok(())
}

#[tokio::test]
async fn phase_0_mvp_is_ready() -> anyhow::Result<()> {
    phase_on_its_own(0).await
}

#[tokio::test]
async fn phase_1_growth_is_ready() -> anyhow::Result<()> {
    phase_on_its_own(1).await
}

#[tokio::test]
async fn phase_2_regional_is_ready() -> anyhow::Result<()> {
    phase_on_its_own(2).await
}

#[tokio::test]
async fn phase_3_national_is_ready() -> anyhow::Result<()> {
    phase_on_its_own(3).await
}

#[tokio::test]
async fn phase_4_global_is_ready() -> anyhow::Result<()> {
    phase_on_its_own(4).await
}

/// A step that moves no data (1 → 2 adds read replicas) walks the
/// transition machine to Done by itself: the new shape beside the old, the
/// app cut over, then the history records it.
#[tokio::test]
async fn a_step_without_data_walks_the_transition_to_done() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-steps").await?;
    let (_sa, op) = as_chart_sa(&ns).await?;
    ns.apply_sp(&example(1)).await?;
    ns.wait_ready("shop", 1, READY_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_text()))?;
    // Phase 1's server certificate names the primary only.
    let replica = format!("shop-postgres-replica.{}.svc", ns.name);
    assert!(!cert_names(&ns, "shop-postgres-tls", &replica).await?);
    ns.apply_sp(&example(2)).await?;
    let sp = ns
        .wait_ready("shop", 2, READY_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_text()))?;
    let status = sp.status.expect("status");
    let history: Vec<i32> = status.history.iter().map(|h| h.phase).collect();
    assert_eq!(history, vec![1, 2]);
    // The climb re-issued it for the replicas' names (verify-full clients of
    // the read replicas check them).
    assert!(
        cert_names(&ns, "shop-postgres-tls", &replica).await?,
        "shop-postgres-tls does not name {replica} after 1 -> 2\n{}",
        op.log_text()
    );
    assert!(op.log_text().contains("re-issued a leaf certificate"));
    assert!(status.transition.is_none(), "{:?}", status.transition);
    // Every step left an Event.
    let log = op.log_text();
    assert!(log.contains("\"applied\""));
    never_forbidden(&op);
    ns.delete().await;
    Ok(())
}

/// Whether the certificate in Secret `name` names `host` (a DER dNSName is
/// the host's ASCII bytes).
async fn cert_names(ns: &TestNamespace, name: &str, host: &str) -> anyhow::Result<bool> {
    use rustls::pki_types::pem::PemObject as _;
    let secret: Secret = ns.api::<Secret>().get(name).await?;
    let pem = secret
        .data
        .and_then(|d| d.get("tls.crt").cloned())
        .map(|b| b.0)
        .unwrap_or_default();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
        .map_err(|e| anyhow::anyhow!("{name}: tls.crt is not a PEM certificate: {e:?}"))?;
    Ok(der.windows(host.len()).any(|w| w == host.as_bytes()))
}

/// A climb that moves data (0 → 1: SQLite → PostgreSQL) never cuts over on
/// an unverified copy: under kwok nothing runs the migration Job's pod (the
/// e2e runner does, in tests/transitions.rs), so the transition must stop at
/// Migrate/Verify with the app still on SQLite and its volume in place.
#[tokio::test]
async fn a_climb_that_moves_data_waits_for_a_verified_migration() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-unverified").await?;
    let (_sa, op) = as_chart_sa(&ns).await?;
    ns.apply_sp(&example(0)).await?;
    ns.wait_ready("shop", 0, READY_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_text()))?;
    ns.apply_sp(&example(1)).await?;
    let sps = ns.sps();
    let sp = wait_for("transition at Migrate or Verify", READY_TIMEOUT, || {
        let api = sps.clone();
        async move {
            let sp = api.get("shop").await?;
            let step = sp
                .status
                .as_ref()
                .and_then(|s| s.transition.as_ref())
                .map(|t| t.step);
            Ok(
                matches!(step, Some(TransitionStep::Migrate | TransitionStep::Verify))
                    .then_some(sp),
            )
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_text()))?;
    let status = sp.status.expect("status");
    assert_eq!(status.active_phase, Some(0));
    let job = status
        .transition
        .and_then(|t| t.job_name)
        .expect("a migration Job is named");
    assert_eq!(job, "shop-migrate-0-to-1");
    let jobs = ns.api::<Job>().get(&job).await?;
    let labels = jobs
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get("ladder.dev/job").map(String::as_str),
        Some("migrate")
    );
    // The new tier runs beside the old one; the app has not moved.
    ns.api::<StatefulSet>().get("shop-postgres").await?;
    let app = ns.api::<Deployment>().get("shop-app").await?;
    let env = app
        .spec
        .template
        .spec
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    let store = env
        .iter()
        .find(|e| e.name == "LADDER_STORE")
        .and_then(|e| e.value.clone());
    assert_eq!(store.as_deref(), Some("sqlite:/data/ladder.db"));
    ns.api::<PersistentVolumeClaim>()
        .get("shop-app-data")
        .await?;
    // Held there: a few seconds later it still has not cut over.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let sp = sps.get("shop").await?;
    let step = sp
        .status
        .as_ref()
        .and_then(|s| s.transition.as_ref())
        .map(|t| t.step);
    assert!(
        matches!(step, Some(TransitionStep::Migrate | TransitionStep::Verify)),
        "{step:?}"
    );
    never_forbidden(&op);
    ns.delete().await;
    Ok(())
}

/// What the phase suite's identity may not do, asked of the apiserver: no
/// Secrets outside its namespace (kube-system's least of all), no
/// cluster-wide RBAC, no Leases but its own, nothing it could escalate with.
#[tokio::test]
async fn the_operator_identity_of_the_phase_suite_holds_least_privilege() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::new(&client, "e2e-rbac").await?;
    let sa = ChartIdentity::install(&ns.name, &[]).await?;
    let own = Some(ns.name.as_str());
    let lease = format!("leases.coordination.k8s.io/{}", sa.lease_name);
    for (verb, resource, scope) in [
        ("create", "deployments.apps", own),
        ("create", "secrets", own),
        ("patch", "scalingphases.ladder.dev/status", own),
        ("update", lease.as_str(), own),
        ("list", "nodes", None),
    ] {
        assert!(
            sa.can_i(verb, resource, scope)?,
            "the operator needs to {verb} {resource} in {scope:?}"
        );
    }
    for (verb, resource, scope) in [
        ("get", "secrets", Some("kube-system")),
        ("list", "secrets", Some("default")),
        ("list", "secrets", None),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
        ),
        ("create", "clusterroles.rbac.authorization.k8s.io", None),
        ("create", "leases.coordination.k8s.io", Some("kube-system")),
        (
            "update",
            "leases.coordination.k8s.io/kube-controller-manager",
            Some("kube-system"),
        ),
        ("update", "leases.coordination.k8s.io", Some("default")),
        ("update", "leases.coordination.k8s.io/someone-else", own),
        ("delete", "leases.coordination.k8s.io", own),
        ("escalate", "roles.rbac.authorization.k8s.io", own),
        ("bind", "roles.rbac.authorization.k8s.io", own),
        ("impersonate", "serviceaccounts", own),
        ("create", "deployments.apps", Some("default")),
        ("delete", "namespaces", None),
    ] {
        assert!(
            !sa.can_i(verb, resource, scope)?,
            "the operator must NOT be able to {verb} {resource} in {scope:?}"
        );
    }
    let list = sa.can_i_list(&ns.name)?;
    assert!(!list.contains("*.*"), "a wildcard rule:\n{list}");
    eprintln!(
        "kubectl auth can-i --list -n {} --as={}:\n{list}",
        ns.name,
        sa.user()
    );
    eprintln!(
        "kubectl auth can-i --list -n kube-system --as={}:\n{}",
        sa.user(),
        sa.can_i_list("kube-system")?
    );
    drop(sa);
    ns.delete().await;
    Ok(())
}
