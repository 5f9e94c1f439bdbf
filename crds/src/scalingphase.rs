//! The `ScalingPhase` custom resource (`ladder.dev/v1alpha1`).
//!
//! Everything a user can write is declared here, with its documentation (which
//! becomes `kubectl explain`), its bounds, and the CEL rules the apiserver
//! enforces for what the schema alone cannot say. Defaults that depend on the
//! phase (replica counts, shard counts, regions) are *not* schema defaults: they
//! live in [`crate::catalogue`], so nothing is written back into the object and
//! a GitOps tool never sees a diff it did not cause.
//!
//! The rules are mirrored by the operator's `validate`, which the reconciler runs
//! anyway: the operator must not trust that the CRD installed in a cluster is the
//! one it was built with.
//!
//! Why this file is long (~820 lines): it is the whole user-facing API, and
//! most of its lines are the field documentation that `kubectl explain` and
//! the generated CRD show; splitting the spec from its status would only
//! scatter one schema over several files.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image of the companion app, used when `spec.app.image` is not set.
pub const DEFAULT_APP_IMAGE: &str = "ghcr.io/ladder-dev/ladder-app:0.1.0";
/// The port the companion app listens on, used when `spec.app.port` is not set.
pub const DEFAULT_APP_PORT: i32 = 8080;
/// Longest `metadata.name` accepted: children append suffixes such as
/// `-pg-shard-3-replica` and StatefulSet names must leave room for the
/// `controller-revision-hash` label (63 characters in total).
pub const MAX_NAME_LEN: usize = 40;
/// Most entries kept in `status.history`.
pub const MAX_HISTORY: usize = 10;

