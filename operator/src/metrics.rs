//! Prometheus metrics: Ladder's own, prefixed `ladder_`, and the
//! controller-runtime-compatible ones ([`runtime`]: `controller_runtime_*`,
//! `workqueue_*`, `rest_client_requests_total`) without prefix, so the PromQL
//! written for Go operators works on Ladder too. Both are served on `/metrics`.
//! [`client`] is the tower layer on the kube client that counts its requests.

pub mod client;
pub mod runtime;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

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
    /// The verb as the apiserver's `apiserver_request_total` names it
    /// (GET, LIST, WATCH, APPLY, PATCH, POST, PUT, DELETE).
    pub verb: String,
    /// API group (empty: core).
    pub group: String,
    /// Resource, `resource/subresource` for a subresource.
    pub resource: String,
}

/// Labels naming one ScalingPhase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Labels of a finished (or blocked) transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabel {
    /// Phase left.
    pub from: String,
    /// Phase entered.
    pub to: String,
    /// `completed`, or the blocking reason.
    pub result: String,
}

/// Labels of a transition step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// The step (PrepareTarget, Migrate, ...).
    pub step: String,
}

/// Labels of a promoter decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PromotionLabel {
    /// `up` or `down`.
    pub direction: String,
    /// `recommended`, `applied`, or the reason it was refused.
    pub result: String,
}

/// Labels of a rejected LoadReport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why it was not believed.
    pub reason: String,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// The registry of the `ladder_` metrics.
    pub registry: Registry,
    /// The registry of the controller-runtime-compatible metrics (no prefix).
    runtime_registry: Registry,
    /// The controller-runtime-compatible metrics of the ScalingPhase controller.
    pub runtime: Arc<runtime::Runtime>,
    reconciles: Counter,
    errors: Family<CategoryLabel, Counter>,
    duration: Histogram,
    applied: Family<KindLabel, Counter>,
    pruned: Family<KindLabel, Counter>,
    status_writes: Counter,
    api_requests: Family<VerbLabel, Counter>,
    /// 1 while this process holds the leader Lease.
    pub leader: Gauge<i64, AtomicI64>,
    active_phase: Family<ObjectLabel, Gauge<i64, AtomicI64>>,
    transitions: Family<TransitionLabel, Counter>,
    step_seconds: Family<StepLabel, Histogram>,
    observed_tps: Family<ObjectLabel, Gauge<f64, AtomicU64>>,
    recommended_phase: Family<ObjectLabel, Gauge<i64, AtomicI64>>,
    promotions: Family<PromotionLabel, Counter>,
    rejected_reports: Family<ReasonLabel, Counter>,
    /// `ladder_scalingphase_condition` (see [`ConditionGauges`]).
    pub conditions: ConditionGauges,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ladder");
        let mut runtime_registry = Registry::default();
        let runtime = Arc::new(runtime::Runtime::new(
            runtime::CONTROLLER,
            &mut runtime_registry,
        ));
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
            "Requests sent to the Kubernetes API, by HTTP method, apiserver verb, group and resource (watches included)",
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
        let active_phase = Family::<ObjectLabel, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "active_phase",
            "The phase each ScalingPhase runs (changes when a transition is Done)",
            active_phase.clone(),
        );
        let transitions = Family::<TransitionLabel, Counter>::default();
        registry.register(
            "transitions",
            "Phase transitions finished or blocked, by from, to and result",
            transitions.clone(),
        );
        let step_seconds = Family::<StepLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 86_400.0])
        });
        registry.register(
            "transition_step_seconds",
            "Time spent in each transition step",
            step_seconds.clone(),
        );
        let observed_tps = Family::<ObjectLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "observed_tps",
            "Transactions per second the promoter observed (sum of fresh LoadReports)",
            observed_tps.clone(),
        );
        let recommended_phase = Family::<ObjectLabel, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "recommended_phase",
            "The phase the load suggests",
            recommended_phase.clone(),
        );
        let promotions = Family::<PromotionLabel, Counter>::default();
        registry.register(
            "promotions",
            "Promoter decisions, by direction and result",
            promotions.clone(),
        );
        let rejected_reports = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "loadreports_rejected",
            "LoadReports not believed, by reason",
            rejected_reports.clone(),
        );
        let conditions = ConditionGauges::default();
        conditions.register(&mut registry);
        Self {
            conditions,
            runtime_registry,
            runtime,
            active_phase,
            transitions,
            step_seconds,
            observed_tps,
            recommended_phase,
            promotions,
            rejected_reports,
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
    pub fn api_request(&self, method: &str, c: &client::Classified) {
        self.api_requests
            .get_or_create(&VerbLabel {
                method: method.into(),
                verb: c.verb.into(),
                group: c.group.clone(),
                resource: c.resource.clone(),
            })
            .inc();
    }
    /// The active phase of one ScalingPhase.
    pub fn active_phase(&self, namespace: &str, name: &str, phase: i32) {
        self.active_phase
            .get_or_create(&object(namespace, name))
            .set(i64::from(phase));
    }
    /// A transition finished (`completed`) or was blocked (the reason).
    pub fn transition_finished(&self, from: i32, to: i32, result: &str) {
        self.transitions
            .get_or_create(&TransitionLabel {
                from: from.to_string(),
                to: to.to_string(),
                result: result.into(),
            })
            .inc();
    }
    /// A transition step took `seconds`.
    pub fn transition_step(&self, step: ladder_crds::scalingphase::TransitionStep, seconds: f64) {
        self.step_seconds
            .get_or_create(&StepLabel {
                step: format!("{step:?}"),
            })
            .observe(seconds);
    }
    /// The promoter's view of one ScalingPhase.
    pub fn promoter_view(&self, namespace: &str, name: &str, tps: Option<f64>, recommended: i32) {
        let o = object(namespace, name);
        if let Some(tps) = tps {
            self.observed_tps.get_or_create(&o).set(tps);
        }
        self.recommended_phase
            .get_or_create(&o)
            .set(i64::from(recommended));
    }
    /// A promoter decision.
    pub fn promotion(&self, direction: &str, result: &str) {
        self.promotions
            .get_or_create(&PromotionLabel {
                direction: direction.into(),
                result: result.into(),
            })
            .inc();
    }
    /// A LoadReport was not believed.
    pub fn report_rejected(&self, reason: &str) {
        self.rejected_reports
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }
    /// The text exposition of both registries (the queue gauges computed now).
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        self.runtime.refresh();
        let mut out = String::new();
        let _ = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &self.runtime_registry))
            .and_then(|()| text::encode_eof(&mut out));
        out
    }
}

