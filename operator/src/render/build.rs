//! Small typed builders the component modules share around their pods:
//! ports, owners (tier and component), Services, ConfigMaps, workloads with
//! their readiness expectation, and disruption budgets (what goes inside a
//! pod template is in `super::pod`).
//!
//! Every component runs the same sequence (container → pod template →
//! workload + its readiness expectation → Services → disruption budget);
//! the pieces live here once so a component module only says what differs.
//! All pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodTemplateSpec, Service,
    ServiceAccount, ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Desired, ExpectedComponent, TIER_LABEL, child_name, meta, selector};
use crate::validate::{DataComponent, Validated};
use ladder_crds::scalingphase::DeletionPolicy;

/// Where every TLS Secret is mounted.
pub(super) const TLS_DIR: &str = "/etc/ladder/tls";
/// The tier of the app's pods (they alone talk to the Kubernetes API).
pub(super) const APP_TIER: &str = "app";

/// A named TCP port: the container port, the Service port (targeting the
/// container port by name) and, in NetworkPolicies, the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Port {
    /// Port name (an IANA service name).
    pub name: &'static str,
    /// Port number.
    pub number: i32,
}

impl Port {
    pub(super) const fn new(name: &'static str, number: i32) -> Self {
        Port { name, number }
    }
}

/// Who a child belongs to: its tier (NetworkPolicies select tiers) and its
/// component (the selector of one workload's pods).
#[derive(Clone, Debug)]
pub(super) struct Owner {
    /// Tier label value.
    pub tier: &'static str,
    /// Component label value.
    pub component: String,
}

impl Owner {
    /// A component alone in its tier (component = tier).
    pub(super) fn tier(tier: &'static str) -> Self {
        Owner {
            tier,
            component: tier.into(),
        }
    }

    /// A component of a tier with several components.
    pub(super) fn component(tier: &'static str, component: impl Into<String>) -> Self {
        Owner {
            tier,
            component: component.into(),
        }
    }
}

// --------------------------------------------------- objects around the pods --

/// A label selector matching exactly these labels.
pub(super) fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

/// The labels of every pod of a tier of this phase.
pub(super) fn tier_selector(v: &Validated, tier: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
        (TIER_LABEL.to_owned(), tier.to_owned()),
    ])
}

/// A ServiceAccount whose token is not mounted unless a pod asks.
pub(super) fn service_account(v: &Validated, name: &str, tier: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(v, name, tier, tier),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// A ConfigMap of a tier.
pub(super) fn config_map(
    v: &Validated,
    name: &str,
    tier: &str,
    data: Vec<(&str, String)>,
    immutable: bool,
) -> ConfigMap {
    ConfigMap {
        metadata: meta(v, name, tier, tier),
        data: Some(data.into_iter().map(|(k, d)| (k.to_owned(), d)).collect()),
        immutable: immutable.then_some(true),
        ..ConfigMap::default()
    }
}

/// Pushes a ConfigMap `<phase>-<suffix>` of a tier holding one file;
/// returns its name.
pub(super) fn push_config_file(
    v: &Validated,
    d: &mut Desired,
    suffix: &str,
    tier: &str,
    file: &str,
    text: &str,
) -> String {
    let name = child_name(v, suffix);
    d.config_maps.push(config_map(
        v,
        &name,
        tier,
        vec![(file, text.to_owned())],
        false,
    ));
    name
}

/// How a Service resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Addressing {
    /// One virtual IP over the ready pods.
    ClusterIp,
    /// No virtual IP: one DNS record per pod, ready or not (StatefulSet
    /// pods find each other by name before they are ready).
    Headless,
}

/// A Service over one component's pods.
pub(super) fn service(
    v: &Validated,
    name: &str,
    owner: &Owner,
    ports: &[Port],
    addressing: Addressing,
) -> Service {
    service_over(
        v,
        name,
        owner,
        selector(v, &owner.component),
        ports,
        addressing,
    )
}

/// A Service over every pod of a tier (e.g. all CockroachDB nodes across
/// regions).
pub(super) fn tier_service(
    v: &Validated,
    name: &str,
    tier: &'static str,
    ports: &[Port],
    addressing: Addressing,
) -> Service {
    let owner = Owner::tier(tier);
    service_over(v, name, &owner, tier_selector(v, tier), ports, addressing)
}

