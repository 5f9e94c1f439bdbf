//! Final rendering passes for optional integrations, run by
//! [`super::render`] when the validated spec says their CRDs are installed.
//! Pure, like the rest of the renderer.
//!
//! - cert-manager: every generated CA/TLS Secret becomes cert-manager objects
//!   that write a Secret of the same name with the same keys (`tls.crt`,
//!   `tls.key`, `ca.crt`), so pods mount exactly what they mounted before:
//!   a self-signed `Issuer` → the CA `Certificate` → a CA `Issuer` that signs
//!   one `Certificate` per component. Credentials stay operator-generated.
//! - Prometheus Operator: the `prometheus.io/*` pod annotations are replaced
//!   by one `ServiceMonitor` per scraped component.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::json;

use super::{
    COMPONENT_LABEL, CREDENTIAL_LABEL, Desired, GeneratedSecret, SecretContent, TIER_LABEL,
    TlsUsage, child_name,
};
use crate::integrations::ThirdParty;
use crate::validate::Validated;

/// Annotation keys of annotation-based scraping, dropped when
/// ServiceMonitors take over.
const SCRAPE_ANNOTATIONS: [&str; 3] = [
    "prometheus.io/scrape",
    "prometheus.io/port",
    "prometheus.io/path",
];
/// Label on exactly the Services a ServiceMonitor selects (a tier may have
/// several Services over the same pods, e.g. CockroachDB's headless and
/// public ones, and each pod must be scraped once).
pub const SCRAPE_LABEL: &str = "ladder.dev/scrape";
/// Subject of the phase CA (same as the operator-generated CA).
const CA_COMMON_NAME: &str = "ladder phase CA";
/// The CA lives ten years: cert-manager does not re-issue leaves when
/// their CA rotates, so it should rotate rarely.
const CA_DURATION: &str = "87600h";
/// Leaves live 90 days and are renewed 30 days before they expire.
const LEAF_DURATION: &str = "2160h";
const LEAF_RENEW_BEFORE: &str = "720h";

fn object(
    kind: ThirdParty,
    secret: &GeneratedSecret,
    name: &str,
    spec: serde_json::Value,
) -> DynamicObject {
    let mut o = DynamicObject::new(name, &kind.resource()).data(json!({ "spec": spec }));
    o.metadata = secret.meta.clone();
    o.metadata.name = Some(name.to_owned());
    // The Certificate is config and may be pruned; the Secret it writes
    // carries the credential label (see `secret_template`) and never is.
    if let Some(l) = o.metadata.labels.as_mut() {
        l.remove(CREDENTIAL_LABEL);
    }
    o
}

/// Labels cert-manager copies onto the Secret: the same as a generated
/// Secret's, so the deletion policy and pruning treat both alike.
fn secret_template(secret: &GeneratedSecret) -> serde_json::Value {
    json!({ "labels": secret.meta.labels.clone().unwrap_or_default() })
}

/// ECDSA P-256 in PKCS#8, like the operator's own generated keys.
fn private_key() -> serde_json::Value {
    json!({"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"})
}

fn issuer_ref(name: &str) -> serde_json::Value {
    json!({"group": "cert-manager.io", "kind": "Issuer", "name": name})
}

/// Replaces the generated CA and TLS Secrets with cert-manager Issuers and
/// Certificates that write Secrets of the same names.
pub(super) fn issue_with_cert_manager(v: &Validated, d: &mut Desired) {
    for s in std::mem::take(&mut d.generated_secrets) {
        match &s.content {
            SecretContent::Credentials { .. } => d.generated_secrets.push(s),
            // cert-manager's CA Certificates take no path length, and name
            // constraints only behind its `NameConstraints` feature gate (off
            // by default): a CA it issues has neither (README: known gaps).
            SecretContent::Ca { .. } => {
                let root = child_name(v, "selfsigned");
                d.issuers.push(object(
                    ThirdParty::Issuer,
                    &s,
                    &root,
                    json!({"selfSigned": {}}),
                ));
                d.certificates.push(object(
                    ThirdParty::Certificate,
                    &s,
                    &s.name,
                    json!({
                        "isCA": true,
                        "commonName": CA_COMMON_NAME,
                        "secretName": s.name,
                        "secretTemplate": secret_template(&s),
                        "duration": CA_DURATION,
                        "privateKey": private_key(),
                        "usages": ["cert sign", "crl sign", "digital signature"],
                        "issuerRef": issuer_ref(&root),
                    }),
                ));
                // The CA Issuer shares the CA Secret's name: a leaf's
                // `SecretContent::Tls::ca` names either.
                d.issuers.push(object(
                    ThirdParty::Issuer,
                    &s,
                    &s.name,
                    json!({"ca": {"secretName": s.name}}),
                ));
            }
            SecretContent::Tls {
                ca,
                common_name,
                dns_names,
                usage,
            } => {
                let usage = match usage {
                    TlsUsage::Server => "server auth",
                    TlsUsage::Client => "client auth",
                };
                let mut spec = json!({
                    "secretName": s.name,
                    "secretTemplate": secret_template(&s),
                    "commonName": common_name,
                    "duration": LEAF_DURATION,
                    "renewBefore": LEAF_RENEW_BEFORE,
                    "privateKey": private_key(),
                    // A server or a client certificate, never both.
                    "usages": ["digital signature", usage],
                    "issuerRef": issuer_ref(ca),
                });
                if !dns_names.is_empty() {
                    spec["dnsNames"] = json!(dns_names);
                }
                d.certificates
                    .push(object(ThirdParty::Certificate, &s, &s.name, spec));
            }
        }
    }
}