fn object(namespace: &str, name: &str) -> ObjectLabel {
    ObjectLabel {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Labels of one condition of one ScalingPhase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabel {
    /// Namespace of the ScalingPhase.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Condition type (Ready, TransitionBlocked, MetricsAvailable, ...).
    pub r#type: String,
    /// The condition's reason.
    pub reason: String,
}

/// `ladder_scalingphase_condition{namespace,name,type,reason}`: 1 while the
/// condition is True, 0 while it is False, one series per condition type of
/// each ScalingPhase (what the alerts in deploy/observability/rules.yaml
/// read). When a reason changes, the series of the old reason is removed
/// rather than left at its last value, so an alert on a reason (say
/// `ApprovalRequired`) stops when the reason does; [`ConditionGauges::forget`]
/// removes every series of a deleted ScalingPhase.
#[derive(Debug, Default)]
pub struct ConditionGauges {
    family: Family<ConditionLabel, Gauge<i64, AtomicI64>>,
    /// The label sets each ScalingPhase `(namespace, name)` has now.
    current: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<ConditionLabel>>>,
}

impl ConditionGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "scalingphase_condition",
            "1 while a ScalingPhase condition is True, 0 while False, by type and reason",
            self.family.clone(),
        );
    }

    /// The conditions of one ScalingPhase now (its whole list: types not in
    /// it lose their series).
    pub fn set(
        &self,
        namespace: &str,
        name: &str,
        conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ) {
        let now: Vec<(ConditionLabel, i64)> = conditions
            .iter()
            .map(|c| {
                (
                    ConditionLabel {
                        namespace: namespace.into(),
                        name: name.into(),
                        r#type: c.type_.clone(),
                        reason: c.reason.clone(),
                    },
                    i64::from(c.status == "True"),
                )
            })
            .collect();
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (namespace.to_owned(), name.to_owned());
        for old in current.get(&key).into_iter().flatten() {
            if !now.iter().any(|(l, _)| l == old) {
                self.family.remove(old);
            }
        }
        for (labels, value) in &now {
            self.family.get_or_create(labels).set(*value);
        }
        current.insert(key, now.into_iter().map(|(l, _)| l).collect());
    }

    /// Removes every series of a ScalingPhase (it was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for old in current
            .remove(&(namespace.to_owned(), name.to_owned()))
            .into_iter()
            .flatten()
        {
            self.family.remove(&old);
        }
    }
}

