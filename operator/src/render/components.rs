//! One builder per component of the roadmap. Called only by
//! [`super::render`]; every function here is pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Affinity, HTTPGetAction, KeyToPath};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, ExecAction, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction, TopologySpreadConstraint,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use serde_json::json;

use super::config;
use super::{
    CONFIG_HASH_ANNOTATION, CREDENTIAL_LABEL, Desired, ExpectedComponent, GeneratedSecret,
    SecretContent, child_name, labels, meta, selector, short_hash,
};
use crate::integrations::ThirdParty;
use crate::validate::{DataComponent, Size, Validated};
use ladder_crds::catalogue::{Phase, PhaseProfile};
use ladder_crds::contract;

const REGION_LABEL: &str = "topology.kubernetes.io/region";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Where every TLS Secret is mounted.
const TLS_DIR: &str = "/etc/ladder/tls";

// ---------------------------------------------------------------- helpers --

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn secret_volume(name: &str, secret: &str, items: Option<Vec<(&str, &str)>>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            items: items.map(|i| {
                i.into_iter()
                    .map(|(k, p)| KeyToPath {
                        key: k.into(),
                        path: p.into(),
                        ..KeyToPath::default()
                    })
                    .collect()
            }),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn config_volume(name: &str, cm: &str) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: cm.into(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn resources(size: &Size) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(size.cpu.clone())),
            ("memory".to_owned(), Quantity(size.memory.clone())),
        ])),
        // Memory limit = request: a data pod is never OOM-killed for a neighbour.
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(size.memory.clone()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The `restricted` Pod Security profile, container level.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

struct C<'a> {
    name: &'a str,
    image: &'a str,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    ports: Vec<(&'a str, i32)>,
    mounts: Vec<VolumeMount>,
    size: &'a Size,
    probe: Option<Probe>,
}

fn container(c: C<'_>) -> Container {
    let mut mounts = c.mounts;
    mounts.push(mount("tmp", "/tmp", false));
    Container {
        name: c.name.into(),
        image: Some(c.image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: (!c.command.is_empty()).then_some(c.command),
        args: (!c.args.is_empty()).then_some(c.args),
        env: (!c.env.is_empty()).then_some(c.env),
        ports: (!c.ports.is_empty()).then(|| {
            c.ports
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: Some((*n).into()),
                    container_port: *p,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect()
        }),
        volume_mounts: Some(mounts),
        resources: Some(resources(c.size)),
        readiness_probe: c.probe,
        security_context: Some(restricted()),
        ..Container::default()
    }
}

fn tcp_probe(port: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            host: None,
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

fn http_probe(path: &str, port: i32, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: Some(if https { "HTTPS" } else { "HTTP" }.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// Placement of a pod template.
#[derive(Clone, Default)]
enum Placement {
    /// Anywhere.
    #[default]
    Anywhere,
    /// Spread evenly over these regions (hard constraint).
    Spread(Vec<String>),
    /// Spread over regions if possible (soft).
    SpreadSoft,
    /// Pinned to one region, spread over its nodes.
    Region(String),
}

struct P {
    tier: &'static str,
    component: String,
    service_account: String,
    uid: i64,
    containers: Vec<Container>,
    init_containers: Vec<Container>,
    volumes: Vec<Volume>,
    config_hash: Option<String>,
    metrics: Option<(i32, &'static str)>,
    placement: Placement,
    restart_never: bool,
}

fn pod_template(v: &Validated, p: P) -> PodTemplateSpec {
    let mut annotations = BTreeMap::new();
    if let Some(h) = p.config_hash {
        annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), h);
    }
    if let Some((port, path)) = p.metrics {
        // Replaced by a ServiceMonitor when the Prometheus Operator is
        // installed (`super::integrations`).
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), port.to_string());
        annotations.insert("prometheus.io/path".into(), path.into());
    }
    let mut volumes = p.volumes;
    volumes.push(empty_dir("tmp"));
    let spread = |key: &str, hard: bool| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        when_unsatisfiable: if hard {
            "DoNotSchedule"
        } else {
            "ScheduleAnyway"
        }
        .into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector(v, &p.component)),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    };
    let region_affinity = |regions: Vec<String>| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: REGION_LABEL.into(),
                        operator: "In".into(),
                        values: Some(regions),
                    }]),
                    match_fields: None,
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    };
    let (affinity, constraints) = match p.placement {
        Placement::Anywhere => (None, None),
        Placement::SpreadSoft => (
            None,
            Some(vec![
                spread(REGION_LABEL, false),
                spread(HOSTNAME_LABEL, false),
            ]),
        ),
        Placement::Spread(regions) if regions.is_empty() => {
            (None, Some(vec![spread(REGION_LABEL, false)]))
        }
        Placement::Spread(regions) => (
            Some(region_affinity(regions)),
            Some(vec![
                spread(REGION_LABEL, true),
                spread(HOSTNAME_LABEL, false),
            ]),
        ),
        Placement::Region(r) => (
            Some(region_affinity(vec![r])),
            Some(vec![spread(HOSTNAME_LABEL, false)]),
        ),
    };
    let mut labels = labels(v, p.tier, &p.component);
    labels.remove(super::MANAGED_BY_LABEL);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(p.service_account),
            automount_service_account_token: Some(p.tier == "app"),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(p.uid),
                run_as_group: Some(p.uid),
                fs_group: Some(p.uid),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: p.containers,
            init_containers: (!p.init_containers.is_empty()).then_some(p.init_containers),
            volumes: Some(volumes),
            affinity,
            topology_spread_constraints: constraints,
            restart_policy: p.restart_never.then(|| "Never".into()),
            termination_grace_period_seconds: Some(if p.tier == "app" { 30 } else { 60 }),
            ..PodSpec::default()
        }),
    }
}

fn hash_of(parts: &[&str]) -> String {
    short_hash(parts.join("\u{0}").as_bytes())
}

