//! Everything the plugin reads from or writes to the cluster: the client
//! (kubeconfig, context, namespace like kubectl), the ScalingPhase to act
//! on, the facts the operator renders from (node regions, optional CRDs),
//! the live children, and the server-side dry-run applies `plan` compares
//! with. Writes are only `approve`'s annotation and `pause`/`resume`'s
//! `spec.paused`, as merge patches under [`FIELD_MANAGER`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};

use crate::plan::{Claim, Compared, Inventory, comparable, differences};
use ladder_crds::scalingphase::ScalingPhase;
use ladder_operator::apply::{FIELD_MANAGER as OPERATOR_MANAGER, children_selector};
use ladder_operator::integrations::{Integrations, ThirdParty};
use ladder_operator::render::{Desired, Kind};
use ladder_operator::transition::RETIRED_BY_LABEL;
use ladder_operator::validate::World;

/// The field manager of the plugin's own writes.
pub const FIELD_MANAGER: &str = "kubectl-ladder";
/// The node label the operator spreads over.
const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Changed fields shown per object.
const MAX_PATHS: usize = 6;

/// A client and the namespace to work in, chosen like kubectl does:
/// `--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config` (else the
/// in-cluster service account); `--context`, else the current context;
/// `--namespace`, else the context's namespace, else `default`.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    namespace: Option<&str>,
) -> anyhow::Result<(Client, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options).await?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await?,
        (None, None) => Config::infer()
            .await
            .context("no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a cluster")?,
    };
    let ns = namespace.map_or_else(|| config.default_namespace.clone(), str::to_owned);
    Ok((Client::try_from(config)?, ns))
}

/// The ScalingPhases of a namespace (every namespace with `None`).
pub async fn list(client: &Client, ns: Option<&str>) -> anyhow::Result<Vec<ScalingPhase>> {
    let api: Api<ScalingPhase> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut items = api
        .list(&ListParams::default())
        .await
        .map_err(no_crd)?
        .items;
    items.sort_by_key(|sp| (sp.namespace(), sp.name_any()));
    Ok(items)
}

/// The named ScalingPhase; without a name, the only one of the namespace.
pub async fn get(client: &Client, ns: &str, name: Option<&str>) -> anyhow::Result<ScalingPhase> {
    let api: Api<ScalingPhase> = Api::namespaced(client.clone(), ns);
    if let Some(name) = name {
        return api
            .get_opt(name)
            .await
            .map_err(no_crd)?
            .with_context(|| format!("ScalingPhase {name} not found in namespace {ns}"));
    }
    let all = list(client, Some(ns)).await?;
    match all.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no ScalingPhase in namespace {ns}"),
        many => bail!(
            "{} ScalingPhases in namespace {ns} ({}): name one",
            many.len(),
            many.iter()
                .map(ResourceExt::name_any)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn no_crd(e: kube::Error) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
            "the ScalingPhase API (ladder.dev/v1alpha1) is not served: is Ladder's CRD installed? ({e})"
        ),
        _ => anyhow::Error::new(e),
    }
}

/// Merge-patches the ScalingPhase under [`FIELD_MANAGER`].
pub async fn patch(
    client: &Client,
    sp: &ScalingPhase,
    body: &serde_json::Value,
) -> anyhow::Result<ScalingPhase> {
    let api: Api<ScalingPhase> =
        Api::namespaced(client.clone(), &sp.namespace().unwrap_or_default());
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(&sp.name_any(), &pp, &Patch::Merge(body))
        .await
        .with_context(|| format!("patch ScalingPhase {}", sp.name_any()))
}

