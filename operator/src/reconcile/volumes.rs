//! Volumes of retired tiers (client; only while a transition starts or
//! retires a tier): label the claims a transition leaves behind, and refuse
//! to step back onto claims a past transition retired (they hold stale data).

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tracing::info;

use super::shapes::render_at;
use super::{Context, Error};
use crate::render::migration::TierVolumes;
use crate::transition;
use crate::validate::World;
use ladder_crds::scalingphase::{ScalingPhase, TransitionStatus};

/// Both sides of `t` rendered: `(from, to)`. A resharding renders phase 3
/// with each side's shard layout.
fn sides(
    sp: &ScalingPhase,
    world: &World,
    t: &TransitionStatus,
) -> Option<(crate::render::Desired, crate::render::Desired)> {
    let (_, from_d) = render_at(sp, world, t.from, t.from_shards).ok()?;
    let (_, to_d) = render_at(sp, world, t.to, t.to_shards).ok()?;
    Some((from_d, to_d))
}

/// The first claim of the tier `t` enters (for a resharding: its added
/// shards) that a past transition retired, if any.
pub(super) async fn stale_volumes(
    sp: &ScalingPhase,
    world: &World,
    ctx: &Context,
    ns: &str,
    t: &TransitionStatus,
) -> Result<Option<String>, Error> {
    let Some((from_d, to_d)) = sides(sp, world, t) else {
        return Ok(None);
    };
    let coming = TierVolumes::only_in(&to_d, &from_d);
    if coming.is_empty() {
        return Ok(None);
    }
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
        .list_metadata(&ListParams::default().labels(transition::RETIRED_BY_LABEL))
        .await
        .map_err(|source| Error::Observe {
            kind: "PersistentVolumeClaim",
            name: String::new(),
            source,
        })?;
    Ok(claims
        .items
        .iter()
        .map(|c| c.name_any())
        .find(|n| coming.contains(n)))
}

/// Labels the volumes of the tier a transition retires: which transition,
/// and when. With `deletionPolicy: Retain` they stay; a later step back to
/// that tier refuses to start on them. A resharding to fewer shards
/// retires the shards the new layout drops.
pub(super) async fn retire_volumes(
    sp: &ScalingPhase,
    world: &World,
    ctx: &Context,
    ns: &str,
    t: &TransitionStatus,
) -> Result<(), Error> {
    let Some((from_d, to_d)) = sides(sp, world, t) else {
        return Ok(());
    };
    let leaving = TierVolumes::only_in(&from_d, &to_d);
    if leaving.is_empty() {
        return Ok(());
    }
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns);
    let claims = api
        .list_metadata(&ListParams::default())
        .await
        .map_err(|source| Error::Observe {
            kind: "PersistentVolumeClaim",
            name: String::new(),
            source,
        })?;
    let by = transition::step_label(t);
    for c in claims
        .items
        .iter()
        .filter(|c| leaving.contains(&c.name_any()))
    {
        if c.labels().get(transition::RETIRED_BY_LABEL) == Some(&by) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {
            "labels": {(transition::RETIRED_BY_LABEL): by},
            "annotations": {(transition::RETIRED_AT_ANNOTATION): super::report::now().0.to_string()},
        }});
        api.patch_metadata(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| Error::Observe {
            kind: "PersistentVolumeClaim",
            name: c.name_any(),
            source,
        })?;
        info!(claim = %c.name_any(), %by, "volume of the retired tier labelled");
    }
    Ok(())
}
