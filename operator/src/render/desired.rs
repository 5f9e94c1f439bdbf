//! [`Desired`] kind by kind: the one ordered list of kinds ([`Kind`]) the
//! applier, the pruner and the counters walk, and the per-kind accessors the
//! transition merge and the re-apply subset use, so no other code has to
//! name every list of [`Desired`].

use std::collections::BTreeSet;

use super::{CredentialsKind, Desired, GeneratedSecret, SecretContent, TlsUsage};
use crate::integrations::ThirdParty;

/// Every kind of child, in apply order: the one list the applier, the
/// pruner (in reverse), [`Desired::len`] and [`Desired::objects`] walk.
/// Certificate issuance first, identities and permissions, config,
/// volumes, Services and NetworkPolicies, then workloads, then what refers
/// to workloads (disruption budgets, autoscalers, ServiceMonitors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// [`Desired::generated_secrets`].
    Secret,
    /// [`Desired::issuers`].
    Issuer,
    /// [`Desired::certificates`].
    Certificate,
    /// [`Desired::service_accounts`].
    ServiceAccount,
    /// [`Desired::roles`].
    Role,
    /// [`Desired::role_bindings`].
    RoleBinding,
    /// [`Desired::config_maps`].
    ConfigMap,
    /// [`Desired::persistent_volume_claims`].
    PersistentVolumeClaim,
    /// [`Desired::services`].
    Service,
    /// [`Desired::network_policies`].
    NetworkPolicy,
    /// [`Desired::stateful_sets`].
    StatefulSet,
    /// [`Desired::deployments`].
    Deployment,
    /// [`Desired::jobs`].
    Job,
    /// [`Desired::pod_disruption_budgets`].
    PodDisruptionBudget,
    /// [`Desired::horizontal_pod_autoscalers`].
    HorizontalPodAutoscaler,
    /// [`Desired::service_monitors`].
    ServiceMonitor,
    /// [`Desired::scaled_objects`].
    ScaledObject,
}

impl Kind {
    /// Every kind, in apply order.
    pub const APPLY_ORDER: [Kind; 17] = [
        Kind::Secret,
        Kind::Issuer,
        Kind::Certificate,
        Kind::ServiceAccount,
        Kind::Role,
        Kind::RoleBinding,
        Kind::ConfigMap,
        Kind::PersistentVolumeClaim,
        Kind::Service,
        Kind::NetworkPolicy,
        Kind::StatefulSet,
        Kind::Deployment,
        Kind::Job,
        Kind::PodDisruptionBudget,
        Kind::HorizontalPodAutoscaler,
        Kind::ServiceMonitor,
        Kind::ScaledObject,
    ];

    /// The Kubernetes kind (also the metrics' `kind` label).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::Issuer => ThirdParty::Issuer.kind(),
            Kind::Certificate => ThirdParty::Certificate.kind(),
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
            Kind::ConfigMap => "ConfigMap",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::Service => "Service",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::StatefulSet => "StatefulSet",
            Kind::Deployment => "Deployment",
            Kind::Job => "Job",
            Kind::PodDisruptionBudget => "PodDisruptionBudget",
            Kind::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            Kind::ServiceMonitor => ThirdParty::ServiceMonitor.kind(),
            Kind::ScaledObject => ThirdParty::ScaledObject.kind(),
        }
    }

    /// The optional CRD the kind belongs to, if any.
    pub const fn third_party(self) -> Option<ThirdParty> {
        match self {
            Kind::Issuer => Some(ThirdParty::Issuer),
            Kind::Certificate => Some(ThirdParty::Certificate),
            Kind::ServiceMonitor => Some(ThirdParty::ServiceMonitor),
            Kind::ScaledObject => Some(ThirdParty::ScaledObject),
            _ => None,
        }
    }
}

