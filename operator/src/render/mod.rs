//! Pure rendering: `render(&Validated, &PhaseProfile) -> Desired`.
//!
//! No client, no clock, no randomness: the same input always gives the same
//! objects, byte for byte (the golden snapshots in `tests/` hold every phase).
//! Generated secrets (passwords, the CA, certificates) need randomness, so the
//! renderer only *names* them in [`Desired::generated_secrets`]; the apply step
//! creates them once and never rewrites them.
//!
//! Every object gets a deterministic name from [`child_name`], the labels from
//! [`labels`] and the controller owner reference of its ScalingPhase.
//!
//! One module per component (`app`, `postgres`, `pgbouncer`, `redis`,
//! `clickhouse`, `edge`, `cockroach`), each with a `build` that adds its
//! objects to [`Desired`] and what the app needs to reach it to an
//! `app::Wiring`; `tls` names the generated Secrets, `network` turns the
//! declared flows into NetworkPolicies, and `build` holds the small typed
//! helpers they share (Services, workloads, budgets) and `pod` what goes
//! into a pod template (env, volumes, containers, probes, placement).
//! [`render_into`] is the driver that calls them in order.

mod app;
mod build;
mod clickhouse;
mod cockroach;
pub mod config;
mod edge;
mod exporters;
mod integrations;
pub mod migration;
mod network;
mod pgbouncer;
mod pod;
mod postgres;
mod redis;
mod tls;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use sha2::{Digest, Sha256};

use crate::integrations::ThirdParty;
use crate::validate::Validated;
use ladder_crds::catalogue::{Phase, PhaseProfile};

/// Label every child carries: who manages it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "ladder";
/// Label every child carries: the name of its ScalingPhase.
pub const SCALINGPHASE_LABEL: &str = "ladder.dev/scalingphase";
/// Label of one workload's pods (and its selector).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Label of a tier (all PostgreSQL instances, all CockroachDB nodes...), used
/// by NetworkPolicies.
pub const TIER_LABEL: &str = "ladder.dev/tier";
/// Label on credential and TLS Secrets: pruning never deletes them.
pub const CREDENTIAL_LABEL: &str = "ladder.dev/credential";
/// Annotation carrying a hash of the config a pod reads, so a config change
/// rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "ladder.dev/config-hash";
/// Longest child name: StatefulSet pods get `-<ordinal>` and a
/// `controller-revision-hash` label of `<name>-<10 chars>` (63 at most).
pub const MAX_CHILD_NAME: usize = 52;

/// A Secret the apply step must make exist (generated once, never rewritten).
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedSecret {
    /// Secret name.
    pub name: String,
    /// What goes in it.
    pub content: SecretContent,
    /// Labels (including [`CREDENTIAL_LABEL`]).
    pub meta: ObjectMeta,
}

/// What a generated Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretContent {
    /// The phase's private CA: `tls.crt` and `tls.key` (its self-signed
    /// certificate and key) and `ca.crt` (the same certificate), the layout
    /// cert-manager gives a CA Certificate's Secret, so either can take over
    /// the other's. CA Secrets of earlier versions (`ca.crt`, `ca.key`) are
    /// still read.
    Ca {
        /// Name constraints: the only DNS subtrees its certificates may
        /// name (the phase's namespace under `svc`); no IP address at all.
        permitted_dns: Vec<String>,
    },
    /// `tls.crt`, `tls.key` and `ca.crt`, signed by the CA Secret `ca`.
    Tls {
        /// Name of the CA Secret.
        ca: String,
        /// Subject common name.
        common_name: String,
        /// DNS subject alternative names.
        dns_names: Vec<String>,
        /// What the certificate may authenticate: a server or a client,
        /// never both.
        usage: TlsUsage,
    },
    /// `username` and `password` (random, 32 characters), and files derived
    /// from them for the tier that reads them.
    Credentials {
        /// The user name.
        username: String,
        /// Which derived files it holds besides.
        kind: CredentialsKind,
    },
}

