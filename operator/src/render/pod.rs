//! What goes into a pod template: env vars, volumes and mounts, containers
//! under the `restricted` Pod Security profile, readiness probes, and the
//! template itself with its labels, config hash, scrape annotations and
//! placement. All pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretProjection, SecretVolumeSource, SecurityContext, TCPSocketAction,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::build::{APP_TIER, Owner, Port, match_labels};
use super::{CONFIG_HASH_ANNOTATION, MANAGED_BY_LABEL, labels, selector, short_hash};
use crate::validate::{Size, Validated};

const REGION_LABEL: &str = "topology.kubernetes.io/region";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

// ------------------------------------------------------------ env, volumes --

/// A plain env var.
pub(super) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(source),
    }
}

/// An env var read from a key of a Secret that must exist.
pub(super) fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        },
    )
}

/// An env var from the downward API.
pub(super) fn env_field(name: &str, path: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        },
    )
}

/// A volume mount.
pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn key_paths(items: &[(&str, &str)]) -> Vec<KeyToPath> {
    items
        .iter()
        .map(|(k, p)| KeyToPath {
            key: (*k).into(),
            path: (*p).into(),
            ..KeyToPath::default()
        })
        .collect()
}

/// A Secret volume (all keys, or the listed `(key, path)` pairs), readable by
/// the pod's group only.
pub(super) fn secret_volume(name: &str, secret: &str, items: Option<&[(&str, &str)]>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            items: items.map(key_paths),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Keys of several Secrets in one directory (a projected volume), readable by
/// the pod's group only: `(secret, [(key, path)])`.
pub(super) fn secrets_volume(name: &str, sources: &[(&str, &[(&str, &str)])]) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(
                sources
                    .iter()
                    .map(|(secret, items)| VolumeProjection {
                        secret: Some(SecretProjection {
                            name: (*secret).into(),
                            items: Some(key_paths(items)),
                            optional: Some(false),
                        }),
                        ..VolumeProjection::default()
                    })
                    .collect(),
            ),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A ConfigMap volume (all keys, or the listed `(key, path)` pairs).
pub(super) fn config_volume(name: &str, cm: &str, items: Option<&[(&str, &str)]>) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: cm.into(),
            items: items.map(key_paths),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A scratch volume.
pub(super) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// A short hash of config texts, for [`CONFIG_HASH_ANNOTATION`].
pub(super) fn hash_of(parts: &[&str]) -> String {
    short_hash(parts.join("\u{0}").as_bytes())
}

// -------------------------------------------------------------- containers --

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

fn runtime_default() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    })
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
        seccomp_profile: runtime_default(),
        ..SecurityContext::default()
    }
}

/// A container under the `restricted` profile, with a writable `/tmp` and
/// its memory limited to its request. Built field by field:
/// `ContainerSpec::new(..).args(..).ports(..).build()`.
pub(super) struct ContainerSpec<'a> {
    name: &'a str,
    image: &'a str,
    size: &'a Size,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    ports: Vec<Port>,
    mounts: Vec<VolumeMount>,
    probe: Option<Probe>,
}

impl<'a> ContainerSpec<'a> {
    pub(super) fn new(name: &'a str, image: &'a str, size: &'a Size) -> Self {
        ContainerSpec {
            name,
            image,
            size,
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            ports: Vec::new(),
            mounts: Vec::new(),
            probe: None,
        }
    }

    /// The entrypoint (the image's when unset).
    pub(super) fn command(mut self, command: &[&str]) -> Self {
        self.command = command.iter().map(|&c| c.into()).collect();
        self
    }

    /// The arguments.
    pub(super) fn args(mut self, args: Vec<String>) -> Self {
        self.args = args;
        self
    }

    /// The environment.
    pub(super) fn env(mut self, env: Vec<EnvVar>) -> Self {
        self.env = env;
        self
    }

    /// The ports it listens on.
    pub(super) fn ports(mut self, ports: &[Port]) -> Self {
        self.ports = ports.to_vec();
        self
    }

    /// Its volume mounts (`/tmp` is added).
    pub(super) fn mounts(mut self, mounts: Vec<VolumeMount>) -> Self {
        self.mounts = mounts;
        self
    }

    /// Its readiness probe.
    pub(super) fn probe(mut self, probe: Probe) -> Self {
        self.probe = Some(probe);
        self
    }

    pub(super) fn build(self) -> Container {
        let mut mounts = self.mounts;
        mounts.push(mount("tmp", "/tmp", false));
        let nonempty = |v: Vec<String>| (!v.is_empty()).then_some(v);
        Container {
            name: self.name.into(),
            image: Some(self.image.into()),
            image_pull_policy: Some("IfNotPresent".into()),
            command: nonempty(self.command),
            args: nonempty(self.args),
            env: (!self.env.is_empty()).then_some(self.env),
            ports: (!self.ports.is_empty()).then(|| {
                self.ports
                    .iter()
                    .map(|p| ContainerPort {
                        name: Some(p.name.into()),
                        container_port: p.number,
                        protocol: Some("TCP".into()),
                        ..ContainerPort::default()
                    })
                    .collect()
            }),
            volume_mounts: Some(mounts),
            resources: Some(resources(self.size)),
            readiness_probe: self.probe,
            security_context: Some(restricted()),
            ..Container::default()
        }
    }
}

