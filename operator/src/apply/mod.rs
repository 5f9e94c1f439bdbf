//! The applier: makes the cluster match a [`Desired`] set.
//!
//! One order, [`Kind::APPLY_ORDER`], for applying (forwards), pruning
//! (backwards) and counting; each step waits for the previous one:
//! 1. generated Secrets (CA first, then credentials and certificates): created
//!    once with fresh randomness, never rewritten ([`secrets`]); or, with
//!    cert-manager, its Issuers and Certificates (which write Secrets of the
//!    same names);
//! 2. ServiceAccounts, Roles, RoleBindings (identities before workloads use them);
//! 3. ConfigMaps and PersistentVolumeClaims (what pods mount);
//! 4. Services and NetworkPolicies (so traffic rules exist before pods start);
//! 5. StatefulSets (growing their volumes first, see [`volumes`]),
//!    Deployments, Jobs (created once: they are immutable);
//! 6. PodDisruptionBudgets, HorizontalPodAutoscalers, ServiceMonitors, KEDA
//!    ScaledObjects (they refer to the workloads and Services).
//!
//! Kinds of optional CRDs ([`ThirdParty`]) go through one untyped applier
//! and one pruner; they are pruned only while their CRD is installed.
//!
//! Every write is server-side apply under [`FIELD_MANAGER`] with `force`:
//! these objects are ours alone; [`apply`] returns the generation each write
//! produced, so the reconciler can tell its watches' copies that are older.
//! Pruning deletes labelled children of the ScalingPhase that are no longer
//! desired, never a PersistentVolumeClaim or a credential Secret: the
//! reconciler finds them in its stores of the core kinds and deletes them
//! with [`delete`]; the optional kinds, which it does not watch, are listed
//! by [`prune_third_party`].

pub mod secrets;
pub mod volumes;

use std::collections::BTreeSet;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::integrations::{Integrations, ThirdParty};
use crate::metrics::Metrics;
use crate::render::{self, Desired, Kind};

pub use secrets::SecretError;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "ladder-operator";

/// What failed while applying.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A server-side apply (or the read before it) was refused.
    #[error("failed to apply {kind} {name}: {source}")]
    Apply {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading or creating a generated Secret failed.
    #[error("failed to ensure Secret {name}: {source}")]
    Secret {
        /// Secret name.
        name: String,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// Listing or deleting stale children failed.
    #[error("failed to prune {kind}: {source}")]
    Prune {
        /// Kind being pruned.
        kind: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ApplyError {
    /// The condition reason for this failure: its own where a human must
    /// act (`CredentialsMissing`), `ApplyFailed` for what a retry may fix.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Secret { source, .. } => source
                .reason()
                .unwrap_or(crate::status::reasons::APPLY_FAILED),
            _ => crate::status::reasons::APPLY_FAILED,
        }
    }

    /// Wraps an API error about object `name` of `kind`.
    fn apply(kind: Kind, name: &str) -> impl FnOnce(kube::Error) -> ApplyError {
        let name = name.to_owned();
        move |source| ApplyError::Apply {
            kind: kind.name(),
            name,
            source,
        }
    }

    /// A fixed label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ApplyError::Apply { .. } => "apply",
            ApplyError::Secret { .. } => "secret",
            ApplyError::Prune { .. } => "prune",
        }
    }
}

/// One object the apply step wrote, and the generation it has now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// `metadata.generation` in the apiserver's answer (none for kinds
    /// without one).
    pub generation: Option<i64>,
}

/// Where the children of one ScalingPhase live, the counters, and what
/// was written.
struct Target<'a> {
    client: &'a Client,
    ns: &'a str,
    metrics: &'a Metrics,
    written: Mutex<Vec<Written>>,
}

