//! What the reconciler knows of the children without asking: reflector
//! stores of every core kind it writes, kept current by label-selected
//! watches (`app.kubernetes.io/managed-by=ladder`, see [`super::watches`]).
//!
//! Workloads (Deployments, StatefulSets, Jobs) are cached whole, minus what
//! readiness never reads (managed fields, most of the pod template), so
//! [`super::observe`] reads their status without a GET. Every other kind is
//! cached as metadata only: enough to see that a child exists, whom it
//! belongs to, and to prune without a LIST.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};

use crate::render::{self, Kind};
use ladder_crds::scalingphase::ScalingPhase;

/// Where the operator watches: one namespace, or all; Secrets possibly only
/// in some (the chart's `rbac.secretNamespaces`).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Only this namespace (`--namespace`), else every namespace.
    pub namespace: Option<String>,
    /// With no `namespace`: watch Secrets only in these (empty: everywhere).
    pub secret_namespaces: Vec<String>,
}

/// Whether a child of a watched kind is in its store.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// It is, at this `metadata.generation` (none for kinds without one).
    Present(Option<i64>),
    /// The store has no such object.
    Absent,
    /// The kind is not watched (third-party kinds): nothing is known.
    Unwatched,
}

/// Reflector stores of the children, one per kind (Secrets: one per watched
/// namespace when limited).
#[derive(Clone)]
pub struct Stores {
    deployments: Store<Deployment>,
    stateful_sets: Store<StatefulSet>,
    jobs: Store<Job>,
    service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    roles: Store<PartialObjectMeta<Role>>,
    role_bindings: Store<PartialObjectMeta<RoleBinding>>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    claims: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    services: Store<PartialObjectMeta<Service>>,
    network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
    disruption_budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    autoscalers: Store<PartialObjectMeta<HorizontalPodAutoscaler>>,
    secrets: Vec<Store<PartialObjectMeta<Secret>>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("deployments", &self.deployments.len())
            .field("stateful_sets", &self.stateful_sets.len())
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

/// The writing ends of [`Stores`] (the watch tasks hold them; tests fill
/// them by hand).
#[allow(missing_debug_implementations)] // kube's Writer has no Debug
pub struct Writers {
    /// Deployments.
    pub deployments: Writer<Deployment>,
    /// StatefulSets.
    pub stateful_sets: Writer<StatefulSet>,
    /// Jobs.
    pub jobs: Writer<Job>,
    /// ServiceAccounts.
    pub service_accounts: Writer<PartialObjectMeta<ServiceAccount>>,
    /// Roles.
    pub roles: Writer<PartialObjectMeta<Role>>,
    /// RoleBindings.
    pub role_bindings: Writer<PartialObjectMeta<RoleBinding>>,
    /// ConfigMaps.
    pub config_maps: Writer<PartialObjectMeta<ConfigMap>>,
    /// PersistentVolumeClaims.
    pub claims: Writer<PartialObjectMeta<PersistentVolumeClaim>>,
    /// Services.
    pub services: Writer<PartialObjectMeta<Service>>,
    /// NetworkPolicies.
    pub network_policies: Writer<PartialObjectMeta<NetworkPolicy>>,
    /// PodDisruptionBudgets.
    pub disruption_budgets: Writer<PartialObjectMeta<PodDisruptionBudget>>,
    /// HorizontalPodAutoscalers.
    pub autoscalers: Writer<PartialObjectMeta<HorizontalPodAutoscaler>>,
    /// Secrets, one per store.
    pub secrets: Vec<Writer<PartialObjectMeta<Secret>>>,
}

/// Metadata of a store's object, whatever its type.
fn meta_of<K: Resource>(o: &Arc<K>) -> ObjectMeta {
    o.meta().clone()
}

impl Stores {
    /// Empty stores and their writers, with `secret_stores` Secret stores.
    pub fn new(secret_stores: usize) -> (Stores, Writers) {
        let (deployments, deployments_w) = reflector::store();
        let (stateful_sets, stateful_sets_w) = reflector::store();
        let (jobs, jobs_w) = reflector::store();
        let (service_accounts, service_accounts_w) = reflector::store();
        let (roles, roles_w) = reflector::store();
        let (role_bindings, role_bindings_w) = reflector::store();
        let (config_maps, config_maps_w) = reflector::store();
        let (claims, claims_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (network_policies, network_policies_w) = reflector::store();
        let (disruption_budgets, disruption_budgets_w) = reflector::store();
        let (autoscalers, autoscalers_w) = reflector::store();
        let (secrets, secrets_w): (Vec<_>, Vec<_>) = (0..secret_stores.max(1))
            .map(|_| reflector::store())
            .unzip();
        (
            Stores {
                deployments,
                stateful_sets,
                jobs,
                service_accounts,
                roles,
                role_bindings,
                config_maps,
                claims,
                services,
                network_policies,
                disruption_budgets,
                autoscalers,
                secrets,
            },
            Writers {
                deployments: deployments_w,
                stateful_sets: stateful_sets_w,
                jobs: jobs_w,
                service_accounts: service_accounts_w,
                roles: roles_w,
                role_bindings: role_bindings_w,
                config_maps: config_maps_w,
                claims: claims_w,
                services: services_w,
                network_policies: network_policies_w,
                disruption_budgets: disruption_budgets_w,
                autoscalers: autoscalers_w,
                secrets: secrets_w,
            },
        )
    }

    /// Waits until every store has been listed once. Returns the kinds
    /// still not listed after `timeout` (a missing permission, typically:
    /// their watches log why).
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<(), Vec<&'static str>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut late = Vec::new();
        macro_rules! wait {
            ($($store:expr => $kind:expr),* $(,)?) => {$(
                if tokio::time::timeout_at(deadline, $store.wait_until_ready()).await.map_or(true, |r| r.is_err()) {
                    late.push($kind);
                }
            )*};
        }
        wait!(
            self.deployments => "Deployment",
            self.stateful_sets => "StatefulSet",
            self.jobs => "Job",
            self.service_accounts => "ServiceAccount",
            self.roles => "Role",
            self.role_bindings => "RoleBinding",
            self.config_maps => "ConfigMap",
            self.claims => "PersistentVolumeClaim",
            self.services => "Service",
            self.network_policies => "NetworkPolicy",
            self.disruption_budgets => "PodDisruptionBudget",
            self.autoscalers => "HorizontalPodAutoscaler",
        );
        for s in &self.secrets {
            wait!(s => "Secret");
        }
        if late.is_empty() { Ok(()) } else { Err(late) }
    }

