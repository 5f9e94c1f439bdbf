//! Rendering for phase transitions (see [`crate::transition`]): two phases
//! side by side, and the migration Job that moves the data between them.
//!
//! Pure, like the rest of the renderer: [`merge`] unions two rendered phases
//! (the serving phase wins where both name the same object, so the app keeps
//! pointing at the tier that holds the data), and [`migration_job`] builds
//! `ladder-app migrate` as a Job of the app image from the two phases' own app
//! pod templates, so it reaches both tiers exactly as the app would.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, PodAffinity, PodAffinityTerm, PodSpec, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Resource;
use ladder_crds::contract::env;

use super::{
    Desired, ExpectedComponent, GeneratedSecret, Kind, SecretContent, child_name, pgbouncer,
};
use crate::transition::{JOB_LABEL, JOB_MIGRATE};
use crate::validate::Validated;

/// Env names of `ladder-app migrate` (see `app/src/migrate.rs`).
pub mod migrate_env {
    /// The tier to copy from (`LADDER_STORE` syntax).
    pub const FROM: &str = "LADDER_MIGRATE_FROM";
    /// The tier to copy to.
    pub const TO: &str = "LADDER_MIGRATE_TO";
    /// Where the JSON result goes: the pod's termination message.
    pub const RESULT_FILE: &str = "LADDER_MIGRATE_RESULT_FILE";
}

fn name_of<K: Resource>(k: &K) -> String {
    k.meta().name.clone().unwrap_or_default()
}

fn union_secrets(primary: &mut Vec<GeneratedSecret>, secondary: Vec<GeneratedSecret>) {
    for s in secondary {
        match primary.iter_mut().find(|p| p.name == s.name) {
            // A certificate both phases name must cover the hosts of both
            // while they run side by side.
            Some(GeneratedSecret {
                content: SecretContent::Tls { dns_names, .. },
                ..
            }) => {
                if let SecretContent::Tls {
                    dns_names: more, ..
                } = s.content
                {
                    for n in more {
                        if !dns_names.contains(&n) {
                            dns_names.push(n);
                        }
                    }
                }
            }
            Some(_) => {}
            None => primary.push(s),
        }
    }
}

/// The file of PgBouncer's ConfigMap.
const PGBOUNCER_INI: &str = "pgbouncer.ini";

/// The `[databases]` lines of a `pgbouncer.ini`.
fn database_lines(ini: &str) -> Vec<&str> {
    ini.lines()
        .skip_while(|l| l.trim() != "[databases]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter(|l| l.contains('='))
        .collect()
}

/// `ini` with the `[databases]` lines of `other` whose database it lacks.
fn union_databases(ini: &str, other: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or_default().trim().to_owned();
    let have: BTreeSet<String> = database_lines(ini).into_iter().map(key).collect();
    let extra: Vec<&str> = database_lines(other)
        .into_iter()
        .filter(|l| !have.contains(&key(l)))
        .collect();
    let Some(last) = database_lines(ini).last().copied() else {
        return ini.to_owned();
    };
    if extra.is_empty() {
        return ini.to_owned();
    }
    let mut out = String::new();
    for line in ini.lines() {
        out.push_str(line);
        out.push('\n');
        if line == last {
            for e in &extra {
                out.push_str(e);
                out.push('\n');
            }
        }
    }
    out
}

/// While two phases run side by side, one PgBouncer serves both: the app
/// reaches the serving phase's databases through it and the migration Job
/// the other phase's (2 → 3: `ladder` and the shard databases). The
/// serving phase's configuration gets the other's `[databases]` lines it
/// lacks, and its Deployment the matching config hash, so its pods roll onto
/// the configuration that routes both.
fn route_both_tiers(primary: &mut Desired, secondary: &Desired) {
    let Desired {
        config_maps,
        deployments,
        ..
    } = primary;
    for cm in config_maps.iter_mut() {
        let name = name_of(cm);
        let Some(other) = secondary
            .config_maps
            .iter()
            .find(|c| name_of(*c) == name)
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(PGBOUNCER_INI))
        else {
            continue;
        };
        let Some(ini) = cm.data.as_mut().and_then(|d| d.get_mut(PGBOUNCER_INI)) else {
            continue;
        };
        let merged = union_databases(ini, other);
        if merged == *ini {
            continue;
        }
        *ini = merged;
        let hash = super::pod::hash_of(&[ini.as_str()]);
        let deployment = name.strip_suffix("-config").unwrap_or(&name).to_owned();
        for d in deployments.iter_mut().filter(|d| name_of(*d) == deployment) {
            d.spec
                .template
                .metadata
                .get_or_insert_with(Default::default)
                .annotations
                .get_or_insert_with(Default::default)
                .insert(super::CONFIG_HASH_ANNOTATION.to_owned(), hash.clone());
        }
    }
}

