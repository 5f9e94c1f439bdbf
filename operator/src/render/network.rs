//! NetworkPolicies of the hardened phases: deny by default, then one
//! policy per tier allowing exactly the flows the components declared
//! (see [`super::app::Wiring::allow`]), DNS, and the entry points.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::build::{APP_TIER, match_labels, tier_selector};
use super::{Desired, child_name, meta};
use crate::validate::Validated;
use ladder_crds::catalogue::Phase;

/// Traffic the phase allows: pods of tier `from` may open TCP connections
/// to pods of tier `to` on `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Flow {
    pub from: &'static str,
    pub to: &'static str,
    pub ports: Vec<i32>,
}

fn tier_peer(v: &Validated, tier: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(match_labels(tier_selector(v, tier))),
        ..NetworkPolicyPeer::default()
    }
}

fn namespace_peer(label: &str, value: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(match_labels(BTreeMap::from([(
            label.to_owned(),
            value.to_owned(),
        )]))),
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

fn ingress(from: Option<NetworkPolicyPeer>, tcp: &[i32]) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: from.map(|p| vec![p]),
        ports: Some(ports(tcp, "TCP")),
    }
}

fn egress(to: Option<NetworkPolicyPeer>, tcp: &[i32]) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: to.map(|p| vec![p]),
        ports: Some(ports(tcp, "TCP")),
    }
}

fn policy(
    v: &Validated,
    name: &str,
    selected: BTreeMap<String, String>,
    rules: Option<(Vec<NetworkPolicyIngressRule>, Vec<NetworkPolicyEgressRule>)>,
) -> NetworkPolicy {
    let (ingress, egress) = rules.unzip();
    NetworkPolicy {
        metadata: meta(v, name, "network", "network"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(selected)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress,
            egress,
        }),
    }
}

/// Deny by default, then one policy per tier allowing exactly `flows`.
pub(super) fn build(v: &Validated, flows: &[Flow], d: &mut Desired) {
    let instance = BTreeMap::from([("app.kubernetes.io/instance".to_owned(), v.name.clone())]);
    d.network_policies
        .push(policy(v, &child_name(v, "default-deny"), instance, None));
    let mut tiers: Vec<&str> = flows.iter().flat_map(|f| [f.from, f.to]).collect();
    tiers.push(APP_TIER);
    if v.phase == Phase::Global {
        tiers.push("cockroach");
    }
    tiers.sort_unstable();
    tiers.dedup();
    let dns = NetworkPolicyEgressRule {
        to: Some(vec![namespace_peer(
            "kubernetes.io/metadata.name",
            "kube-system",
        )]),
        ports: Some([ports(&[53], "UDP"), ports(&[53], "TCP")].concat()),
    };
    let monitoring = namespace_peer("ladder.dev/monitoring", "true");
    for tier in tiers {
        let mut ingresses = Vec::new();
        let mut egresses = vec![dns.clone()];
        for f in flows {
            if f.to == tier {
                ingresses.push(ingress(Some(tier_peer(v, f.from)), &f.ports));
            }
            if f.from == tier {
                egresses.push(egress(Some(tier_peer(v, f.to)), &f.ports));
            }
        }
        match tier {
            // The entry points take traffic from anywhere; the app also talks
            // to the Kubernetes API (its LoadReports) and is scraped.
            APP_TIER => {
                ingresses.push(ingress(None, &[v.app_port]));
                egresses.push(egress(None, &app_egress_ports(v)));
                ingresses.push(ingress(Some(monitoring.clone()), &[v.app_port]));
            }
            "varnish" => ingresses.push(ingress(None, &[8080])),
            "cockroach" => ingresses.push(ingress(Some(monitoring.clone()), &[8080])),
            // The data tiers' exporters (`super::exporters`).
            other => {
                if let Some(port) = super::exporters::metrics_port(other) {
                    ingresses.push(ingress(Some(monitoring.clone()), &[port]));
                }
            }
        }
        let name = child_name(v, &format!("allow-{tier}"));
        d.network_policies.push(policy(
            v,
            &name,
            tier_selector(v, tier),
            Some((ingresses, egresses)),
        ));
    }
}

/// HTTPS and the Kubernetes API, and the OIDC issuer (its discovery
/// document and keys), which may listen elsewhere than 443.
fn app_egress_ports(v: &Validated) -> Vec<i32> {
    let mut out = vec![443, 6443];
    if let Some(port) = v
        .oidc
        .as_ref()
        .and_then(|o| url::Url::parse(&o.issuer_url).ok()?.port().map(i32::from))
        && !out.contains(&port)
    {
        out.push(port);
    }
    out
}