fn config_map(
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

fn service(
    v: &Validated,
    name: &str,
    tier: &'static str,
    component: &str,
    ports: &[(&str, i32)],
    headless: bool,
) -> Service {
    Service {
        metadata: meta(v, name, tier, component),
        spec: Some(ServiceSpec {
            selector: Some(selector(v, component)),
            cluster_ip: headless.then(|| "None".into()),
            publish_not_ready_addresses: headless.then_some(true),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some((*n).into()),
                        port: *p,
                        target_port: Some(IntOrString::String((*n).into())),
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

fn tier_service(v: &Validated, name: &str, tier: &'static str, ports: &[(&str, i32)]) -> Service {
    // Selects every pod of a tier (e.g. all CockroachDB nodes across regions).
    let mut s = service(v, name, tier, tier, ports, false);
    if let Some(spec) = s.spec.as_mut() {
        spec.selector = Some(BTreeMap::from([
            ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
            (super::TIER_LABEL.to_owned(), tier.to_owned()),
        ]));
    }
    s
}

fn pdb(
    v: &Validated,
    name: &str,
    tier: &str,
    selector_labels: BTreeMap<String, String>,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(v, name, tier, tier),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn claim_template(
    v: &Validated,
    tier: &str,
    component: &str,
    c: &DataComponent,
) -> PersistentVolumeClaim {
    let mut m = meta(v, "data", tier, component);
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

struct Sts<'a> {
    name: String,
    tier: &'static str,
    component: String,
    replicas: i32,
    service_name: String,
    template: PodTemplateSpec,
    data: Option<&'a DataComponent>,
}

fn stateful_set(v: &Validated, s: Sts<'_>) -> StatefulSet {
    let when_deleted = match v.deletion_policy {
        ladder_crds::scalingphase::DeletionPolicy::Retain => "Retain",
        ladder_crds::scalingphase::DeletionPolicy::Delete => "Delete",
    };
    StatefulSet {
        metadata: meta(v, &s.name, s.tier, &s.component),
        spec: StatefulSetSpec {
            replicas: Some(s.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(v, &s.component)),
                ..LabelSelector::default()
            },
            service_name: Some(s.service_name),
            pod_management_policy: Some("Parallel".into()),
            template: s.template,
            volume_claim_templates: s
                .data
                .map(|c| vec![claim_template(v, s.tier, &s.component, c)]),
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
    }
}

fn deployment(
    v: &Validated,
    name: &str,
    tier: &'static str,
    component: &str,
    replicas: Option<i32>,
    recreate: bool,
    template: PodTemplateSpec,
) -> Deployment {
    Deployment {
        metadata: meta(v, name, tier, component),
        spec: DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector(v, component)),
                ..LabelSelector::default()
            },
            // Always explicit: server-side apply then owns `rollingUpdate` and
            // drops it when the app switches to Recreate (phase 0), which the
            // apiserver would refuse with a defaulted `rollingUpdate` left over.
            strategy: Some(if recreate {
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
            template,
            revision_history_limit: Some(5),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn secret_meta(v: &Validated, name: &str, tier: &str) -> ObjectMeta {
    let mut m = meta(v, name, tier, tier);
    m.labels
        .get_or_insert_default()
        .insert(CREDENTIAL_LABEL.into(), "true".into());
    m
}

/// A PostgreSQL URL without password (see [`ladder_crds::contract`]), verifying the server against
/// the CA mounted at `TLS_DIR`.
fn pg_url(scheme: &str, host: &str, port: i32, db: &str) -> String {
    format!("{scheme}://ladder@{host}:{port}/{db}?sslmode=verify-full&sslrootcert={TLS_DIR}/ca.crt")
}

fn tls_secret(v: &Validated, d: &mut Desired, tier: &str, hosts: &[String]) -> String {
    let name = child_name(v, &format!("{tier}-tls"));
    let mut dns_names = Vec::new();
    for h in hosts {
        dns_names.push(h.clone());
        dns_names.push(format!("{h}.{}.svc", v.namespace));
        dns_names.push(format!("{h}.{}.svc.cluster.local", v.namespace));
        // Pods of a StatefulSet by their stable names (`<pod>.<service>.<ns>.svc`); a host that
        // is a wildcard already covers them (a second label of wildcard would match nothing).
        if !h.starts_with("*.") {
            dns_names.push(format!("*.{h}.{}.svc", v.namespace));
        }
    }
    d.generated_secrets.push(GeneratedSecret {
        name: name.clone(),
        meta: secret_meta(v, &name, tier),
        content: SecretContent::Tls {
            ca: child_name(v, "ca"),
            common_name: hosts.first().cloned().unwrap_or_else(|| name.clone()),
            dns_names,
        },
    });
    name
}

fn credentials(
    v: &Validated,
    d: &mut Desired,
    tier: &str,
    username: &str,
    postgres: bool,
) -> String {
    let name = child_name(v, &format!("{tier}-credentials"));
    d.generated_secrets.push(GeneratedSecret {
        name: name.clone(),
        meta: secret_meta(v, &name, tier),
        content: SecretContent::Credentials {
            username: username.into(),
            postgres,
        },
    });
    name
}

// ------------------------------------------------------------- components --

/// Builds every child of the phase into `d`, with operator-generated
/// certificates and annotation-based scraping; `super::integrations` turns
/// those into cert-manager and Prometheus Operator objects when installed.
pub(super) fn render_into(v: &Validated, profile: &PhaseProfile, d: &mut Desired) {
    let hardened = profile.hardened;
    let sa = child_name(v, "app");
    let data_sa = child_name(v, "data");
    d.service_accounts.push(ServiceAccount {
        metadata: meta(v, &sa, "app", "app"),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    });
    app_rbac(v, &sa, d);
    if hardened {
        d.service_accounts.push(ServiceAccount {
            metadata: meta(v, &data_sa, "data", "data"),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        });
        let ca = child_name(v, "ca");
        d.generated_secrets.push(GeneratedSecret {
            name: ca.clone(),
            meta: secret_meta(v, &ca, "ca"),
            content: SecretContent::Ca,
        });
    }

    // The app's wiring, filled in by each data tier below.
    let mut app_env: Vec<EnvVar> = Vec::new();
    let mut app_mounts: Vec<(Volume, VolumeMount)> = Vec::new();
    let mut hash_parts: Vec<String> = Vec::new();
    let mut flows: Vec<(&'static str, &'static str, Vec<i32>)> = Vec::new();
    // The app's data tier (`LADDER_STORE`, see `ladder_crds::contract`).
    let mut store: Option<String> = None;

    if v.phase == Phase::Mvp {
        let pvc_name = child_name(v, "app-data");
        let c = DataComponent {
            image: String::new(),
            replicas: 1,
            size: v.app_size.clone(),
            storage_size: "1Gi".into(),
            storage_class: None,
        };
        let mut pvc = claim_template(v, "app", "app", &c);
        pvc.metadata = meta(v, &pvc_name, "app", "app");
        d.persistent_volume_claims.push(pvc);
        store = Some("sqlite:/data/ladder.db".to_owned());
        app_mounts.push((
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc_name,
                    read_only: None,
                }),
                ..Volume::default()
            },
            mount("data", "/data", false),
        ));
    }

    if let Some(pg) = &v.postgres {
        let creds = credentials(v, d, "postgres", "ladder", true);
        app_env.push(env_secret(contract::env::DB_PASSWORD, &creds, "password"));
        let conf = config::postgresql_conf(&pg.parameters, pg.component.replicas);
        let hba = config::pg_hba_conf();
        let cm = child_name(v, "postgres-config");
        d.config_maps.push(config_map(
            v,
            &cm,
            "postgres",
            vec![
                ("postgresql.conf", conf.clone()),
                ("pg_hba.conf", hba.clone()),
                ("10-replication.sh", config::pg_init_script()),
            ],
            false,
        ));
        let conf_hash = hash_of(&[&conf, &hba]);
        let mut databases = Vec::new();
        let mut all_hosts = Vec::new();
        // (primary host, replica StatefulSet) of each shard, for the app's URLs.
        let mut instances = Vec::new();
        for shard in 0..pg.shards {
            let (base, db) = if pg.shards == 1 {
                ("postgres".to_owned(), "ladder".to_owned())
            } else {
                (format!("pg-shard-{shard}"), format!("shard_{shard}"))
            };
            let primary = child_name(v, &base);
            all_hosts.push(primary.clone());
            databases.push((db, format!("{primary}.{}.svc", v.namespace)));
            postgres_instance(
                v,
                d,
                pg_ctx(&primary, &base, &cm, &creds, &conf_hash, &data_sa, pg),
                None,
            );
            let mut replica_set = None;
            if pg.component.replicas > 0 {
                let replica = child_name(v, &format!("{base}-replica"));
                all_hosts.push(replica.clone());
                replica_set = Some(replica.clone());
                postgres_instance(
                    v,
                    d,
                    pg_ctx(
                        &replica,
                        &format!("{base}-replica"),
                        &cm,
                        &creds,
                        &conf_hash,
                        &data_sa,
                        pg,
                    ),
                    Some(&primary),
                );
                if pg.shards == 1 {
                    let read = child_name(v, "postgres-read");
                    all_hosts.push(read.clone());
                    d.services.push(service(
                        v,
                        &read,
                        "postgres",
                        &format!("{base}-replica"),
                        &[("postgres", 5432)],
                        false,
                    ));
                    flows.push(("app", "postgres", vec![5432]));
                }
            }
            instances.push((primary, replica_set));
        }
        tls_secret(v, d, "postgres", &all_hosts);
        flows.push(("postgres", "postgres", vec![5432]));
        flows.push(("pgbouncer", "postgres", vec![5432]));
        // The app reaches each primary through PgBouncer when there is one, and each read
        // replica directly by its pod's stable name (the app checks every replica's lag).
        let bouncer = v.pgbouncer.as_ref().map(|_| child_name(v, "pgbouncer"));
        let primary_url = |db: &str, primary: &str| match &bouncer {
            Some(b) => pg_url(contract::PGBOUNCER_SCHEME, b, 6432, db),
            None => pg_url("postgres", primary, 5432, db),
        };
        if pg.shards > 1 {
            let shards: Vec<(String, String)> = databases
                .iter()
                .zip(&instances)
                .map(|((db, _), (primary, _))| (db.replace('_', "-"), primary_url(db, primary)))
                .collect();
            let map = config::shard_map_json(&shards);
            let name = child_name(v, &format!("shard-map-v{}", config::SHARD_MAP_VERSION));
            d.config_maps.push(config_map(
                v,
                &name,
                "app",
                vec![("shard-map.json", map.clone())],
                true,
            ));
            hash_parts.push(map);
            store = Some("shards:/etc/ladder/shard-map/shard-map.json".to_owned());
            app_mounts.push((
                config_volume("shard-map", &name),
                mount("shard-map", "/etc/ladder/shard-map", true),
            ));
        } else if let Some((primary, replica_set)) = instances.first() {
            let write = primary_url("ladder", primary);
            store = Some(match replica_set {
                Some(set) => {
                    let mut spec = format!("replicas:{write}");
                    for i in 0..pg.component.replicas {
                        let host = format!("{set}-{i}.{set}.{}.svc", v.namespace);
                        spec.push(',');
                        spec.push_str(&pg_url("postgres", &host, 5432, "ladder"));
                    }
                    spec
                }
                None if bouncer.is_some() => {
                    format!(
                        "pgbouncer:{}",
                        pg_url("postgres", &child_name(v, "pgbouncer"), 6432, "ladder")
                    )
                }
                None => format!("postgres:{write}"),
            });
        }
        if let Some((image, replicas, pool)) = &v.pgbouncer {
            pgbouncer(v, d, image, *replicas, *pool, &databases, &creds, &data_sa);
            flows.push(("app", "pgbouncer", vec![6432]));
        }
    }

    if let Some(redis) = &v.redis {
        let creds = credentials(v, d, "redis", "default", false);
        let host = child_name(v, "redis");
        let tls = tls_secret(v, d, "redis", std::slice::from_ref(&host));
        let conf = config::redis_conf();
        let cm = child_name(v, "redis-config");
        d.config_maps.push(config_map(
            v,
            &cm,
            "redis",
            vec![("redis.conf", conf.clone())],
            false,
        ));
        let c = container(C {
            name: "redis",
            image: &redis.image,
            command: vec!["redis-server".into()],
            args: vec![
                "/etc/redis/redis.conf".into(),
                "--requirepass".into(),
                "$(REDIS_PASSWORD)".into(),
            ],
            env: vec![env_secret("REDIS_PASSWORD", &creds, "password")],
            ports: vec![("redis", 6379)],
            mounts: vec![
                mount("config", "/etc/redis", true),
                mount("tls", TLS_DIR, true),
                mount("data", "/data", false),
            ],
            size: &redis.size,
            probe: Some(tcp_probe(6379)),
        });
        let template = pod_template(
            v,
            P {
                tier: "redis",
                component: "redis".into(),
                service_account: data_sa.clone(),
                uid: 999,
                containers: vec![c],
                init_containers: vec![],
                volumes: vec![
                    config_volume("config", &cm),
                    secret_volume("tls", &tls, None),
                ],
                config_hash: Some(hash_of(&[&conf])),
                metrics: None,
                placement: Placement::Anywhere,
                restart_never: false,
            },
        );
        d.stateful_sets.push(stateful_set(
            v,
            Sts {
                name: host.clone(),
                tier: "redis",
                component: "redis".into(),
                replicas: redis.replicas,
                service_name: host.clone(),
                template,
                data: Some(redis),
            },
        ));
        d.expected.push(ExpectedComponent {
            kind: "StatefulSet",
            name: host.clone(),
            replicas: redis.replicas,
        });
        d.services.push(service(
            v,
            &host,
            "redis",
            "redis",
            &[("redis", 6379)],
            false,
        ));
        app_env.push(env_secret(
            contract::env::REDIS_PASSWORD,
            &creds,
            "password",
        ));
        app_env.push(env(
            contract::env::REDIS_URL,
            format!("rediss://default@{host}:6379/0"),
        ));
        flows.push(("app", "redis", vec![6379]));
    }

    if let Some(ch) = &v.clickhouse {
        clickhouse(v, d, ch, &data_sa, &mut app_env);
        flows.push(("app", "clickhouse", vec![8443, 9440]));
        flows.push(("clickhouse", "clickhouse", vec![9440, 9009]));
    }

    if let Some(crdb) = &v.cockroach {
        store = Some(cockroach(v, d, crdb, &data_sa, &mut app_mounts));
        flows.push(("app", "cockroach", vec![26257]));
        flows.push(("cockroach", "cockroach", vec![26257, 8080]));
    }

    if let Some(edge) = &v.edge {
        let policy = config::edge_policy_json(edge);
        let name = child_name(v, "edge-policy");
        d.config_maps.push(config_map(
            v,
            &name,
            "app",
            vec![("policy.json", policy.clone())],
            false,
        ));
        hash_parts.push(policy);
        app_env.push(env(
            contract::env::RULES_FILE,
            "/etc/ladder/edge/policy.json",
        ));
        app_mounts.push((
            config_volume("edge-policy", &name),
            mount("edge-policy", "/etc/ladder/edge", true),
        ));
        if let Some(varnish) = &v.varnish {
            edge_tier(v, d, varnish, edge, &data_sa);
            flows.push(("varnish", "app", vec![v.app_port]));
            flows.push(("app", "varnish", vec![8080]));
            let pods = child_name(v, "varnish-pods");
            app_env.push(env(
                contract::env::VARNISH_URL,
                format!("http://{pods}.{}.svc:8080", v.namespace),
            ));
            app_env.push(env(contract::env::TRUST_FORWARDED_FOR, "true"));
        }
    }

    if let Some(oidc) = &v.oidc {
        let doc = config::oidc_json(oidc);
        let name = child_name(v, "oidc");
        d.config_maps.push(config_map(
            v,
            &name,
            "app",
            vec![("oidc.json", doc.clone())],
            false,
        ));
        hash_parts.push(doc);
        app_env.push(env(
            contract::env::OIDC_CONFIG,
            "/etc/ladder/oidc/oidc.json",
        ));
        app_mounts.push((
            config_volume("oidc", &name),
            mount("oidc", "/etc/ladder/oidc", true),
        ));
        enterprise_rbac(v, d);
    }

    if hardened {
        let host = child_name(v, "app");
        let tls = tls_secret(v, d, "app", &[host]);
        app_env.push(env(contract::env::TLS_CERT, format!("{TLS_DIR}/tls.crt")));
        app_env.push(env(contract::env::TLS_KEY, format!("{TLS_DIR}/tls.key")));
        app_env.push(env(contract::env::TLS_CA, format!("{TLS_DIR}/ca.crt")));
        app_mounts.push((
            secret_volume("tls", &tls, None),
            mount("tls", TLS_DIR, true),
        ));
    }

    if let Some(store) = store {
        app_env.insert(0, env(contract::env::STORE, store));
    }
    app(v, profile, d, &sa, app_env, app_mounts, hash_parts);
    if hardened {
        network_policies(v, d, &flows);
    }
}

fn app_rbac(v: &Validated, sa: &str, d: &mut Desired) {
    // The app writes one LoadReport per instance (owned by its Pod).
    let name = child_name(v, "app-loadreports");
    d.roles.push(Role {
        metadata: meta(v, &name, "app", "app"),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["ladder.dev".into()]),
                resources: Some(vec!["loadreports".into()]),
                verbs: vec![
                    "get".into(),
                    "create".into(),
                    "update".into(),
                    "patch".into(),
                ],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec!["".into()]),
                resources: Some(vec!["pods".into()]),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            },
        ]),
    });
    d.role_bindings.push(RoleBinding {
        metadata: meta(v, &name, "app", "app"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.into(),
            namespace: Some(v.namespace.clone()),
            api_group: None,
        }]),
    });
}

