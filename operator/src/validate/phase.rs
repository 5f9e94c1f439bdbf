//! Phase rules: the object's identity, which phase to build (and that
//! autoscaling may not cap it below the declared one), the app's settings
//! and the regions to spread over.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::fields::{self, is_dns_label, is_token};
use super::{Invalid, Size, World};
use ladder_crds::catalogue::{Phase, PhaseProfile};
use ladder_crds::contract;
use ladder_crds::scalingphase::{self, MAX_NAME_LEN, ScalingPhase, ScalingPhaseSpec};

/// The phase to build for a ScalingPhase: the declared one, raised to the
/// promoter's `status.targetPhase` when autoscaling is on, capped at
/// `spec.autoscale.maxPhase`.
pub fn effective_phase(sp: &ScalingPhase) -> i32 {
    let declared = sp.spec.phase;
    let target = match sp.spec.autoscale.mode {
        scalingphase::AutoscaleMode::Auto => sp.status.as_ref().and_then(|s| s.target_phase),
        _ => None,
    };
    let cap = sp.spec.autoscale.max_phase.unwrap_or(4);
    match target {
        Some(t) if t > declared => t.min(cap).max(declared),
        _ => declared,
    }
}

/// Name, namespace and the owner reference every child carries.
pub(super) fn identity(sp: &ScalingPhase) -> Result<(String, String, OwnerReference), Invalid> {
    let name = sp.name_any();
    if !is_dns_label(&name, MAX_NAME_LEN) {
        return Err(Invalid::field(
            "metadata.name",
            format!("must be a DNS-1123 label of at most {MAX_NAME_LEN} characters"),
        ));
    }
    let owner = sp
        .controller_owner_ref(&())
        .ok_or_else(|| Invalid::field("metadata.uid", "the object has no uid yet"))?;
    Ok((name, sp.namespace().unwrap_or_default(), owner))
}

/// The phase to build.
pub(super) fn phase(sp: &ScalingPhase) -> Result<Phase, Invalid> {
    if let Some(max) = sp.spec.autoscale.max_phase
        && max < sp.spec.phase
    {
        return Err(Invalid::field(
            "spec.autoscale.maxPhase",
            format!("must not be below spec.phase ({})", sp.spec.phase),
        ));
    }
    let a = &sp.spec.autoscale;
    if let (Some(min), Some(max)) = (a.min_phase, a.max_phase)
        && min > max
    {
        return Err(Invalid::field(
            "spec.autoscale.minPhase",
            format!("must not be above autoscale.maxPhase ({max})"),
        ));
    }
    // The same arithmetic as the CEL rule, so both refuse the same bands.
    let (up, down) = (a.promote_at.unwrap_or(0.8), a.demote_below.unwrap_or(0.3));
    if down * 10.0 > up * 10.0 - 1.0 {
        return Err(Invalid::field(
            "spec.autoscale.demoteBelow",
            format!(
                "must leave a gap of at least 0.1 under autoscale.promoteAt ({up}): without hysteresis the phase would flap"
            ),
        ));
    }
    let number = effective_phase(sp);
    Phase::from_number(number)
        .ok_or_else(|| Invalid::field("spec.phase", format!("must be 0-4, got {number}")))
}

/// The app after defaults and overrides.
pub(super) struct App {
    pub image: String,
    pub port: i32,
    pub env: Vec<(String, String)>,
    pub replicas: i32,
    pub size: Size,
}

/// Most app replicas an override may ask for (the CRD's bound).
const MAX_APP_REPLICAS: i32 = 100;

pub(super) fn app(spec: &ScalingPhaseSpec, profile: &PhaseProfile) -> Result<App, Invalid> {
    let image = fields::image(
        "spec.app.image",
        Some(&spec.app.image),
        scalingphase::DEFAULT_APP_IMAGE,
    )?;
    if !(1024..=65535).contains(&spec.app.port) {
        return Err(Invalid::field(
            "spec.app.port",
            "must be an unprivileged port (1024-65535)",
        ));
    }
    let app_o = spec.overrides.app.as_ref();
    // Phase 0 keeps SQLite on one volume, which one pod at a time can use.
    let max = if profile.phase == Phase::Mvp {
        1
    } else {
        MAX_APP_REPLICAS
    };
    let replicas = fields::count(
        "spec.overrides.app.replicas",
        app_o.and_then(|a| a.replicas),
        profile.app_replicas,
        profile.app_min_replicas,
        max,
    )?;
    let size = fields::size(
        "spec.app.resources",
        spec.app
            .resources
            .as_ref()
            .or(app_o.and_then(|a| a.resources.as_ref())),
        &profile.app_size,
    )?;
    Ok(App {
        image,
        port: spec.app.port,
        env: env(&spec.app.env)?,
        replicas,
        size,
    })
}