impl Target<'_> {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), self.ns)
    }

    fn dynamic(&self, kind: ThirdParty) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.ns, &kind.resource())
    }

    /// Server-side applies `items` through `api`.
    async fn apply_with<K>(&self, api: &Api<K>, kind: Kind, items: &[K]) -> Result<(), ApplyError>
    where
        K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        for item in items {
            let name = item.name_any();
            let now = api
                .patch(&name, &pp, &Patch::Apply(item))
                .await
                .map_err(ApplyError::apply(kind, &name))?;
            self.metrics.applied(kind.name());
            self.written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Written {
                    kind,
                    name,
                    generation: now.meta().generation,
                });
        }
        Ok(())
    }

    async fn apply_all<K>(&self, kind: Kind, items: &[K]) -> Result<(), ApplyError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        self.apply_with(&self.api::<K>(), kind, items).await
    }

    /// Objects of an optional third-party kind. The renderer produces them
    /// only when their CRD is installed; if it was removed since, the apply
    /// fails and the reconcile retries with fresh facts.
    async fn apply_third_party(
        &self,
        kind: Kind,
        tp: ThirdParty,
        desired: &Desired,
    ) -> Result<(), ApplyError> {
        let items = render::third_party(desired, tp);
        if items.is_empty() {
            return Ok(());
        }
        self.apply_with(&self.dynamic(tp), kind, items).await
    }

    /// StatefulSets, growing their volumes first when the templates ask for
    /// more: `volumeClaimTemplates` are immutable, so a larger size grows the
    /// claims and re-creates the StatefulSet around its running pods (see
    /// [`volumes`]); anything else keeps the existing templates, so volumes
    /// never shrink.
    async fn apply_stateful_sets(&self, sets: &[StatefulSet]) -> Result<(), ApplyError> {
        let api: Api<StatefulSet> = self.api();
        for sts in sets {
            let name = sts.name_any();
            let mut sts = sts.clone();
            let existing = api
                .get_opt(&name)
                .await
                .map_err(ApplyError::apply(Kind::StatefulSet, &name))?;
            if let Some(existing) = existing {
                match volumes::plan(&existing, &sts) {
                    volumes::Plan::Same => {}
                    volumes::Plan::KeepExisting { reason } => {
                        tracing::warn!(%name, %reason, "keeping the existing volumes");
                        sts.spec.volume_claim_templates = existing.spec.volume_claim_templates;
                    }
                    volumes::Plan::Grow(grow) => {
                        volumes::grow(self.client, self.ns, &name, &grow)
                            .await
                            .map_err(ApplyError::apply(Kind::PersistentVolumeClaim, &name))?;
                        self.metrics.applied(Kind::PersistentVolumeClaim.name());
                    }
                }
            }
            self.apply_with(&api, Kind::StatefulSet, std::slice::from_ref(&sts))
                .await?;
        }
        Ok(())
    }

    /// Jobs are immutable once created: apply only the ones that do not exist.
    async fn apply_new_jobs(&self, jobs: &[Job]) -> Result<(), ApplyError> {
        let api: Api<Job> = self.api();
        for job in jobs {
            let name = job.name_any();
            let existing = api
                .get_opt(&name)
                .await
                .map_err(ApplyError::apply(Kind::Job, &name))?;
            if existing.is_none() {
                self.apply_with(&api, Kind::Job, std::slice::from_ref(job))
                    .await?;
            }
        }
        Ok(())
    }
}

