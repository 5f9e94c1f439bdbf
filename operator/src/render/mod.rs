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
mod desired;
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

pub use desired::{Kind, ObjectList};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apply_order_names_every_kind_once() {
        let mut seen = std::collections::BTreeSet::new();
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
