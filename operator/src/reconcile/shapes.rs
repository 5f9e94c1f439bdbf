//! Rendering a decided shape (pure): one phase, or two side by side with
//! the migration Job while a transition moves data, or phase 3 with two
//! shard layouts side by side while it is resharded.

use kube::ResourceExt;

use crate::render::migration;
use crate::render::{self, Desired};
use crate::transition::{self, SHARDED, Shape, ShardLayout};
use crate::validate::{self, World};
use ladder_crds::scalingphase::{AutoscaleMode, PostgresOverride, ScalingPhase};

/// The spec validated as if it declared `phase` (autoscaling aside): what
/// each side of a transition renders. In phase 3, `shards` (the layout in
/// use, or the one a transition enters) replaces the spec's shard count and
/// gives the shard map's version; without it, the spec's count on map v1.
pub(super) fn validated_at(
    sp: &ScalingPhase,
    world: &World,
    phase: i32,
    shards: Option<ShardLayout>,
) -> Result<(validate::Validated, ladder_crds::catalogue::PhaseProfile), validate::Invalid> {
    let mut at = sp.clone();
    at.spec.phase = phase;
    at.spec.autoscale.mode = AutoscaleMode::Off;
    at.spec.autoscale.max_phase = None;
    at.spec.autoscale.min_phase = None;
    let layout = shards.filter(|_| phase == SHARDED);
    if let Some(l) = layout {
        at.spec
            .overrides
            .postgres
            .get_or_insert_with(PostgresOverride::default)
            .shards = Some(l.shards);
    }
    let (mut v, profile) = validate::validate(&at, world)?;
    if let (Some(l), Some(pg)) = (layout, v.postgres.as_mut()) {
        pg.map_version = u32::try_from(l.map_version).unwrap_or(1);
    }
    Ok((v, profile))
}

pub(super) fn render_at(
    sp: &ScalingPhase,
    world: &World,
    phase: i32,
    shards: Option<ShardLayout>,
) -> Result<(validate::Validated, Desired), String> {
    let (v, profile) = validated_at(sp, world, phase, shards)
        .map_err(|e| format!("phase {phase} of this spec is invalid: {e}"))?;
    let d = render::render(&v, &profile);
    Ok((v, d))
}

/// One phase alone. In phase 3 on a shard map a resharding wrote (version
/// 2 and up), with the Job that sweeps the rows the old map left on reused
/// shards: only in the steady shape, so only once the old map is retired
/// (after the retention window: a rollback needs those rows until then).
fn render_steady(
    sp: &ScalingPhase,
    world: &World,
    phase: i32,
    shards: Option<ShardLayout>,
) -> Result<Desired, String> {
    let (v, mut d) = render_at(sp, world, phase, shards)?;
    if let Some(l) =
        shards.filter(|l| phase == SHARDED && l.map_version > transition::FIRST_MAP_VERSION)
    {
        let name = transition::sweep_job_name(&sp.name_any(), l.map_version);
        let app = render::child_name(&v, "app");
        let meta = render::meta(&v, "", "migrate", "migrate");
        let job = migration::sweep_job(&name, &app, &meta, &d).map_err(|e| e.to_string())?;
        d.expected.push(render::ExpectedComponent {
            kind: "Job",
            name,
            replicas: 1,
        });
        d.jobs.push(job);
    }
    Ok(d)
}