/// Applies the desired set in [`Kind::APPLY_ORDER`]. Returns what it
/// wrote (generated Secrets aside: they are created once, never written).
pub async fn apply(
    client: &Client,
    ns: &str,
    desired: &Desired,
    metrics: &Metrics,
) -> Result<Vec<Written>, ApplyError> {
    let t = Target {
        client,
        ns,
        metrics,
        written: Mutex::default(),
    };
    let d = desired;
    for kind in Kind::APPLY_ORDER {
        // Exhaustive: a new kind must say how it is applied.
        match kind {
            Kind::Secret => secrets::ensure(client, ns, &d.generated_secrets, metrics).await?,
            Kind::Issuer | Kind::Certificate | Kind::ServiceMonitor | Kind::ScaledObject => {
                if let Some(tp) = kind.third_party() {
                    t.apply_third_party(kind, tp, d).await?;
                }
            }
            Kind::ServiceAccount => t.apply_all(kind, &d.service_accounts).await?,
            Kind::Role => t.apply_all(kind, &d.roles).await?,
            Kind::RoleBinding => t.apply_all(kind, &d.role_bindings).await?,
            Kind::ConfigMap => t.apply_all(kind, &d.config_maps).await?,
            Kind::PersistentVolumeClaim => {
                t.apply_all(kind, &d.persistent_volume_claims).await?;
            }
            Kind::Service => t.apply_all(kind, &d.services).await?,
            Kind::NetworkPolicy => t.apply_all(kind, &d.network_policies).await?,
            Kind::StatefulSet => t.apply_stateful_sets(&d.stateful_sets).await?,
            Kind::Deployment => t.apply_all(kind, &d.deployments).await?,
            Kind::Job => t.apply_new_jobs(&d.jobs).await?,
            Kind::PodDisruptionBudget => t.apply_all(kind, &d.pod_disruption_budgets).await?,
            Kind::HorizontalPodAutoscaler => {
                t.apply_all(kind, &d.horizontal_pod_autoscalers).await?;
            }
        }
    }
    Ok(t.written
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Label selector of every child of a ScalingPhase.
pub fn children_selector(name: &str) -> String {
    format!(
        "{}={},{}={name}",
        render::MANAGED_BY_LABEL,
        render::MANAGED_BY,
        render::SCALINGPHASE_LABEL
    )
}

/// The children of one ScalingPhase: labelled with its name, controlled
/// by its uid.
struct Children<'a> {
    sp: &'a str,
    uid: &'a str,
    metrics: &'a Metrics,
}

impl Children<'_> {
    /// Deletes the children in `api` that are not in `keep`.
    async fn prune<K>(
        &self,
        api: &Api<K>,
        kind: Kind,
        keep: &BTreeSet<String>,
    ) -> Result<(), ApplyError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let kind = kind.name();
        let list = api
            // Served from the apiserver's watch cache: a slightly stale list can
            // only delay a prune (the next drift check catches up), never delete
            // something desired.
            .list_metadata(
                &ListParams::default()
                    .labels(&children_selector(self.sp))
                    .match_any(),
            )
            .await
            .map_err(|source| ApplyError::Prune { kind, source })?;
        for item in list {
            let owned = item
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == self.uid && o.controller == Some(true));
            let name = item.name_any();
            if owned && !keep.contains(&name) {
                tracing::info!(%kind, %name, "pruning child no longer desired");
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => self.metrics.pruned(kind),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(source) => return Err(ApplyError::Prune { kind, source }),
                }
            }
        }
        Ok(())
    }
}

/// Deletes child `name` of a core `kind` (the reconciler found it stale in
/// its stores). Already gone is fine. Secrets and PersistentVolumeClaims
/// are refused here: they are never pruned (data and credentials outlive a
/// phase change and leave only with the ScalingPhase under
/// `deletionPolicy: Delete`).
pub async fn delete(
    client: &Client,
    ns: &str,
    kind: Kind,
    name: &str,
    metrics: &Metrics,
) -> Result<(), ApplyError> {
    let t = Target {
        client,
        ns,
        metrics,
        written: Mutex::default(),
    };
    let dp = DeleteParams::background();
    let result = match kind {
        Kind::Secret | Kind::PersistentVolumeClaim => return Ok(()),
        Kind::Issuer | Kind::Certificate | Kind::ServiceMonitor | Kind::ScaledObject => {
            match kind.third_party() {
                Some(tp) => t.dynamic(tp).delete(name, &dp).await.map(|_| ()),
                None => return Ok(()),
            }
        }
        Kind::ServiceAccount => t
            .api::<ServiceAccount>()
            .delete(name, &dp)
            .await
            .map(|_| ()),
        Kind::Role => t.api::<Role>().delete(name, &dp).await.map(|_| ()),
        Kind::RoleBinding => t.api::<RoleBinding>().delete(name, &dp).await.map(|_| ()),
        Kind::ConfigMap => t.api::<ConfigMap>().delete(name, &dp).await.map(|_| ()),
        Kind::Service => t.api::<Service>().delete(name, &dp).await.map(|_| ()),
        Kind::NetworkPolicy => t.api::<NetworkPolicy>().delete(name, &dp).await.map(|_| ()),
        Kind::StatefulSet => t.api::<StatefulSet>().delete(name, &dp).await.map(|_| ()),
        Kind::Deployment => t.api::<Deployment>().delete(name, &dp).await.map(|_| ()),
        Kind::Job => t.api::<Job>().delete(name, &dp).await.map(|_| ()),
        Kind::PodDisruptionBudget => t
            .api::<PodDisruptionBudget>()
            .delete(name, &dp)
            .await
            .map(|_| ()),
        Kind::HorizontalPodAutoscaler => t
            .api::<HorizontalPodAutoscaler>()
            .delete(name, &dp)
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => {
            tracing::info!(kind = kind.name(), %name, "pruned child no longer desired");
            metrics.pruned(kind.name());
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ApplyError::Prune {
            kind: kind.name(),
            source,
        }),
    }
}

