//! Validate once, into [`Validated`]: the only input the renderers read.
//!
//! The CRD's schema and CEL rules already refuse most bad specs, but the
//! operator does not trust that the installed CRD is the one it was built
//! with (or that the object was written through the apiserver's validation at
//! all), so every rule that protects rendered config is checked again here.
//! Validation is pure: the facts it needs from the cluster (node regions,
//! optional CRDs) arrive in [`World`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::integrations::Integrations;
use ladder_crds::catalogue::{self, Phase, PhaseProfile};
use ladder_crds::scalingphase::{self, DeletionPolicy, MAX_NAME_LEN, ScalingPhase};

/// Facts about the cluster that shape rendering, read before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    /// Distinct `topology.kubernetes.io/region` values of the nodes, sorted.
    pub node_regions: Vec<String>,
    /// Optional third-party CRDs that are installed (KEDA, cert-manager,
    /// Prometheus Operator), watched for the life of the process.
    pub integrations: Integrations,
}

/// Why a spec cannot be reconciled. Permanent: wait for the spec to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// A field has a value the operator refuses.
    #[error("{field}: {reason}")]
    Field {
        /// JSON path of the field under `spec` (or `metadata`).
        field: String,
        /// What is wrong, for a human.
        reason: String,
    },
}

impl Invalid {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Resolved container size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Size {
    /// CPU request.
    pub cpu: String,
    /// Memory request and limit.
    pub memory: String,
}

/// A data component after overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataComponent {
    /// Container image.
    pub image: String,
    /// Replicas (for CockroachDB: nodes per region; for PostgreSQL: read replicas per primary).
    pub replicas: i32,
    /// Container size.
    pub size: Size,
    /// Volume size.
    pub storage_size: String,
    /// StorageClass, or the cluster default.
    pub storage_class: Option<String>,
}

/// PostgreSQL after overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Postgres {
    /// Instances (image, read replicas per primary, size, storage).
    pub component: DataComponent,
    /// Shards: 1 = one primary, not sharded.
    pub shards: i32,
    /// Extra `postgresql.conf` settings, validated (keys) and still unquoted.
    pub parameters: BTreeMap<String, String>,
}

/// Edge policy after defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Requests per second per client IP.
    pub rate_limit_per_second: i32,
    /// Seconds the edge cache keeps a response.
    pub cache_ttl_seconds: i32,
    /// Networks allowed to PURGE, parsed.
    pub purge_allowed: Vec<([u8; 4], u8)>,
    /// Path prefixes the WAF blocks.
    pub blocked_paths: Vec<String>,
}

/// OIDC settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Oidc {
    /// Issuer URL.
    pub issuer_url: String,
    /// Client id.
    pub client_id: String,
    /// Required audience.
    pub audience: String,
}

/// Everything a renderer may read: a spec that passed validation, with the
/// phase's defaults and the user's overrides resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    /// Name of the ScalingPhase (a DNS-1123 label of at most 40 characters).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The controller owner reference every child carries.
    pub owner: OwnerReference,
    /// The phase to build.
    pub phase: Phase,
    /// App image.
    pub app_image: String,
    /// App port.
    pub app_port: i32,
    /// User env for the app (names checked, values passed as env values).
    pub app_env: Vec<(String, String)>,
    /// App replicas (the autoscaling floor from phase 2).
    pub app_replicas: i32,
    /// App container size.
    pub app_size: Size,
    /// Regions to spread over.
    pub regions: Vec<String>,
    /// PostgreSQL, phases 1-3.
    pub postgres: Option<Postgres>,
    /// PgBouncer image, replicas and pool size, phases 1-3.
    pub pgbouncer: Option<(String, i32, i32)>,
    /// Redis, phases 1-4.
    pub redis: Option<DataComponent>,
    /// ClickHouse, phase 3.
    pub clickhouse: Option<DataComponent>,
    /// Varnish, phases 3-4.
    pub varnish: Option<DataComponent>,
    /// CockroachDB, phase 4 (replicas = nodes per region).
    pub cockroach: Option<DataComponent>,
    /// Edge policy, phases 2-4.
    pub edge: Option<Edge>,
    /// OIDC, phase 4.
    pub oidc: Option<Oidc>,
    /// What deletion does to data.
    pub deletion_policy: DeletionPolicy,
    /// Use a KEDA ScaledObject for burst scaling.
    pub keda: bool,
    /// Issue TLS Secrets with cert-manager Certificates (from a namespaced CA
    /// Issuer chain) instead of generating them in the operator.
    pub cert_manager: bool,
    /// Declare scraping with Prometheus Operator ServiceMonitors instead of
    /// `prometheus.io/*` pod annotations.
    pub service_monitors: bool,
    /// Monthly budget, if any.
    pub monthly_budget_usd: Option<i64>,
}

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