/// The one extended key usage of a leaf certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsUsage {
    /// `serverAuth`: presented by a listener, verified by its clients.
    Server,
    /// `clientAuth`: presented by a client (the common name is its user).
    Client,
}

/// Files a credentials Secret holds besides `username` and `password`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialsKind {
    /// Nothing else.
    Plain,
    /// PostgreSQL: `replication-password` and PgBouncer's `userlist.txt`.
    Postgres,
    /// Redis: `redis-auth.conf`, a config include with `requirepass`, so
    /// the password reaches redis-server in a file, never in its argv.
    Redis,
}

/// A workload whose readiness the status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedComponent {
    /// Deployment, StatefulSet or Job.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Ready replicas needed (for a Job: completions).
    pub replicas: i32,
}

/// Every child object of a phase, one list per [`Kind`]. Applied in
/// [`Kind::APPLY_ORDER`] (see [`crate::apply`]); [`Desired::names`] maps
/// every kind to its list with an exhaustive `match`, so a new list needs a
/// new kind.
///
/// Kinds of optional third-party CRDs ([`ThirdParty`]) are untyped
/// [`DynamicObject`]s; the renderer produces them only when the validated
/// spec says their CRD is installed.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Generated credentials and certificates (created by the apply step).
    pub generated_secrets: Vec<GeneratedSecret>,
    /// cert-manager Issuers: the phase's self-signed root, then its CA.
    pub issuers: Vec<DynamicObject>,
    /// cert-manager Certificates: the CA first, then one per TLS Secret.
    pub certificates: Vec<DynamicObject>,
    /// Identities of the pods.
    pub service_accounts: Vec<ServiceAccount>,
    /// Namespaced permissions.
    pub roles: Vec<Role>,
    /// Their bindings.
    pub role_bindings: Vec<RoleBinding>,
    /// Rendered config.
    pub config_maps: Vec<ConfigMap>,
    /// Volumes not created by a StatefulSet.
    pub persistent_volume_claims: Vec<PersistentVolumeClaim>,
    /// Network identities.
    pub services: Vec<Service>,
    /// Deny-by-default traffic rules.
    pub network_policies: Vec<NetworkPolicy>,
    /// Stateful workloads.
    pub stateful_sets: Vec<StatefulSet>,
    /// Stateless workloads.
    pub deployments: Vec<Deployment>,
    /// One-shot workloads.
    pub jobs: Vec<Job>,
    /// Disruption budgets.
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    /// Horizontal autoscalers.
    pub horizontal_pod_autoscalers: Vec<HorizontalPodAutoscaler>,
    /// Prometheus Operator ServiceMonitors (they select Services).
    pub service_monitors: Vec<DynamicObject>,
    /// KEDA ScaledObjects (they scale a Deployment).
    pub scaled_objects: Vec<DynamicObject>,
    /// Workloads whose readiness makes the phase Ready.
    pub expected: Vec<ExpectedComponent>,
}

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

/// Renders every child of the phase.
///
/// The component builders always describe certificates as generated
/// Secrets and scraping as pod annotations; the data tiers' exporters are
/// added by one pass over them (`exporters`); when cert-manager or the
/// Prometheus Operator is installed, a final pass turns those into
/// Certificates (with their Issuers) and ServiceMonitors.
pub fn render(v: &Validated, profile: &PhaseProfile) -> Desired {
    let mut d = Desired::default();
    render_into(v, profile, &mut d);
    exporters::add(v, &mut d);
    if v.cert_manager {
        integrations::issue_with_cert_manager(v, &mut d);
    }
    if v.service_monitors {
        integrations::scrape_with_service_monitors(v, profile.hardened, &mut d);
    }
    d
}

