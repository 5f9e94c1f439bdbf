//! Generated Secrets: the phase's private CA, the server and client
//! certificates it signs, and the credentials of the data tiers.
//!
//! The renderer only names them ([`GeneratedSecret`]); the apply step
//! generates their content once and never rewrites it. With cert-manager
//! installed, `super::integrations` turns the CA and TLS ones into
//! Certificates writing Secrets of the same names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{CREDENTIAL_LABEL, Desired, GeneratedSecret, SecretContent, child_name, meta};
use crate::validate::Validated;

/// Metadata of a generated Secret: labelled as a credential, so pruning
/// never deletes it and the deletion policy decides its fate.
fn secret_meta(v: &Validated, name: &str, tier: &str) -> ObjectMeta {
    let mut m = meta(v, name, tier, tier);
    m.labels
        .get_or_insert_default()
        .insert(CREDENTIAL_LABEL.into(), "true".into());
    m
}

fn push(v: &Validated, d: &mut Desired, name: String, tier: &str, content: SecretContent) {
    d.generated_secrets.push(GeneratedSecret {
        meta: secret_meta(v, &name, tier),
        name,
        content,
    });
}

/// The name of the phase's CA Secret.
pub(super) fn ca_name(v: &Validated) -> String {
    child_name(v, "ca")
}

/// The phase's private CA (hardened phases).
pub(super) fn build(v: &Validated, d: &mut Desired) {
    push(v, d, ca_name(v), "ca", SecretContent::Ca);
}

/// DNS names a server certificate for `host` covers: the Service name in
/// its short, namespaced and cluster forms, and its StatefulSet pods.
fn dns_names(v: &Validated, hosts: &[String]) -> Vec<String> {
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
    dns_names
}

/// A server certificate `<phase>-<tier>-tls` for `hosts` (the first is
/// the common name); returns the Secret's name.
pub(super) fn server(v: &Validated, d: &mut Desired, tier: &str, hosts: &[String]) -> String {
    let name = child_name(v, &format!("{tier}-tls"));
    let common_name = hosts.first().cloned().unwrap_or_else(|| name.clone());
    server_named(v, d, tier, common_name, dns_names(v, hosts))
}

/// A server certificate with an explicit common name and extra DNS names
/// (CockroachDB nodes are `node`, and also answer on `localhost`).
pub(super) fn server_with(
    v: &Validated,
    d: &mut Desired,
    tier: &str,
    common_name: &str,
    hosts: &[String],
    extra_dns_names: &[&str],
) -> String {
    let mut names = dns_names(v, hosts);
    names.extend(extra_dns_names.iter().map(|&n| n.to_owned()));
    server_named(v, d, tier, common_name.to_owned(), names)
}

fn server_named(
    v: &Validated,
    d: &mut Desired,
    tier: &str,
    common_name: String,
    dns_names: Vec<String>,
) -> String {
    let name = child_name(v, &format!("{tier}-tls"));
    let content = SecretContent::Tls {
        ca: ca_name(v),
        common_name,
        dns_names,
    };
    push(v, d, name.clone(), tier, content);
    name
}

/// A client certificate `<phase>-<tier>-client-<user>` for `user`; returns
/// the Secret's name.
pub(super) fn client(v: &Validated, d: &mut Desired, tier: &str, user: &str) -> String {
    let name = child_name(v, &format!("{tier}-client-{user}"));
    let content = SecretContent::Tls {
        ca: ca_name(v),
        common_name: user.into(),
        dns_names: vec![],
    };
    push(v, d, name.clone(), tier, content);
    name
}

/// Credentials `<phase>-<tier>-credentials` for `username` (with the
/// PostgreSQL extras when `postgres`); returns the Secret's name.
pub(super) fn credentials(
    v: &Validated,
    d: &mut Desired,
    tier: &str,
    username: &str,
    postgres: bool,
) -> String {
    let name = child_name(v, &format!("{tier}-credentials"));
    let content = SecretContent::Credentials {
        username: username.into(),
        postgres,
    };
    push(v, d, name.clone(), tier, content);
    name
}