/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending
/// with an alphanumeric, at most `max` characters.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_image(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.chars().all(|c| c.is_ascii_graphic())
}

fn is_quantity(s: &str, units: &[&str]) -> bool {
    if s.is_empty() || s.len() > 16 {
        return false;
    }
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && !num.ends_with('.')
        && (unit.is_empty() || units.contains(&unit))
}

fn check_size(
    field: &str,
    r: Option<&scalingphase::Resources>,
    default: &catalogue::Size,
) -> Result<Size, Invalid> {
    let cpu = r
        .and_then(|r| r.cpu.clone())
        .unwrap_or_else(|| default.cpu.to_owned());
    let memory = r
        .and_then(|r| r.memory.clone())
        .unwrap_or_else(|| default.memory.to_owned());
    if !is_quantity(&cpu, &["m"]) {
        return Err(Invalid::field(
            format!("{field}.cpu"),
            "must be a CPU quantity such as 250m or 2",
        ));
    }
    if !is_quantity(&memory, &["Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"]) {
        return Err(Invalid::field(
            format!("{field}.memory"),
            "must be a memory quantity such as 512Mi",
        ));
    }
    Ok(Size { cpu, memory })
}

fn check_image(field: &str, image: Option<&String>, default: &str) -> Result<String, Invalid> {
    let image = image.cloned().unwrap_or_else(|| default.to_owned());
    if !is_image(&image) {
        return Err(Invalid::field(
            field,
            "must be an image reference without spaces, at most 255 characters",
        ));
    }
    Ok(image)
}

fn check_storage(
    field: &str,
    s: Option<&scalingphase::Storage>,
    default: &str,
) -> Result<(String, Option<String>), Invalid> {
    let size = s
        .and_then(|s| s.size.clone())
        .unwrap_or_else(|| default.to_owned());
    if !is_quantity(&size, &["Ki", "Mi", "Gi", "Ti"]) {
        return Err(Invalid::field(
            format!("{field}.size"),
            "must be a size such as 20Gi",
        ));
    }
    let class = s.and_then(|s| s.storage_class_name.clone());
    if let Some(c) = &class
        && !(is_dns_label(&c.replace('.', "-"), 253))
    {
        return Err(Invalid::field(
            format!("{field}.storageClassName"),
            "must be a DNS-1123 subdomain",
        ));
    }
    Ok((size, class))
}

fn check_replicas(
    field: &str,
    value: Option<i32>,
    default: i32,
    min: i32,
    max: i32,
) -> Result<i32, Invalid> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(Invalid::field(
            field,
            format!("must be between {min} and {max} in this phase, got {v}"),
        ));
    }
    Ok(v)
}

/// A `postgresql.conf` parameter name the operator accepts.
pub fn is_pg_param_name(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'.')
}

/// Parses `a.b.c.d/n` into octets and prefix length.
pub fn parse_cidr(s: &str) -> Option<([u8; 4], u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for o in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *o = part.parse().ok()?;
    }
    parts.next().is_none().then_some((octets, prefix))
}

fn is_url_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 128
        && p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._~/-".contains(&c))
}

