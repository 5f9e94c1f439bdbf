//! Per-component overrides of the data tier: each component the phase runs
//! gets the catalogue's defaults, replaced field by field by
//! `spec.overrides`, within the bounds the CRD declares. Components the
//! phase does not run are `None`, whatever the overrides say.

use std::collections::BTreeMap;

use super::fields;
use super::{DataComponent, Invalid, PgBouncer, Postgres};
use ladder_crds::catalogue::{self, Phase, PhaseProfile, defaults};
use ladder_crds::scalingphase::{ComponentOverride, Overrides};

/// Most read replicas per primary, shards, and replicas of the other
/// components (the CRD's bounds).
const MAX_READ_REPLICAS: i32 = 15;
const MIN_SHARDS: i32 = 2;
const MAX_SHARDS: i32 = 64;
const MAX_PGBOUNCER_REPLICAS: i32 = 20;
const MAX_POOL_SIZE: i32 = 1000;
const MAX_REPLICAS: i32 = 100;
const MAX_PG_PARAMETERS: usize = 32;
/// CockroachDB keeps a quorum per region only with three nodes or more.
const MIN_COCKROACH_NODES: i32 = 3;
const MAX_COCKROACH_NODES: i32 = 50;

/// A `postgresql.conf` parameter name the operator accepts.
pub fn is_pg_param_name(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'.')
}

/// PostgreSQL, phases 1-3.
pub(super) fn postgres(
    o: &Overrides,
    phase: Phase,
    profile: &PhaseProfile,
) -> Result<Option<Postgres>, Invalid> {
    let Some(pp) = &profile.postgres else {
        return Ok(None);
    };
    let po = o.postgres.clone().unwrap_or_default();
    // From phase 2 the app reads from replicas: at least one per primary.
    let min_replicas = if phase >= Phase::Regional { 1 } else { 0 };
    let read_replicas = fields::count(
        "spec.overrides.postgres.readReplicas",
        po.read_replicas,
        pp.read_replicas,
        min_replicas,
        MAX_READ_REPLICAS,
    )?;
    let shards = if phase == Phase::National {
        fields::count(
            "spec.overrides.postgres.shards",
            po.shards,
            pp.shards,
            MIN_SHARDS,
            MAX_SHARDS,
        )?
    } else {
        1
    };
    let (storage_size, storage_class) = fields::storage(
        "spec.overrides.postgres.storage",
        po.storage.as_ref(),
        pp.storage,
    )?;
    if po.parameters.len() > MAX_PG_PARAMETERS {
        return Err(Invalid::field(
            "spec.overrides.postgres.parameters",
            format!("at most {MAX_PG_PARAMETERS} parameters"),
        ));
    }
    let mut parameters = BTreeMap::new();
    for (k, v) in &po.parameters {
        if !is_pg_param_name(k) {
            return Err(Invalid::field(
                format!("spec.overrides.postgres.parameters.{k}"),
                "names are lower-case identifiers",
            ));
        }
        if v.0.len() > 256 || v.0.chars().any(char::is_control) {
            return Err(Invalid::field(
                format!("spec.overrides.postgres.parameters.{k}"),
                "values are one line without control characters, at most 256 bytes",
            ));
        }
        parameters.insert(k.clone(), v.0.clone());
    }
    Ok(Some(Postgres {
        component: DataComponent {
            image: fields::image(
                "spec.overrides.postgres.image",
                po.image.as_ref(),
                catalogue::images::POSTGRES,
            )?,
            replicas: read_replicas,
            size: fields::size(
                "spec.overrides.postgres.resources",
                po.resources.as_ref(),
                &pp.size,
            )?,
            storage_size,
            storage_class,
        },
        shards,
        map_version: 1,
        parameters,
    }))
}

/// PgBouncer, phases 1-3.
pub(super) fn pgbouncer(
    o: &Overrides,
    profile: &PhaseProfile,
) -> Result<Option<PgBouncer>, Invalid> {
    let Some(default) = profile.pgbouncer_replicas else {
        return Ok(None);
    };
    let po = o.pgbouncer.clone().unwrap_or_default();
    Ok(Some(PgBouncer {
        replicas: fields::count(
            "spec.overrides.pgbouncer.replicas",
            po.replicas,
            default,
            1,
            MAX_PGBOUNCER_REPLICAS,
        )?,
        pool_size: fields::count(
            "spec.overrides.pgbouncer.poolSize",
            po.pool_size,
            defaults::PGBOUNCER_POOL_SIZE,
            1,
            MAX_POOL_SIZE,
        )?,
        image: fields::image(
            "spec.overrides.pgbouncer.image",
            po.image.as_ref(),
            catalogue::images::PGBOUNCER,
        )?,
    }))
}

