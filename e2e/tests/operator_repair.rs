//! Children deleted behind the operator's back come back by themselves:
//! its label-selected watches report the deletion and it re-creates the
//! child, without any change to the ScalingPhase and long before the
//! drift check (5 minutes). The bound below is generous; the point is that
//! the child returns with no spec change, not how fast.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Resource, ResourceExt};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, wait_for};

const READY: Duration = Duration::from_secs(180);
/// Well under the drift check (300 s), well over what it takes.
const BACK: Duration = Duration::from_secs(60);

const GROWTH: &str = "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop}\nspec: {phase: 1}\n";

/// Deletes `name` and waits until an object of that name is back, as a new
/// object (another uid). Returns the old and the new object.
async fn delete_and_wait<K>(api: &Api<K>, name: &str) -> anyhow::Result<(K, K)>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let before = api.get(name).await?;
    let uid = before.uid();
    api.delete(name, &DeleteParams::background()).await?;
    let after = wait_for(
        &format!("{name} re-created after its deletion"),
        BACK,
        || {
            let api = api.clone();
            let uid = uid.clone();
            async move {
                Ok(api
                    .get_opt(name)
                    .await?
                    .filter(|o| o.uid() != uid && o.meta().deletion_timestamp.is_none()))
            }
        },
    )
    .await?;
    Ok((before, after))
}

#[tokio::test]
async fn deleted_services_config_maps_network_policies_and_secrets_come_back() -> anyhow::Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-repair").await?;
    let op = Operator::start(&ns.name).await?;
    ns.apply_sp(GROWTH).await?;
    let sp = ns.wait_ready("shop", 1, READY).await?;
    let generation = sp.metadata.generation;

    let (old, new) = delete_and_wait(&ns.api::<Service>(), "shop-pgbouncer").await?;
    assert_eq!(
        old.spec.and_then(|s| s.ports),
        new.spec.and_then(|s| s.ports),
        "the Service comes back as rendered"
    );
    let (old, new) = delete_and_wait(&ns.api::<ConfigMap>(), "shop-redis-config").await?;
    assert_eq!(old.data, new.data, "the ConfigMap comes back as rendered");
    let (old, new) = delete_and_wait(&ns.api::<NetworkPolicy>(), "shop-default-deny").await?;
    assert_eq!(
        old.spec, new.spec,
        "the NetworkPolicy comes back as rendered"
    );
    let secrets = ns.api::<Secret>();
    let credential = secrets
        .list(&ListParams::default().labels("ladder.dev/credential=true"))
        .await?
        .items
        .into_iter()
        .map(|s| s.name_any())
        .min()
        .ok_or_else(|| anyhow::anyhow!("phase 1 renders credential Secrets"))?;
    let (old, new) = delete_and_wait(&secrets, &credential).await?;
    assert_eq!(
        old.data.map(|d| d.keys().cloned().collect::<Vec<_>>()),
        new.data.map(|d| d.keys().cloned().collect::<Vec<_>>()),
        "the Secret comes back with the same keys"
    );

    let after = ns.sps().get("shop").await?;
    assert_eq!(
        after.metadata.generation, generation,
        "nothing changed the ScalingPhase"
    );
    assert_eq!(op.metric_sum("ladder_reconcile_errors_total").await?, 0.0);
    drop(op);
    ns.delete().await;
    Ok(())
}