fn app(
    v: &Validated,
    profile: &PhaseProfile,
    d: &mut Desired,
    sa: &str,
    wiring: Vec<EnvVar>,
    mounts: Vec<(Volume, VolumeMount)>,
    hash_parts: Vec<String>,
) {
    let name = child_name(v, "app");
    let mut envs = vec![
        env(contract::env::PHASE, v.phase.number().to_string()),
        env(contract::env::SCALING_PHASE, v.name.clone()),
        env(contract::env::LISTEN, format!("0.0.0.0:{}", v.app_port)),
        env_field(contract::env::POD_NAME, "metadata.name"),
        env_field(contract::env::NAMESPACE, "metadata.namespace"),
        env(contract::env::REPORT_LOAD, "true"),
        env("OTEL_SERVICE_NAME", name.clone()),
        env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!(
                "ladder.scalingphase={},ladder.phase={}",
                v.name,
                v.phase.number()
            ),
        ),
        env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        env("OTEL_TRACES_SAMPLER_ARG", "0.1"),
    ];
    envs.extend(wiring);
    envs.extend(v.app_env.iter().map(|(k, val)| env(k, val.clone())));
    let (volumes, mounts): (Vec<_>, Vec<_>) = mounts.into_iter().unzip();
    let https = profile.hardened;
    let c = container(C {
        name: "app",
        image: &v.app_image,
        command: vec![],
        args: vec!["serve".into()],
        env: envs,
        ports: vec![("http", v.app_port)],
        mounts,
        size: &v.app_size,
        probe: Some(http_probe("/readyz", v.app_port, https)),
    });
    let placement = if v.phase >= Phase::Regional {
        Placement::Spread(v.regions.clone())
    } else {
        Placement::Anywhere
    };
    let hash_refs: Vec<&str> = hash_parts.iter().map(String::as_str).collect();
    let template = pod_template(
        v,
        P {
            tier: "app",
            component: "app".into(),
            service_account: sa.into(),
            uid: 10001,
            containers: vec![c],
            init_containers: vec![],
            volumes,
            config_hash: (!hash_refs.is_empty()).then(|| hash_of(&hash_refs)),
            metrics: Some((v.app_port, "/metrics")),
            placement,
            restart_never: false,
        },
    );
    // With an autoscaler the replica count belongs to it: leave it out of
    // what we apply so server-side apply never fights the HPA.
    let replicas = if profile.autoscale.is_some() {
        None
    } else {
        Some(v.app_replicas)
    };
    d.deployments.push(deployment(
        v,
        &name,
        "app",
        "app",
        replicas,
        v.phase == Phase::Mvp,
        template,
    ));
    d.expected.push(ExpectedComponent {
        kind: "Deployment",
        name: name.clone(),
        replicas: v.app_replicas,
    });
    d.services.push(service(
        v,
        &name,
        "app",
        "app",
        &[("http", v.app_port)],
        false,
    ));
    if v.phase >= Phase::Growth {
        d.pod_disruption_budgets
            .push(pdb(v, &name, "app", selector(v, "app")));
    }
    if let Some(a) = &profile.autoscale {
        let min = v.app_replicas.max(a.min.min(v.app_replicas));
        let max = a.max.max(min);
        if a.burst && v.keda {
            d.scaled_objects
                .push(scaled_object(v, &name, min, max, a.cpu_percent));
        } else {
            d.horizontal_pod_autoscalers
                .push(hpa(v, &name, min, max, a.cpu_percent, a.burst));
        }
    }
}

