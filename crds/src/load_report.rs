//! The `LoadReport` custom resource (`ladder.dev/v1alpha1`): written by each
//! ladder-app instance, read by the operator's promoter.
//!
//! Owned by the app work (issue 4); the operator only reads it.
//!
//! One object per app instance, named after the instance (its Pod name) and owned by its Pod,
//! so reports disappear with the Pods that wrote them. The app server-side-applies the whole
//! `spec` every report interval under the field manager [`FIELD_MANAGER`]; there is no status.
//! A report older than a few intervals (`spec.reportedAt`) belongs to an instance that stopped
//! reporting and should be ignored by the promoter.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The field manager the app writes LoadReports with.
pub const FIELD_MANAGER: &str = "ladder-app";

/// The load one ladder-app instance observed over a sliding window.
// Several printer columns share `type_ = "number"`; clippy mistakes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ladder.dev",
    version = "v1alpha1",
    kind = "LoadReport",
    plural = "loadreports",
    singular = "loadreport",
    shortname = "lr",
    category = "ladder",
    namespaced,
    derive = "PartialEq",
    doc = "The load one ladder-app instance observed; the operator's promoter reads these.",
    printcolumn(
        name = "ScalingPhase",
        type_ = "string",
        json_path = ".spec.scalingPhase",
        description = "the ScalingPhase the instance serves"
    ),
    printcolumn(
        name = "Phase",
        type_ = "integer",
        json_path = ".spec.phase",
        description = "phase the instance runs"
    ),
    printcolumn(
        name = "RPS",
        type_ = "number",
        json_path = ".spec.requestsPerSecond",
        description = "requests per second"
    ),
    printcolumn(
        name = "TPS",
        type_ = "number",
        json_path = ".spec.transactionsPerSecond",
        description = "write transactions per second"
    ),
    printcolumn(
        name = "P99ms",
        type_ = "number",
        json_path = ".spec.p99LatencyMs",
        description = "p99 latency in milliseconds"
    ),
    printcolumn(name = "Reported", type_ = "date", json_path = ".spec.reportedAt")
)]
#[serde(rename_all = "camelCase")]
pub struct LoadReportSpec {
    /// Name of the ScalingPhase (same namespace) whose app this instance is.
    pub scaling_phase: String,
    /// The phase (0-4) the instance was configured for when it reported.
    #[schemars(range(min = 0, max = 4))]
    pub phase: i32,
    /// The data tier the instance used (`sqlite`, `pgbouncer`, `replicas`, `shards`, `dsql`, ...).
    pub tier: String,
    /// The instance that wrote the report (its Pod name in a cluster).
    pub instance: String,
    /// Length of the sliding window the rates are computed over, in seconds.
    #[schemars(range(min = 1))]
    pub window_seconds: i32,
    /// HTTP requests per second (operational endpoints excluded) over the window.
    #[schemars(range(min = 0.0))]
    pub requests_per_second: f64,
    /// Committed write transactions per second over the window: the roadmap's TPS.
    #[schemars(range(min = 0.0))]
    pub transactions_per_second: f64,
    /// 99th percentile request latency over the window, in milliseconds.
    #[schemars(range(min = 0.0))]
    pub p99_latency_ms: f64,
    /// Share of requests answered with a 5xx status over the window (0.0-1.0).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_rate: f64,
    /// When the report was made (RFC 3339).
    pub reported_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_is_namespaced_and_camel_case() {
        let crd = LoadReport::crd();
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.group, "ladder.dev");
        let yaml = serde_yaml::to_string(&crd).expect("serialises");
        for field in [
            "scalingPhase",
            "requestsPerSecond",
            "transactionsPerSecond",
            "p99LatencyMs",
            "errorRate",
            "reportedAt",
        ] {
            assert!(yaml.contains(field), "{field} missing from the schema");
        }
    }
}