/// Declares which phase of the Ladder scalability roadmap a system is in; the
/// operator builds and runs everything that phase needs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ladder.dev",
    version = "v1alpha1",
    kind = "ScalingPhase",
    plural = "scalingphases",
    singular = "scalingphase",
    shortname = "sp",
    category = "ladder",
    namespaced,
    status = "ScalingPhaseStatus",
    derive = "PartialEq",
    doc = "A system declared to be in one phase (0 MVP .. 4 Global) of the Ladder scalability roadmap.",
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters: child objects append suffixes to it"),
    printcolumn(name = "Phase", type_ = "integer", json_path = ".status.activePhase", description = "phase the cluster currently runs"),
    printcolumn(name = "Name", type_ = "string", json_path = ".status.activePhaseName", description = "name of the active phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.readyComponents", description = "ready components / all components"),
    printcolumn(name = "TPS", type_ = "number", json_path = ".status.observedTPS", description = "observed transactions per second"),
    printcolumn(name = "Transition", type_ = "string", json_path = ".status.transition.step", description = "step of the phase transition in progress"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Declared", type_ = "integer", json_path = ".spec.phase", priority = 1, description = "phase declared in spec"),
    printcolumn(name = "Recommended", type_ = "integer", json_path = ".status.recommendedPhase", priority = 1, description = "phase the load suggests"),
    printcolumn(name = "Target", type_ = "integer", json_path = ".status.targetPhase", priority = 1, description = "phase auto-promotion decided on"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1, description = "reason of the Ready condition"),
    printcolumn(name = "Cost/mo", type_ = "integer", json_path = ".status.estimatedMonthlyCostUSD", priority = 1, description = "estimated monthly cost in USD"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused", priority = 1),
    printcolumn(name = "Deletion", type_ = "string", json_path = ".spec.deletionPolicy", priority = 1)
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.overrides) || !has(self.overrides.app) || !has(self.overrides.app.replicas) || self.phase == 0 || self.overrides.app.replicas >= 2",
        "message": "overrides.app.replicas must be at least 2 from phase 1 (Growth) up",
        "fieldPath": ".overrides.app.replicas",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.phase != 0 || !has(self.overrides) || !has(self.overrides.app) || !has(self.overrides.app.replicas) || self.overrides.app.replicas == 1",
        "message": "phase 0 (MVP) runs exactly one app replica: SQLite on one volume cannot be shared",
        "fieldPath": ".overrides.app.replicas",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.phase < 2 || self.phase > 3 || !has(self.overrides) || !has(self.overrides.postgres) || !has(self.overrides.postgres.readReplicas) || self.overrides.postgres.readReplicas >= 1",
        "message": "overrides.postgres.readReplicas must be at least 1 in phases 2 and 3",
        "fieldPath": ".overrides.postgres.readReplicas",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.phase < 4 || has(self.auth)",
        "message": "phase 4 (Global) needs spec.auth: enterprise OIDC settings for the app",
        "fieldPath": ".auth",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "!has(self.autoscale) || !has(self.autoscale.maxPhase) || self.autoscale.maxPhase >= self.phase",
        "message": "autoscale.maxPhase must not be below spec.phase",
        "fieldPath": ".autoscale.maxPhase",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct ScalingPhaseSpec {
    /// The declared phase of the roadmap: 0 MVP, 1 Growth, 2 Regional, 3 National,
    /// 4 Global. The operator builds everything this phase needs.
    #[schemars(range(min = 0, max = 4))]
    pub phase: i32,

    /// The application to run. Defaults to the Ladder companion app.
    #[serde(default)]
    pub app: AppSpec,

    /// Per-component overrides of the phase's defaults. Values below a phase's
    /// safe minimum are refused.
    #[serde(default)]
    pub overrides: Overrides,

    /// Regions (values of the `topology.kubernetes.io/region` node label) to
    /// spread over. Empty means the phase's default (one region for phases 0-1,
    /// three from phase 2 up, taken from the nodes' labels).
    #[serde(default)]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "set"))]
    pub regions: Vec<RegionName>,

    /// What happens to data (PersistentVolumeClaims) and credentials (Secrets)
    /// when this ScalingPhase is deleted. `Retain` (default) keeps them,
    /// detached from it; `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Stops the operator from changing any child object while true. Status
    /// is still reported.
    #[serde(default)]
    pub paused: bool,

    /// Automatic promotion policy: Off by default; Recommend only reports,
    /// Auto moves the phase (through `status.targetPhase`, never `spec`).
    #[serde(default)]
    pub autoscale: AutoscaleSpec,

    /// How phase transitions move data: how long the old tier is kept after a
    /// cut-over, and whether demotions that move data need an approval.
    ///
    /// A demotion that moves data (1→0, 3→2, 4→3) waits for the annotation
    /// `ladder.dev/approve-transition: "<from>-to-<to>"` on this object unless
    /// `allowDemotion` is true. While the old tier is retained after a
    /// cut-over, the annotation `ladder.dev/rollback-transition:
    /// "<from>-to-<to>"` reverses it: the writes made since are migrated back,
    /// verified, and the app cut over to the old tier again; the step is then
    /// not re-attempted while the annotation stays.
    #[serde(default)]
    pub transitions: TransitionPolicy,

    /// Edge settings: rate limiting, WAF rules and CDN cache rules (phase 2 up).
    #[serde(default)]
    pub edge: EdgeSpec,

    /// Enterprise authentication for the app (phase 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// Monthly budget in USD. When the estimated cost of the active phase is
    /// above it, the Degraded condition says so (nothing is scaled down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000_000))]
    pub monthly_budget_usd: Option<i64>,
}

/// A region name: the value of a `topology.kubernetes.io/region` label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(transparent)]
pub struct RegionName(
    /// The region name.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub String,
);

/// What the application container runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Container image of the app.
    #[serde(default = "default_app_image")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s]+$"))]
    pub image: String,
    /// TCP port the app listens on (unprivileged: the restricted pod security
    /// profile drops every capability).
    #[serde(default = "default_app_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Extra environment variables for the app. Names starting with `LADDER_`
    /// are reserved for the operator's wiring.
    #[serde(default)]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
    /// CPU and memory of each app container; the phase's defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

impl Default for AppSpec {
    fn default() -> Self {
        Self {
            image: default_app_image(),
            port: default_app_port(),
            env: Vec::new(),
            resources: None,
        }
    }
}

fn default_app_image() -> String {
    DEFAULT_APP_IMAGE.to_owned()
}
fn default_app_port() -> i32 {
    DEFAULT_APP_PORT
}

/// One environment variable of the app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!self.name.startsWith('LADDER_') && !(self.name in ['OTEL_SERVICE_NAME', 'OTEL_RESOURCE_ATTRIBUTES', 'OTEL_TRACES_SAMPLER', 'OTEL_TRACES_SAMPLER_ARG'])",
    "message": "env names starting with LADDER_, and the OTEL_ variables the operator sets (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG), are reserved for the operator",
    "reason": "FieldValueForbidden"
}]))]
pub struct EnvVar {
    /// Variable name (a C identifier).
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// Variable value.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// CPU and memory for one container (requests; limits are set equal for memory).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU request, a Kubernetes quantity such as `250m` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = r"^[0-9]+(\.[0-9]+)?m?$"))]
    pub cpu: Option<String>,
    /// Memory request and limit, a Kubernetes quantity such as `512Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 16),
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
    )]
    pub memory: Option<String>,
}