fn hpa(
    v: &Validated,
    name: &str,
    min: i32,
    max: i32,
    cpu: i32,
    burst: bool,
) -> HorizontalPodAutoscaler {
    let behavior = burst.then(|| HorizontalPodAutoscalerBehavior {
        // Burst ("serverless") scaling: no stabilisation going up, double
        // every 15 s or add 10 pods, whichever is more.
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![
                HPAScalingPolicy {
                    type_: "Percent".into(),
                    value: 100,
                    period_seconds: 15,
                },
                HPAScalingPolicy {
                    type_: "Pods".into(),
                    value: 10,
                    period_seconds: 15,
                },
            ]),
            ..HPAScalingRules::default()
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(300),
            select_policy: Some("Min".into()),
            policies: Some(vec![HPAScalingPolicy {
                type_: "Percent".into(),
                value: 20,
                period_seconds: 60,
            }]),
            ..HPAScalingRules::default()
        }),
    });
    HorizontalPodAutoscaler {
        metadata: meta(v, name, "app", "app"),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.into(),
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(cpu),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior,
        },
        ..HorizontalPodAutoscaler::default()
    }
}

fn scaled_object(v: &Validated, name: &str, min: i32, max: i32, cpu: i32) -> DynamicObject {
    let mut o = DynamicObject::new(name, &ThirdParty::ScaledObject.resource()).data(json!({
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": min,
            "maxReplicaCount": max,
            "pollingInterval": 5,
            "cooldownPeriod": 300,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 15},
                    {"type": "Pods", "value": 10, "periodSeconds": 15}]}}}},
            "triggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": cpu.to_string()}}],
        }
    }));
    o.metadata = meta(v, name, "app", "app");
    o
}

