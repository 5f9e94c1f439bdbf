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

mod components;
pub mod config;
mod integrations;
pub mod migration;

use std::collections::BTreeMap;

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
use ladder_crds::catalogue::PhaseProfile;

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
    Ca,
    /// `tls.crt`, `tls.key` and `ca.crt`, signed by the CA Secret `ca`.
    Tls {
        /// Name of the CA Secret.
        ca: String,
        /// Subject common name.
        common_name: String,
        /// DNS subject alternative names.
        dns_names: Vec<String>,
    },
    /// `username` and `password` (random, 32 characters); for PostgreSQL also
    /// `replication-password` and a PgBouncer `userlist.txt`.
    Credentials {
        /// The user name.
        username: String,
        /// Also write the PostgreSQL extras.
        postgres: bool,
    },
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

/// Every child object of a phase. Applied in field order (see
/// [`crate::apply`]); destructured without `..` there so a new kind cannot be
/// forgotten.
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

impl Desired {
    /// Number of objects (generated Secrets included).
    pub fn len(&self) -> usize {
        self.generated_secrets.len()
            + self.issuers.len()
            + self.certificates.len()
            + self.service_accounts.len()
            + self.roles.len()
            + self.role_bindings.len()
            + self.config_maps.len()
            + self.persistent_volume_claims.len()
            + self.services.len()
            + self.network_policies.len()
            + self.stateful_sets.len()
            + self.deployments.len()
            + self.jobs.len()
            + self.pod_disruption_budgets.len()
            + self.horizontal_pod_autoscalers.len()
            + self.service_monitors.len()
            + self.scaled_objects.len()
    }

    /// True when nothing is desired.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Renders every child of the phase.
///
/// The component builders always describe certificates as generated
/// Secrets and scraping as pod annotations; when cert-manager or the
/// Prometheus Operator is installed, a final pass turns those into
/// Certificates (with their Issuers) and ServiceMonitors.
pub fn render(v: &Validated, profile: &PhaseProfile) -> Desired {
    let mut d = Desired::default();
    components::render_into(v, profile, &mut d);
    if v.cert_manager {
        integrations::issue_with_cert_manager(v, &mut d);
    }
    if v.service_monitors {
        integrations::scrape_with_service_monitors(v, profile.hardened, &mut d);
    }
    d
}

/// The objects of each third-party kind, in apply order.
pub fn third_party(d: &Desired) -> [(ThirdParty, &[DynamicObject]); 4] {
    [
        (ThirdParty::Issuer, &d.issuers),
        (ThirdParty::Certificate, &d.certificates),
        (ThirdParty::ServiceMonitor, &d.service_monitors),
        (ThirdParty::ScaledObject, &d.scaled_objects),
    ]
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
    /// Every object except the generated Secrets, as JSON, in apply order:
    /// certificate issuance, identities and permissions, config, volumes,
    /// Services, NetworkPolicies, then workloads, then what refers to
    /// workloads (PDBs, autoscalers, ServiceMonitors).
    pub fn objects(&self) -> Vec<serde_json::Value> {
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
        fn push<T: serde::Serialize>(out: &mut Vec<serde_json::Value>, items: &[T]) {
            out.extend(items.iter().filter_map(|i| serde_json::to_value(i).ok()));
        }
        let mut out = Vec::with_capacity(self.len());
        // DynamicObjects carry their apiVersion and kind (`types`).
        push(&mut out, issuers);
        push(&mut out, certificates);
        push(&mut out, service_accounts);
        push(&mut out, roles);
        push(&mut out, role_bindings);
        push(&mut out, config_maps);
        push(&mut out, persistent_volume_claims);
        push(&mut out, services);
        push(&mut out, network_policies);
        push(&mut out, stateful_sets);
        push(&mut out, deployments);
        push(&mut out, jobs);
        push(&mut out, pod_disruption_budgets);
        push(&mut out, horizontal_pod_autoscalers);
        push(&mut out, service_monitors);
        push(&mut out, scaled_objects);
        out
    }

    /// The whole desired state as a YAML stream (generated Secrets listed by
    /// name and content kind, without data): what the golden files hold.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for s in &self.generated_secrets {
            let what = match &s.content {
                SecretContent::Ca => "ca".to_owned(),
                SecretContent::Tls {
                    ca,
                    common_name,
                    dns_names,
                } => {
                    format!(
                        "tls signed by {ca}, CN={common_name}, SAN={}",
                        dns_names.join(",")
                    )
                }
                SecretContent::Credentials { username, postgres } => {
                    format!(
                        "credentials for {username}{}",
                        if *postgres {
                            " (+replication, userlist)"
                        } else {
                            ""
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