/// What the operator renders from: node regions and the optional CRDs.
/// Facts the user may not read (nodes and CRDs are cluster-scoped) are left
/// out with a note, as the plan may then differ from the operator's.
pub async fn world(client: &Client) -> (World, Vec<String>) {
    let mut notes = Vec::new();
    let nodes: Api<Node> = Api::all(client.clone());
    let node_regions = match nodes.list_metadata(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .filter_map(|n| n.labels().get(REGION_LABEL).cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        Err(e) => {
            notes.push(format!(
                "nodes not readable ({e}): regions rendered as if the nodes had none"
            ));
            Vec::new()
        }
    };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut established = Vec::new();
    for kind in ThirdParty::ALL {
        match crds.get_opt(&kind.crd_name()).await {
            Ok(Some(crd)) if is_established(&crd) => established.push(kind.crd_name()),
            Ok(_) => {}
            Err(e) => notes.push(format!(
                "CRD {} not readable ({e}): planned as not installed",
                kind.crd_name()
            )),
        }
    }
    let integrations = Integrations::from_crds(established.iter().map(String::as_str));
    (
        World {
            node_regions,
            integrations,
        },
        notes,
    )
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.metadata.deletion_timestamp.is_none()
        && crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True")
}

/// The API of each kind of child (exhaustive: a new kind must say where it lives).
fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Secret => ApiResource::erase::<Secret>(&()),
        Kind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        Kind::Role => ApiResource::erase::<Role>(&()),
        Kind::RoleBinding => ApiResource::erase::<RoleBinding>(&()),
        Kind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
        Kind::PersistentVolumeClaim => ApiResource::erase::<PersistentVolumeClaim>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
        Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::Job => ApiResource::erase::<Job>(&()),
        Kind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
        Kind::HorizontalPodAutoscaler => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        Kind::Issuer => ThirdParty::Issuer.resource(),
        Kind::Certificate => ThirdParty::Certificate.resource(),
        Kind::ServiceMonitor => ThirdParty::ServiceMonitor.resource(),
        Kind::ScaledObject => ThirdParty::ScaledObject.resource(),
    }
}

/// The live children of `sp` (labelled, controlled by its uid) as JSON by
/// `(kind, name)`, plus every claim and Secret name of the namespace.
pub async fn inventory(
    client: &Client,
    sp: &ScalingPhase,
    served: Integrations,
) -> anyhow::Result<(Inventory, BTreeMap<(String, String), serde_json::Value>)> {
    let ns = sp.namespace().unwrap_or_default();
    let uid = sp.uid().unwrap_or_default();
    let selector = children_selector(&sp.name_any());
    let mut inv = Inventory::default();
    let mut objects = BTreeMap::new();
    for kind in Kind::APPLY_ORDER {
        if kind == Kind::Secret {
            continue;
        }
        if kind.third_party().is_some_and(|tp| !served.serves(tp)) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource(kind));
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("list {} in {ns}", kind.name()))?;
        for item in list {
            let owned = item
                .owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true));
            if owned {
                let key = (kind.name().to_owned(), item.name_any());
                inv.children.insert(key.clone());
                objects.insert(key, serde_json::to_value(&item)?);
            }
        }
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for c in claims
        .list(&ListParams::default())
        .await
        .context("list PersistentVolumeClaims")?
    {
        inv.claims.push(Claim {
            size: c
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone()),
            retired_by: c.labels().get(RETIRED_BY_LABEL).cloned(),
            name: c.name_any(),
        });
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    inv.secrets = secrets
        .list_metadata(&ListParams::default())
        .await
        .context("list Secrets")?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    Ok((inv, objects))
}

/// Server-side dry-run applies of every desired object that exists, as the
/// operator would apply it (its field manager, forced), compared with the
/// live object. Jobs are created once and never re-applied; StatefulSets
/// keep their live volume templates (the operator grows volumes through the
/// claims, and `plan` reports them there).
pub async fn dry_run(
    client: &Client,
    ns: &str,
    desired: &Desired,
    live: &BTreeMap<(String, String), serde_json::Value>,
) -> BTreeMap<(String, String), Compared> {
    let mut out = BTreeMap::new();
    let pp = PatchParams::apply(OPERATOR_MANAGER).force().dry_run();
    for mut object in desired.objects() {
        let kind_name = object["kind"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (kind_name.clone(), name.clone());
        let Some(current) = live.get(&key) else {
            continue;
        };
        let Some(kind) = Kind::APPLY_ORDER
            .into_iter()
            .find(|k| k.name() == kind_name)
        else {
            continue;
        };
        if kind == Kind::Job {
            out.insert(key, Compared::Same);
            continue;
        }
        if kind == Kind::StatefulSet
            && let Some(templates) = current["spec"].get("volumeClaimTemplates")
        {
            object["spec"]["volumeClaimTemplates"] = templates.clone();
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource(kind));
        let compared = match api.patch(&name, &pp, &Patch::Apply(&object)).await {
            Ok(after) => match serde_json::to_value(&after) {
                Ok(after) => {
                    let paths =
                        differences(&comparable(current.clone()), &comparable(after), MAX_PATHS);
                    if paths.is_empty() {
                        Compared::Same
                    } else {
                        Compared::Differs(paths)
                    }
                }
                Err(e) => Compared::Unknown(e.to_string()),
            },
            Err(e) => Compared::Unknown(format!("dry-run refused: {e}")),
        };
        out.insert(key, compared);
    }
    out
}