/// Storage of one data component.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(oldSelf.size) || !has(self.size) || quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
    "message": "volumes can grow but never shrink: size must be at least the previous size"
}]))]
pub struct Storage {
    /// Size of each volume, a Kubernetes quantity such as `20Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti)$"))]
    pub size: Option<String>,
    /// StorageClass of the volumes; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub storage_class_name: Option<String>,
}

/// Overrides common to every component.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentOverride {
    /// Container image; the catalogue's pinned image when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s]+$"))]
    pub image: Option<String>,
    /// Replica count; the phase's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<i32>,
    /// CPU and memory; the phase's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Volumes; the phase's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
}

/// Overrides of the PostgreSQL tier (phases 1-3).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresOverride {
    /// Container image; the catalogue's pinned image when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s]+$"))]
    pub image: Option<String>,
    /// Streaming read replicas per primary (phase 2: 3, phase 3: 1 per shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 15))]
    pub read_replicas: Option<i32>,
    /// Number of shards in phase 3 (default 4, at least 2). Changing it while
    /// phase 3 is active is a resharding: the operator writes a new shard map
    /// version, migrates the moved slots and cuts over (`status.shardMapVersion`);
    /// fewer shards than in use needs the approval
    /// `ladder.dev/approve-transition: "shards-<from>-to-<to>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 64))]
    pub shards: Option<i32>,
    /// CPU and memory of each PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Volumes of each PostgreSQL instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// Extra `postgresql.conf` settings. Keys are lower-case identifiers; values
    /// are single-line and are quoted by the operator.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "x-kubernetes-validations" = [{
        "rule": "self.all(k, k.matches('^[a-z][a-z0-9_.]{0,62}$'))",
        "message": "postgres parameter names must be lower-case identifiers (a-z, 0-9, '_', '.'), at most 63 characters",
        "reason": "FieldValueInvalid"
    }]))]
    pub parameters: std::collections::BTreeMap<String, PgParamValue>,
}

/// A `postgresql.conf` parameter value: one line, no control characters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct PgParamValue(
    /// The value.
    #[schemars(length(max = 256), regex(pattern = r"^[^\x00-\x1f\x7f]*$"))]
    pub String,
);

/// Overrides of PgBouncer (phases 1-3).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PgBouncerOverride {
    /// Container image; the catalogue's pinned image when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s]+$"))]
    pub image: Option<String>,
    /// Replica count; the phase's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub replicas: Option<i32>,
    /// Server connections per database/user pair (`default_pool_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub pool_size: Option<i32>,
}

/// Overrides of CockroachDB (phase 4).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.nodesPerRegion) || self.nodesPerRegion >= 3",
    "message": "CockroachDB needs at least 3 nodes per region to keep a quorum when one fails",
    "fieldPath": ".nodesPerRegion",
    "reason": "FieldValueInvalid"
}]))]
pub struct CockroachOverride {
    /// Container image; the catalogue's pinned image when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s]+$"))]
    pub image: Option<String>,
    /// CockroachDB nodes in each region (at least 3; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub nodes_per_region: Option<i32>,
    /// CPU and memory of each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Volume of each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
}