    /// A Deployment, as last seen.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(ns))
    }

    /// A StatefulSet, as last seen.
    pub fn stateful_set(&self, ns: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.stateful_sets.get(&ObjectRef::new(name).within(ns))
    }

    /// A Job, as last seen.
    pub fn job(&self, ns: &str, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(&ObjectRef::new(name).within(ns))
    }

    /// Whether child `name` of `kind` exists in namespace `ns`.
    pub fn lookup(&self, kind: Kind, ns: &str, name: &str) -> Lookup {
        macro_rules! one {
            ($store:expr) => {
                match $store.get(&ObjectRef::new(name).within(ns)) {
                    Some(o) => Lookup::Present(o.meta().generation),
                    None => Lookup::Absent,
                }
            };
        }
        match kind {
            Kind::Deployment => one!(self.deployments),
            Kind::StatefulSet => one!(self.stateful_sets),
            Kind::Job => one!(self.jobs),
            Kind::ServiceAccount => one!(self.service_accounts),
            Kind::Role => one!(self.roles),
            Kind::RoleBinding => one!(self.role_bindings),
            Kind::ConfigMap => one!(self.config_maps),
            Kind::PersistentVolumeClaim => one!(self.claims),
            Kind::Service => one!(self.services),
            Kind::NetworkPolicy => one!(self.network_policies),
            Kind::PodDisruptionBudget => one!(self.disruption_budgets),
            Kind::HorizontalPodAutoscaler => one!(self.autoscalers),
            Kind::Secret => self
                .secrets
                .iter()
                .find_map(|s| s.get(&ObjectRef::new(name).within(ns)))
                .map_or(Lookup::Absent, |o| Lookup::Present(o.meta().generation)),
            Kind::Issuer | Kind::Certificate | Kind::ServiceMonitor | Kind::ScaledObject => {
                Lookup::Unwatched
            }
        }
    }

