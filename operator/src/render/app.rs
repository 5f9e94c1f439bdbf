//! The app: its identity and permissions, its Deployment wired to the data
//! tiers of the phase, its Service, disruption budget and autoscaler, and
//! (phase 4) the OIDC config and the Roles of humans.
//!
//! The data tiers are built first; each adds what the app needs to reach it
//! to a [`Wiring`] (env, volumes, config whose change rolls the pods, the
//! store URL, network flows), which [`build`] turns into the app's pods.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{EnvVar, PersistentVolumeClaimVolumeSource, Volume, VolumeMount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::DynamicObject;
use serde_json::json;

use super::build::{
    APP_TIER, Addressing, Owner, Port, StatelessWorkload, TLS_DIR, claim_template, config_map, pdb,
    push_deployment, service, service_account,
};
use super::network::Flow;
use super::pod::{
    ContainerSpec, Placement, PodTemplate, config_volume, env, env_field, hash_of, http_probe,
    mount, secret_volume,
};
use super::{Desired, child_name, config, meta, selector, tls};
use crate::integrations::ThirdParty;
use crate::validate::{DataComponent, Oidc, Validated};
use ladder_crds::catalogue::{Phase, PhaseProfile};
use ladder_crds::contract;

/// What the data tiers add to the app's pods, and the traffic the phase
/// allows (the NetworkPolicies' input).
#[derive(Debug, Default)]
pub(super) struct Wiring {
    /// Env vars, in the order the tiers were built.
    pub env: Vec<EnvVar>,
    /// Volumes and where the app mounts them.
    pub mounts: Vec<(Volume, VolumeMount)>,
    /// Config texts the app reads from files: a change rolls the pods.
    pub config: Vec<String>,
    /// The app's data tier (`LADDER_STORE`, see [`contract`]).
    pub store: Option<String>,
    /// Allowed traffic between tiers.
    pub flows: Vec<Flow>,
}

impl Wiring {
    /// Mounts `volume` at `path` (read-only unless `writable`).
    pub(super) fn mount(&mut self, volume: Volume, path: &str, writable: bool) {
        let m = mount(&volume.name, path, !writable);
        self.mounts.push((volume, m));
    }

    /// Allows `from` to reach `to` on `ports`.
    pub(super) fn allow(&mut self, from: &'static str, to: &'static str, ports: &[i32]) {
        self.flows.push(Flow {
            from,
            to,
            ports: ports.to_vec(),
        });
    }

    /// A ConfigMap holding one file the app reads; returns the file's path.
    pub(super) fn config_file(&mut self, v: &Validated, d: &mut Desired, f: AppFile) -> String {
        d.config_maps.push(config_map(
            v,
            &f.config_map,
            APP_TIER,
            vec![(f.file, f.text.clone())],
            f.immutable,
        ));
        self.config.push(f.text);
        self.mount(config_volume(&f.volume, &f.config_map, None), &f.dir, false);
        format!("{}/{}", f.dir, f.file)
    }
}

/// A config file of the app, in its own ConfigMap.
pub(super) struct AppFile {
    /// The volume's name in the pod.
    pub volume: String,
    /// The ConfigMap's name.
    pub config_map: String,
    /// Where the volume is mounted.
    pub dir: String,
    /// The file (the ConfigMap's key).
    pub file: &'static str,
    /// Its content.
    pub text: String,
    /// A new content gets a new ConfigMap (and name) instead of an update.
    pub immutable: bool,
}

