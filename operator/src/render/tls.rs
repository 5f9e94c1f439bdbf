//! Generated Secrets: the phase's private CA, the server and client
//! certificates it signs, and the credentials of the data tiers.
//!
//! Every name a certificate carries is a fully qualified Service name of
//! the phase's namespace (`<svc>.<ns>.svc` and its `cluster.local` form),
//! and clients connect with those names: the CA's name constraints allow
//! nothing else, so its key cannot vouch for a host outside the namespace.
//! A leaf is a server or a client certificate, never both.
//!
//! The renderer only names them ([`GeneratedSecret`]); the apply step
//! generates their content once and never rewrites it. With cert-manager
//! installed, `super::integrations` turns the CA and TLS ones into
//! Certificates writing Secrets of the same names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    CREDENTIAL_LABEL, CredentialsKind, Desired, GeneratedSecret, SecretContent, TlsUsage,
    child_name, meta,
};
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

/// The cluster's DNS domain, as the certificates name it.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// The phase's private CA (hardened phases): it may sign only names of the
/// phase's namespace.
pub(super) fn build(v: &Validated, d: &mut Desired) {
    let ns = &v.namespace;
    let permitted_dns = vec![format!("{ns}.svc"), format!("{ns}.svc.{CLUSTER_DOMAIN}")];
    push(v, d, ca_name(v), "ca", SecretContent::Ca { permitted_dns });
}

/// The name clients use for the Service `service`: `<service>.<ns>.svc`,
/// which the certificates carry (a short name could not be allowed by the
/// CA's name constraints).
pub(super) fn host(v: &Validated, service: &str) -> String {
    format!("{service}.{}.svc", v.namespace)
}

/// DNS names a server certificate for `hosts` (Service names) covers: each
/// in its namespaced and cluster forms, and its StatefulSet pods
/// (`<pod>.<service>.<ns>.svc`).
fn dns_names(v: &Validated, hosts: &[String]) -> Vec<String> {
    let mut dns_names = Vec::new();
    for h in hosts {
        let namespaced = host(v, h);
        dns_names.push(namespaced.clone());
        dns_names.push(format!("{namespaced}.{CLUSTER_DOMAIN}"));
        dns_names.push(format!("*.{namespaced}"));
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

/// A server certificate with an explicit common name (CockroachDB's nodes
/// are `node`).
pub(super) fn server_with(
    v: &Validated,
    d: &mut Desired,
    tier: &str,
    common_name: &str,
    hosts: &[String],
) -> String {
    server_named(v, d, tier, common_name.to_owned(), dns_names(v, hosts))
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
        usage: TlsUsage::Server,
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
        usage: TlsUsage::Client,
    };
    push(v, d, name.clone(), tier, content);
    name
}

/// Credentials `<phase>-<tier>-credentials` for `username` (with the
/// derived files of `kind`); returns the Secret's name.
pub(super) fn credentials(
    v: &Validated,
    d: &mut Desired,
    tier: &str,
    username: &str,
    kind: CredentialsKind,
) -> String {
    let name = child_name(v, &format!("{tier}-credentials"));
    let content = SecretContent::Credentials {
        username: username.into(),
        kind,
    };
    push(v, d, name.clone(), tier, content);
    name
}
