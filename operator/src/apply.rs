//! The applier: makes the cluster match a [`Desired`] set.
//!
//! Order (each step waits for the previous one):
//! 1. generated Secrets (CA first, then credentials and certificates): created
//!    once with fresh randomness, never rewritten; or, with cert-manager,
//!    its Issuers and Certificates (which write Secrets of the same names);
//! 2. ServiceAccounts, Roles, RoleBindings (identities before workloads use them);
//! 3. ConfigMaps and PersistentVolumeClaims (what pods mount);
//! 4. Services and NetworkPolicies (so traffic rules exist before pods start);
//! 5. StatefulSets, Deployments, Jobs;
//! 6. PodDisruptionBudgets, HorizontalPodAutoscalers, ServiceMonitors, KEDA
//!    ScaledObjects (they refer to the workloads and Services).
//!
//! Kinds of optional CRDs ([`ThirdParty`]) go through one untyped applier
//! and one pruner; they are pruned only while their CRD is installed.
//!
//! Every write is server-side apply under [`FIELD_MANAGER`] with `force`:
//! these objects are ours alone. Pruning deletes labelled children of the
//! ScalingPhase that are no longer desired, never a PersistentVolumeClaim
//! or a credential Secret.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::integrations::{Integrations, ThirdParty};
use crate::metrics::Metrics;
use crate::render::{self, Desired, GeneratedSecret, SecretContent};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "ladder-operator";

/// What failed while applying.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A server-side apply was refused.
    #[error("failed to apply {kind} {name}: {source}")]
    Apply {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading or creating a generated Secret failed.
    #[error("failed to ensure Secret {name}: {reason}")]
    Secret {
        /// Secret name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Listing or deleting stale children failed.
    #[error("failed to prune {kind}: {source}")]
    Prune {
        /// Kind being pruned.
        kind: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ApplyError {
    /// A fixed label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ApplyError::Apply { .. } => "apply",
            ApplyError::Secret { .. } => "secret",
            ApplyError::Prune { .. } => "prune",
        }
    }
}

async fn apply_all<K>(
    client: &Client,
    ns: &str,
    kind: &'static str,
    items: &[K],
    metrics: &Metrics,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for item in items {
        let name = item.name_any();
        api.patch(&name, &pp, &Patch::Apply(item))
            .await
            .map_err(|source| ApplyError::Apply {
                kind,
                name: name.clone(),
                source,
            })?;
        metrics.applied(kind);
    }
    Ok(())
}

fn random_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Parameters of every phase CA (subject, usages, validity).
fn ca_params() -> Result<rcgen::CertificateParams, String> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ladder phase CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

/// Generates the content of a Secret. Needs the CA Secret's data for leaf
/// certificates.
fn generate(
    content: &SecretContent,
    ca: Option<&BTreeMap<String, ByteString>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut data = BTreeMap::new();
    match content {
        SecretContent::Credentials { username, postgres } => {
            let password = random_password();
            data.insert("username".into(), username.clone());
            data.insert("password".into(), password.clone());
            if *postgres {
                data.insert("replication-password".into(), random_password());
                data.insert(
                    "userlist.txt".into(),
                    format!("\"{username}\" \"{password}\"\n"),
                );
            }
        }
        SecretContent::Ca => {
            let params = ca_params()?;
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
            // cert-manager's layout for a CA Certificate's Secret, so that
            // cert-manager can take this Secret over and vice versa.
            data.insert("tls.crt".into(), cert.pem());
            data.insert("tls.key".into(), key.serialize_pem());
            data.insert("ca.crt".into(), cert.pem());
        }
        SecretContent::Tls {
            common_name,
            dns_names,
            ..
        } => {
            let ca = ca.ok_or("the CA Secret is missing")?;
            let text = |k: &str| {
                ca.get(k)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .ok_or(format!("CA has no {k}"))
            };
            // `tls.*` first: written by this version or by cert-manager (whose
            // CA then signed the leaves already issued); `ca.key` by earlier
            // versions, with `ca.crt` as the certificate.
            let (ca_crt, ca_key) = match (text("tls.crt"), text("tls.key")) {
                (Ok(crt), Ok(key)) => (crt, key),
                _ => (text("ca.crt")?, text("ca.key")?),
            };
            let ca_key = rcgen::KeyPair::from_pem(&ca_key).map_err(|e| e.to_string())?;
            // The issuer is rebuilt from the CA certificate itself (its
            // subject and key identifiers), so issued certificates name and
            // identify it exactly whoever made it.
            let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_crt, ca_key)
                .map_err(|e| format!("CA certificate: {e}"))?;
            let mut params =
                rcgen::CertificateParams::new(dns_names.clone()).map_err(|e| e.to_string())?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, common_name.clone());
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.not_after = rcgen::date_time_ymd(2030, 1, 1);
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
            data.insert("tls.crt".into(), cert.pem());
            data.insert("tls.key".into(), key.serialize_pem());
            data.insert("ca.crt".into(), ca_crt);
        }
    }
    Ok(data)
}

