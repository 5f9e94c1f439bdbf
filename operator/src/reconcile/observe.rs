//! Observe (pure): what the stores say about the children a rendered set
//! names, without a request.
//!
//! Three things come out of it: the readiness of each expected workload
//! (for status and the transition machine), the children that are missing
//! (deleted, or relabelled out of the watches: the plan repairs them), and
//! the workloads whose store copy is older than the operator's own last
//! write to them. A store lags the apiserver by a watch event; right after
//! an apply, a Deployment in the store may still show the previous
//! generation, fully rolled out. Such a workload is never reported ready.

use std::collections::BTreeMap;

use ladder_crds::scalingphase::ComponentStatus;

use super::stores::{Lookup, Stores};
use crate::render::{Desired, ExpectedComponent, Kind};
use crate::transition::JobState;

/// A child, by kind and name (its namespace is the ScalingPhase's).
pub type ChildKey = (Kind, String);

/// What the stores say about one rendered set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Readiness of each expected workload, in the rendered order.
    pub components: Vec<ComponentStatus>,
    /// Rendered children of watched kinds that are not in the stores.
    pub missing: Vec<ChildKey>,
    /// Workloads whose store copy is older than the generation the
    /// operator last wrote.
    pub lagging: Vec<ChildKey>,
}

impl Observation {
    /// Every expected workload is ready.
    pub fn all_ready(&self) -> bool {
        self.components.iter().all(|c| c.ready)
    }

    /// The stores show everything the set names, at least as new as the
    /// operator's last writes: status computed from them is current.
    pub fn settled(&self) -> bool {
        self.missing.is_empty() && self.lagging.is_empty()
    }
}

/// Observes `desired` in namespace `ns`. `written` holds the generation
/// each workload had when the operator last applied it.
pub fn observe(
    stores: &Stores,
    ns: &str,
    desired: &Desired,
    written: &BTreeMap<ChildKey, i64>,
) -> Observation {
    let mut out = Observation::default();
    for kind in Kind::APPLY_ORDER {
        for name in desired.names(kind) {
            let key = (kind, name);
            match stores.lookup(kind, ns, &key.1) {
                Lookup::Absent => out.missing.push(key),
                Lookup::Present(generation) => {
                    if let (Some(want), Some(have)) = (written.get(&key), generation)
                        && have < *want
                    {
                        out.lagging.push(key);
                    }
                }
                Lookup::Unwatched => {}
            }
        }
    }
    out.components = desired
        .expected
        .iter()
        .map(|e| component(stores, ns, e, &out.lagging))
        .collect();
    out
}

fn status(e: &ExpectedComponent, ready: bool, message: String) -> ComponentStatus {
    ComponentStatus {
        kind: e.kind.into(),
        name: e.name.clone(),
        ready,
        message,
    }
}

/// The readiness of one expected workload, as [`observe`] reports it.
fn component(
    stores: &Stores,
    ns: &str,
    e: &ExpectedComponent,
    lagging: &[ChildKey],
) -> ComponentStatus {
    let kind = match e.kind {
        "Deployment" => Kind::Deployment,
        "StatefulSet" => Kind::StatefulSet,
        _ => Kind::Job,
    };
    if lagging.iter().any(|(k, n)| *k == kind && *n == e.name) {
        return status(e, false, "applied; waiting to observe it".into());
    }
    let absent = || status(e, false, "not created yet".into());
    match kind {
        Kind::Deployment => {
            let Some(d) = stores.deployment(ns, &e.name) else {
                return absent();
            };
            let s = d.status.clone().unwrap_or_default();
            let current = d.metadata.generation <= s.observed_generation;
            let ready = s.ready_replicas.unwrap_or(0);
            let updated = s.updated_replicas.unwrap_or(0);
            status(
                e,
                current && ready >= e.replicas && updated >= e.replicas,
                format!("{ready}/{} replicas ready", e.replicas),
            )
        }
        Kind::StatefulSet => {
            let Some(d) = stores.stateful_set(ns, &e.name) else {
                return absent();
            };
            let s = d.status.clone().unwrap_or_default();
            let current = d.metadata.generation <= s.observed_generation;
            let ready = s.ready_replicas.unwrap_or(0);
            status(
                e,
                current && ready >= e.replicas,
                format!("{ready}/{} replicas ready", e.replicas),
            )
        }
        _ => {
            let Some(j) = stores.job(ns, &e.name) else {
                return absent();
            };
            let s = j.status.clone().unwrap_or_default();
            let done = s.succeeded.unwrap_or(0) >= e.replicas;
            let message = if done {
                "completed".to_owned()
            } else {
                format!("{} failed attempts", s.failed.unwrap_or(0))
            };
            status(e, done, message)
        }
    }
}

/// The phase the app Deployment of ScalingPhase `name` was rendered for
/// (its `LADDER_PHASE`), if the store has it.
pub fn applied_phase(stores: &Stores, ns: &str, name: &str) -> Option<i32> {
    let d = stores.deployment(ns, &format!("{name}-app"))?;
    d.spec
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == ladder_crds::contract::env::PHASE)?
        .value
        .as_ref()?
        .parse()
        .ok()
}