fn probe_every_10s(probe: Probe) -> Probe {
    Probe {
        period_seconds: Some(10),
        ..probe
    }
}

/// Ready when the port accepts TCP connections.
pub(super) fn tcp_probe(port: i32) -> Probe {
    probe_every_10s(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            host: None,
        }),
        ..Probe::default()
    })
}

/// Ready when `path` answers 2xx/3xx.
pub(super) fn http_probe(path: &str, port: i32, https: bool) -> Probe {
    probe_every_10s(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: Some(if https { "HTTPS" } else { "HTTP" }.into()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    })
}

/// Ready when the command exits 0.
pub(super) fn exec_probe(command: &[&str]) -> Probe {
    probe_every_10s(Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|&c| c.into()).collect()),
        }),
        ..Probe::default()
    })
}

// ----------------------------------------------------------- pod templates --

/// Placement of a pod template.
#[derive(Clone, Debug, Default)]
pub(super) enum Placement {
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

/// A pod template: labels, the restricted pod security context, its
/// containers and volumes (a scratch `/tmp` is added), config hash,
/// scrape annotations and placement.
pub(super) struct PodTemplate {
    owner: Owner,
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

impl PodTemplate {
    /// Pods of `owner` running as `uid` under `service_account`.
    pub(super) fn new(owner: &Owner, service_account: &str, uid: i64) -> Self {
        PodTemplate {
            owner: owner.clone(),
            service_account: service_account.into(),
            uid,
            containers: Vec::new(),
            init_containers: Vec::new(),
            volumes: Vec::new(),
            config_hash: None,
            metrics: None,
            placement: Placement::Anywhere,
            restart_never: false,
        }
    }

    pub(super) fn containers(mut self, containers: Vec<Container>) -> Self {
        self.containers = containers;
        self
    }

    pub(super) fn init_containers(mut self, containers: Vec<Container>) -> Self {
        self.init_containers = containers;
        self
    }

    pub(super) fn volumes(mut self, volumes: Vec<Volume>) -> Self {
        self.volumes = volumes;
        self
    }

    /// Rolls the pods when this hash changes (see [`hash_of`]).
    pub(super) fn config_hash(mut self, hash: impl Into<String>) -> Self {
        self.config_hash = Some(hash.into());
        self
    }

    /// Scraped at `port` and `path`.
    pub(super) fn metrics(mut self, port: i32, path: &'static str) -> Self {
        self.metrics = Some((port, path));
        self
    }

    pub(super) fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// For a Job: pods are not restarted in place.
    pub(super) fn restart_never(mut self) -> Self {
        self.restart_never = true;
        self
    }

    pub(super) fn build(self, v: &Validated) -> PodTemplateSpec {
        let mut annotations = BTreeMap::new();
        if let Some(h) = self.config_hash {
            annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), h);
        }
        if let Some((port, path)) = self.metrics {
            // Replaced by a ServiceMonitor when the Prometheus Operator is
            // installed (`super::integrations`).
            annotations.insert("prometheus.io/scrape".into(), "true".into());
            annotations.insert("prometheus.io/port".into(), port.to_string());
            annotations.insert("prometheus.io/path".into(), path.into());
        }
        let mut volumes = self.volumes;
        volumes.push(empty_dir("tmp"));
        let (affinity, constraints) = placement(v, &self.owner.component, self.placement);
        let mut labels = labels(v, self.owner.tier, &self.owner.component);
        labels.remove(MANAGED_BY_LABEL);
        let app = self.owner.tier == APP_TIER;
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                service_account_name: Some(self.service_account),
                automount_service_account_token: Some(app),
                enable_service_links: Some(false),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(self.uid),
                    run_as_group: Some(self.uid),
                    fs_group: Some(self.uid),
                    seccomp_profile: runtime_default(),
                    ..PodSecurityContext::default()
                }),
                containers: self.containers,
                init_containers: (!self.init_containers.is_empty()).then_some(self.init_containers),
                volumes: Some(volumes),
                affinity,
                topology_spread_constraints: constraints,
                restart_policy: self.restart_never.then(|| "Never".into()),
                termination_grace_period_seconds: Some(if app { 30 } else { 60 }),
                ..PodSpec::default()
            }),
        }
    }
}

/// Node affinity and topology spread constraints of a placement.
fn placement(
    v: &Validated,
    component: &str,
    placement: Placement,
) -> (Option<Affinity>, Option<Vec<TopologySpreadConstraint>>) {
    let spread = |key: &str, hard: bool| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        when_unsatisfiable: if hard {
            "DoNotSchedule"
        } else {
            "ScheduleAnyway"
        }
        .into(),
        label_selector: Some(match_labels(selector(v, component))),
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
    match placement {
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
    }
}