fn is_token(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// Checks a ScalingPhase and resolves its phase's defaults and overrides.
pub fn validate(sp: &ScalingPhase, world: &World) -> Result<(Validated, PhaseProfile), Invalid> {
    let name = sp.name_any();
    if !is_dns_label(&name, MAX_NAME_LEN) {
        return Err(Invalid::field(
            "metadata.name",
            format!("must be a DNS-1123 label of at most {MAX_NAME_LEN} characters"),
        ));
    }
    let namespace = sp.namespace().unwrap_or_default();
    let owner = sp
        .controller_owner_ref(&())
        .ok_or_else(|| Invalid::field("metadata.uid", "the object has no uid yet"))?;
    let spec = &sp.spec;
    let number = effective_phase(sp);
    let phase = Phase::from_number(number)
        .ok_or_else(|| Invalid::field("spec.phase", format!("must be 0-4, got {number}")))?;
    let profile = catalogue::profile(phase);
    let o = &spec.overrides;

    // App.
    let app_image = check_image(
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
    if spec.app.env.len() > 64 {
        return Err(Invalid::field("spec.app.env", "at most 64 variables"));
    }
    let mut app_env = Vec::new();
    for (i, e) in spec.app.env.iter().enumerate() {
        let ok_name = is_token(&e.name, b"_")
            && !e.name.as_bytes()[0].is_ascii_digit()
            && e.name.len() <= 128;
        if !ok_name {
            return Err(Invalid::field(
                format!("spec.app.env[{i}].name"),
                "must be a C identifier",
            ));
        }
        if e.name.starts_with("LADDER_") || e.name.starts_with("OTEL_") {
            return Err(Invalid::field(
                format!("spec.app.env[{i}].name"),
                "LADDER_ and OTEL_ names are reserved for the operator",
            ));
        }
        if e.value.len() > 4096 {
            return Err(Invalid::field(
                format!("spec.app.env[{i}].value"),
                "at most 4096 bytes",
            ));
        }
        app_env.push((e.name.clone(), e.value.clone()));
    }
    let app_o = o.app.as_ref();
    let app_max = if phase == Phase::Mvp { 1 } else { 100 };
    let app_replicas = check_replicas(
        "spec.overrides.app.replicas",
        app_o.and_then(|a| a.replicas),
        profile.app_replicas,
        profile.app_min_replicas,
        app_max,
    )?;
    let app_size = check_size(
        "spec.app.resources",
        spec.app
            .resources
            .as_ref()
            .or(app_o.and_then(|a| a.resources.as_ref())),
        &profile.app_size,
    )?;

    // Regions.
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

    // Data tier.
    let postgres = match &profile.postgres {
        None => None,
        Some(pp) => {
            let po = o.postgres.clone().unwrap_or_default();
            let min_replicas = if phase >= Phase::Regional { 1 } else { 0 };
            let read_replicas = check_replicas(
                "spec.overrides.postgres.readReplicas",
                po.read_replicas,
                pp.read_replicas,
                min_replicas,
                15,
            )?;
            let shards = if phase == Phase::National {
                check_replicas(
                    "spec.overrides.postgres.shards",
                    po.shards,
                    pp.shards,
                    2,
                    64,
                )?
            } else {
                1
            };
            let (storage_size, storage_class) = check_storage(
                "spec.overrides.postgres.storage",
                po.storage.as_ref(),
                pp.storage,
            )?;
            let mut parameters = BTreeMap::new();
            if po.parameters.len() > 32 {
                return Err(Invalid::field(
                    "spec.overrides.postgres.parameters",
                    "at most 32 parameters",
                ));
            }
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
            Some(Postgres {
                component: DataComponent {
                    image: check_image(
                        "spec.overrides.postgres.image",
                        po.image.as_ref(),
                        catalogue::images::POSTGRES,
                    )?,
                    replicas: read_replicas,
                    size: check_size(
                        "spec.overrides.postgres.resources",
                        po.resources.as_ref(),
                        &pp.size,
                    )?,
                    storage_size,
                    storage_class,
                },
                shards,
                parameters,
            })
        }
    };
    let pgbouncer = match profile.pgbouncer_replicas {
        None => None,
        Some(default) => {
            let po = o.pgbouncer.clone().unwrap_or_default();
            let replicas = check_replicas(
                "spec.overrides.pgbouncer.replicas",
                po.replicas,
                default,
                1,
                20,
            )?;
            let pool = check_replicas(
                "spec.overrides.pgbouncer.poolSize",
                po.pool_size,
                20,
                1,
                1000,
            )?;
            let image = check_image(
                "spec.overrides.pgbouncer.image",
                po.image.as_ref(),
                catalogue::images::PGBOUNCER,
            )?;
            Some((image, replicas, pool))
        }
    };
    let generic = |field: &str,
                   default_replicas: Option<i32>,
                   ov: Option<&scalingphase::ComponentOverride>,
                   image: &str,
                   size: catalogue::Size,
                   storage: &str|
     -> Result<Option<DataComponent>, Invalid> {
        let Some(default_replicas) = default_replicas else {
            return Ok(None);
        };
        let (storage_size, storage_class) = check_storage(
            &format!("{field}.storage"),
            ov.and_then(|v| v.storage.as_ref()),
            storage,
        )?;
        Ok(Some(DataComponent {
            image: check_image(
                &format!("{field}.image"),
                ov.and_then(|v| v.image.as_ref()),
                image,
            )?,
            replicas: check_replicas(
                &format!("{field}.replicas"),
                ov.and_then(|v| v.replicas),
                default_replicas,
                1,
                100,
            )?,
            size: check_size(
                &format!("{field}.resources"),
                ov.and_then(|v| v.resources.as_ref()),
                &size,
            )?,
            storage_size,
            storage_class,
        }))
    };
    let redis = generic(
        "spec.overrides.redis",
        profile.redis_replicas,
        o.redis.as_ref(),
        catalogue::images::REDIS,
        catalogue::Size {
            cpu: "100m",
            memory: "256Mi",
        },
        "5Gi",
    )?;
    let clickhouse = generic(
        "spec.overrides.clickhouse",
        profile.clickhouse_replicas,
        o.clickhouse.as_ref(),
        catalogue::images::CLICKHOUSE,
        catalogue::Size {
            cpu: "1",
            memory: "4Gi",
        },
        "100Gi",
    )?;
    let varnish = generic(
        "spec.overrides.varnish",
        profile.varnish_replicas,
        o.varnish.as_ref(),
        catalogue::images::VARNISH,
        catalogue::Size {
            cpu: "250m",
            memory: "1Gi",
        },
        "1Gi",
    )?;
    let cockroach = match profile.cockroach_nodes_per_region {
        None => None,
        Some(default) => {
            let co = o.cockroach.clone().unwrap_or_default();
            let nodes = co.nodes_per_region.unwrap_or(default);
            if nodes < 3 {
                return Err(Invalid::field(
                    "spec.overrides.cockroach.nodesPerRegion",
                    "CockroachDB needs at least 3 nodes per region to keep a quorum when one fails",
                ));
            }
            let (storage_size, storage_class) = check_storage(
                "spec.overrides.cockroach.storage",
                co.storage.as_ref(),
                "100Gi",
            )?;
            Some(DataComponent {
                image: check_image(
                    "spec.overrides.cockroach.image",
                    co.image.as_ref(),
                    catalogue::images::COCKROACH,
                )?,
                replicas: check_replicas(
                    "spec.overrides.cockroach.nodesPerRegion",
                    Some(nodes),
                    default,
                    3,
                    50,
                )?,
                size: check_size(
                    "spec.overrides.cockroach.resources",
                    co.resources.as_ref(),
                    &catalogue::Size {
                        cpu: "2",
                        memory: "8Gi",
                    },
                )?,
                storage_size,
                storage_class,
            })
        }
    };
    if cockroach.is_some() && regions.is_empty() {
        return Err(Invalid::field(
            "spec.regions",
            "phase 4 needs at least one region: no node has a topology.kubernetes.io/region label",
        ));
    }

    // Edge.
    let edge = match profile.rate_limit_per_second {
        None => None,
        Some(default_rate) => {
            let e = &spec.edge;
            let rate = check_replicas(
                "spec.edge.rateLimitPerSecond",
                e.rate_limit_per_second,
                default_rate,
                1,
                1_000_000,
            )?;
            let ttl = check_replicas(
                "spec.edge.cacheTtlSeconds",
                e.cache_ttl_seconds,
                60,
                0,
                86_400,
            )?;
            if e.purge_allowed_cidrs.len() > 16 || e.blocked_paths.len() > 32 {
                return Err(Invalid::field(
                    "spec.edge",
                    "at most 16 purge networks and 32 blocked paths",
                ));
            }
            let mut purge_allowed = Vec::new();
            for c in &e.purge_allowed_cidrs {
                purge_allowed.push(parse_cidr(&c.0).ok_or_else(|| {
                    Invalid::field(
                        "spec.edge.purgeAllowedCidrs",
                        format!("{:?} is not an IPv4 CIDR", c.0),
                    )
                })?);
            }
            let mut blocked_paths = Vec::new();
            for p in &e.blocked_paths {
                if !is_url_path(&p.0) {
                    return Err(Invalid::field(
                        "spec.edge.blockedPaths",
                        format!("{:?} is not a plain URL path", p.0),
                    ));
                }
                blocked_paths.push(p.0.clone());
            }
            Some(Edge {
                rate_limit_per_second: rate,
                cache_ttl_seconds: ttl,
                purge_allowed,
                blocked_paths,
            })
        }
    };

    // Enterprise auth.
    let oidc = if profile.enterprise_auth {
        let a = spec.auth.as_ref().ok_or_else(|| {
            Invalid::field(
                "spec.auth",
                "phase 4 (Global) needs OIDC settings for enterprise auth",
            )
        })?;
        let url_ok = a.issuer_url.starts_with("https://")
            && is_token(&a.issuer_url["https://".len()..], b".-:/_~")
            && !a.issuer_url["https://".len()..].is_empty();
        if !url_ok {
            return Err(Invalid::field(
                "spec.auth.issuerUrl",
                "must be an https URL of plain characters",
            ));
        }
        if !is_token(&a.client_id, b"._:-") || a.client_id.len() > 128 {
            return Err(Invalid::field(
                "spec.auth.clientId",
                "letters, digits and ._:- only",
            ));
        }
        let audience = a.audience.clone().unwrap_or_else(|| a.client_id.clone());
        if !is_token(&audience, b"._:/-") || audience.len() > 128 {
            return Err(Invalid::field(
                "spec.auth.audience",
                "letters, digits and ._:/- only",
            ));
        }
        Some(Oidc {
            issuer_url: a.issuer_url.clone(),
            client_id: a.client_id.clone(),
            audience,
        })
    } else {
        None
    };

    Ok((
        Validated {
            name,
            namespace,
            owner,
            phase,
            app_image,
            app_port: spec.app.port,
            app_env,
            app_replicas,
            app_size,
            regions,
            postgres,
            pgbouncer,
            redis,
            clickhouse,
            varnish,
            cockroach,
            edge,
            oidc,
            deletion_policy: spec.deletion_policy,
            keda: world.integrations.keda,
            cert_manager: world.integrations.cert_manager,
            service_monitors: world.integrations.service_monitors,
            monthly_budget_usd: spec.monthly_budget_usd,
        },
        profile,
    ))
}

impl Validated {
    /// Data-tier pods this spec runs (for the cost estimate).
    pub fn data_instances(&self) -> i32 {
        let pg = self
            .postgres
            .as_ref()
            .map_or(0, |p| p.shards * (1 + p.component.replicas));
        let crdb = self
            .cockroach
            .as_ref()
            .map_or(0, |c| c.replicas * self.regions.len().max(1) as i32);
        pg + crdb
            + self.redis.as_ref().map_or(0, |r| r.replicas)
            + self.clickhouse.as_ref().map_or(0, |c| c.replicas)
    }

    /// Estimated monthly cost in USD.
    pub fn estimated_monthly_cost(&self, profile: &PhaseProfile) -> i64 {
        catalogue::estimate_monthly_cost(profile, self.app_replicas, self.data_instances())
    }
}