/// Lists and deletes children of the optional third-party kinds (by label
/// and controller owner reference) that are not in `desired`, dependents
/// first. Only kinds whose CRD `served` says is installed (otherwise none
/// can exist: deleting a CRD deletes its objects); the core kinds are the
/// reconciler's, from its stores ([`delete`]).
pub async fn prune_third_party(
    client: &Client,
    ns: &str,
    sp: &str,
    uid: &str,
    desired: &Desired,
    served: Integrations,
    metrics: &Metrics,
) -> Result<(), ApplyError> {
    let t = Target {
        client,
        ns,
        metrics,
        written: Mutex::default(),
    };
    let children = Children { sp, uid, metrics };
    for kind in Kind::APPLY_ORDER.into_iter().rev() {
        if let Some(tp) = kind.third_party()
            && served.serves(tp)
        {
            children
                .prune(&t.dynamic(tp), kind, &desired.names(kind))
                .await?;
        }
    }
    Ok(())
}

/// On deletion: with `Retain`, detach PersistentVolumeClaims and credential
/// Secrets from the ScalingPhase (remove its owner reference) so garbage
/// collection keeps them; with `Delete`, delete them.
pub async fn release_data(
    client: &Client,
    ns: &str,
    sp: &str,
    uid: &str,
    retain: bool,
) -> Result<(), ApplyError> {
    let selector = children_selector(sp);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let pvc_list = pvcs
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| ApplyError::Prune {
            kind: Kind::PersistentVolumeClaim.name(),
            source,
        })?;
    let secret_list = secrets
        .list_metadata(
            &ListParams::default().labels(&format!("{selector},{}=true", render::CREDENTIAL_LABEL)),
        )
        .await
        .map_err(|source| ApplyError::Prune {
            kind: Kind::Secret.name(),
            source,
        })?;
    let targets = pvc_list
        .items
        .into_iter()
        .map(|m| ("PersistentVolumeClaim", m.metadata))
        .chain(
            secret_list
                .items
                .into_iter()
                .map(|m| ("Secret", m.metadata)),
        );
    for (kind, item) in targets {
        let name = item.name.clone().unwrap_or_default();
        let result = if retain {
            let refs: Vec<_> = item
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.uid != uid)
                .cloned()
                .collect();
            if refs.len() == item.owner_references.as_ref().map_or(0, Vec::len) {
                continue;
            }
            // A merge patch with the remaining references; resourceVersion
            // makes it fail (and retry) if someone changed them meanwhile.
            let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": item.resource_version}});
            tracing::info!(%kind, %name, "retaining: detaching from the ScalingPhase");
            if kind == "Secret" {
                secrets
                    .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            } else {
                pvcs.patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
        } else {
            tracing::info!(%kind, %name, "deletionPolicy Delete: deleting");
            let r = if kind == "Secret" {
                secrets
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map(|_| ())
            } else {
                pvcs.delete(&name, &DeleteParams::background())
                    .await
                    .map(|_| ())
            };
            match r {
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                other => other,
            }
        };
        result.map_err(|source| ApplyError::Prune { kind, source })?;
    }
    Ok(())
}