#[cfg(test)]
mod condition_tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn cond(type_: &str, status: bool, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn lines(m: &Metrics) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("ladder_scalingphase_condition{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn conditions_are_one_while_true_and_old_reasons_leave() {
        let m = Metrics::default();
        m.conditions.set(
            "prod",
            "shop",
            &[
                cond("Ready", true, "AllComponentsReady"),
                cond("TransitionBlocked", true, "ApprovalRequired"),
            ],
        );
        let text = lines(&m).join("\n");
        assert!(text.contains(r#"ladder_scalingphase_condition{namespace="prod",name="shop",type="Ready",reason="AllComponentsReady"} 1"#), "{text}");
        assert!(
            text.contains(r#"type="TransitionBlocked",reason="ApprovalRequired"} 1"#),
            "{text}"
        );
        // Approved: the blocked condition turns False with another reason.
        m.conditions.set(
            "prod",
            "shop",
            &[
                cond("Ready", true, "AllComponentsReady"),
                cond("TransitionBlocked", false, "TransitionProceeding"),
            ],
        );
        let text = lines(&m).join("\n");
        assert!(
            !text.contains("ApprovalRequired"),
            "the old reason's series is gone: {text}"
        );
        assert!(
            text.contains(r#"type="TransitionBlocked",reason="TransitionProceeding"} 0"#),
            "{text}"
        );
        assert_eq!(lines(&m).len(), 2);
        // Another ScalingPhase is its own; deleting one leaves the other.
        m.conditions
            .set("dev", "blog", &[cond("Ready", false, "ComponentsNotReady")]);
        m.conditions.forget("prod", "shop");
        let left = lines(&m);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].contains(r#"name="blog""#) && left[0].ends_with(" 0"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_exposition_holds_ladder_and_controller_runtime_names() {
        use tower::{Layer, ServiceExt};
        let m = Arc::new(Metrics::default());
        // The layer as run.rs stacks it, around a stand-in for the API server.
        let server = tower::service_fn(|req: http::Request<()>| async move {
            let status = if req.uri().path().ends_with("/missing") {
                404
            } else {
                200
            };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(status)
                    .body(())
                    .expect("response"),
            )
        });
        let svc = client::ApiRequestLayer::new(m.clone(), "127.0.0.1:6443").layer(server);
        let apply = http::Request::patch("/apis/apps/v1/namespaces/a/deployments/web")
            .header("content-type", "application/apply-patch+yaml")
            .body(())
            .expect("request");
        let missing = http::Request::get("/api/v1/namespaces/a/secrets/missing")
            .body(())
            .expect("request");
        let _ = svc.clone().oneshot(apply).await;
        let _ = svc.oneshot(missing).await;
        m.reconciled(0.02);
        let text = m.encode();
        for series in [
            r#"ladder_api_requests_total{method="PATCH",verb="APPLY",group="apps",resource="deployments"} 1"#,
            r#"ladder_api_requests_total{method="GET",verb="GET",group="",resource="secrets"} 1"#,
            r#"rest_client_requests_total{code="200",host="127.0.0.1:6443",method="PATCH"} 1"#,
            r#"rest_client_requests_total{code="404",host="127.0.0.1:6443",method="GET"} 1"#,
            "ladder_reconciles_total 1",
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
        }
        for name in [
            "controller_runtime_reconcile",
            "controller_runtime_reconcile_time_seconds",
            "workqueue_depth",
            "rest_client_requests",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing in\n{text}"
            );
            assert!(
                !text.contains(&format!("ladder_{name}")),
                "{name} must not be prefixed"
            );
        }
        assert_eq!(
            text.matches("# EOF").count(),
            1,
            "one EOF marker, at the end"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