/// Makes every generated Secret exist. Existing ones are left untouched
/// (their data is never regenerated); missing ones are created.
async fn ensure_secrets(
    client: &Client,
    ns: &str,
    secrets: &[GeneratedSecret],
    metrics: &Metrics,
) -> Result<(), ApplyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut ca_data: Option<BTreeMap<String, ByteString>> = None;
    for s in secrets {
        let err = |reason: String| ApplyError::Secret {
            name: s.name.clone(),
            reason,
        };
        let existing = api.get_opt(&s.name).await.map_err(|e| err(e.to_string()))?;
        let data = match existing {
            Some(found) => found.data.unwrap_or_default(),
            None => {
                let ca = match &s.content {
                    SecretContent::Tls { ca, .. } => {
                        if ca_data.is_none() {
                            ca_data = api
                                .get_opt(ca)
                                .await
                                .map_err(|e| err(e.to_string()))?
                                .and_then(|c| c.data);
                        }
                        ca_data.as_ref()
                    }
                    _ => None,
                };
                let generated = generate(&s.content, ca).map_err(err)?;
                let secret = Secret {
                    metadata: s.meta.clone(),
                    string_data: Some(generated),
                    type_: Some(
                        if matches!(s.content, SecretContent::Tls { .. } | SecretContent::Ca) {
                            "kubernetes.io/tls"
                        } else {
                            "Opaque"
                        }
                        .into(),
                    ),
                    ..Secret::default()
                };
                let created = match api
                    .create(
                        &PostParams {
                            field_manager: Some(FIELD_MANAGER.into()),
                            ..PostParams::default()
                        },
                        &secret,
                    )
                    .await
                {
                    Ok(c) => c,
                    // Lost a race with another reconcile: keep the winner's data.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        api.get(&s.name).await.map_err(|e| err(e.to_string()))?
                    }
                    Err(e) => return Err(err(e.to_string())),
                };
                metrics.applied("Secret");
                created.data.unwrap_or_default()
            }
        };
        if matches!(s.content, SecretContent::Ca) {
            ca_data = Some(data);
        }
    }
    Ok(())
}

/// Server-side applies objects of an optional third-party kind. The
/// renderer produces them only when their CRD is installed; if it was removed
/// since, the apply fails and the reconcile retries with fresh facts.
async fn apply_third_party(
    client: &Client,
    ns: &str,
    kind: ThirdParty,
    items: &[DynamicObject],
    metrics: &Metrics,
) -> Result<(), ApplyError> {
    if items.is_empty() {
        return Ok(());
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &kind.resource());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for item in items {
        let name = item.name_any();
        api.patch(&name, &pp, &Patch::Apply(item))
            .await
            .map_err(|source| ApplyError::Apply {
                kind: kind.kind(),
                name: name.clone(),
                source,
            })?;
        metrics.applied(kind.kind());
    }
    Ok(())
}

