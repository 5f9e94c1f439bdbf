//! Every phase of the roadmap, applied on its own, reaches Ready=True with
//! every pod Running under the `restricted` Pod Security profile; and a
//! ScalingPhase stepped 0 → 4 renders each next phase.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ListParams;
use ladder_e2e::{Operator, TestNamespace, client, install_crds, repo_root};

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

async fn phase_on_its_own(phase: i32) -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, &format!("e2e-phase{phase}")).await?;
    let op = Operator::start(&ns.name).await?;
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

/// Stepping `spec.phase` 0 → 4 renders each next phase (data migrations
/// between tiers come with the transitions issue).
#[tokio::test]
async fn stepping_the_phase_renders_each_next_phase() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-steps").await?;
    let op = Operator::start(&ns.name).await?;
    for phase in 0..=4 {
        ns.apply_sp(&example(phase)).await?;
        let sp = ns
            .wait_ready("shop", phase, READY_TIMEOUT)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_text()))?;
        let status = sp.status.expect("status");
        assert_eq!(status.history.last().map(|h| h.phase), Some(phase));
    }
    let sp = ns.sps().get("shop").await?;
    let history: Vec<i32> = sp
        .status
        .expect("status")
        .history
        .iter()
        .map(|h| h.phase)
        .collect();
    assert_eq!(history, vec![0, 1, 2, 3, 4]);
    // Phase 4 replaced PostgreSQL with CockroachDB: no postgres StatefulSet remains.
    let stss = ns
        .api::<StatefulSet>()
        .list(&ListParams::default().labels("ladder.dev/tier=postgres"))
        .await?;
    assert!(
        stss.items.is_empty(),
        "{:?}",
        stss.items
            .iter()
            .map(|s| s.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    ns.delete().await;
    Ok(())
}