/// Per-component overrides of the phase's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    /// The app Deployment (replicas: 1 in phase 0, at least 2 from phase 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<ComponentOverride>,
    /// PostgreSQL (phases 1-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresOverride>,
    /// PgBouncer (phases 1-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgbouncer: Option<PgBouncerOverride>,
    /// Redis (phases 1-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<ComponentOverride>,
    /// ClickHouse (phase 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<ComponentOverride>,
    /// Varnish, the edge cache (phase 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub varnish: Option<ComponentOverride>,
    /// CockroachDB (phase 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cockroach: Option<CockroachOverride>,
}

/// What happens to data and credentials when the ScalingPhase is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep PersistentVolumeClaims and credential Secrets, detached from the
    /// ScalingPhase so garbage collection leaves them alone.
    #[default]
    Retain,
    /// Delete PersistentVolumeClaims and credential Secrets with the ScalingPhase.
    Delete,
}

/// How the operator may change the phase by itself.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AutoscaleMode {
    /// Never: only `spec.phase` counts.
    #[default]
    Off,
    /// Compute and show `status.recommendedPhase`, change nothing.
    Recommend,
    /// Move toward the recommended phase, within `maxPhase`.
    Auto,
}

/// Automatic promotion policy.
///
/// Phase N's ceiling is 10^(N+1) TPS (10, 100, 1,000, 10,000, 100,000). The
/// promoter recommends phase N+1 when the load has stayed at or above
/// `promoteAt` × ceiling(N) for `promoteAfter`, and phase N-1 when it has
/// stayed below `demoteBelow` × ceiling(N-1) for `demoteAfter`. Missing or
/// stale load data never demotes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.minPhase) || !has(self.maxPhase) || self.minPhase <= self.maxPhase",
        "message": "autoscale.minPhase must not be above autoscale.maxPhase",
        "fieldPath": ".minPhase",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "(has(self.demoteBelow) ? self.demoteBelow : 0.3) * 10.0 <= (has(self.promoteAt) ? self.promoteAt : 0.8) * 10.0 - 1.0",
        "message": "autoscale.demoteBelow must leave a gap of at least 0.1 under autoscale.promoteAt (hysteresis), or the phase would flap",
        "fieldPath": ".demoteBelow",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct AutoscaleSpec {
    /// Off (default), Recommend (status only) or Auto.
    #[serde(default)]
    pub mode: AutoscaleMode,
    /// Highest phase automatic promotion may reach; never below `spec.phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4))]
    pub max_phase: Option<i32>,
    /// Lowest phase automatic demotion may reach (default 0). Auto mode never
    /// goes below `spec.phase` either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4))]
    pub min_phase: Option<i32>,
    /// Share of the current phase's ceiling at which sustained load promotes
    /// (default 0.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 1.0))]
    pub promote_at: Option<f64>,
    /// Share of the lower phase's ceiling below which sustained load demotes
    /// (default 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.9))]
    pub demote_below: Option<f64>,
    /// How long the load must stay above the promotion threshold (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_after: Option<Duration>,
    /// How long the load must stay below the demotion threshold (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demote_after: Option<Duration>,
    /// Minimum time in a phase before the next automatic change (default `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_dwell: Option<Duration>,
    /// Most automatic phase changes in any 24 hours (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 48))]
    pub max_transitions_per_day: Option<i32>,
    /// Where the load comes from. Unset: the app's LoadReports (summed over
    /// the instances that serve this ScalingPhase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<LoadSource>,
}

/// A load source other than the app's LoadReports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadSource {
    /// A PromQL query that returns the system's transactions per second as
    /// one number (a scalar, or a vector of exactly one sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
}

/// A Prometheus server and the query the promoter evaluates on it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL of the Prometheus HTTP API, e.g.
    /// `http://prometheus-operated.monitoring:9090` (no trailing `/api/v1`).
    #[schemars(
        length(min = 8, max = 512),
        regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    )]
    pub url: String,
    /// PromQL returning one number: the TPS to judge, e.g.
    /// `sum(rate(ladder_db_transactions_total{namespace="shop"}[1m]))`.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
}

/// A duration such as `90s`, `5m`, `1h30m` or `24h`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Duration(
    /// The duration: one or more `<number><unit>` with unit `s`, `m` or `h`.
    #[schemars(
        length(min = 2, max = 16),
        regex(pattern = r"^([0-9]{1,6}[smh]){1,3}$")
    )]
    pub String,
);