/// Applies the desired set in the documented order.
pub async fn apply(
    client: &Client,
    ns: &str,
    desired: &Desired,
    metrics: &Metrics,
) -> Result<(), ApplyError> {
    // Destructured without `..`: a new child kind must be handled here.
    let Desired {
        generated_secrets,
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
    } = desired;
    ensure_secrets(client, ns, generated_secrets, metrics).await?;
    apply_third_party(client, ns, ThirdParty::Issuer, issuers, metrics).await?;
    apply_third_party(client, ns, ThirdParty::Certificate, certificates, metrics).await?;
    apply_all(client, ns, "ServiceAccount", service_accounts, metrics).await?;
    apply_all(client, ns, "Role", roles, metrics).await?;
    apply_all(client, ns, "RoleBinding", role_bindings, metrics).await?;
    apply_all(client, ns, "ConfigMap", config_maps, metrics).await?;
    apply_all(
        client,
        ns,
        "PersistentVolumeClaim",
        persistent_volume_claims,
        metrics,
    )
    .await?;
    apply_all(client, ns, "Service", services, metrics).await?;
    apply_all(client, ns, "NetworkPolicy", network_policies, metrics).await?;
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    for sts in stateful_sets {
        let name = sts.name_any();
        let mut sts = sts.clone();
        // volumeClaimTemplates are immutable: a larger size grows the claims and re-creates
        // the StatefulSet around its running pods (see `crate::storage`); anything else keeps
        // the existing templates, so volumes never shrink.
        let existing = sts_api
            .get_opt(&name)
            .await
            .map_err(|source| ApplyError::Apply {
                kind: "StatefulSet",
                name: name.clone(),
                source,
            })?;
        if let Some(existing) = existing {
            match crate::storage::plan(&existing, &sts) {
                crate::storage::Plan::Same => {}
                crate::storage::Plan::KeepExisting { reason } => {
                    tracing::warn!(%name, %reason, "keeping the existing volumes");
                    sts.spec.volume_claim_templates = existing.spec.volume_claim_templates;
                }
                crate::storage::Plan::Grow(grow) => {
                    crate::storage::grow(client, ns, &name, &grow)
                        .await
                        .map_err(|source| ApplyError::Apply {
                            kind: "PersistentVolumeClaim",
                            name: name.clone(),
                            source,
                        })?;
                    metrics.applied("PersistentVolumeClaim");
                }
            }
        }
        apply_all(
            client,
            ns,
            "StatefulSet",
            std::slice::from_ref(&sts),
            metrics,
        )
        .await?;
    }
    apply_all(client, ns, "Deployment", deployments, metrics).await?;
    // Jobs are immutable once created: apply only the ones that do not exist.
    let job_api: Api<Job> = Api::namespaced(client.clone(), ns);
    for job in jobs {
        if job_api
            .get_opt(&job.name_any())
            .await
            .map_err(|source| ApplyError::Apply {
                kind: "Job",
                name: job.name_any(),
                source,
            })?
            .is_none()
        {
            apply_all(client, ns, "Job", std::slice::from_ref(job), metrics).await?;
        }
    }
    apply_all(
        client,
        ns,
        "PodDisruptionBudget",
        pod_disruption_budgets,
        metrics,
    )
    .await?;
    apply_all(
        client,
        ns,
        "HorizontalPodAutoscaler",
        horizontal_pod_autoscalers,
        metrics,
    )
    .await?;
    apply_third_party(
        client,
        ns,
        ThirdParty::ServiceMonitor,
        service_monitors,
        metrics,
    )
    .await?;
    apply_third_party(
        client,
        ns,
        ThirdParty::ScaledObject,
        scaled_objects,
        metrics,
    )
    .await?;
    Ok(())
}

/// Label selector of every child of a ScalingPhase.
pub fn children_selector(name: &str) -> String {
    format!(
        "{}={},{}={name}",
        render::MANAGED_BY_LABEL,
        render::MANAGED_BY,
        render::SCALINGPHASE_LABEL
    )
}

async fn prune_kind<K>(
    client: &Client,
    ns: &str,
    kind: &'static str,
    sp: &str,
    uid: &str,
    keep: BTreeSet<String>,
    metrics: &Metrics,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    prune_from(&api, kind, sp, uid, &keep, metrics).await
}

async fn prune_third_party(
    client: &Client,
    ns: &str,
    kind: ThirdParty,
    sp: &str,
    uid: &str,
    items: &[DynamicObject],
    metrics: &Metrics,
) -> Result<(), ApplyError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &kind.resource());
    let keep = items.iter().map(ResourceExt::name_any).collect();
    prune_from(&api, kind.kind(), sp, uid, &keep, metrics).await
}

/// Deletes the labelled children in `api` that the ScalingPhase (`uid`)
/// controls and that are not in `keep`.
async fn prune_from<K>(
    api: &Api<K>,
    kind: &'static str,
    sp: &str,
    uid: &str,
    keep: &BTreeSet<String>,
    metrics: &Metrics,
) -> Result<(), ApplyError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api
        // Served from the apiserver's watch cache: a slightly stale list can
        // only delay a prune (the next drift check catches up), never delete
        // something desired.
        .list_metadata(
            &ListParams::default()
                .labels(&children_selector(sp))
                .match_any(),
        )
        .await
        .map_err(|source| ApplyError::Prune { kind, source })?;
    for item in list {
        let owned = item
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true));
        let name = item.name_any();
        if owned && !keep.contains(&name) {
            tracing::info!(%kind, %name, "pruning child no longer desired");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => metrics.pruned(kind),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => return Err(ApplyError::Prune { kind, source }),
            }
        }
    }
    Ok(())
}

