//! Growing the volumes of a StatefulSet (the applier calls [`plan`] before
//! applying a StatefulSet that exists, and [`grow`] when it says so).
//!
//! `volumeClaimTemplates` are immutable, so a larger size in the spec cannot simply be applied.
//! The operator instead:
//! 1. asks each existing claim of the StatefulSet for the new size (the StorageClass must allow
//!    expansion; the apiserver refuses otherwise, and the refusal is reported);
//! 2. deletes the StatefulSet with `propagationPolicy: Orphan`, which leaves its pods and claims
//!    running and untouched (the claims' owner references to it are dropped, so even
//!    `deletionPolicy: Delete` cannot take them along);
//! 3. applies the StatefulSet again with the new templates; it adopts the same pods and claims.
//!
//! Volumes never shrink: a smaller size (a demotion to a phase with smaller defaults, or a
//! lowered override, which the CRD already refuses) keeps the existing templates.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Client, ResourceExt};

/// Bytes of a storage quantity (`20Gi`, `500M`, `1073741824`); `None` when not understood.
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let end = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, unit) = q.split_at(end);
    let n: u128 = num.parse().ok()?;
    let mult: u128 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn template_sizes(sts: &StatefulSet) -> Vec<(String, Option<String>)> {
    sts.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let size = t
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone());
            (t.name_any(), size)
        })
        .collect()
}

/// What to do with the volumes of an existing StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The templates are equal: nothing to do.
    Same,
    /// Keep the existing templates (a smaller or different-shaped request: volumes never shrink).
    KeepExisting { reason: String },
    /// Grow these templates `(name, new size)`.
    Grow(Vec<(String, String)>),
}

/// Compares the existing StatefulSet's claim templates with the desired ones.
pub fn plan(existing: &StatefulSet, desired: &StatefulSet) -> Plan {
    let (old, new) = (template_sizes(existing), template_sizes(desired));
    if old == new {
        return Plan::Same;
    }
    if old.len() != new.len() || old.iter().zip(&new).any(|(o, n)| o.0 != n.0) {
        return Plan::KeepExisting {
            reason: "the volume templates changed shape; volumes are kept as they are".into(),
        };
    }
    let mut grow = Vec::new();
    for ((name, o), (_, n)) in old.iter().zip(&new) {
        let (Some(o), Some(n)) = (o, n) else { continue };
        match (quantity_bytes(o), quantity_bytes(n)) {
            (Some(ob), Some(nb)) if nb > ob => grow.push((name.clone(), n.clone())),
            (Some(ob), Some(nb)) if nb < ob => {
                return Plan::KeepExisting {
                    reason: format!("volume {name} stays at {o}: volumes never shrink (asked {n})"),
                };
            }
            (Some(_), Some(_)) => {}
            _ => {
                return Plan::KeepExisting {
                    reason: format!("volume {name}: cannot compare sizes {o} and {n}"),
                };
            }
        }
    }
    if grow.is_empty() {
        Plan::Same
    } else {
        Plan::Grow(grow)
    }
}

/// Claims of a StatefulSet made from template `template`: `<template>-<sts>-<ordinal>`.
fn is_claim_of(claim: &str, template: &str, sts: &str) -> bool {
    claim
        .strip_prefix(&format!("{template}-{sts}-"))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.chars().all(|c| c.is_ascii_digit()))
}

/// Asks every existing claim for its new size, then deletes the StatefulSet keeping its pods and
/// claims (orphan), and waits until it is gone so that the caller can apply it again.
pub async fn grow(
    client: &Client,
    ns: &str,
    sts: &str,
    grow: &[(String, String)],
) -> Result<(), kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let all = claims.list(&ListParams::default()).await?;
    for (template, size) in grow {
        let want = quantity_bytes(size);
        for claim in all
            .items
            .iter()
            .filter(|c| is_claim_of(&c.name_any(), template, sts))
        {
            let current = claim
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(|q| quantity_bytes(&q.0));
            if current >= want {
                continue;
            }
            let patch = serde_json::json!({
                "spec": {"resources": {"requests": {"storage": Quantity(size.clone())}}}
            });
            claims
                .patch(
                    &claim.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            tracing::info!(claim = %claim.name_any(), %size, "volume expansion requested");
        }
    }
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    sets.delete(sts, &dp).await?;
    for _ in 0..150 {
        if sets.get_opt(sts).await?.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(%sts, "StatefulSet still being deleted; the next reconcile re-creates it");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
    use kube::api::ObjectMeta;

    fn sts(sizes: &[(&str, &str)]) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.spec.volume_claim_templates = Some(
            sizes
                .iter()
                .map(|(name, size)| PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some((*name).into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec {
                        resources: Some(VolumeResourceRequirements {
                            requests: Some(
                                [("storage".to_owned(), Quantity((*size).into()))].into(),
                            ),
                            ..VolumeResourceRequirements::default()
                        }),
                        ..PersistentVolumeClaimSpec::default()
                    }),
                    ..PersistentVolumeClaim::default()
                })
                .collect(),
        );
        s
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("20Gi"), Some(20 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1024"), Some(1024));
        assert_eq!(quantity_bytes("1.5Gi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }

    #[test]
    fn plans() {
        let a = sts(&[("data", "10Gi")]);
        assert_eq!(plan(&a, &sts(&[("data", "10Gi")])), Plan::Same);
        assert_eq!(plan(&a, &sts(&[("data", "10240Mi")])), Plan::Same);
        assert_eq!(
            plan(&a, &sts(&[("data", "20Gi")])),
            Plan::Grow(vec![("data".into(), "20Gi".into())])
        );
        assert!(matches!(
            plan(&a, &sts(&[("data", "5Gi")])),
            Plan::KeepExisting { .. }
        ));
        assert!(matches!(
            plan(&a, &sts(&[("wal", "20Gi")])),
            Plan::KeepExisting { .. }
        ));
    }

    #[test]
    fn claim_names() {
        assert!(is_claim_of("data-shop-postgres-0", "data", "shop-postgres"));
        assert!(is_claim_of(
            "data-shop-postgres-12",
            "data",
            "shop-postgres"
        ));
        assert!(!is_claim_of(
            "data-shop-postgres-replica-0",
            "data",
            "shop-postgres"
        ));
        assert!(!is_claim_of("data-shop-postgres-", "data", "shop-postgres"));
    }
}