/// Builds every child of the phase into `d`, with operator-generated
/// certificates and annotation-based scraping (see [`render`]).
///
/// The order is the order of each list in [`Desired`] (and of the golden
/// files): the data tiers before the app, which they wire up; the
/// NetworkPolicies last, from the flows every component declared.
fn render_into(v: &Validated, profile: &PhaseProfile, d: &mut Desired) {
    let app_account = app::identity(v, d);
    let data_account = child_name(v, "data");
    if profile.hardened {
        d.service_accounts
            .push(build::service_account(v, &data_account, "data"));
        tls::build(v, d);
    }
    let mut wiring = app::Wiring::default();
    if v.phase == Phase::Mvp {
        app::sqlite(v, d, &mut wiring);
    }
    if let Some(pg) = &v.postgres {
        let cluster = postgres::build(v, pg, &data_account, d, &mut wiring);
        if let Some(bouncer) = &v.pgbouncer {
            pgbouncer::build(v, bouncer, &cluster, &data_account, d, &mut wiring);
        }
    }
    if let Some(redis) = &v.redis {
        redis::build(v, redis, &data_account, d, &mut wiring);
    }
    if let Some(ch) = &v.clickhouse {
        clickhouse::build(v, ch, &data_account, d, &mut wiring);
    }
    if let Some(crdb) = &v.cockroach {
        cockroach::build(v, crdb, &data_account, d, &mut wiring);
    }
    if let Some(edge) = &v.edge {
        edge::build(v, edge, &data_account, d, &mut wiring);
    }
    if let Some(oidc) = &v.oidc {
        app::oidc(v, oidc, d, &mut wiring);
    }
    if profile.hardened {
        app::serve_tls(v, d, &mut wiring);
    }
    let flows = std::mem::take(&mut wiring.flows);
    app::build(v, profile, &app_account, wiring, d);
    if profile.hardened {
        network::build(v, &flows, d);
    }
}

/// The objects of a third-party kind.
pub fn third_party(d: &Desired, kind: ThirdParty) -> &[DynamicObject] {
    match kind {
        ThirdParty::Issuer => &d.issuers,
        ThirdParty::Certificate => &d.certificates,
        ThirdParty::ServiceMonitor => &d.service_monitors,
        ThirdParty::ScaledObject => &d.scaled_objects,
    }
}

/// `<scalingphase>-<suffix>`, shortened with a hash when longer than
/// [`MAX_CHILD_NAME`] so it stays a valid, unique DNS-1123 label.
pub fn child_name(v: &Validated, suffix: &str) -> String {
    let full = format!("{}-{}", v.name, suffix);
    if full.len() <= MAX_CHILD_NAME {
        return full;
    }
    let hash = short_hash(full.as_bytes());
    let keep = MAX_CHILD_NAME - hash.len() - 1;
    let head = full[..keep].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// First 8 hex characters of the SHA-256 of `data`.
pub fn short_hash(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Labels of a child: managed-by, its ScalingPhase, its tier and component.
pub fn labels(v: &Validated, tier: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = selector(v, component);
    l.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    l.insert(SCALINGPHASE_LABEL.into(), v.name.clone());
    l.insert("app.kubernetes.io/part-of".into(), "ladder".into());
    l.insert(TIER_LABEL.into(), tier.into());
    l
}

/// The selector labels of one component's pods.
pub fn selector(v: &Validated, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
    ])
}

/// Metadata of a child: name, namespace, labels, controller owner reference.
pub fn meta(v: &Validated, name: &str, tier: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels(v, tier, component)),
        owner_references: Some(vec![v.owner.clone()]),
        ..ObjectMeta::default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apply_order_names_every_kind_once() {
        let mut seen = BTreeSet::new();
        for k in Kind::APPLY_ORDER {
            assert!(seen.insert(k), "{k:?} twice");
            if let Some(tp) = k.third_party() {
                assert_eq!(k.name(), tp.kind());
            }
        }
        assert_eq!(seen.len(), Kind::APPLY_ORDER.len());
        // Secrets first (workloads mount them), what refers to workloads last.
        assert_eq!(Kind::APPLY_ORDER[0], Kind::Secret);
        let at = |k: Kind| Kind::APPLY_ORDER.iter().position(|x| *x == k);
        assert!(at(Kind::ConfigMap) < at(Kind::StatefulSet));
        assert!(at(Kind::Deployment) < at(Kind::HorizontalPodAutoscaler));
    }
}