fn names<K: Resource>(items: &[K]) -> BTreeSet<String> {
    items.iter().filter_map(|i| i.meta().name.clone()).collect()
}

/// Deletes children of the ScalingPhase (by label and controller owner
/// reference) that are not in `desired`. PersistentVolumeClaims and Secrets
/// are never pruned: data and credentials outlive a phase change, and leave
/// only with the ScalingPhase under `deletionPolicy: Delete`.
///
/// Third-party kinds are pruned only while `served` says their CRD is
/// installed (otherwise none can exist: deleting a CRD deletes its objects).
pub async fn prune(
    client: &Client,
    ns: &str,
    sp: &str,
    uid: &str,
    desired: &Desired,
    served: Integrations,
    metrics: &Metrics,
) -> Result<(), ApplyError> {
    let Desired {
        generated_secrets: _,
        issuers: _,
        certificates: _,
        service_accounts,
        roles,
        role_bindings,
        config_maps,
        persistent_volume_claims: _,
        services,
        network_policies,
        stateful_sets,
        deployments,
        jobs,
        pod_disruption_budgets,
        horizontal_pod_autoscalers,
        service_monitors: _,
        scaled_objects: _,
        expected: _,
    } = desired;
    // Reverse of the apply order: dependents first.
    for (kind, items) in render::third_party(desired).into_iter().rev() {
        if served.serves(kind) {
            prune_third_party(client, ns, kind, sp, uid, items, metrics).await?;
        }
    }
    prune_kind::<HorizontalPodAutoscaler>(
        client,
        ns,
        "HorizontalPodAutoscaler",
        sp,
        uid,
        names(horizontal_pod_autoscalers),
        metrics,
    )
    .await?;
    prune_kind::<PodDisruptionBudget>(
        client,
        ns,
        "PodDisruptionBudget",
        sp,
        uid,
        names(pod_disruption_budgets),
        metrics,
    )
    .await?;
    prune_kind::<Job>(client, ns, "Job", sp, uid, names(jobs), metrics).await?;
    prune_kind::<Deployment>(
        client,
        ns,
        "Deployment",
        sp,
        uid,
        names(deployments),
        metrics,
    )
    .await?;
    prune_kind::<StatefulSet>(
        client,
        ns,
        "StatefulSet",
        sp,
        uid,
        names(stateful_sets),
        metrics,
    )
    .await?;
    prune_kind::<NetworkPolicy>(
        client,
        ns,
        "NetworkPolicy",
        sp,
        uid,
        names(network_policies),
        metrics,
    )
    .await?;
    prune_kind::<Service>(client, ns, "Service", sp, uid, names(services), metrics).await?;
    prune_kind::<ConfigMap>(
        client,
        ns,
        "ConfigMap",
        sp,
        uid,
        names(config_maps),
        metrics,
    )
    .await?;
    prune_kind::<RoleBinding>(
        client,
        ns,
        "RoleBinding",
        sp,
        uid,
        names(role_bindings),
        metrics,
    )
    .await?;
    prune_kind::<Role>(client, ns, "Role", sp, uid, names(roles), metrics).await?;
    prune_kind::<ServiceAccount>(
        client,
        ns,
        "ServiceAccount",
        sp,
        uid,
        names(service_accounts),
        metrics,
    )
    .await?;
    Ok(())
}