/// The app's ServiceAccount and its permission to write LoadReports;
/// returns the account's name.
pub(super) fn identity(v: &Validated, d: &mut Desired) -> String {
    let sa = child_name(v, "app");
    d.service_accounts.push(service_account(v, &sa, APP_TIER));
    // The app writes one LoadReport per instance (owned by its Pod).
    let name = child_name(v, "app-loadreports");
    d.roles.push(Role {
        metadata: meta(v, &name, APP_TIER, APP_TIER),
        rules: Some(vec![
            rule(
                &["ladder.dev"],
                &["loadreports"],
                &["get", "create", "update", "patch"],
            ),
            rule(&[""], &["pods"], &["get"]),
        ]),
    });
    d.role_bindings.push(binding(
        v,
        &name,
        APP_TIER,
        Subject {
            kind: "ServiceAccount".into(),
            name: sa.clone(),
            namespace: Some(v.namespace.clone()),
            api_group: None,
        },
    ));
    sa
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |s: &[&str]| s.iter().map(|&x| x.to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

fn binding(v: &Validated, name: &str, component: &str, subject: Subject) -> RoleBinding {
    RoleBinding {
        metadata: meta(v, name, APP_TIER, component),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![subject]),
    }
}

/// Phase 0: the app keeps its SQLite database on its own volume.
pub(super) fn sqlite(v: &Validated, d: &mut Desired, wiring: &mut Wiring) {
    let pvc_name = child_name(v, "app-data");
    let volume = DataComponent {
        image: String::new(),
        replicas: 1,
        size: v.app_size.clone(),
        storage_size: "1Gi".into(),
        storage_class: None,
    };
    let mut pvc = claim_template(v, &Owner::tier(APP_TIER), &volume);
    pvc.metadata = meta(v, &pvc_name, APP_TIER, APP_TIER);
    d.persistent_volume_claims.push(pvc);
    wiring.store = Some("sqlite:/data/ladder.db".to_owned());
    let data = Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: pvc_name,
            read_only: None,
        }),
        ..Volume::default()
    };
    wiring.mount(data, "/data", true);
}