fn service_over(
    v: &Validated,
    name: &str,
    owner: &Owner,
    selector: BTreeMap<String, String>,
    ports: &[Port],
    addressing: Addressing,
) -> Service {
    let headless = addressing == Addressing::Headless;
    Service {
        metadata: meta(v, name, owner.tier, &owner.component),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            cluster_ip: headless.then(|| "None".into()),
            publish_not_ready_addresses: headless.then_some(true),
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.into()),
                        port: p.number,
                        target_port: Some(IntOrString::String(p.name.into())),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one pod of `selector_labels` down at a time for voluntary
/// disruptions (drains); an unhealthy pod may always be evicted.
pub(super) fn pdb(
    v: &Validated,
    name: &str,
    tier: &str,
    selector_labels: BTreeMap<String, String>,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(v, name, tier, tier),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(match_labels(selector_labels)),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// A PodDisruptionBudget over one component's pods when it has more than one.
pub(super) fn push_pdb_if_replicated(
    v: &Validated,
    d: &mut Desired,
    name: &str,
    owner: &Owner,
    replicas: i32,
) {
    if replicas > 1 {
        d.pod_disruption_budgets
            .push(pdb(v, name, owner.tier, selector(v, &owner.component)));
    }
}

/// A ReadWriteOnce volume claim of the component's size and class, named
/// `data`, as a StatefulSet's template (no namespace, no owner: the
/// StatefulSet controller sets both).
pub(super) fn claim_template(
    v: &Validated,
    owner: &Owner,
    c: &DataComponent,
) -> PersistentVolumeClaim {
    let mut m = meta(v, "data", owner.tier, &owner.component);
    // The StatefulSet controller names and namespaces the claims; owner
    // references on templates are ignored.
    m.namespace = None;
    m.owner_references = None;
    PersistentVolumeClaim {
        metadata: m,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: c.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(c.storage_size.clone()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

// --------------------------------------------------------------- workloads --

/// Records a workload whose readiness makes the phase Ready.
pub(super) fn expect(d: &mut Desired, kind: &'static str, name: &str, replicas: i32) {
    d.expected.push(ExpectedComponent {
        kind,
        name: name.into(),
        replicas,
    });
}

/// A StatefulSet to render, with one volume per pod when it keeps `data`.
pub(super) struct StatefulWorkload<'a> {
    pub name: String,
    pub owner: Owner,
    pub replicas: i32,
    /// The headless Service that gives the pods their names.
    pub service_name: String,
    pub template: PodTemplateSpec,
    pub data: Option<&'a DataComponent>,
}

/// Pushes the StatefulSet and the readiness the status waits for.
pub(super) fn push_stateful_set(v: &Validated, d: &mut Desired, w: StatefulWorkload<'_>) {
    let when_deleted = match v.deletion_policy {
        DeletionPolicy::Retain => "Retain",
        DeletionPolicy::Delete => "Delete",
    };
    expect(d, "StatefulSet", &w.name, w.replicas);
    d.stateful_sets.push(StatefulSet {
        metadata: meta(v, &w.name, w.owner.tier, &w.owner.component),
        spec: StatefulSetSpec {
            replicas: Some(w.replicas),
            selector: match_labels(selector(v, &w.owner.component)),
            service_name: Some(w.service_name),
            pod_management_policy: Some("Parallel".into()),
            template: w.template,
            volume_claim_templates: w.data.map(|c| vec![claim_template(v, &w.owner, c)]),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(when_deleted.into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            revision_history_limit: Some(5),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    });
}

/// A Deployment to render.
pub(super) struct StatelessWorkload {
    pub name: String,
    pub owner: Owner,
    pub replicas: i32,
    /// An autoscaler owns the replica count: leave it out of what we apply
    /// so server-side apply never fights the HPA.
    pub autoscaled: bool,
    /// Stop the old pod before starting the new one (a single writer).
    pub recreate: bool,
    pub template: PodTemplateSpec,
}

/// Pushes the Deployment and the readiness the status waits for.
pub(super) fn push_deployment(v: &Validated, d: &mut Desired, w: StatelessWorkload) {
    expect(d, "Deployment", &w.name, w.replicas);
    d.deployments.push(Deployment {
        metadata: meta(v, &w.name, w.owner.tier, &w.owner.component),
        spec: DeploymentSpec {
            replicas: (!w.autoscaled).then_some(w.replicas),
            selector: match_labels(selector(v, &w.owner.component)),
            // Always explicit: server-side apply then owns `rollingUpdate` and
            // drops it when the app switches to Recreate (phase 0), which the
            // apiserver would refuse with a defaulted `rollingUpdate` left over.
            strategy: Some(if w.recreate {
                DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    rolling_update: None,
                }
            } else {
                DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::String("25%".into())),
                        max_unavailable: Some(IntOrString::String("25%".into())),
                    }),
                }
            }),
            template: w.template,
            revision_history_limit: Some(5),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    });
}