/// On deletion: with `Retain`, detach PersistentVolumeClaims and credential
/// Secrets from the ScalingPhase (remove its owner reference) so garbage
/// collection keeps them; with `Delete`, delete them.
pub async fn release_data(
    client: &Client,
    ns: &str,
    sp: &str,
    uid: &str,
    retain: bool,
) -> Result<(), ApplyError> {
    let selector = children_selector(sp);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let pvc_list = pvcs
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| ApplyError::Prune {
            kind: "PersistentVolumeClaim",
            source,
        })?;
    let secret_list = secrets
        .list_metadata(
            &ListParams::default().labels(&format!("{selector},{}=true", render::CREDENTIAL_LABEL)),
        )
        .await
        .map_err(|source| ApplyError::Prune {
            kind: "Secret",
            source,
        })?;
    let targets = pvc_list
        .items
        .into_iter()
        .map(|m| ("PersistentVolumeClaim", m.metadata))
        .chain(
            secret_list
                .items
                .into_iter()
                .map(|m| ("Secret", m.metadata)),
        );
    for (kind, item) in targets {
        let name = item.name.clone().unwrap_or_default();
        let result = if retain {
            let refs: Vec<_> = item
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.uid != uid)
                .cloned()
                .collect();
            if refs.len() == item.owner_references.as_ref().map_or(0, Vec::len) {
                continue;
            }
            // A merge patch with the remaining references; resourceVersion
            // makes it fail (and retry) if someone changed them meanwhile.
            let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": item.resource_version}});
            tracing::info!(%kind, %name, "retaining: detaching from the ScalingPhase");
            if kind == "Secret" {
                secrets
                    .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            } else {
                pvcs.patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
        } else {
            tracing::info!(%kind, %name, "deletionPolicy Delete: deleting");
            let r = if kind == "Secret" {
                secrets
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map(|_| ())
            } else {
                pvcs.delete(&name, &DeleteParams::background())
                    .await
                    .map(|_| ())
            };
            match r {
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                other => other,
            }
        };
        result.map_err(|source| ApplyError::Prune { kind, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(data: &BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
        data.iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect()
    }

    fn leaf(ca: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        generate(
            &SecretContent::Tls {
                ca: "ca".into(),
                common_name: "db".into(),
                dns_names: vec!["db.ns.svc".into()],
            },
            Some(&bytes(ca)),
        )
        .expect("leaf")
    }

    /// The leaf names the CA as issuer (subject and key identifier) and its
    /// signature verifies with the CA's public key: what a TLS peer checks.
    fn assert_signed_by(leaf_pem: &str, ca_pem: &str) {
        use x509_parser::extensions::ParsedExtension;
        let (_, leaf) = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes()).expect("leaf pem");
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).expect("ca pem");
        let leaf = leaf.parse_x509().expect("leaf der");
        let ca = ca.parse_x509().expect("ca der");
        assert_eq!(leaf.issuer(), ca.subject());
        let aki = leaf
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                _ => None,
            });
        let ski = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.clone()),
                _ => None,
            });
        if let (Some(aki), Some(ski)) = (aki, ski) {
            assert_eq!(aki.0, ski.0, "authority key id is the CA's subject key id");
        }
        leaf.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
    }

    #[test]
    fn generated_certificates_chain_to_the_ca() {
        let ca = generate(&SecretContent::Ca, None).expect("ca");
        // cert-manager's layout for a CA Secret.
        assert_eq!(ca["ca.crt"], ca["tls.crt"]);
        assert!(ca["tls.key"].contains("PRIVATE KEY"));
        let leaf = leaf(&ca);
        assert!(leaf["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(leaf["ca.crt"], ca["ca.crt"]);
        assert_signed_by(&leaf["tls.crt"], &ca["ca.crt"]);
        assert!(
            generate(
                &SecretContent::Tls {
                    ca: "ca".into(),
                    common_name: "x".into(),
                    dns_names: vec![]
                },
                None
            )
            .is_err()
        );
    }

    /// A CA Secret written by an earlier version (`ca.crt`, `ca.key`) still signs.
    #[test]
    fn earlier_ca_layout_still_signs() {
        let ca = generate(&SecretContent::Ca, None).expect("ca");
        let earlier = BTreeMap::from([
            ("ca.crt".to_owned(), ca["tls.crt"].clone()),
            ("ca.key".to_owned(), ca["tls.key"].clone()),
        ]);
        assert_signed_by(&leaf(&earlier)["tls.crt"], &ca["tls.crt"]);
    }

    /// After cert-manager is uninstalled, its CA (another subject, key and
    /// key identifiers than ours) keeps signing the leaves the operator adds.
    #[test]
    fn a_foreign_ca_secret_signs_consistent_leaves() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "someone else");
        params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![7; 20]);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        let foreign = BTreeMap::from([
            ("tls.crt".to_owned(), cert.pem()),
            ("tls.key".to_owned(), key.serialize_pem()),
            ("ca.crt".to_owned(), cert.pem()),
        ]);
        let issued = leaf(&foreign);
        assert_eq!(issued["ca.crt"], cert.pem());
        assert_signed_by(&issued["tls.crt"], &cert.pem());
    }

    #[test]
    fn passwords_are_random_and_long() {
        let a = generate(
            &SecretContent::Credentials {
                username: "u".into(),
                postgres: true,
            },
            None,
        )
        .expect("creds");
        let b = generate(
            &SecretContent::Credentials {
                username: "u".into(),
                postgres: true,
            },
            None,
        )
        .expect("creds");
        assert_eq!(a["password"].len(), 32);
        assert_ne!(a["password"], b["password"]);
        assert!(a["userlist.txt"].contains(&a["password"]));
    }
}