struct PgCtx<'a> {
    name: &'a str,
    component: &'a str,
    config: &'a str,
    creds: &'a str,
    hash: &'a str,
    sa: &'a str,
    pg: &'a crate::validate::Postgres,
}

fn pg_ctx<'a>(
    name: &'a str,
    component: &'a str,
    config: &'a str,
    creds: &'a str,
    hash: &'a str,
    sa: &'a str,
    pg: &'a crate::validate::Postgres,
) -> PgCtx<'a> {
    PgCtx {
        name,
        component,
        config,
        creds,
        hash,
        sa,
        pg,
    }
}

/// One PostgreSQL StatefulSet: a primary, or (with `primary`) its streaming
/// read replicas.
fn postgres_instance(v: &Validated, d: &mut Desired, x: PgCtx<'_>, primary: Option<&str>) {
    let replica = primary.is_some();
    let c = &x.pg.component;
    let tls = child_name(v, "postgres-tls");
    let mut mounts = vec![
        mount("config", "/etc/postgresql", true),
        mount("tls", TLS_DIR, true),
        mount("data", "/var/lib/postgresql/data", false),
        mount("run", "/var/run/postgresql", false),
    ];
    let mut envs = vec![
        env("PGDATA", "/var/lib/postgresql/data/pgdata"),
        env("POSTGRES_USER", "ladder"),
        env("POSTGRES_DB", "ladder"),
        env_secret("POSTGRES_PASSWORD", x.creds, "password"),
        env_secret("REPLICATION_PASSWORD", x.creds, "replication-password"),
    ];
    let mut init = Vec::new();
    if let Some(primary) = primary {
        // A replica starts from a base backup of its primary, streamed over TLS.
        envs.push(env("PRIMARY_HOST", primary));
        init.push(container(C {
            name: "basebackup",
            image: &c.image,
            command: vec!["sh".into(), "-c".into()],
            args: vec![
                "test -s \"$PGDATA/PG_VERSION\" || PGPASSWORD=\"$REPLICATION_PASSWORD\" pg_basebackup \
                 -h \"$PRIMARY_HOST\" -U replicator -D \"$PGDATA\" -R -X stream -c fast \
                 -d \"sslmode=verify-full sslrootcert=/etc/ladder/tls/ca.crt\""
                    .into(),
            ],
            env: envs.clone(),
            ports: vec![],
            mounts: mounts.clone(),
            size: &c.size,
            probe: None,
        }));
    } else {
        mounts.push(mount("init", "/docker-entrypoint-initdb.d", true));
    }
    let main = container(C {
        name: "postgres",
        image: &c.image,
        command: vec![],
        args: vec![
            "-c".into(),
            "config_file=/etc/postgresql/postgresql.conf".into(),
            "-c".into(),
            "hba_file=/etc/postgresql/pg_hba.conf".into(),
        ],
        env: envs,
        ports: vec![("postgres", 5432)],
        mounts,
        size: &c.size,
        probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "pg_isready".into(),
                    "-U".into(),
                    "ladder".into(),
                    "-h".into(),
                    "127.0.0.1".into(),
                ]),
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
    });
    let mut volumes = vec![
        config_volume("config", x.config),
        secret_volume("tls", &tls, None),
        empty_dir("run"),
    ];
    if !replica {
        let mut init = config_volume("init", x.config);
        if let Some(cm) = init.config_map.as_mut() {
            cm.items = Some(vec![KeyToPath {
                key: "10-replication.sh".into(),
                path: "10-replication.sh".into(),
                ..KeyToPath::default()
            }]);
        }
        volumes.push(init);
    }
    let template = pod_template(
        v,
        P {
            tier: "postgres",
            component: x.component.into(),
            service_account: x.sa.into(),
            uid: 999,
            containers: vec![main],
            init_containers: init,
            volumes,
            config_hash: Some(x.hash.into()),
            metrics: None,
            placement: if replica {
                Placement::SpreadSoft
            } else {
                Placement::Anywhere
            },
            restart_never: false,
        },
    );
    let replicas = if replica { c.replicas } else { 1 };
    d.stateful_sets.push(stateful_set(
        v,
        Sts {
            name: x.name.into(),
            tier: "postgres",
            component: x.component.into(),
            replicas,
            service_name: x.name.into(),
            template,
            data: Some(c),
        },
    ));
    d.expected.push(ExpectedComponent {
        kind: "StatefulSet",
        name: x.name.into(),
        replicas,
    });
    if !replica {
        d.services.push(service(
            v,
            x.name,
            "postgres",
            x.component,
            &[("postgres", 5432)],
            false,
        ));
    } else {
        d.services.push(service(
            v,
            x.name,
            "postgres",
            x.component,
            &[("postgres", 5432)],
            true,
        ));
        if replicas > 1 {
            d.pod_disruption_budgets
                .push(pdb(v, x.name, "postgres", selector(v, x.component)));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn pgbouncer(
    v: &Validated,
    d: &mut Desired,
    image: &str,
    replicas: i32,
    pool: i32,
    databases: &[(String, String)],
    creds: &str,
    sa: &str,
) {
    let name = child_name(v, "pgbouncer");
    let tls = tls_secret(v, d, "pgbouncer", std::slice::from_ref(&name));
    let ini = config::pgbouncer_ini(databases, pool);
    let cm = child_name(v, "pgbouncer-config");
    d.config_maps.push(config_map(
        v,
        &cm,
        "pgbouncer",
        vec![("pgbouncer.ini", ini.clone())],
        false,
    ));
    let size = Size {
        cpu: "100m".into(),
        memory: "64Mi".into(),
    };
    let c = container(C {
        name: "pgbouncer",
        image,
        command: vec!["pgbouncer".into()],
        args: vec!["/etc/pgbouncer/pgbouncer.ini".into()],
        env: vec![],
        ports: vec![("pgbouncer", 6432)],
        mounts: vec![
            mount("config", "/etc/pgbouncer", true),
            mount("auth", "/etc/pgbouncer-auth", true),
            mount("tls", TLS_DIR, true),
        ],
        size: &size,
        probe: Some(tcp_probe(6432)),
    });
    let template = pod_template(
        v,
        P {
            tier: "pgbouncer",
            component: "pgbouncer".into(),
            service_account: sa.into(),
            uid: 70,
            containers: vec![c],
            init_containers: vec![],
            volumes: vec![
                config_volume("config", &cm),
                secret_volume("auth", creds, Some(vec![("userlist.txt", "userlist.txt")])),
                secret_volume("tls", &tls, None),
            ],
            config_hash: Some(hash_of(&[&ini])),
            metrics: None,
            placement: Placement::SpreadSoft,
            restart_never: false,
        },
    );
    d.deployments.push(deployment(
        v,
        &name,
        "pgbouncer",
        "pgbouncer",
        Some(replicas),
        false,
        template,
    ));
    d.expected.push(ExpectedComponent {
        kind: "Deployment",
        name: name.clone(),
        replicas,
    });
    d.services.push(service(
        v,
        &name,
        "pgbouncer",
        "pgbouncer",
        &[("pgbouncer", 6432)],
        false,
    ));
    if replicas > 1 {
        d.pod_disruption_budgets
            .push(pdb(v, &name, "pgbouncer", selector(v, "pgbouncer")));
    }
}

fn clickhouse(
    v: &Validated,
    d: &mut Desired,
    ch: &DataComponent,
    sa: &str,
    app_env: &mut Vec<EnvVar>,
) {
    let name = child_name(v, "clickhouse");
    let creds = credentials(v, d, "clickhouse", "ladder", false);
    let tls = tls_secret(v, d, "clickhouse", std::slice::from_ref(&name));
    let xml = config::clickhouse_config();
    let cm = child_name(v, "clickhouse-config");
    d.config_maps.push(config_map(
        v,
        &cm,
        "clickhouse",
        vec![("ladder.xml", xml.clone())],
        false,
    ));
    let c = container(C {
        name: "clickhouse",
        image: &ch.image,
        command: vec![],
        args: vec![],
        env: vec![
            env("CLICKHOUSE_USER", "ladder"),
            env_secret("CLICKHOUSE_PASSWORD", &creds, "password"),
            env("CLICKHOUSE_DB", "ladder"),
        ],
        ports: vec![("https", 8443), ("native-tls", 9440), ("interserver", 9009)],
        mounts: vec![
            mount("config", "/etc/clickhouse-server/config.d", true),
            mount("tls", TLS_DIR, true),
            mount("data", "/var/lib/clickhouse", false),
            mount("logs", "/var/log/clickhouse-server", false),
        ],
        size: &ch.size,
        probe: Some(tcp_probe(9440)),
    });
    let template = pod_template(
        v,
        P {
            tier: "clickhouse",
            component: "clickhouse".into(),
            service_account: sa.into(),
            uid: 101,
            containers: vec![c],
            init_containers: vec![],
            volumes: vec![
                config_volume("config", &cm),
                secret_volume("tls", &tls, None),
                empty_dir("logs"),
            ],
            config_hash: Some(hash_of(&[&xml])),
            metrics: None,
            placement: Placement::SpreadSoft,
            restart_never: false,
        },
    );
    let headless = child_name(v, "clickhouse-hl");
    d.stateful_sets.push(stateful_set(
        v,
        Sts {
            name: name.clone(),
            tier: "clickhouse",
            component: "clickhouse".into(),
            replicas: ch.replicas,
            service_name: headless.clone(),
            template,
            data: Some(ch),
        },
    ));
    d.expected.push(ExpectedComponent {
        kind: "StatefulSet",
        name: name.clone(),
        replicas: ch.replicas,
    });
    d.services.push(service(
        v,
        &name,
        "clickhouse",
        "clickhouse",
        &[("https", 8443), ("native-tls", 9440)],
        false,
    ));
    d.services.push(service(
        v,
        &headless,
        "clickhouse",
        "clickhouse",
        &[("interserver", 9009)],
        true,
    ));
    if ch.replicas > 1 {
        d.pod_disruption_budgets
            .push(pdb(v, &name, "clickhouse", selector(v, "clickhouse")));
    }
    app_env.push(env_secret(
        contract::env::CLICKHOUSE_PASSWORD,
        &creds,
        "password",
    ));
    app_env.push(env(
        contract::env::CLICKHOUSE_URL,
        format!("https://ladder@{name}:8443/"),
    ));
}

/// Loopback port of the edge pod's TLS origination sidecar (Varnish's backend).
const EDGE_TLS_ORIGIN_PORT: i32 = 8081;

fn edge_tier(
    v: &Validated,
    d: &mut Desired,
    varnish: &DataComponent,
    edge: &crate::validate::Edge,
    sa: &str,
) {
    let name = child_name(v, "edge");
    // Varnish → ghostunnel (same pod, loopback) → the app over TLS, verified against the CA.
    let app_host = format!("{}.{}.svc", child_name(v, "app"), v.namespace);
    let vcl = config::varnish_vcl(edge, "127.0.0.1", EDGE_TLS_ORIGIN_PORT);
    let tls = tls_secret(v, d, "edge", std::slice::from_ref(&name));
    let cm = child_name(v, "edge-vcl");
    d.config_maps.push(config_map(
        v,
        &cm,
        "varnish",
        vec![("default.vcl", vcl.clone())],
        false,
    ));
    let cdn = child_name(v, "cdn-config");
    d.config_maps.push(config_map(
        v,
        &cdn,
        "varnish",
        vec![(
            "cdn.json",
            config::cdn_json(edge, &format!("http://{name}.{}.svc:8080", v.namespace)),
        )],
        false,
    ));
    let origin = container(C {
        name: "tls-origin",
        image: ladder_crds::catalogue::images::GHOSTUNNEL,
        command: vec![],
        args: vec![
            "client".into(),
            format!("--listen=127.0.0.1:{EDGE_TLS_ORIGIN_PORT}"),
            format!("--target={app_host}:{}", v.app_port),
            format!("--cacert={TLS_DIR}/ca.crt"),
            format!("--cert={TLS_DIR}/tls.crt"),
            format!("--key={TLS_DIR}/tls.key"),
        ],
        env: vec![],
        ports: vec![],
        mounts: vec![mount("tls", TLS_DIR, true)],
        size: &varnish.size,
        probe: Some(tcp_probe(EDGE_TLS_ORIGIN_PORT)),
    });
    let c = container(C {
        name: "varnish",
        image: &varnish.image,
        command: vec!["varnishd".into()],
        args: vec![
            "-F".into(),
            "-f".into(),
            "/etc/varnish/default.vcl".into(),
            "-a".into(),
            ":8080".into(),
            "-n".into(),
            "/tmp/varnish".into(),
            "-s".into(),
            "malloc,256m".into(),
        ],
        env: vec![],
        ports: vec![("http", 8080)],
        mounts: vec![mount("vcl", "/etc/varnish", true)],
        size: &varnish.size,
        probe: Some(tcp_probe(8080)),
    });
    let template = pod_template(
        v,
        P {
            tier: "varnish",
            component: "edge".into(),
            service_account: sa.into(),
            uid: 1000,
            containers: vec![c, origin],
            init_containers: vec![],
            volumes: vec![config_volume("vcl", &cm), secret_volume("tls", &tls, None)],
            config_hash: Some(hash_of(&[&vcl])),
            metrics: None,
            placement: Placement::Spread(v.regions.clone()),
            restart_never: false,
        },
    );
    d.deployments.push(deployment(
        v,
        &name,
        "varnish",
        "edge",
        Some(varnish.replicas),
        false,
        template,
    ));
    d.expected.push(ExpectedComponent {
        kind: "Deployment",
        name: name.clone(),
        replicas: varnish.replicas,
    });
    d.services.push(service(
        v,
        &name,
        "varnish",
        "edge",
        &[("http", 8080)],
        false,
    ));
    // Every edge instance caches on its own: the app resolves this headless name to all of
    // them and purges each one.
    d.services.push(service(
        v,
        &child_name(v, "varnish-pods"),
        "varnish",
        "edge",
        &[("http", 8080)],
        true,
    ));
    if varnish.replicas > 1 {
        d.pod_disruption_budgets
            .push(pdb(v, &name, "varnish", selector(v, "edge")));
    }
}

fn cockroach(
    v: &Validated,
    d: &mut Desired,
    crdb: &DataComponent,
    sa: &str,
    app_mounts: &mut Vec<(Volume, VolumeMount)>,
) -> String {
    let headless = child_name(v, "cockroach");
    let public = child_name(v, "cockroach-public");
    let node_tls = tls_secret(
        v,
        d,
        "cockroach",
        &[headless.clone(), public.clone(), format!("*.{headless}")],
    );
    if let Some(s) = d.generated_secrets.last_mut()
        && let SecretContent::Tls {
            common_name,
            dns_names,
            ..
        } = &mut s.content
    {
        *common_name = "node".into();
        dns_names.push("localhost".into());
    }
    // Client certificates: `root` for the init Job, `ladder` for the app.
    let mut client = |user: &str| {
        let name = child_name(v, &format!("cockroach-client-{user}"));
        d.generated_secrets.push(GeneratedSecret {
            name: name.clone(),
            meta: secret_meta(v, &name, "cockroach"),
            content: SecretContent::Tls {
                ca: child_name(v, "ca"),
                common_name: user.into(),
                dns_names: vec![],
            },
        });
        name
    };
    let root_client = client("root");
    let app_client = client("ladder");
    let regions = &v.regions;
    let mut join = Vec::new();
    for r in regions {
        let sts = child_name(v, &format!("crdb-{r}"));
        for i in 0..crdb.replicas.min(3) {
            join.push(format!("{sts}-{i}.{headless}.{}.svc:26257", v.namespace));
        }
    }
    let join = join.join(",");
    for region in regions {
        let sts = child_name(v, &format!("crdb-{region}"));
        // Label values stop at 63 characters; region names may be that long.
        let component = format!("crdb-{region}");
        let component = if component.len() <= 63 {
            component
        } else {
            format!("crdb-{}", short_hash(region.as_bytes()))
        };
        let c = container(C {
            name: "cockroach",
            image: &crdb.image,
            command: vec!["/cockroach/cockroach".into()],
            args: vec![
                "start".into(),
                "--certs-dir=/cockroach/certs".into(),
                format!("--join={join}"),
                format!("--locality=region={region}"),
                format!(
                    "--advertise-host=$(POD_NAME).{headless}.{}.svc",
                    v.namespace
                ),
                "--listen-addr=:26257".into(),
                "--http-addr=:8080".into(),
                "--cache=.25".into(),
                "--max-sql-memory=.25".into(),
                "--store=/cockroach/cockroach-data".into(),
            ],
            env: vec![
                env_field("POD_NAME", "metadata.name"),
                env("COCKROACH_SKIP_KEY_PERMISSION_CHECK", "true"),
            ],
            ports: vec![("grpc", 26257), ("http", 8080)],
            mounts: vec![
                mount("certs", "/cockroach/certs", true),
                mount("data", "/cockroach/cockroach-data", false),
            ],
            size: &crdb.size,
            probe: Some(http_probe("/health?ready=1", 8080, true)),
        });
        let mut template = pod_template(
            v,
            P {
                tier: "cockroach",
                component: component.clone(),
                service_account: sa.into(),
                uid: 1000,
                containers: vec![c],
                init_containers: vec![],
                volumes: vec![secret_volume(
                    "certs",
                    &node_tls,
                    Some(vec![
                        ("ca.crt", "ca.crt"),
                        ("tls.crt", "node.crt"),
                        ("tls.key", "node.key"),
                    ]),
                )],
                config_hash: None,
                metrics: Some((8080, "/_status/vars")),
                placement: Placement::Region(region.clone()),
                restart_never: false,
            },
        );
        if let Some(m) = template.metadata.as_mut() {
            m.labels
                .get_or_insert_default()
                .insert("ladder.dev/region".into(), region.clone());
        }
        d.stateful_sets.push(stateful_set(
            v,
            Sts {
                name: sts.clone(),
                tier: "cockroach",
                component,
                replicas: crdb.replicas,
                service_name: headless.clone(),
                template,
                data: Some(crdb),
            },
        ));
        d.expected.push(ExpectedComponent {
            kind: "StatefulSet",
            name: sts,
            replicas: crdb.replicas,
        });
    }
    let mut hl = tier_service(
        v,
        &headless,
        "cockroach",
        &[("grpc", 26257), ("http", 8080)],
    );
    if let Some(s) = hl.spec.as_mut() {
        s.cluster_ip = Some("None".into());
        s.publish_not_ready_addresses = Some(true);
    }
    d.services.push(hl);
    d.services.push(tier_service(
        v,
        &public,
        "cockroach",
        &[("grpc", 26257), ("http", 8080)],
    ));
    let mut crdb_pdb = pdb(v, &headless, "cockroach", BTreeMap::new());
    if let Some(s) = crdb_pdb.spec.as_mut() {
        s.selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
                (super::TIER_LABEL.to_owned(), "cockroach".to_owned()),
            ])),
            ..LabelSelector::default()
        });
    }
    d.pod_disruption_budgets.push(crdb_pdb);

    // One-shot cluster initialisation; `cockroach init` on an initialised
    // cluster exits with "already initialized", which the script accepts.
    let job_name = child_name(v, "cockroach-init");
    let first = regions
        .first()
        .map(|r| {
            format!(
                "{}-0.{headless}.{}.svc:26257",
                child_name(v, &format!("crdb-{r}")),
                v.namespace
            )
        })
        .unwrap_or_default();
    let small = Size {
        cpu: "50m".into(),
        memory: "64Mi".into(),
    };
    let c = container(C {
        name: "init",
        image: &crdb.image,
        command: vec!["sh".into(), "-c".into()],
        args: vec![format!(
            "out=$(/cockroach/cockroach init --certs-dir=/cockroach/certs --host={first} 2>&1); echo \"$out\"; \
             case \"$out\" in *\"already been initialized\"*|*\"Cluster successfully initialized\"*) exit 0;; esac; exit 1"
        )],
        env: vec![],
        ports: vec![],
        mounts: vec![mount("certs", "/cockroach/certs", true)],
        size: &small,
        probe: None,
    });
    let template = pod_template(
        v,
        P {
            tier: "cockroach",
            component: "cockroach-init".into(),
            service_account: sa.into(),
            uid: 1000,
            containers: vec![c],
            init_containers: vec![],
            volumes: vec![secret_volume(
                "certs",
                &root_client,
                Some(vec![
                    ("ca.crt", "ca.crt"),
                    ("tls.crt", "client.root.crt"),
                    ("tls.key", "client.root.key"),
                ]),
            )],
            config_hash: None,
            metrics: None,
            placement: Placement::Anywhere,
            restart_never: true,
        },
    );
    d.jobs.push(Job {
        metadata: meta(v, &job_name, "cockroach", "cockroach-init"),
        spec: Some(JobSpec {
            backoff_limit: Some(20),
            template,
            ttl_seconds_after_finished: None,
            ..JobSpec::default()
        }),
        ..Job::default()
    });
    d.expected.push(ExpectedComponent {
        kind: "Job",
        name: job_name,
        replicas: 1,
    });

    app_mounts.push((
        secret_volume("crdb-client", &app_client, None),
        mount("crdb-client", "/etc/ladder/crdb", true),
    ));
    // The app authenticates with its client certificate: no password.
    format!(
        "dsql:postgresql://ladder@{public}:26257/ladder?sslmode=verify-full&sslrootcert=/etc/ladder/crdb/ca.crt\
         &sslcert=/etc/ladder/crdb/tls.crt&sslkey=/etc/ladder/crdb/tls.key"
    )
}