/// One component Prometheus scrapes.
struct Scrape {
    /// The Service whose endpoints are scraped.
    service: String,
    /// Named port of that Service.
    port: &'static str,
    /// Metrics path.
    path: &'static str,
    /// Scraped over TLS, verified against the phase CA.
    https: bool,
}

/// What Prometheus scrapes in this phase. Must name the same ports and paths
/// as the `metrics` of the pod templates in `components`: the renderer tests
/// check that both describe the same targets.
fn scrape_targets(v: &Validated, hardened: bool, d: &Desired) -> Vec<Scrape> {
    let mut out = vec![Scrape {
        service: child_name(v, "app"),
        port: "http",
        path: "/metrics",
        https: hardened,
    }];
    if v.cockroach.is_some() {
        out.push(Scrape {
            service: child_name(v, "cockroach-public"),
            port: "http",
            path: "/_status/vars",
            https: true,
        });
    }
    out.extend(
        super::exporters::scrape_targets(d)
            .into_iter()
            .map(|service| Scrape {
                service,
                port: super::exporters::PORT_NAME,
                path: super::exporters::PATH,
                https: false,
            }),
    );
    out
}

/// Replaces the `prometheus.io/*` pod annotations with one ServiceMonitor
/// per scraped Service.
pub(super) fn scrape_with_service_monitors(v: &Validated, hardened: bool, d: &mut Desired) {
    let templates = d
        .deployments
        .iter_mut()
        .map(|x| &mut x.spec.template)
        .chain(d.stateful_sets.iter_mut().map(|x| &mut x.spec.template));
    for t in templates {
        if let Some(m) = t.metadata.as_mut()
            && let Some(a) = m.annotations.as_mut()
        {
            for key in SCRAPE_ANNOTATIONS {
                a.remove(key);
            }
            if a.is_empty() {
                m.annotations = None;
            }
        }
    }
    let ca = child_name(v, "ca");
    for target in scrape_targets(v, hardened, d) {
        let Some(service) = d
            .services
            .iter_mut()
            .find(|s| s.metadata.name.as_deref() == Some(target.service.as_str()))
        else {
            continue;
        };
        let labels = service.metadata.labels.get_or_insert_default();
        labels.insert(SCRAPE_LABEL.into(), "true".into());
        let mut selector: BTreeMap<String, String> = BTreeMap::new();
        for key in ["app.kubernetes.io/instance", COMPONENT_LABEL, SCRAPE_LABEL] {
            if let Some(value) = labels.get(key) {
                selector.insert(key.into(), value.clone());
            }
        }
        let tier = labels.get(TIER_LABEL).cloned().unwrap_or_default();
        let component = labels.get(COMPONENT_LABEL).cloned().unwrap_or_default();
        let mut endpoint = json!({
            "port": target.port,
            "path": target.path,
            "interval": "30s",
            "scheme": if target.https { "https" } else { "http" },
        });
        if target.https {
            endpoint["tlsConfig"] = json!({
                "ca": {"secret": {"name": ca, "key": "ca.crt"}},
                "serverName": format!("{}.{}.svc", target.service, v.namespace),
            });
        }
        let mut o = DynamicObject::new(&target.service, &ThirdParty::ServiceMonitor.resource())
            .data(json!({"spec": {
                "selector": {"matchLabels": selector},
                "namespaceSelector": {"matchNames": [v.namespace]},
                "endpoints": [endpoint],
            }}));
        o.metadata = super::meta(v, &target.service, &tier, &component);
        d.service_monitors.push(o);
    }
}
