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
use ladder_crds::scalingphase::ScalingPhase;

/// The first claim of the tier `to` returns to that a past transition
/// retired, if any.
pub(super) async fn stale_volumes(
    sp: &ScalingPhase,
    world: &World,
    ctx: &Context,
    ns: &str,
    from: i32,
    to: i32,
) -> Result<Option<String>, Error> {
    let (Ok((_, from_d)), Ok((_, to_d))) = (render_at(sp, world, from), render_at(sp, world, to))
    else {
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
/// that tier refuses to start on them.
pub(super) async fn retire_volumes(
    sp: &ScalingPhase,
    world: &World,
    ctx: &Context,
    ns: &str,
    from: i32,
    to: i32,
) -> Result<(), Error> {
    let (Ok((_, from_d)), Ok((_, to_d))) = (render_at(sp, world, from), render_at(sp, world, to))
    else {
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
    let by = format!("{from}-to-{to}");
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
