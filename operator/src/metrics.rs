//! Prometheus metrics, all prefixed `ladder_`.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels naming a kind of object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Object kind.
    pub kind: String,
}

/// Labels naming an error category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// A fixed category from `Error::category`.
    pub category: String,
}

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    /// HTTP method of the request (GET, PATCH, POST, DELETE, PUT).
    pub method: String,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    reconciles: Counter,
    errors: Family<CategoryLabel, Counter>,
    duration: Histogram,
    applied: Family<KindLabel, Counter>,
    pruned: Family<KindLabel, Counter>,
    status_writes: Counter,
    api_requests: Family<VerbLabel, Counter>,
    /// 1 while this process holds the leader Lease.
    pub leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ladder");
        let reconciles = Counter::default();
        let errors = Family::<CategoryLabel, Counter>::default();
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let applied = Family::<KindLabel, Counter>::default();
        let pruned = Family::<KindLabel, Counter>::default();
        let status_writes = Counter::default();
        let leader = Gauge::<i64, AtomicI64>::default();
        let api_requests = Family::<VerbLabel, Counter>::default();
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API, by HTTP method (watches included)",
            api_requests.clone(),
        );
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        registry.register(
            "objects_applied",
            "Objects written with server-side apply (or created), by kind",
            applied.clone(),
        );
        registry.register(
            "objects_pruned",
            "Children deleted because no longer desired, by kind",
            pruned.clone(),
        );
        registry.register(
            "status_writes",
            "Status patches (only when the status changed)",
            status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            applied,
            pruned,
            status_writes,
            api_requests,
            leader,
        }
    }
}

impl Metrics {
    /// One reconcile finished after `seconds`.
    pub fn reconciled(&self, seconds: f64) {
        self.reconciles.inc();
        self.duration.observe(seconds);
    }
    /// One reconcile failed.
    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&CategoryLabel {
                category: category.into(),
            })
            .inc();
    }
    /// One object written.
    pub fn applied(&self, kind: &str) {
        self.applied
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
    /// One object pruned.
    pub fn pruned(&self, kind: &str) {
        self.pruned
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
    /// One status patch.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }
    /// One request to the API server.
    pub fn api_request(&self, method: &str) {
        self.api_requests
            .get_or_create(&VerbLabel {
                method: method.into(),
            })
            .inc();
    }
    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