/// The migration Job as the store shows it. A finished Job's result is in
/// its pod's termination message, which the store does not hold: `Done`
/// says what is known so far and [`super::steps`] reads the rest.
#[derive(Clone, Debug, PartialEq)]
pub enum JobSeen {
    /// Settled: absent or running.
    State(JobState),
    /// Finished; whether it succeeded, and the Job's own failure message.
    Done {
        /// Succeeded (else failed).
        succeeded: bool,
        /// The `Failed` condition's message, if any.
        condition: Option<String>,
    },
}

/// The migration Job `name`, from the store.
pub fn job(stores: &Stores, ns: &str, name: &str) -> JobSeen {
    let Some(job) = stores.job(ns, name) else {
        return JobSeen::State(JobState::Absent);
    };
    let s = job.status.clone().unwrap_or_default();
    let succeeded = s.succeeded.unwrap_or(0) > 0;
    let failed_condition = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    let failed = s.failed.unwrap_or(0) > 0 || failed_condition.is_some();
    if !succeeded && !failed {
        return JobSeen::State(JobState::Running);
    }
    JobSeen::Done {
        succeeded,
        condition: s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed")
            .and_then(|c| c.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::api::PartialObjectMeta;
    use kube::runtime::watcher::Event;

    fn desired() -> Desired {
        let mut d = Desired::default();
        d.deployments.push(Deployment {
            metadata: ObjectMeta {
                name: Some("shop-app".into()),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        });
        d.services.push(Service {
            metadata: ObjectMeta {
                name: Some("shop-app".into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        });
        d.expected.push(ExpectedComponent {
            kind: "Deployment",
            name: "shop-app".into(),
            replicas: 1,
        });
        d
    }

    fn deployment(generation: i64, observed: i64, ready: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("shop-app".into()),
                namespace: Some("prod".into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                ready_replicas: Some(ready),
                updated_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    #[test]
    fn an_empty_store_shows_everything_missing_and_nothing_ready() {
        let (stores, _) = Stores::new(1);
        let o = observe(&stores, "prod", &desired(), &BTreeMap::new());
        assert_eq!(
            o.missing,
            vec![
                (Kind::Service, "shop-app".to_owned()),
                (Kind::Deployment, "shop-app".to_owned())
            ]
        );
        assert!(!o.all_ready());
        assert!(!o.settled());
        assert_eq!(o.components[0].message, "not created yet");
    }

    #[test]
    fn readiness_comes_from_the_store() {
        let (stores, mut w) = Stores::new(1);
        w.deployments
            .apply_watcher_event(&Event::Apply(deployment(1, 1, 1)));
        w.services
            .apply_watcher_event(&Event::Apply(PartialObjectMeta::<Service> {
                metadata: ObjectMeta {
                    name: Some("shop-app".into()),
                    namespace: Some("prod".into()),
                    ..ObjectMeta::default()
                },
                ..Default::default()
            }));
        let o = observe(&stores, "prod", &desired(), &BTreeMap::new());
        assert!(o.settled());
        assert!(o.all_ready());
        assert_eq!(o.components[0].message, "1/1 replicas ready");
        // Not rolled out yet: the controller has not seen generation 2.
        w.deployments
            .apply_watcher_event(&Event::Apply(deployment(2, 1, 1)));
        assert!(!observe(&stores, "prod", &desired(), &BTreeMap::new()).all_ready());
    }

    #[test]
    fn a_store_behind_the_operators_own_write_is_never_ready() {
        let (stores, mut w) = Stores::new(1);
        // The store still shows generation 1, rolled out; we wrote generation 2.
        w.deployments
            .apply_watcher_event(&Event::Apply(deployment(1, 1, 1)));
        let written: BTreeMap<ChildKey, i64> = [((Kind::Deployment, "shop-app".to_owned()), 2)]
            .into_iter()
            .collect();
        let o = observe(&stores, "prod", &desired(), &written);
        assert_eq!(o.lagging, vec![(Kind::Deployment, "shop-app".to_owned())]);
        assert!(!o.all_ready());
        assert!(!o.settled());
    }

    #[test]
    fn the_applied_phase_is_read_from_the_app_deployment() {
        let (stores, mut w) = Stores::new(1);
        assert_eq!(applied_phase(&stores, "prod", "shop"), None);
        let mut d = deployment(1, 1, 1);
        d.spec = k8s_openapi::api::apps::v1::DeploymentSpec {
            template: k8s_openapi::api::core::v1::PodTemplateSpec {
                spec: Some(k8s_openapi::api::core::v1::PodSpec {
                    containers: vec![k8s_openapi::api::core::v1::Container {
                        name: "app".into(),
                        env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                            name: ladder_crds::contract::env::PHASE.into(),
                            value: Some("2".into()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        w.deployments.apply_watcher_event(&Event::Apply(d));
        assert_eq!(applied_phase(&stores, "prod", "shop"), Some(2));
    }
}