    /// The annotations of Secret `name` in `ns`, when a store holds it.
    pub fn secret_annotations(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        self.secrets
            .iter()
            .find_map(|s| s.get(&ObjectRef::new(name).within(ns)))
            .map(|o| o.metadata.annotations.clone().unwrap_or_default())
    }

    /// Metadata of every child of `kind` in `ns` labelled for ScalingPhase
    /// `sp`; `None` for kinds that are not watched.
    pub fn children(&self, kind: Kind, ns: &str, sp: &str) -> Option<Vec<ObjectMeta>> {
        let ours = |m: &ObjectMeta| {
            m.namespace.as_deref() == Some(ns)
                && m.labels
                    .as_ref()
                    .and_then(|l| l.get(render::SCALINGPHASE_LABEL))
                    .is_some_and(|v| v == sp)
        };
        macro_rules! all {
            ($store:expr) => {
                $store
                    .state()
                    .iter()
                    .map(meta_of)
                    .filter(|m| ours(m))
                    .collect()
            };
        }
        Some(match kind {
            Kind::Deployment => all!(self.deployments),
            Kind::StatefulSet => all!(self.stateful_sets),
            Kind::Job => all!(self.jobs),
            Kind::ServiceAccount => all!(self.service_accounts),
            Kind::Role => all!(self.roles),
            Kind::RoleBinding => all!(self.role_bindings),
            Kind::ConfigMap => all!(self.config_maps),
            Kind::PersistentVolumeClaim => all!(self.claims),
            Kind::Service => all!(self.services),
            Kind::NetworkPolicy => all!(self.network_policies),
            Kind::PodDisruptionBudget => all!(self.disruption_budgets),
            Kind::HorizontalPodAutoscaler => all!(self.autoscalers),
            Kind::Secret => self
                .secrets
                .iter()
                .flat_map(|s| s.state())
                .map(|o| meta_of(&o))
                .filter(|m| ours(m))
                .collect(),
            Kind::Issuer | Kind::Certificate | Kind::ServiceMonitor | Kind::ScaledObject => {
                return None;
            }
        })
    }
}

/// The ScalingPhase that controls a child, from its owner references.
pub fn owner(meta: &ObjectMeta) -> Option<ObjectRef<ScalingPhase>> {
    let ns = meta.namespace.as_deref()?;
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == "ScalingPhase"
                && o.api_version.starts_with("ladder.dev/")
        })
        .map(|o| ObjectRef::new(&o.name).within(ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::runtime::watcher;

    fn owned_meta(name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("prod".into()),
            uid: Some(uid.into()),
            labels: Some(
                [(render::SCALINGPHASE_LABEL.to_owned(), "shop".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "ladder.dev/v1alpha1".into(),
                kind: "ScalingPhase".into(),
                name: "shop".into(),
                uid: "sp-uid".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn lookups_and_children_read_the_stores() {
        let (stores, mut w) = Stores::new(1);
        let svc = PartialObjectMeta::<Service> {
            metadata: owned_meta("shop-app", "s1"),
            ..Default::default()
        };
        w.services.apply_watcher_event(&watcher::Event::Apply(svc));
        assert!(matches!(
            stores.lookup(Kind::Service, "prod", "shop-app"),
            Lookup::Present(_)
        ));
        assert_eq!(
            stores.lookup(Kind::Service, "prod", "other"),
            Lookup::Absent
        );
        assert_eq!(
            stores.lookup(Kind::Certificate, "prod", "x"),
            Lookup::Unwatched
        );
        assert_eq!(
            stores
                .children(Kind::Service, "prod", "shop")
                .map(|c| c.len()),
            Some(1)
        );
        assert_eq!(
            stores
                .children(Kind::Service, "prod", "blog")
                .map(|c| c.len()),
            Some(0)
        );
        assert_eq!(stores.children(Kind::ScaledObject, "prod", "shop"), None);
    }
}
