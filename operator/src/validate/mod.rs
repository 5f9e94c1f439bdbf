//! Validate once, into [`Validated`]: the only input the renderers read.
//!
//! The CRD's schema and CEL rules already refuse most bad specs, but the
//! operator does not trust that the installed CRD is the one it was built
//! with (or that the object was written through the apiserver's validation at
//! all), so every rule that protects rendered config is checked again here.
//! Validation is pure: the facts it needs from the cluster (node regions,
//! optional CRDs) arrive in [`World`].
//!
//! [`validate`] runs the parts in order, by concern: `phase` (identity,
//! the phase to build, the app, regions), `overrides` (the data tier's
//! components), `edge` (the edge policy) and `auth` (OIDC); `fields`
//! holds the single-field checks they share. Defaults come from
//! [`ladder_crds::catalogue`]. The test module `crd_rules` keeps the CRD's
//! CEL rules and these refusals in step.

mod auth;
#[cfg(test)]
mod crd_rules;
mod edge;
mod fields;
mod overrides;
mod phase;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::integrations::Integrations;
use ladder_crds::catalogue::{self, Phase, PhaseProfile, defaults};
use ladder_crds::scalingphase::{DeletionPolicy, ScalingPhase};

pub use edge::parse_cidr;
pub use fields::is_dns_label;
pub use overrides::is_pg_param_name;
pub use phase::effective_phase;

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
    /// Version of the shard map (phase 3): 1 unless a resharding wrote a
    /// newer one (set by the reconciler from `status.shardMapVersion`).
    pub map_version: u32,
    /// Extra `postgresql.conf` settings, validated (keys) and still unquoted.
    pub parameters: BTreeMap<String, String>,
}

/// PgBouncer after overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBouncer {
    /// Container image.
    pub image: String,
    /// Replicas.
    pub replicas: i32,
    /// Server connections per database and user.
    pub pool_size: i32,
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
    /// Networks of the proxies in front of the first Ladder tier, parsed: their
    /// `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<([u8; 4], u8)>,
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
    /// PgBouncer, phases 1-3.
    pub pgbouncer: Option<PgBouncer>,
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

/// Checks a ScalingPhase and resolves its phase's defaults and overrides.
pub fn validate(sp: &ScalingPhase, world: &World) -> Result<(Validated, PhaseProfile), Invalid> {
    let (name, namespace, owner) = phase::identity(sp)?;
    let spec = &sp.spec;
    let phase = phase::phase(sp)?;
    let profile = catalogue::profile(phase);
    let app = phase::app(spec, &profile)?;
    let regions = phase::regions(spec, world, &profile)?;
    let o = &spec.overrides;
    let postgres = overrides::postgres(o, phase, &profile)?;
    let pgbouncer = overrides::pgbouncer(o, &profile)?;
    let redis = overrides::component(
        "spec.overrides.redis",
        profile.redis_replicas,
        o.redis.as_ref(),
        &defaults::REDIS,
    )?;
    let clickhouse = overrides::component(
        "spec.overrides.clickhouse",
        profile.clickhouse_replicas,
        o.clickhouse.as_ref(),
        &defaults::CLICKHOUSE,
    )?;
    let varnish = overrides::component(
        "spec.overrides.varnish",
        profile.varnish_replicas,
        o.varnish.as_ref(),
        &defaults::VARNISH,
    )?;
    let cockroach = overrides::cockroach(o, &profile)?;
    if cockroach.is_some() && regions.is_empty() {
        return Err(Invalid::field(
            "spec.regions",
            "phase 4 needs at least one region: no node has a topology.kubernetes.io/region label",
        ));
    }
    let edge = edge::edge(&spec.edge, &profile)?;
    let oidc = auth::oidc(spec.auth.as_ref(), &profile)?;
    Ok((
        Validated {
            name,
            namespace,
            owner,
            phase,
            app_image: app.image,
            app_port: app.port,
            app_env: app.env,
            app_replicas: app.replicas,
            app_size: app.size,
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
