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
        pg.map_version = l.map_version;
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

/// Renders a [`Shape`]: one phase, or two side by side with the migration
/// Job. `shards` is the layout phase 3 renders with in a `Steady` or `Both`
/// shape ([`transition::Plan::shards`]); a `Reshard` shape names its own.
pub(super) fn render_shape(
    sp: &ScalingPhase,
    world: &World,
    shape: Shape,
    shards: Option<ShardLayout>,
) -> Result<Desired, String> {
    let (serving, beside, v, job) = match shape {
        Shape::Steady(phase) => return render_at(sp, world, phase, shards).map(|(_, d)| d),
        Shape::Both { serve, other, job } => {
            let (v, serving) = render_at(sp, world, serve, shards)?;
            let (_, beside) = render_at(sp, world, other, shards)?;
            let job = job.map(|(from, to)| {
                let name = transition::job_name(&sp.name_any(), from, to);
                (name, from == serve)
            });
            (serving, beside, v, job)
        }
        Shape::Reshard { serve, other, job } => {
            let (v, serving) = render_at(sp, world, SHARDED, Some(serve))?;
            let (_, beside) = render_at(sp, world, SHARDED, Some(other))?;
            let job = job.map(|(from, to)| {
                let name = transition::reshard_job_name(&sp.name_any(), from, to);
                (name, from == serve)
            });
            (serving, beside, v, job)
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
    let mut d = migration::merge(serving, beside);
    d.jobs.extend(job);
    Ok(d)
}
