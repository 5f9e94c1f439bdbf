//! Rendering a decided shape (pure): one phase, or two side by side with
//! the migration Job while a transition moves data.

use kube::ResourceExt;

use crate::render::migration;
use crate::render::{self, Desired};
use crate::transition::{self, Shape};
use crate::validate::{self, World};
use ladder_crds::scalingphase::{AutoscaleMode, ScalingPhase};

/// The spec validated as if it declared `phase` (autoscaling aside): what
/// each side of a transition renders.
pub(super) fn validated_at(
    sp: &ScalingPhase,
    world: &World,
    phase: i32,
) -> Result<(validate::Validated, ladder_crds::catalogue::PhaseProfile), validate::Invalid> {
    let mut at = sp.clone();
    at.spec.phase = phase;
    at.spec.autoscale.mode = AutoscaleMode::Off;
    at.spec.autoscale.max_phase = None;
    at.spec.autoscale.min_phase = None;
    validate::validate(&at, world)
}

pub(super) fn render_at(
    sp: &ScalingPhase,
    world: &World,
    phase: i32,
) -> Result<(validate::Validated, Desired), String> {
    let (v, profile) = validated_at(sp, world, phase)
        .map_err(|e| format!("phase {phase} of this spec is invalid: {e}"))?;
    let d = render::render(&v, &profile);
    Ok((v, d))
}

/// Renders a [`Shape`]: one phase, or two side by side with the migration Job.
pub(super) fn render_shape(
    sp: &ScalingPhase,
    world: &World,
    shape: Shape,
) -> Result<Desired, String> {
    match shape {
        Shape::Steady(phase) => render_at(sp, world, phase).map(|(_, d)| d),
        Shape::Both { serve, other, job } => {
            let (v, serving) = render_at(sp, world, serve)?;
            let (_, beside) = render_at(sp, world, other)?;
            let job = match job {
                Some((from, to)) => {
                    let (from_d, to_d) = if from == serve {
                        (&serving, &beside)
                    } else {
                        (&beside, &serving)
                    };
                    let app = render::child_name(&v, "app");
                    let meta = render::meta(&v, "", "migrate", "migrate");
                    Some(
                        migration::migration_job(
                            &transition::job_name(&sp.name_any(), from, to),
                            &app,
                            &meta,
                            from_d,
                            to_d,
                        )
                        .map_err(|e| e.to_string())?,
                    )
                }
                None => None,
            };
            let mut d = migration::merge(serving, beside);
            d.jobs.extend(job);
            Ok(d)
        }
    }
}