/// The user's env for the app: C identifiers, none the operator sets.
fn env(vars: &[scalingphase::EnvVar]) -> Result<Vec<(String, String)>, Invalid> {
    if vars.len() > 64 {
        return Err(Invalid::field("spec.app.env", "at most 64 variables"));
    }
    let mut out = Vec::new();
    for (i, e) in vars.iter().enumerate() {
        let ok_name = is_token(&e.name, b"_")
            && !e.name.as_bytes()[0].is_ascii_digit()
            && e.name.len() <= 128;
        if !ok_name {
            return Err(Invalid::field(
                format!("spec.app.env[{i}].name"),
                "must be a C identifier",
            ));
        }
        if contract::env::is_reserved(&e.name) {
            return Err(Invalid::field(
                format!("spec.app.env[{i}].name"),
                format!(
                    "{}* names and {} are reserved for the operator",
                    contract::env::RESERVED_PREFIX,
                    contract::env::OTEL_SET_BY_OPERATOR.join(", ")
                ),
            ));
        }
        if e.value.len() > 4096 {
            return Err(Invalid::field(
                format!("spec.app.env[{i}].value"),
                "at most 4096 bytes",
            ));
        }
        out.push((e.name.clone(), e.value.clone()));
    }
    Ok(out)
}

/// The regions to spread over: the declared ones, sorted, else the first
/// regions of the nodes (as many as the phase spreads over).
pub(super) fn regions(
    spec: &ScalingPhaseSpec,
    world: &World,
    profile: &PhaseProfile,
) -> Result<Vec<String>, Invalid> {
    if spec.regions.len() > 8 {
        return Err(Invalid::field("spec.regions", "at most 8 regions"));
    }
    let mut regions: Vec<String> = spec.regions.iter().map(|r| r.0.clone()).collect();
    for r in &regions {
        if !is_dns_label(r, 63) {
            return Err(Invalid::field(
                "spec.regions",
                format!("{r:?} is not a valid region label value"),
            ));
        }
    }
    regions.sort();
    regions.dedup();
    if regions.is_empty() {
        regions = world
            .node_regions
            .iter()
            .take(profile.default_regions)
            .cloned()
            .collect();
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ladder_crds::catalogue::profile;

    fn spec(yaml: &str) -> ScalingPhaseSpec {
        serde_yaml::from_str(yaml).expect("spec parses")
    }

    fn sp(yaml: &str) -> ScalingPhase {
        let mut sp = ScalingPhase::new("shop", spec(yaml));
        sp.metadata.uid = Some("u".into());
        sp
    }

    #[test]
    fn the_promoter_raises_the_phase_up_to_the_cap() {
        let mut s = sp("phase: 1\nautoscale: {mode: Auto, maxPhase: 2}");
        s.status = Some(scalingphase::ScalingPhaseStatus {
            target_phase: Some(4),
            ..Default::default()
        });
        assert_eq!(effective_phase(&s), 2);
        assert_eq!(phase(&s), Ok(Phase::Regional));
        assert!(phase(&sp("phase: 3\nautoscale: {maxPhase: 2}")).is_err());
    }

    #[test]
    fn names_need_a_uid_and_a_short_label() {
        assert!(identity(&sp("phase: 0")).is_ok());
        let mut s = sp("phase: 0");
        s.metadata.uid = None;
        assert!(identity(&s).is_err());
        s.metadata.name = Some("x".repeat(MAX_NAME_LEN + 1));
        assert!(identity(&s).is_err());
    }

    #[test]
    fn app_replicas_follow_the_phase() {
        let p0 = profile(Phase::Mvp);
        let p1 = profile(Phase::Growth);
        assert_eq!(app(&spec("phase: 0"), &p0).map(|a| a.replicas), Ok(1));
        let two = spec("phase: 0\noverrides: {app: {replicas: 2}}");
        assert!(app(&two, &p0).is_err());
        assert_eq!(app(&two, &p1).map(|a| a.replicas), Ok(2));
        let one = spec("phase: 1\noverrides: {app: {replicas: 1}}");
        assert!(app(&one, &p1).is_err());
    }

    #[test]
    fn reserved_env_names_are_refused_others_kept_in_order() {
        let p = profile(Phase::Mvp);
        let ok = spec(
            "phase: 0\napp: {env: [{name: B, value: '2'}, {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: 'http://c:4318'}]}",
        );
        let env = app(&ok, &p).map(|a| a.env);
        assert_eq!(
            env,
            Ok(vec![
                ("B".into(), "2".into()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), "http://c:4318".into())
            ])
        );
        for name in ["LADDER_PHASE", "OTEL_SERVICE_NAME", "1X", "A-B"] {
            let bad = spec(&format!("phase: 0\napp: {{env: [{{name: '{name}'}}]}}"));
            assert!(app(&bad, &p).is_err(), "{name}");
        }
    }

    #[test]
    fn regions_default_to_the_nodes() {
        let world = World {
            node_regions: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            ..World::default()
        };
        let p2 = profile(Phase::Regional);
        assert_eq!(
            regions(&spec("phase: 2"), &world, &p2),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(
            regions(&spec("phase: 2\nregions: [z, y, z]"), &world, &p2),
            Ok(vec!["y".into(), "z".into()])
        );
    }
}