/// Everything `primary` renders, plus what only `secondary` renders.
pub fn merge(mut primary: Desired, mut secondary: Desired) -> Desired {
    route_both_tiers(&mut primary, &secondary);
    union_secrets(
        &mut primary.generated_secrets,
        std::mem::take(&mut secondary.generated_secrets),
    );
    for kind in Kind::APPLY_ORDER {
        // Only the serving phase's autoscalers: two HPAs on one Deployment fight.
        if matches!(kind, Kind::HorizontalPodAutoscaler | Kind::ScaledObject) {
            continue;
        }
        if let (Some(mine), Some(theirs)) = (primary.objects_mut(kind), secondary.objects_mut(kind))
        {
            mine.absorb(theirs);
        }
    }
    let have: BTreeSet<(&'static str, String)> = primary
        .expected
        .iter()
        .map(|e| (e.kind, e.name.clone()))
        .collect();
    let extra: Vec<ExpectedComponent> = secondary
        .expected
        .into_iter()
        .filter(|e| !have.contains(&(e.kind, e.name.clone())))
        .collect();
    primary.expected.extend(extra);
    primary
}

/// Like [`merge`], for phase 3 with two shard layouts side by side (a
/// resharding). The app and the migration Job reach every shard through
/// PgBouncer, which knows only the databases of the layout it was rendered
/// for; shards are numbered from 0, so the layout with more shards names
/// every database of the other. When `secondary` is that layout, its
/// PgBouncer (configuration and Deployment) replaces the primary's.
pub fn merge_shard_layouts(
    v: &Validated,
    mut primary: Desired,
    secondary: Desired,
    secondary_has_more_shards: bool,
) -> Desired {
    if secondary_has_more_shards {
        let deployment = child_name(v, pgbouncer::NAME);
        let config = child_name(v, pgbouncer::CONFIG);
        for d in primary
            .deployments
            .iter_mut()
            .filter(|d| name_of(*d) == deployment)
        {
            if let Some(x) = secondary
                .deployments
                .iter()
                .find(|x| name_of(*x) == deployment)
            {
                *d = x.clone();
            }
        }
        for c in primary
            .config_maps
            .iter_mut()
            .filter(|c| name_of(*c) == config)
        {
            if let Some(x) = secondary.config_maps.iter().find(|x| name_of(*x) == config) {
                *c = x.clone();
            }
        }
    }
    merge(primary, secondary)
}

/// A Job of one attempt (a failure shows, and deleting the Job retries),
/// named `job_name`, owned like `owner_meta`, its pods labelled `labels`.
fn one_attempt_job(
    owner_meta: &ObjectMeta,
    job_name: &str,
    labels: BTreeMap<String, String>,
    pod_spec: PodSpec,
) -> Job {
    let mut meta = owner_meta.clone();
    meta.name = Some(job_name.to_owned());
    meta.labels = Some(labels.clone());
    Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// Names of the workloads and claims only `old` renders: what retiring the
/// old tier removes. StatefulSet claims are `<template>-<statefulset>-<n>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierVolumes {
    /// Claims rendered as objects (e.g. phase 0's `<sp>-app-data`).
    pub claims: BTreeSet<String>,
    /// `(claim template, StatefulSet)` pairs.
    pub templates: BTreeSet<(String, String)>,
}

impl TierVolumes {
    /// The volumes `old` holds that `new` does not.
    pub fn only_in(old: &Desired, new: &Desired) -> TierVolumes {
        let new_claims: BTreeSet<String> =
            new.persistent_volume_claims.iter().map(name_of).collect();
        let new_sets: BTreeSet<String> = new.stateful_sets.iter().map(name_of).collect();
        let claims = old
            .persistent_volume_claims
            .iter()
            .map(name_of)
            .filter(|n| !new_claims.contains(n))
            .collect();
        let templates = old
            .stateful_sets
            .iter()
            .filter(|s| !new_sets.contains(&name_of(*s)))
            .flat_map(|s| {
                let set = name_of(s);
                s.spec
                    .volume_claim_templates
                    .iter()
                    .flatten()
                    .map(move |t| (t.metadata.name.clone().unwrap_or_default(), set.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        TierVolumes { claims, templates }
    }

    /// Whether a PersistentVolumeClaim of this name belongs to these volumes.
    pub fn contains(&self, claim: &str) -> bool {
        self.claims.contains(claim)
            || self.templates.iter().any(|(t, set)| {
                claim
                    .strip_prefix(&format!("{t}-{set}-"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.templates.is_empty()
    }
}

fn app_template<'a>(d: &'a Desired, app_name: &str) -> Option<&'a PodTemplateSpec> {
    d.deployments
        .iter()
        .find(|x: &&Deployment| name_of(*x) == app_name)
        .map(|x| &x.spec.template)
}

fn store_of(c: &Container) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == env::STORE)
        .and_then(|e| e.value.clone())
}

/// Why a migration Job cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot render the migration Job: {0}")]
pub struct JobError(pub String);

/// The migration Job `from` → `to`: the app image running `migrate`, with
/// the env and volumes of both phases' app pods (the target's win where both
/// name the same), `LADDER_MIGRATE_FROM`/`TO` set to the two tiers' stores,
/// and the JSON result written to the pod's termination message.
///
/// The pod runs beside the app pod (pod affinity on the node) when a phase
/// keeps its data on the app's own volume (phase 0: SQLite on a
/// ReadWriteOnce claim), so both can mount it.
pub fn migration_job(
    job_name: &str,
    app_name: &str,
    owner_meta: &ObjectMeta,
    from: &Desired,
    to: &Desired,
) -> Result<Job, JobError> {
    let from_t = app_template(from, app_name)
        .ok_or_else(|| JobError(format!("the old phase renders no Deployment {app_name}")))?;
    let to_t = app_template(to, app_name)
        .ok_or_else(|| JobError(format!("the new phase renders no Deployment {app_name}")))?;
    let pod = |t: &PodTemplateSpec| t.spec.clone().unwrap_or_default();
    let (from_pod, to_pod) = (pod(from_t), pod(to_t));
    let first = |p: &PodSpec| p.containers.first().cloned();
    let from_c = first(&from_pod).ok_or_else(|| JobError("old app pod has no container".into()))?;
    let to_c = first(&to_pod).ok_or_else(|| JobError("new app pod has no container".into()))?;
    let from_store =
        store_of(&from_c).ok_or_else(|| JobError(format!("the old app has no {}", env::STORE)))?;
    let to_store =
        store_of(&to_c).ok_or_else(|| JobError(format!("the new app has no {}", env::STORE)))?;

    // Env: the target's, then what only the source has; the serving knobs
    // (store, listen address, load reports) are the app's, not the Job's.
    const SERVING_ONLY: &[&str] = &[env::STORE, "LADDER_LISTEN", "LADDER_REPORT_LOAD"];
    let mut envs: Vec<EnvVar> = Vec::new();
    for e in to_c.env.iter().flatten().chain(from_c.env.iter().flatten()) {
        if SERVING_ONLY.contains(&e.name.as_str()) || envs.iter().any(|x| x.name == e.name) {
            continue;
        }
        envs.push(e.clone());
    }
    for (name, value) in [
        (migrate_env::FROM, from_store),
        (migrate_env::TO, to_store),
        (migrate_env::RESULT_FILE, "/dev/termination-log".to_owned()),
    ] {
        envs.push(EnvVar {
            name: name.into(),
            value: Some(value),
            value_from: None,
        });
    }
    // Volumes and mounts: by name and by path, the target's first.
    let mut volumes: Vec<Volume> = Vec::new();
    for v in to_pod
        .volumes
        .iter()
        .flatten()
        .chain(from_pod.volumes.iter().flatten())
    {
        if !volumes.iter().any(|x| x.name == v.name) {
            volumes.push(v.clone());
        }
    }
    let mut mounts = Vec::new();
    for m in to_c
        .volume_mounts
        .iter()
        .flatten()
        .chain(from_c.volume_mounts.iter().flatten())
    {
        let clash = mounts
            .iter()
            .any(|x: &k8s_openapi::api::core::v1::VolumeMount| {
                x.name == m.name || x.mount_path == m.mount_path
            });
        if !clash {
            mounts.push(m.clone());
        }
    }
    let on_app_volume = volumes.iter().any(|v| {
        v.persistent_volume_claim.is_some()
            && (from.persistent_volume_claims.iter().any(|c| {
                v.persistent_volume_claim
                    .as_ref()
                    .map(|p| p.claim_name.as_str())
                    == c.metadata.name.as_deref()
            }))
    });
    let container = Container {
        name: "migrate".into(),
        image: to_c.image.clone(),
        image_pull_policy: to_c.image_pull_policy.clone(),
        args: Some(vec!["migrate".into()]),
        env: Some(envs),
        volume_mounts: Some(mounts),
        resources: to_c.resources.clone(),
        security_context: to_c.security_context.clone(),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let mut labels: BTreeMap<String, String> = owner_meta.labels.clone().unwrap_or_default();
    labels.insert(JOB_LABEL.into(), JOB_MIGRATE.into());
    let affinity = on_app_volume.then(|| Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: from_t.metadata.as_ref().and_then(|m| {
                        m.labels.as_ref().map(|l| {
                            l.iter()
                                .filter(|(k, _)| {
                                    k.as_str() == "app.kubernetes.io/component"
                                        || k.as_str() == "app.kubernetes.io/instance"
                                })
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect()
                        })
                    }),
                    match_expressions: None,
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..PodAffinityTerm::default()
            }]),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    });
    let pod_spec = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        service_account_name: to_pod.service_account_name.clone(),
        security_context: to_pod.security_context.clone(),
        enable_service_links: Some(false),
        automount_service_account_token: Some(false),
        volumes: Some(volumes),
        affinity,
        ..PodSpec::default()
    };
    Ok(one_attempt_job(owner_meta, job_name, labels, pod_spec))
}

/// `ladder-app sweep` as a Job of the app image, with the app pod's env,
/// volumes and mounts (so its `LADDER_STORE` is the app's shard map): after
/// a resharding that reused shards, it deletes the rows a shard holds but no
/// longer owns, each only once its owner holds the same row (see
/// `app/src/migrate/sweep.rs`). Its pods carry [`JOB_LABEL`] like the
/// migration's, so the e2e runner runs them for real.
pub fn sweep_job(
    job_name: &str,
    app_name: &str,
    owner_meta: &ObjectMeta,
    d: &Desired,
) -> Result<Job, JobError> {
    let t = app_template(d, app_name)
        .ok_or_else(|| JobError(format!("the phase renders no Deployment {app_name}")))?;
    let pod = t.spec.clone().unwrap_or_default();
    let c = pod
        .containers
        .first()
        .ok_or_else(|| JobError("the app pod has no container".into()))?;
    store_of(c).ok_or_else(|| JobError(format!("the app has no {}", env::STORE)))?;
    const SERVING_ONLY: &[&str] = &["LADDER_LISTEN", "LADDER_REPORT_LOAD"];
    let envs: Vec<EnvVar> = c
        .env
        .iter()
        .flatten()
        .filter(|e| !SERVING_ONLY.contains(&e.name.as_str()))
        .cloned()
        .collect();
    let container = Container {
        name: "sweep".into(),
        image: c.image.clone(),
        image_pull_policy: c.image_pull_policy.clone(),
        args: Some(vec!["sweep".into()]),
        env: Some(envs),
        volume_mounts: c.volume_mounts.clone(),
        resources: c.resources.clone(),
        security_context: c.security_context.clone(),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let mut labels: BTreeMap<String, String> = owner_meta.labels.clone().unwrap_or_default();
    labels.insert(JOB_LABEL.into(), JOB_MIGRATE.into());
    let pod_spec = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        service_account_name: pod.service_account_name.clone(),
        security_context: pod.security_context.clone(),
        enable_service_links: Some(false),
        automount_service_account_token: Some(false),
        volumes: pod.volumes.clone(),
        ..PodSpec::default()
    };
    Ok(one_attempt_job(owner_meta, job_name, labels, pod_spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{self, World};
    use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};

    fn at(phase: i32) -> (crate::validate::Validated, Desired) {
        let spec: ScalingPhaseSpec = serde_yaml::from_str(&format!(
            "phase: {phase}\nauth: {{issuerUrl: 'https://id.example.com', clientId: shop}}\n"
        ))
        .expect("spec");
        let mut sp = ScalingPhase::new("shop", spec);
        sp.metadata.namespace = Some("prod".into());
        sp.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
        let world = World {
            node_regions: vec!["ap-south".into(), "eu-west".into(), "us-east".into()],
            integrations: Default::default(),
        };
        let (v, p) = validate::validate(&sp, &world).expect("valid");
        let d = crate::render::render(&v, &p);
        (v, d)
    }

    fn env_of(job: &Job) -> BTreeMap<String, EnvVar> {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod")
            .containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    }

    /// 2 → 3: the phase-2 PgBouncer knows only `ladder`, the Job reaches
    /// the shard databases through it; side by side it routes both, and its
    /// pods roll (the config hash follows the merged file).
    #[test]
    fn pgbouncer_routes_both_tiers_side_by_side() {
        let (_, two) = at(2);
        let (_, three) = at(3);
        let ini = |d: &Desired| {
            d.config_maps
                .iter()
                .find(|c| name_of(*c) == "shop-pgbouncer-config")
                .and_then(|c| c.data.as_ref())
                .map(|data| data[PGBOUNCER_INI].clone())
                .expect("pgbouncer.ini")
        };
        let hash = |d: &Desired| {
            d.deployments
                .iter()
                .find(|x| name_of(*x) == "shop-pgbouncer")
                .and_then(|x| x.spec.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(super::super::CONFIG_HASH_ANNOTATION).cloned())
                .expect("config hash")
        };
        let key = |l: &str| l.split('=').next().unwrap_or_default().trim().to_owned();
        let dbs = |text: &str| -> BTreeSet<String> {
            database_lines(text).into_iter().map(key).collect()
        };
        let (two_dbs, three_dbs) = (dbs(&ini(&two)), dbs(&ini(&three)));
        assert!(two_dbs.is_disjoint(&three_dbs), "{two_dbs:?} {three_dbs:?}");
        for (serving, other) in [(&two, &three), (&three, &two)] {
            let d = merge(serving.clone(), other.clone());
            let merged = ini(&d);
            let all: BTreeSet<String> = two_dbs.union(&three_dbs).cloned().collect();
            assert_eq!(dbs(&merged), all, "{merged}");
            assert_eq!(hash(&d), crate::render::pod::hash_of(&[merged.as_str()]));
            assert_ne!(
                hash(&d),
                hash(serving),
                "the pods roll onto the merged file"
            );
            // The rest of the file is the serving phase's.
            let rest = |t: &str| -> Vec<String> {
                t.lines()
                    .filter(|l| !l.contains(" = host="))
                    .map(str::to_owned)
                    .collect()
            };
            assert_eq!(rest(&merged), rest(&ini(serving)));
        }
        // One phase alone is left as rendered.
        let d = merge(two.clone(), two.clone());
        assert_eq!(ini(&d), ini(&two));
    }

    #[test]
    fn merge_keeps_the_serving_app_and_adds_the_other_tier() {
        let (_, zero) = at(0);
        let (_, one) = at(1);
        let d = merge(zero.clone(), one.clone());
        let app = d
            .deployments
            .iter()
            .find(|x| name_of(*x) == "shop-app")
            .expect("app");
        let store = store_of(&app.spec.template.spec.as_ref().expect("pod").containers[0]);
        assert_eq!(store.as_deref(), Some("sqlite:/data/ladder.db"));
        // The new tier is there, beside the old one's volume.
        for set in ["shop-postgres", "shop-redis"] {
            assert!(
                d.stateful_sets.iter().any(|s| name_of(s) == set)
                    || d.deployments.iter().any(|s| name_of(s) == set),
                "{set} missing"
            );
        }
        assert!(
            d.persistent_volume_claims
                .iter()
                .any(|c| name_of(c) == "shop-app-data")
        );
        // Nothing of either side is lost.
        assert!(d.len() >= one.len());
        let expected: BTreeSet<_> = d.expected.iter().map(|e| e.name.clone()).collect();
        for e in one.expected.iter().chain(zero.expected.iter()) {
            assert!(expected.contains(&e.name), "{} not expected", e.name);
        }
    }

    #[test]
    fn migration_job_reaches_both_tiers() {
        let (v, zero) = at(0);
        let (_, one) = at(1);
        let meta = crate::render::meta(&v, "", "migrate", "migrate");
        let job =
            migration_job("shop-migrate-0-to-1", "shop-app", &meta, &zero, &one).expect("job");
        let env = env_of(&job);
        assert_eq!(
            env[migrate_env::FROM].value.as_deref(),
            Some("sqlite:/data/ladder.db")
        );
        assert!(
            env[migrate_env::TO]
                .value
                .as_deref()
                .is_some_and(|s| s.starts_with("pgbouncer:"))
        );
        assert!(
            env.contains_key(env::DB_PASSWORD),
            "the new tier's password is wired"
        );
        assert!(!env.contains_key(env::STORE) && !env.contains_key("LADDER_LISTEN"));
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref(), Some(&["migrate".to_owned()][..]));
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(
            mounts.contains(&"/data"),
            "the SQLite volume is mounted: {mounts:?}"
        );
        assert!(pod.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|p| p.claim_name == "shop-app-data")
        }));
        // Beside the app pod: the claim is ReadWriteOnce.
        assert!(
            pod.affinity
                .as_ref()
                .and_then(|a| a.pod_affinity.as_ref())
                .is_some()
        );
        let labels = job
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert_eq!(labels.get(JOB_LABEL).map(String::as_str), Some(JOB_MIGRATE));
        assert_eq!(job.spec.as_ref().and_then(|s| s.backoff_limit), Some(0));
        assert!(
            job.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.len() == 1)
        );
        // Between PostgreSQL tiers no volume is shared with the app: no affinity.
        let (_, two) = at(2);
        let (_, three) = at(3);
        let job =
            migration_job("shop-migrate-2-to-3", "shop-app", &meta, &two, &three).expect("job");
        let env = env_of(&job);
        assert!(
            env[migrate_env::FROM]
                .value
                .as_deref()
                .is_some_and(|s| s.starts_with("replicas:"))
        );
        assert!(
            env[migrate_env::TO]
                .value
                .as_deref()
                .is_some_and(|s| s.starts_with("shards:"))
        );
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        assert!(pod.affinity.is_none());
    }

    #[test]
    fn retired_volumes_are_the_old_tiers_only() {
        let (_, zero) = at(0);
        let (_, one) = at(1);
        let leaving = TierVolumes::only_in(&zero, &one);
        assert!(leaving.contains("shop-app-data"));
        assert!(!leaving.contains("data-shop-postgres-0"));
        let (_, two) = at(2);
        let (_, three) = at(3);
        let leaving = TierVolumes::only_in(&two, &three);
        assert!(leaving.contains("data-shop-postgres-0"), "{leaving:?}");
        assert!(!leaving.contains("data-shop-postgres-0x"));
        assert!(!leaving.contains("data-shop-pg-shard-0-0"));
        // 1 → 2 retires nothing that holds data.
        let leaving = TierVolumes::only_in(&one, &two);
        assert!(!leaving.contains("data-shop-postgres-0"));
    }
}