/// Redis, ClickHouse or Varnish (`field` is its overrides' path): `None`
/// when the phase runs no replicas of it.
pub(super) fn component(
    field: &str,
    replicas: Option<i32>,
    ov: Option<&ComponentOverride>,
    defaults: &defaults::Component,
) -> Result<Option<DataComponent>, Invalid> {
    let Some(replicas) = replicas else {
        return Ok(None);
    };
    let (storage_size, storage_class) = fields::storage(
        &format!("{field}.storage"),
        ov.and_then(|v| v.storage.as_ref()),
        defaults.storage,
    )?;
    Ok(Some(DataComponent {
        image: fields::image(
            &format!("{field}.image"),
            ov.and_then(|v| v.image.as_ref()),
            defaults.image,
        )?,
        replicas: fields::count(
            &format!("{field}.replicas"),
            ov.and_then(|v| v.replicas),
            replicas,
            1,
            MAX_REPLICAS,
        )?,
        size: fields::size(
            &format!("{field}.resources"),
            ov.and_then(|v| v.resources.as_ref()),
            &defaults.size,
        )?,
        storage_size,
        storage_class,
    }))
}

/// CockroachDB, phase 4 (`replicas` = nodes per region).
pub(super) fn cockroach(
    o: &Overrides,
    profile: &PhaseProfile,
) -> Result<Option<DataComponent>, Invalid> {
    let Some(default) = profile.cockroach_nodes_per_region else {
        return Ok(None);
    };
    let co = o.cockroach.clone().unwrap_or_default();
    let nodes = co.nodes_per_region.unwrap_or(default);
    if nodes < MIN_COCKROACH_NODES {
        return Err(Invalid::field(
            "spec.overrides.cockroach.nodesPerRegion",
            "CockroachDB needs at least 3 nodes per region to keep a quorum when one fails",
        ));
    }
    let d = &defaults::COCKROACH;
    let (storage_size, storage_class) = fields::storage(
        "spec.overrides.cockroach.storage",
        co.storage.as_ref(),
        d.storage,
    )?;
    Ok(Some(DataComponent {
        image: fields::image("spec.overrides.cockroach.image", co.image.as_ref(), d.image)?,
        replicas: fields::count(
            "spec.overrides.cockroach.nodesPerRegion",
            Some(nodes),
            default,
            MIN_COCKROACH_NODES,
            MAX_COCKROACH_NODES,
        )?,
        size: fields::size(
            "spec.overrides.cockroach.resources",
            co.resources.as_ref(),
            &d.size,
        )?,
        storage_size,
        storage_class,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ladder_crds::catalogue::profile;

    fn overrides(yaml: &str) -> Overrides {
        serde_yaml::from_str(yaml).expect("overrides parse")
    }

    #[test]
    fn components_the_phase_does_not_run_are_absent_whatever_the_overrides() {
        let o = overrides("{postgres: {readReplicas: 3}, cockroach: {nodesPerRegion: 5}}");
        let p0 = profile(Phase::Mvp);
        assert_eq!(postgres(&o, Phase::Mvp, &p0), Ok(None));
        assert_eq!(pgbouncer(&o, &p0), Ok(None));
        assert_eq!(cockroach(&o, &p0), Ok(None));
    }

    #[test]
    fn postgres_defaults_come_from_the_catalogue_and_overrides_win() {
        let p3 = profile(Phase::National);
        let pg = postgres(&overrides("{}"), Phase::National, &p3)
            .expect("valid")
            .expect("phase 3 runs PostgreSQL");
        assert_eq!(pg.shards, 4);
        assert_eq!(pg.component.image, catalogue::images::POSTGRES);
        let o = overrides("{postgres: {shards: 8, readReplicas: 2, parameters: {work_mem: 64MB}}}");
        let pg = postgres(&o, Phase::National, &p3)
            .expect("valid")
            .expect("runs");
        assert_eq!((pg.shards, pg.component.replicas), (8, 2));
        assert_eq!(
            pg.parameters.get("work_mem").map(String::as_str),
            Some("64MB")
        );
        // Shards only mean something in phase 3.
        let p1 = profile(Phase::Growth);
        assert_eq!(
            postgres(&o, Phase::Growth, &p1).map(|p| p.map(|p| p.shards)),
            Ok(Some(1))
        );
    }

    #[test]
    fn postgres_refusals() {
        let p2 = profile(Phase::Regional);
        for bad in [
            "{postgres: {readReplicas: 0}}",
            "{postgres: {readReplicas: 16}}",
            "{postgres: {parameters: {Bad: '1'}}}",
            "{postgres: {parameters: {a: \"x\\ny\"}}}",
        ] {
            assert!(
                postgres(&overrides(bad), Phase::Regional, &p2).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn generic_components_and_cockroach() {
        let p3 = profile(Phase::National);
        let o = overrides("{redis: {replicas: 2, storage: {size: 9Gi}}}");
        let r = component("r", p3.redis_replicas, o.redis.as_ref(), &defaults::REDIS)
            .expect("valid")
            .expect("runs");
        assert_eq!((r.replicas, r.storage_size.as_str()), (2, "9Gi"));
        assert_eq!(r.size.memory, defaults::REDIS.size.memory);
        assert_eq!(component("r", None, None, &defaults::REDIS), Ok(None));
        let p4 = profile(Phase::Global);
        let c = cockroach(&overrides("{}"), &p4)
            .expect("valid")
            .expect("runs");
        assert_eq!(c.storage_size, defaults::COCKROACH.storage);
        assert!(cockroach(&overrides("{cockroach: {nodesPerRegion: 2}}"), &p4).is_err());
        let b = pgbouncer(&overrides("{}"), &p3)
            .expect("valid")
            .expect("runs");
        assert_eq!(b.pool_size, defaults::PGBOUNCER_POOL_SIZE);
    }
}