impl Duration {
    /// The duration in seconds; `None` when it does not parse.
    pub fn seconds(&self) -> Option<u64> {
        let mut total: u64 = 0;
        let mut number: Option<u64> = None;
        for c in self.0.chars() {
            if let Some(d) = c.to_digit(10) {
                number = Some(
                    number
                        .unwrap_or(0)
                        .checked_mul(10)?
                        .checked_add(u64::from(d))?,
                );
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return None,
            };
            total = total.checked_add(number.take()?.checked_mul(unit)?)?;
        }
        if number.is_some() || self.0.is_empty() {
            return None;
        }
        Some(total)
    }
}

/// How phase transitions treat data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionPolicy {
    /// How long the old tier is kept, fenced read-only, after a cut-over
    /// before it is retired per `deletionPolicy` (default `24h`). While it is
    /// kept, nothing of it is deleted. Lowering it ends a running retention
    /// early; raising it does not extend one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_old_tier_for: Option<Duration>,
    /// Let demotions that move data run without the
    /// `ladder.dev/approve-transition` annotation (default false).
    #[serde(default)]
    pub allow_demotion: bool,
    /// How long a step (the target tier becoming ready, the migration Job)
    /// may take before the transition is reported blocked (default `30m`).
    /// The transition keeps waiting; nothing is rolled back by a timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_timeout: Option<Duration>,
}

/// Rate limiting, WAF and CDN cache settings rendered into config the app and
/// the edge tier read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeSpec {
    /// Requests per second allowed per client IP; the phase's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub rate_limit_per_second: Option<i32>,
    /// Seconds the edge cache keeps a cacheable response (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86_400))]
    pub cache_ttl_seconds: Option<i32>,
    /// IPv4 networks (CIDR) allowed to send PURGE requests to the edge cache.
    #[serde(default)]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "set"))]
    pub purge_allowed_cidrs: Vec<Cidr>,
    /// URL path prefixes the WAF blocks outright (e.g. `/admin`).
    #[serde(default)]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub blocked_paths: Vec<UrlPath>,
    /// IPv4 networks (CIDR) of the proxies that meet clients before the first Ladder tier:
    /// your ingress controller's pods (phase 2), or whatever is in front of the edge cache
    /// (phase 3 up). From a peer in one of them, the last `X-Forwarded-For` address is the
    /// client that rate limits and WAF rules apply to; from any other peer the header is
    /// ignored. Empty (the default): the peer address is the client, so behind an ingress
    /// every client shares the ingress' rate bucket. See docs/edge.md.
    #[serde(default)]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "set"))]
    pub trusted_proxy_cidrs: Vec<Cidr>,
}

/// An IPv4 network in CIDR notation, such as `10.0.0.0/8`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(transparent)]
pub struct Cidr(
    /// The network.
    #[schemars(
        length(max = 18),
        regex(pattern = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$")
    )]
    pub String,
);

/// A URL path prefix: starts with `/`, printable ASCII without quotes or spaces.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(transparent)]
pub struct UrlPath(
    /// The path.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^/[A-Za-z0-9._~/-]*$"))]
    pub String,
);

/// OpenID Connect settings for the app (phase 4).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Issuer URL of the OIDC provider (https).
    #[schemars(
        length(min = 9, max = 255),
        regex(pattern = r"^https://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$")
    )]
    pub issuer_url: String,
    /// OAuth client id of the app.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub client_id: String,
    /// Audience the app requires in tokens; the client id when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._:/-]+$"))]
    pub audience: Option<String>,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPhaseStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The phase whose objects are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_phase: Option<i32>,
    /// The name of the active phase (MVP, Growth, Regional, National, Global).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_phase_name: Option<String>,
    /// The phase automatic promotion decided on (written by the promoter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_phase: Option<i32>,
    /// The phase the load suggests (written by the promoter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_phase: Option<i32>,
    /// Transactions per second last observed (written by the promoter).
    #[serde(
        default,
        rename = "observedTPS",
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_tps: Option<f64>,
    /// Why `recommendedPhase` is what it is (written by the promoter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,
    /// The phase transition in progress, if any. It survives operator
    /// restarts: the transition resumes at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionStatus>,
    /// Version of the shard map the app uses (phase 3 only): 1 for the map a
    /// climb to phase 3 writes, one more for each resharding since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub shard_map_version: Option<i32>,
    /// Number of shards the app uses (phase 3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 64))]
    pub shards: Option<i32>,
    /// Ready components over all components, such as `3/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_components: Option<String>,
    /// Readiness of each workload the phase runs.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub components: Vec<ComponentStatus>,
    /// Estimated monthly cost of the active phase in USD.
    #[serde(
        default,
        rename = "estimatedMonthlyCostUSD",
        skip_serializing_if = "Option::is_none"
    )]
    pub estimated_monthly_cost_usd: Option<i64>,
    /// Ready, Progressing and Degraded, each with a reason a human can act on.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
    /// The most recent phase changes, newest last (at most 10).
    #[serde(default)]
    #[schemars(length(max = 10))]
    pub history: Vec<HistoryEntry>,
}