/// The rendered objects of one kind, whatever their type: what the code that
/// walks every kind (apply order, the union of two phases, a subset to
/// re-apply) needs of a list.
pub trait ObjectList {
    /// The objects' names.
    fn names(&self) -> BTreeSet<String>;
    /// The objects as JSON.
    fn values(&self) -> Vec<serde_json::Value>;
    /// Keeps only the objects whose name `keep` accepts.
    fn retain_named(&mut self, keep: &dyn Fn(&str) -> bool);
    /// Moves in the objects of `other` whose names this list does not have
    /// (this list wins on a name both hold). `other` is the same kind's list
    /// of another [`Desired`]; a list of another type is left alone.
    fn absorb(&mut self, other: &mut dyn ObjectList);
    /// For [`ObjectList::absorb`]: the list as its concrete type.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

fn name_of<T: kube::Resource>(item: &T) -> &str {
    item.meta().name.as_deref().unwrap_or_default()
}

impl<T: kube::Resource + serde::Serialize + 'static> ObjectList for Vec<T> {
    fn names(&self) -> BTreeSet<String> {
        self.iter().map(|i| name_of(i).to_owned()).collect()
    }
    fn values(&self) -> Vec<serde_json::Value> {
        self.iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect()
    }
    fn retain_named(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.retain(|i| keep(name_of(i)));
    }
    fn absorb(&mut self, other: &mut dyn ObjectList) {
        let Some(other) = other.as_any_mut().downcast_mut::<Vec<T>>() else {
            return;
        };
        let have = self.names();
        self.extend(other.drain(..).filter(|i| !have.contains(name_of(i))));
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// What [`Desired`] holds of one kind.
enum Listed<'a> {
    /// Generated Secrets: names only, no manifest until the apply step
    /// generates them.
    Secrets(&'a [GeneratedSecret]),
    /// Rendered objects.
    Objects(&'a dyn ObjectList),
}

impl Desired {
    /// The list of one kind. Destructured without `..`: a new list in
    /// `Desired` must get a [`Kind`] here (and in [`Desired::objects_mut`]).
    fn of_kind(&self, kind: Kind) -> Listed<'_> {
        let Desired {
            generated_secrets,
            issuers,
            certificates,
            service_accounts,
            roles,
            role_bindings,
            config_maps,
            persistent_volume_claims,
            services,
            network_policies,
            stateful_sets,
            deployments,
            jobs,
            pod_disruption_budgets,
            horizontal_pod_autoscalers,
            service_monitors,
            scaled_objects,
            expected: _,
        } = self;
        Listed::Objects(match kind {
            Kind::Secret => return Listed::Secrets(generated_secrets),
            Kind::Issuer => issuers,
            Kind::Certificate => certificates,
            Kind::ServiceAccount => service_accounts,
            Kind::Role => roles,
            Kind::RoleBinding => role_bindings,
            Kind::ConfigMap => config_maps,
            Kind::PersistentVolumeClaim => persistent_volume_claims,
            Kind::Service => services,
            Kind::NetworkPolicy => network_policies,
            Kind::StatefulSet => stateful_sets,
            Kind::Deployment => deployments,
            Kind::Job => jobs,
            Kind::PodDisruptionBudget => pod_disruption_budgets,
            Kind::HorizontalPodAutoscaler => horizontal_pod_autoscalers,
            Kind::ServiceMonitor => service_monitors,
            Kind::ScaledObject => scaled_objects,
        })
    }

    /// The rendered objects of one kind, to change in place; `None` for the
    /// generated Secrets, which are not objects yet.
    pub fn objects_mut(&mut self, kind: Kind) -> Option<&mut dyn ObjectList> {
        let Desired {
            generated_secrets: _,
            issuers,
            certificates,
            service_accounts,
            roles,
            role_bindings,
            config_maps,
            persistent_volume_claims,
            services,
            network_policies,
            stateful_sets,
            deployments,
            jobs,
            pod_disruption_budgets,
            horizontal_pod_autoscalers,
            service_monitors,
            scaled_objects,
            expected: _,
        } = self;
        Some(match kind {
            Kind::Secret => return None,
            Kind::Issuer => issuers,
            Kind::Certificate => certificates,
            Kind::ServiceAccount => service_accounts,
            Kind::Role => roles,
            Kind::RoleBinding => role_bindings,
            Kind::ConfigMap => config_maps,
            Kind::PersistentVolumeClaim => persistent_volume_claims,
            Kind::Service => services,
            Kind::NetworkPolicy => network_policies,
            Kind::StatefulSet => stateful_sets,
            Kind::Deployment => deployments,
            Kind::Job => jobs,
            Kind::PodDisruptionBudget => pod_disruption_budgets,
            Kind::HorizontalPodAutoscaler => horizontal_pod_autoscalers,
            Kind::ServiceMonitor => service_monitors,
            Kind::ScaledObject => scaled_objects,
        })
    }

    /// Keeps only the children `keep` accepts (by kind and name), generated
    /// Secrets included; the expected workloads are left as they are.
    pub fn retain(&mut self, keep: impl Fn(Kind, &str) -> bool) {
        self.generated_secrets
            .retain(|s| keep(Kind::Secret, &s.name));
        for kind in Kind::APPLY_ORDER {
            if let Some(list) = self.objects_mut(kind) {
                list.retain_named(&|name| keep(kind, name));
            }
        }
    }

    /// The names of the desired objects of one kind.
    pub fn names(&self, kind: Kind) -> BTreeSet<String> {
        match self.of_kind(kind) {
            Listed::Secrets(s) => s.iter().map(|s| s.name.clone()).collect(),
            Listed::Objects(o) => o.names(),
        }
    }

    /// Number of objects (generated Secrets included).
    pub fn len(&self) -> usize {
        Kind::APPLY_ORDER
            .into_iter()
            .map(|k| self.names(k).len())
            .sum()
    }

    /// True when nothing is desired.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Desired {
    /// Every object except the generated Secrets, as JSON, in apply order
    /// ([`Kind::APPLY_ORDER`]).
    pub fn objects(&self) -> Vec<serde_json::Value> {
        Kind::APPLY_ORDER
            .into_iter()
            .flat_map(|k| match self.of_kind(k) {
                Listed::Secrets(_) => Vec::new(),
                Listed::Objects(o) => o.values(),
            })
            .collect()
    }

    /// The whole desired state as a YAML stream (generated Secrets listed by
    /// name and content kind, without data): what the golden files hold.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for s in &self.generated_secrets {
            let what = match &s.content {
                SecretContent::Ca { permitted_dns } => {
                    format!(
                        "ca, pathlen 0, DNS names only under {}",
                        permitted_dns.join(",")
                    )
                }
                SecretContent::Tls {
                    ca,
                    common_name,
                    dns_names,
                    usage,
                } => {
                    format!(
                        "tls {} signed by {ca}, CN={common_name}, SAN={}",
                        match usage {
                            TlsUsage::Server => "server",
                            TlsUsage::Client => "client",
                        },
                        dns_names.join(",")
                    )
                }
                SecretContent::Credentials { username, kind } => {
                    format!(
                        "credentials for {username}{}",
                        match kind {
                            CredentialsKind::Plain => "",
                            CredentialsKind::Postgres => " (+replication, userlist)",
                            CredentialsKind::Redis => " (+redis-auth.conf)",
                        }
                    )
                }
            };
            out.push_str(&format!("# generated Secret {}: {what}\n", s.name));
        }
        for o in self.objects() {
            out.push_str("---\n");
            out.push_str(&crate::cli::yaml11_safe(
                &serde_yaml::to_string(&o).unwrap_or_default(),
            ));
        }
        out
    }
}