fn enterprise_rbac(v: &Validated, d: &mut Desired) {
    // Roles for humans, bound to the groups the OIDC provider asserts.
    let roles = [
        (
            "admin",
            "ladder-admins",
            vec![
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        ("viewer", "ladder-viewers", vec!["get", "list", "watch"]),
    ];
    for (role, group, verbs) in roles {
        let name = child_name(v, role);
        let verbs: Vec<String> = verbs.into_iter().map(Into::into).collect();
        d.roles.push(Role {
            metadata: meta(v, &name, "app", "rbac"),
            rules: Some(vec![
                PolicyRule {
                    api_groups: Some(vec!["ladder.dev".into()]),
                    resources: Some(vec!["scalingphases".into(), "loadreports".into()]),
                    verbs: verbs.clone(),
                    ..PolicyRule::default()
                },
                PolicyRule {
                    api_groups: Some(vec!["".into(), "apps".into()]),
                    resources: Some(vec![
                        "pods".into(),
                        "services".into(),
                        "deployments".into(),
                        "statefulsets".into(),
                    ]),
                    verbs: vec!["get".into(), "list".into(), "watch".into()],
                    ..PolicyRule::default()
                },
            ]),
        });
        d.role_bindings.push(RoleBinding {
            metadata: meta(v, &name, "app", "rbac"),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "Group".into(),
                name: group.into(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                namespace: None,
            }]),
        });
    }
}