/// Phase 4: the OIDC settings the app verifies tokens with, and Roles for
/// humans bound to the groups the provider asserts.
pub(super) fn oidc(v: &Validated, oidc: &Oidc, d: &mut Desired, wiring: &mut Wiring) {
    let file = AppFile {
        volume: "oidc".into(),
        config_map: child_name(v, "oidc"),
        dir: "/etc/ladder/oidc".into(),
        file: "oidc.json",
        text: config::oidc_json(oidc),
        immutable: false,
    };
    let path = wiring.config_file(v, d, file);
    wiring.env.push(env(contract::env::OIDC_CONFIG, path));
    let roles: [(&str, &str, &[&str]); 2] = [
        (
            "admin",
            "ladder-admins",
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        ("viewer", "ladder-viewers", &["get", "list", "watch"]),
    ];
    for (role, group, verbs) in roles {
        let name = child_name(v, role);
        d.roles.push(Role {
            metadata: meta(v, &name, APP_TIER, "rbac"),
            rules: Some(vec![
                rule(&["ladder.dev"], &["scalingphases", "loadreports"], verbs),
                // One rule per API group: a rule grants the product of its
                // groups and resources, and the operator (which must hold
                // all it grants, having no `escalate`) holds no core
                // "deployments" or apps "pods".
                rule(&[""], &["pods", "services"], &["get", "list", "watch"]),
                rule(
                    &["apps"],
                    &["deployments", "statefulsets"],
                    &["get", "list", "watch"],
                ),
            ]),
        });
        d.role_bindings.push(binding(
            v,
            &name,
            "rbac",
            Subject {
                kind: "Group".into(),
                name: group.into(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                namespace: None,
            },
        ));
    }
}

/// Hardened phases: the app serves HTTPS with its own certificate.
pub(super) fn serve_tls(v: &Validated, d: &mut Desired, wiring: &mut Wiring) {
    let tls = tls::server(v, d, APP_TIER, &[child_name(v, "app")]);
    wiring
        .env
        .push(env(contract::env::TLS_CERT, format!("{TLS_DIR}/tls.crt")));
    wiring
        .env
        .push(env(contract::env::TLS_KEY, format!("{TLS_DIR}/tls.key")));
    wiring
        .env
        .push(env(contract::env::TLS_CA, format!("{TLS_DIR}/ca.crt")));
    wiring.mount(secret_volume("tls", &tls, None), TLS_DIR, false);
}

/// The app's env: the contract's fixed part, then the wiring, then the
/// user's own variables.
fn app_env(v: &Validated, name: &str, wiring: Vec<EnvVar>) -> Vec<EnvVar> {
    let mut envs = vec![
        env(contract::env::PHASE, v.phase.number().to_string()),
        env(contract::env::SCALING_PHASE, v.name.clone()),
        env(contract::env::LISTEN, format!("0.0.0.0:{}", v.app_port)),
        env_field(contract::env::POD_NAME, "metadata.name"),
        env_field(contract::env::NAMESPACE, "metadata.namespace"),
        env(contract::env::REPORT_LOAD, "true"),
        env(contract::env::OTEL_SERVICE_NAME, name),
        env(
            contract::env::OTEL_RESOURCE_ATTRIBUTES,
            format!(
                "ladder.scalingphase={},ladder.phase={}",
                v.name,
                v.phase.number()
            ),
        ),
        env(
            contract::env::OTEL_TRACES_SAMPLER,
            "parentbased_traceidratio",
        ),
        env(contract::env::OTEL_TRACES_SAMPLER_ARG, "0.1"),
    ];
    envs.extend(wiring);
    envs.extend(v.app_env.iter().map(|(k, val)| env(k, val.clone())));
    envs
}

/// The app's Deployment, Service, disruption budget and autoscaler.
pub(super) fn build(
    v: &Validated,
    profile: &PhaseProfile,
    service_account: &str,
    mut wiring: Wiring,
    d: &mut Desired,
) {
    let name = child_name(v, "app");
    let owner = Owner::tier(APP_TIER);
    let http = Port::new("http", v.app_port);
    if let Some(store) = wiring.store.take() {
        wiring.env.insert(0, env(contract::env::STORE, store));
    }
    let (volumes, mounts): (Vec<_>, Vec<_>) = wiring.mounts.into_iter().unzip();
    let container = ContainerSpec::new("app", &v.app_image, &v.app_size)
        .args(vec!["serve".into()])
        .env(app_env(v, &name, wiring.env))
        .ports(&[http])
        .mounts(mounts)
        .probe(http_probe("/readyz", v.app_port, profile.hardened))
        .build();
    let placement = if v.phase >= Phase::Regional {
        Placement::Spread(v.regions.clone())
    } else {
        Placement::Anywhere
    };
    let mut template = PodTemplate::new(&owner, service_account, 10001)
        .containers(vec![container])
        .volumes(volumes)
        .metrics(v.app_port, "/metrics")
        .placement(placement);
    if !wiring.config.is_empty() {
        let parts: Vec<&str> = wiring.config.iter().map(String::as_str).collect();
        template = template.config_hash(hash_of(&parts));
    }
    push_deployment(
        v,
        d,
        StatelessWorkload {
            name: name.clone(),
            owner: owner.clone(),
            replicas: v.app_replicas,
            autoscaled: profile.autoscale.is_some(),
            recreate: v.phase == Phase::Mvp,
            template: template.build(v),
        },
    );
    d.services
        .push(service(v, &name, &owner, &[http], Addressing::ClusterIp));
    if v.phase >= Phase::Growth {
        d.pod_disruption_budgets
            .push(pdb(v, &name, APP_TIER, selector(v, APP_TIER)));
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

fn scaling_policy(type_: &str, value: i32, period_seconds: i32) -> HPAScalingPolicy {
    HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds,
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
                scaling_policy("Percent", 100, 15),
                scaling_policy("Pods", 10, 15),
            ]),
            ..HPAScalingRules::default()
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(300),
            select_policy: Some("Min".into()),
            policies: Some(vec![scaling_policy("Percent", 20, 60)]),
            ..HPAScalingRules::default()
        }),
    });
    HorizontalPodAutoscaler {
        metadata: meta(v, name, APP_TIER, APP_TIER),
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
    o.metadata = meta(v, name, APP_TIER, APP_TIER);
    o
}