/// Renders a [`Shape`]: one phase, or two side by side with the migration
/// Job. `shards` is the layout phase 3 renders with in a `Steady` or `Both`
/// shape ([`transition::Plan::shards`]); a `Reshard` shape names its own.
pub(super) fn render_shape(
    sp: &ScalingPhase,
    world: &World,
    shape: Shape,
    shards: Option<ShardLayout>,
) -> Result<Desired, String> {
    let (serving, beside, v, job, bouncer_of_beside) = match shape {
        Shape::Steady(phase) => return render_steady(sp, world, phase, shards),
        Shape::Both { serve, other, job } => {
            let (v, serving) = render_at(sp, world, serve, shards)?;
            let (_, beside) = render_at(sp, world, other, shards)?;
            let job = job.map(|(from, to)| {
                let name = transition::job_name(&sp.name_any(), from, to);
                (name, from == serve)
            });
            (serving, beside, v, job, None)
        }
        Shape::Reshard { serve, other, job } => {
            let (v, serving) = render_at(sp, world, SHARDED, Some(serve))?;
            let (_, beside) = render_at(sp, world, SHARDED, Some(other))?;
            let job = job.map(|(from, to)| {
                let name = transition::reshard_job_name(&sp.name_any(), from, to);
                (name, from == serve)
            });
            (serving, beside, v, job, Some(other.shards > serve.shards))
        }
    };
    let job = match job {
        Some((name, from_serves)) => {
            let (from_d, to_d) = if from_serves {
                (&serving, &beside)
            } else {
                (&beside, &serving)
            };
            let app = render::child_name(&v, "app");
            let meta = render::meta(&v, "", "migrate", "migrate");
            Some(
                migration::migration_job(&name, &app, &meta, from_d, to_d)
                    .map_err(|e| e.to_string())?,
            )
        }
        None => None,
    };
    let mut d = match bouncer_of_beside {
        Some(more) => migration::merge_shard_layouts(&v, serving, beside, more),
        None => migration::merge(serving, beside),
    };
    d.jobs.extend(job);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::batch::v1::Job;

    fn sp(shards: i32) -> ScalingPhase {
        serde_yaml::from_str(&format!(
            "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: shop, namespace: prod, uid: 11111111-2222-3333-4444-555555555555}}\nspec: {{phase: 3, overrides: {{postgres: {{shards: {shards}}}}}}}\n"
        ))
        .expect("a ScalingPhase")
    }

    fn layout(shards: i32, map_version: i32) -> ShardLayout {
        ShardLayout {
            shards,
            map_version,
        }
    }

    fn env_of<'a>(c: &'a k8s_openapi::api::core::v1::Container, name: &str) -> Option<&'a str> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    fn app_store(d: &Desired) -> String {
        let app: &Deployment = d
            .deployments
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some("shop-app"))
            .expect("app");
        let c = &app.spec.template.spec.as_ref().expect("pod").containers[0];
        env_of(c, ladder_crds::contract::env::STORE)
            .expect("store")
            .to_owned()
    }

    fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
        items
            .iter()
            .map(|k| k.meta().name.clone().unwrap_or_default())
            .collect()
    }

    fn maps(d: &Desired) -> Vec<String> {
        names(&d.config_maps)
            .into_iter()
            .filter(|n| n.contains("shard-map"))
            .collect()
    }

    fn shard_sets(d: &Desired) -> Vec<String> {
        let mut s: Vec<String> = names(&d.stateful_sets)
            .into_iter()
            .filter(|n| n.starts_with("shop-pg-shard-") && !n.ends_with("-replica"))
            .collect();
        s.sort();
        s
    }

    #[test]
    fn steady_phase_3_renders_the_layout_in_use() {
        let world = World::default();
        // The spec says 4; the layout in use (status) says 2 on map v1: the
        // spec's count only arrives through a resharding.
        let d =
            render_shape(&sp(4), &world, Shape::Steady(3), Some(layout(2, 1))).expect("renders");
        assert_eq!(shard_sets(&d), vec!["shop-pg-shard-0", "shop-pg-shard-1"]);
        let m = maps(&d);
        assert!(
            m.len() == 1 && m[0].starts_with("shop-shard-map-v1-"),
            "{m:?}"
        );
        assert_eq!(app_store(&d), "shards:/etc/ladder/shard-map/shard-map.json");
        // Without a layout (no status yet): the spec's count on map v1, as
        // before resharding existed (the golden files).
        let plain = render_shape(&sp(4), &world, Shape::Steady(3), None).expect("renders");
        assert_eq!(shard_sets(&plain).len(), 4);
        assert_eq!(
            plain.to_yaml(),
            render_shape(&sp(4), &world, Shape::Steady(3), Some(layout(4, 1)))
                .expect("renders")
                .to_yaml()
        );
        // Map v2 after a resharding: its own name, volume and path, and the
        // version inside the map.
        let d =
            render_shape(&sp(4), &world, Shape::Steady(3), Some(layout(4, 2))).expect("renders");
        assert_eq!(shard_sets(&d).len(), 4);
        let m = maps(&d);
        assert!(
            m.len() == 1 && m[0].starts_with("shop-shard-map-v2-"),
            "{m:?}"
        );
        assert_eq!(
            app_store(&d),
            "shards:/etc/ladder/shard-map-v2/shard-map.json"
        );
        let cm = d
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(&m[0]))
            .expect("map");
        let text = &cm.data.as_ref().expect("data")["shard-map.json"];
        let map = ladder_crds::contract::ShardMap::parse(text).expect("the app's format");
        assert_eq!((map.version, map.shards.len()), (2, 4));
    }

    #[test]
    fn a_resharding_renders_both_maps_the_shards_of_both_and_a_job_between_them() {
        let world = World::default();
        let (old, new) = (layout(2, 1), layout(4, 2));
        let before = Shape::Reshard {
            serve: old,
            other: new,
            job: Some((old, new)),
        };
        let d = render_shape(&sp(4), &world, before, None).expect("renders");
        assert_eq!(shard_sets(&d).len(), 4, "the new shards beside the old");
        let m = maps(&d);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m.iter().any(|n| n.starts_with("shop-shard-map-v1-")));
        assert!(m.iter().any(|n| n.starts_with("shop-shard-map-v2-")));
        assert_eq!(
            app_store(&d),
            "shards:/etc/ladder/shard-map/shard-map.json",
            "the app stays on v1"
        );
        let job: &Job = d.jobs.first().expect("the migration Job");
        assert_eq!(job.metadata.name.as_deref(), Some("shop-reshard-v1-to-v2"));
        let pod = job
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod");
        let c = &pod.containers[0];
        assert_eq!(
            env_of(c, migration::migrate_env::FROM),
            Some("shards:/etc/ladder/shard-map/shard-map.json")
        );
        assert_eq!(
            env_of(c, migration::migrate_env::TO),
            Some("shards:/etc/ladder/shard-map-v2/shard-map.json")
        );
        let volumes: Vec<String> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .collect();
        assert!(
            volumes.contains(&"shard-map".to_owned())
                && volumes.contains(&"shard-map-v2".to_owned()),
            "{volumes:?}"
        );
        // The certificate covers the hosts of the new shards too.
        let hosts: Vec<String> = d
            .generated_secrets
            .iter()
            .filter_map(|s| match &s.content {
                render::SecretContent::Tls { dns_names, .. } => Some(dns_names.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            hosts.iter().any(|h| h.starts_with("shop-pg-shard-3")),
            "{hosts:?}"
        );

        // Cut over: the app on v2, v1 and the Job still there.
        let after = Shape::Reshard {
            serve: new,
            other: old,
            job: Some((old, new)),
        };
        let d = render_shape(&sp(4), &world, after, None).expect("renders");
        assert_eq!(
            app_store(&d),
            "shards:/etc/ladder/shard-map-v2/shard-map.json"
        );
        assert_eq!(maps(&d).len(), 2, "the old map stays until Retire");
        let job = d.jobs.first().expect("the migration Job");
        assert_eq!(job.metadata.name.as_deref(), Some("shop-reshard-v1-to-v2"));
        let c = &job
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers[0];
        assert_eq!(
            env_of(c, migration::migrate_env::FROM),
            Some("shards:/etc/ladder/shard-map/shard-map.json"),
            "the Job's direction does not follow the app"
        );

        // A shrink keeps the surplus shards until Retire renders 2 alone.
        let shrink = Shape::Reshard {
            serve: layout(2, 2),
            other: layout(4, 1),
            job: Some((layout(4, 1), layout(2, 2))),
        };
        let d = render_shape(&sp(2), &world, shrink, None).expect("renders");
        assert_eq!(shard_sets(&d).len(), 4);
        let d =
            render_shape(&sp(2), &world, Shape::Steady(3), Some(layout(2, 2))).expect("renders");
        assert_eq!(shard_sets(&d), vec!["shop-pg-shard-0", "shop-pg-shard-1"]);
    }
    /// PgBouncer's `[databases]` as rendered.
    fn bouncer_databases(d: &Desired) -> Vec<String> {
        let cm = d
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some("shop-pgbouncer-config"))
            .expect("PgBouncer's config");
        let ini = &cm.data.as_ref().expect("data")["pgbouncer.ini"];
        ini.lines()
            .skip_while(|l| *l != "[databases]")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(" = ").map(|(db, _)| db.to_owned()))
            .collect()
    }

    #[test]
    fn pgbouncer_routes_the_shards_of_both_layouts_while_they_run_side_by_side() {
        let world = World::default();
        let two = ["shard_0", "shard_1"];
        let four = ["shard_0", "shard_1", "shard_2", "shard_3"];
        let d =
            render_shape(&sp(4), &world, Shape::Steady(3), Some(layout(2, 1))).expect("renders");
        assert_eq!(bouncer_databases(&d), two);
        // Growing: the app still on 2 shards, the Job writing to 4.
        let grow = Shape::Reshard {
            serve: layout(2, 1),
            other: layout(4, 2),
            job: Some((layout(2, 1), layout(4, 2))),
        };
        let d = render_shape(&sp(4), &world, grow, None).expect("renders");
        assert_eq!(bouncer_databases(&d), four);
        assert_eq!(app_store(&d), "shards:/etc/ladder/shard-map/shard-map.json");
        // Shrinking, cut over: the app on 2 shards, the 4 kept for a rollback.
        let shrunk = Shape::Reshard {
            serve: layout(2, 2),
            other: layout(4, 1),
            job: Some((layout(4, 1), layout(2, 2))),
        };
        let d = render_shape(&sp(2), &world, shrunk, None).expect("renders");
        assert_eq!(bouncer_databases(&d), four);
        assert_eq!(
            app_store(&d),
            "shards:/etc/ladder/shard-map-v2/shard-map.json"
        );
        // Retired: 2 again.
        let d =
            render_shape(&sp(2), &world, Shape::Steady(3), Some(layout(2, 2))).expect("renders");
        assert_eq!(bouncer_databases(&d), two);
    }

    #[test]
    fn the_sweep_runs_only_once_the_old_map_is_retired() {
        let world = World::default();
        let jobs = |d: &Desired| names(&d.jobs);
        // Map v1 (a climb): nothing was left behind.
        let d =
            render_shape(&sp(4), &world, Shape::Steady(3), Some(layout(4, 1))).expect("renders");
        assert!(jobs(&d).is_empty(), "{:?}", jobs(&d));
        // While both maps run (Retain included): no sweep, the old map's
        // shards still hold what a rollback reads.
        let retained = Shape::Reshard {
            serve: layout(4, 2),
            other: layout(2, 1),
            job: Some((layout(2, 1), layout(4, 2))),
        };
        let d = render_shape(&sp(4), &world, retained, None).expect("renders");
        assert_eq!(jobs(&d), vec!["shop-reshard-v1-to-v2"]);
        // Retired: the sweep, on the app's store, counted for readiness.
        let d =
            render_shape(&sp(4), &world, Shape::Steady(3), Some(layout(4, 2))).expect("renders");
        assert_eq!(jobs(&d), vec!["shop-sweep-shards-v2"]);
        assert!(
            d.expected
                .iter()
                .any(|e| e.kind == "Job" && e.name == "shop-sweep-shards-v2" && e.replicas == 1)
        );
        let pod = d.jobs[0]
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref(), Some(&["sweep".to_owned()][..]));
        assert_eq!(
            env_of(c, ladder_crds::contract::env::STORE),
            Some("shards:/etc/ladder/shard-map-v2/shard-map.json")
        );
        assert!(env_of(c, "LADDER_LISTEN").is_none());
        assert!(
            pod.volumes
                .iter()
                .flatten()
                .any(|v| v.name == "shard-map-v2")
        );
        let labels = d.jobs[0].metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(transition::JOB_LABEL).map(String::as_str),
            Some(transition::JOB_MIGRATE)
        );
    }
}