/// The steps of a phase transition, in order. Steps that move no data
/// (1↔2) skip Migrate, Verify and Retain.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum TransitionStep {
    /// Render the target tier beside the old one (the app still uses the old).
    PrepareTarget,
    /// Wait until every workload of the target tier is ready.
    WaitTargetReady,
    /// Run `ladder-app migrate` as a Job: copy, fence, catch up, verify.
    Migrate,
    /// Check the Job's own verification result.
    Verify,
    /// Point the app at the target tier and wait for it to roll.
    CutOver,
    /// Keep the old tier, fenced read-only, until `retainUntil`.
    Retain,
    /// Remove the old tier per `deletionPolicy`; its volumes are labelled retired.
    Retire,
    /// Finished; the target phase is active.
    Done,
}

/// A phase transition in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionStatus {
    /// The phase being left.
    #[schemars(range(min = 0, max = 4))]
    pub from: i32,
    /// The phase being entered (always one step from `from`).
    #[schemars(range(min = 0, max = 4))]
    pub to: i32,
    /// The step in progress.
    pub step: TransitionStep,
    /// Whether this step moves data between tiers (a migration Job runs).
    #[serde(default)]
    pub moves_data: bool,
    /// When the transition started.
    pub started_at: Time,
    /// When the current step started (for the step timeout).
    pub step_started_at: Time,
    /// Name of the migration Job, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// When the retained old tier may be retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<Time>,
    /// Set when this transition reverses a cut-over (the annotation
    /// `ladder.dev/rollback-transition`): the step it undoes, `"<from>-to-<to>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub rollback_of: Option<String>,
    /// What is happening, for humans.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// The shard layout being left, when `from` is phase 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_shards: Option<ShardLayout>,
    /// The shard layout being entered, when `to` is phase 3. With `from`
    /// and `to` both 3 and different layouts, the transition is a
    /// resharding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_shards: Option<ShardLayout>,
}

/// A shard count and the version of the shard map that spreads the slots
/// over those shards.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardLayout {
    /// Number of shards.
    #[schemars(range(min = 2, max = 64))]
    pub shards: i32,
    /// Version of the shard map (`<name>-shard-map-v<N>-<hash>`).
    #[schemars(range(min = 1))]
    pub map_version: i32,
}

/// The evidence behind `status.recommendedPhase`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// The recommended phase.
    pub phase: i32,
    /// Why, for humans (which threshold over which window, or why it holds).
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// The TPS the decision is based on (the window's sustained value).
    #[serde(rename = "tps")]
    pub tps: f64,
    /// The threshold crossed, in TPS, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Length of the window the load was judged over, in seconds.
    pub window_seconds: i64,
    /// Since when the load has been past the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// Readiness of one workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Kind of the workload (Deployment, StatefulSet, Job).
    pub kind: String,
    /// Name of the workload.
    pub name: String,
    /// Whether it is ready.
    pub ready: bool,
    /// Why it is not ready, or a short summary such as `2/2 replicas ready`.
    #[serde(default)]
    pub message: String,
}

/// One phase change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The phase that became active.
    pub phase: i32,
    /// Its name.
    pub name: String,
    /// When its objects were first applied.
    pub time: Time,
}