fn tier_peer(v: &Validated, tier: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
                (super::TIER_LABEL.to_owned(), tier.to_owned()),
            ])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn ports(list: &[i32], protocol: &str) -> Vec<NetworkPolicyPort> {
    list.iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(*p)),
            protocol: Some(protocol.into()),
            end_port: None,
        })
        .collect()
}

/// Deny by default, then one policy per tier allowing exactly the flows of
/// the phase: `(from tier, to tier, ports)`.
fn network_policies(
    v: &Validated,
    d: &mut Desired,
    flows: &[(&'static str, &'static str, Vec<i32>)],
) {
    let instance = BTreeMap::from([("app.kubernetes.io/instance".to_owned(), v.name.clone())]);
    let deny = child_name(v, "default-deny");
    d.network_policies.push(NetworkPolicy {
        metadata: meta(v, &deny, "network", "network"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(instance),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    });
    let mut tiers: Vec<&str> = flows.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
    tiers.push("app");
    if v.phase == Phase::Global {
        tiers.push("cockroach");
    }
    tiers.sort_unstable();
    tiers.dedup();
    let dns = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    "kube-system".to_owned(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some([ports(&[53], "UDP"), ports(&[53], "TCP")].concat()),
    };
    let monitoring = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "ladder.dev/monitoring".to_owned(),
                "true".to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    for tier in tiers {
        let mut ingress = Vec::new();
        let mut egress = vec![dns.clone()];
        for (from, to, p) in flows {
            if *to == tier {
                ingress.push(NetworkPolicyIngressRule {
                    from: Some(vec![tier_peer(v, from)]),
                    ports: Some(ports(p, "TCP")),
                });
            }
            if *from == tier {
                egress.push(NetworkPolicyEgressRule {
                    to: Some(vec![tier_peer(v, to)]),
                    ports: Some(ports(p, "TCP")),
                });
            }
        }
        match tier {
            // The entry points take traffic from anywhere; the app also talks
            // to the Kubernetes API (its LoadReports).
            "app" => {
                ingress.push(NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(ports(&[v.app_port], "TCP")),
                });
                // The OIDC issuer (its discovery document and keys) may listen elsewhere than 443.
                let mut out = vec![443, 6443];
                if let Some(port) = v
                    .oidc
                    .as_ref()
                    .and_then(|o| url::Url::parse(&o.issuer_url).ok()?.port().map(i32::from))
                    && !out.contains(&port)
                {
                    out.push(port);
                }
                egress.push(NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(ports(&out, "TCP")),
                });
            }
            "varnish" => ingress.push(NetworkPolicyIngressRule {
                from: None,
                ports: Some(ports(&[8080], "TCP")),
            }),
            "cockroach" => ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![monitoring.clone()]),
                ports: Some(ports(&[8080], "TCP")),
            }),
            _ => {}
        }
        if tier == "app" {
            ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![monitoring.clone()]),
                ports: Some(ports(&[v.app_port], "TCP")),
            });
        }
        let name = child_name(v, &format!("allow-{tier}"));
        d.network_policies.push(NetworkPolicy {
            metadata: meta(v, &name, "network", "network"),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
                        (super::TIER_LABEL.to_owned(), tier.to_owned()),
                    ])),
                    ..LabelSelector::default()
                }),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(ingress),
                egress: Some(egress),
            }),
        });
    }
}
