//! The watches behind [`Stores`]: one task per kind, each keeping its
//! store current and telling the controller which ScalingPhases to wake.
//!
//! Triggers map a child to its ScalingPhase by its controller owner
//! reference. They are filtered here, at the source, so the operator's own
//! writes do not wake it in a loop:
//! - a workload wakes its ScalingPhase when its readiness can have changed
//!   (generation, observed generation, replica counts, Job completions) or
//!   when it is deleted;
//! - any other child wakes it only when it is deleted (or stops matching the
//!   label selector, which a watch reports as a deletion), so a deleted
//!   Service, ConfigMap, NetworkPolicy or Secret is re-created within
//!   seconds instead of at the next drift check.
//!
//! A watch that was down (a relist after a desync) reports no deletions:
//! children that vanished meanwhile wake their owner when the relist ends.
//!
//! Each watch runs on a task of its own, so the stores are current before
//! the controller starts (see [`Stores::wait_until_ready`]) whatever the
//! controller does.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use super::stores::{Scope, Stores, owner};
use crate::render;
use ladder_crds::scalingphase::ScalingPhase;

impl Stores {
    /// Starts one watch task per kind (label-selected, in `scope`) and
    /// returns the stores and the stream of ScalingPhases to wake (for
    /// `Controller::reconcile_on`).
    pub fn watch(
        client: &Client,
        scope: &Scope,
    ) -> (
        Stores,
        impl Stream<Item = ObjectRef<ScalingPhase>> + Send + 'static,
    ) {
        let secret_scopes: Vec<Option<String>> = match (&scope.namespace, &scope.secret_namespaces)
        {
            (Some(ns), _) => vec![Some(ns.clone())],
            (None, list) if list.is_empty() => vec![None],
            (None, list) => list.iter().cloned().map(Some).collect(),
        };
        let (stores, w) = Stores::new(secret_scopes.len());
        let (tx, rx) = mpsc::unbounded_channel();
        let ns = scope.namespace.as_deref();
        let cfg = watcher::Config::default().labels(&format!(
            "{}={}",
            render::MANAGED_BY_LABEL,
            render::MANAGED_BY
        ));
        let at = WatchAt {
            client,
            cfg: &cfg,
            tx: &tx,
        };
        at.full(
            ns,
            w.deployments,
            readiness::deployment,
            slim::deployment,
            "Deployment",
        );
        at.full(
            ns,
            w.stateful_sets,
            readiness::stateful_set,
            slim::stateful_set,
            "StatefulSet",
        );
        at.full(ns, w.jobs, readiness::job, slim::job, "Job");
        at.meta(ns, w.service_accounts, "ServiceAccount");
        at.meta(ns, w.roles, "Role");
        at.meta(ns, w.role_bindings, "RoleBinding");
        at.meta(ns, w.config_maps, "ConfigMap");
        at.meta(ns, w.claims, "PersistentVolumeClaim");
        at.meta(ns, w.services, "Service");
        at.meta(ns, w.network_policies, "NetworkPolicy");
        at.meta(ns, w.disruption_budgets, "PodDisruptionBudget");
        at.meta(ns, w.autoscalers, "HorizontalPodAutoscaler");
        for (writer, ns) in w.secrets.into_iter().zip(&secret_scopes) {
            at.meta(ns.as_deref(), writer, "Secret");
        }
        let triggers = futures::stream::unfold(rx, |mut rx| async move {
            let r = rx.recv().await?;
            Some((r, rx))
        });
        (stores, triggers)
    }
}

/// Where and how the watch tasks watch.
struct WatchAt<'a> {
    client: &'a Client,
    cfg: &'a watcher::Config,
    tx: &'a mpsc::UnboundedSender<ObjectRef<ScalingPhase>>,
}

impl WatchAt<'_> {
    fn api<K>(&self, ns: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Whole objects, waking owners when `print` changes.
    fn full<K>(
        &self,
        ns: Option<&str>,
        writer: Writer<K>,
        print: fn(&K) -> u64,
        slim: fn(&mut K),
        kind: &'static str,
    ) where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        spawn_watch(
            watcher(self.api::<K>(ns), self.cfg.clone()),
            writer,
            self.tx.clone(),
            Some(print),
            slim,
            kind,
        );
    }

    /// Metadata only, waking owners when a child goes away.
    fn meta<K>(&self, ns: Option<&str>, writer: Writer<PartialObjectMeta<K>>, kind: &'static str)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        spawn_watch(
            watcher(self.api::<PartialObjectMeta<K>>(ns), self.cfg.clone()),
            writer,
            self.tx.clone(),
            None,
            slim::meta,
            kind,
        );
    }
}

/// What a watch remembers of a child to decide whether an event wakes its
/// ScalingPhase.
struct Seen {
    owner: Option<ObjectRef<ScalingPhase>>,
    print: u64,
}

/// Decides which watch events wake a ScalingPhase. `print` is the
/// readiness fingerprint of workloads; kinds without one wake their owner
/// only when a child goes away.
pub struct Triggers<K> {
    print: Option<fn(&K) -> u64>,
    seen: HashMap<String, Seen>,
    listing: HashSet<String>,
}

impl<K> std::fmt::Debug for Triggers<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers")
            .field("readiness", &self.print.is_some())
            .field("seen", &self.seen.len())
            .finish()
    }
}

impl<K: Resource> Triggers<K> {
    /// Triggers for a kind with (workloads) or without a fingerprint.
    pub fn new(print: Option<fn(&K) -> u64>) -> Self {
        Self {
            print,
            seen: HashMap::new(),
            listing: HashSet::new(),
        }
    }

    fn key(o: &K) -> String {
        o.meta()
            .uid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
    }

    fn applied(&mut self, o: &K) -> Option<ObjectRef<ScalingPhase>> {
        let owner = owner(o.meta());
        let print = self.print.map_or(0, |f| f(o));
        let before = self.seen.insert(
            Self::key(o),
            Seen {
                owner: owner.clone(),
                print,
            },
        );
        let changed = match before {
            None => self.print.is_some(),
            Some(b) => self.print.is_some() && b.print != print,
        };
        if changed { owner } else { None }
    }

    /// The ScalingPhases `event` wakes.
    pub fn on(&mut self, event: &watcher::Event<K>) -> Vec<ObjectRef<ScalingPhase>> {
        match event {
            watcher::Event::Apply(o) => self.applied(o).into_iter().collect(),
            watcher::Event::InitApply(o) => {
                self.listing.insert(Self::key(o));
                self.applied(o).into_iter().collect()
            }
            watcher::Event::Delete(o) => {
                self.seen.remove(&Self::key(o));
                owner(o.meta()).into_iter().collect()
            }
            watcher::Event::Init => {
                self.listing.clear();
                Vec::new()
            }
            watcher::Event::InitDone => {
                // Children that went away while the watch was down.
                let listing = std::mem::take(&mut self.listing);
                let gone: Vec<String> = self
                    .seen
                    .keys()
                    .filter(|k| !listing.contains(*k))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .filter_map(|k| self.seen.remove(&k)?.owner)
                    .collect()
            }
        }
    }
}

fn spawn_watch<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    mut writer: Writer<K>,
    tx: mpsc::UnboundedSender<ObjectRef<ScalingPhase>>,
    print: Option<fn(&K) -> u64>,
    slim: fn(&mut K),
    kind: &'static str,
) where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut triggers = Triggers::new(print);
        let mut events = std::pin::pin!(stream.default_backoff());
        while let Some(event) = events.next().await {
            let mut event = match event {
                Ok(e) => e,
                Err(e) => {
                    warn!(kind, error = %e, "watching children failed; retrying");
                    continue;
                }
            };
            match &mut event {
                watcher::Event::Apply(o)
                | watcher::Event::InitApply(o)
                | watcher::Event::Delete(o) => slim(o),
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
            writer.apply_watcher_event(&event);
            for owner in triggers.on(&event) {
                if tx.send(owner).is_err() {
                    return; // the controller is gone
                }
            }
        }
    });
}

fn hash(values: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    values.hash(&mut h);
    h.finish()
}

/// Readiness fingerprints: what [`super::observe`] reads of a workload.
/// An event that leaves it unchanged cannot change the status.
pub mod readiness {
    use super::*;

    /// Of a Deployment.
    pub fn deployment(d: &Deployment) -> u64 {
        let s = d.status.as_ref();
        hash((
            d.metadata.generation,
            d.metadata.deletion_timestamp.as_ref().map(|t| t.0),
            s.and_then(|s| s.observed_generation),
            s.and_then(|s| s.ready_replicas),
            s.and_then(|s| s.updated_replicas),
        ))
    }

    /// Of a StatefulSet.
    pub fn stateful_set(d: &StatefulSet) -> u64 {
        let s = d.status.as_ref();
        hash((
            d.metadata.generation,
            d.metadata.deletion_timestamp.as_ref().map(|t| t.0),
            s.and_then(|s| s.observed_generation),
            s.and_then(|s| s.ready_replicas),
        ))
    }

    /// Of a Job.
    pub fn job(j: &Job) -> u64 {
        let s = j.status.as_ref();
        let conditions: Vec<(String, String)> = s
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        hash((
            j.metadata.generation,
            s.and_then(|s| s.succeeded),
            s.and_then(|s| s.failed),
            conditions,
        ))
    }
}

/// Drops from `o`, before it is cached, the metadata no reader of the
/// operator's caches looks at: managed fields (most of a small object's
/// bytes) and kubectl's last-applied copy. For the other caches of
/// `crate::run` (ScalingPhases, LoadReports, app pods).
pub fn slim_metadata<K: Resource>(o: &mut K) {
    slim::metadata(o.meta_mut());
}

/// What the stores keep of each object: what readiness, applied phase,
/// ownership and pruning read. The rest (managed fields, the bulk of pod
/// templates) is dropped to keep memory flat as the fleet grows.
mod slim {
    use super::*;

    pub(super) fn metadata(m: &mut ObjectMeta) {
        m.managed_fields = None;
        if let Some(a) = m.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }

    /// Containers keep their name and env (the app's `LADDER_PHASE` says
    /// which phase is applied); nothing else of the pod spec is read.
    fn template(t: &mut PodTemplateSpec) {
        if let Some(spec) = t.spec.as_mut() {
            *spec = PodSpec {
                containers: spec
                    .containers
                    .iter()
                    .map(|c| Container {
                        name: c.name.clone(),
                        env: c.env.clone(),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            };
        }
    }

    pub(super) fn meta<K>(o: &mut PartialObjectMeta<K>) {
        metadata(&mut o.metadata);
    }

    pub(super) fn deployment(d: &mut Deployment) {
        metadata(&mut d.metadata);
        template(&mut d.spec.template);
    }

    pub(super) fn stateful_set(s: &mut StatefulSet) {
        metadata(&mut s.metadata);
        template(&mut s.spec.template);
        s.spec.volume_claim_templates = None;
    }

    pub(super) fn job(j: &mut Job) {
        metadata(&mut j.metadata);
        if let Some(spec) = j.spec.as_mut() {
            template(&mut spec.template);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned_meta(name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("prod".into()),
            uid: Some(uid.into()),
            labels: Some(
                [(render::SCALINGPHASE_LABEL.to_owned(), "shop".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "ladder.dev/v1alpha1".into(),
                kind: "ScalingPhase".into(),
                name: "shop".into(),
                uid: "sp-uid".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    fn shop() -> ObjectRef<ScalingPhase> {
        ObjectRef::new("shop").within("prod")
    }

    fn deploy(ready: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(1),
                ..owned_meta("shop-app", "d1")
            },
            status: Some(k8s_openapi::api::apps::v1::DeploymentStatus {
                observed_generation: Some(1),
                ready_replicas: Some(ready),
                ..Default::default()
            }),
            ..Deployment::default()
        }
    }

    #[test]
    fn workloads_wake_their_owner_only_when_readiness_can_change() {
        let mut t = Triggers::new(Some(readiness::deployment as fn(&Deployment) -> u64));
        assert_eq!(t.on(&watcher::Event::Apply(deploy(0))), vec![shop()]);
        // A status update that changes nothing readiness reads.
        let mut same = deploy(0);
        if let Some(s) = same.status.as_mut() {
            s.conditions = Some(Vec::new());
        }
        assert!(t.on(&watcher::Event::Apply(same)).is_empty());
        assert_eq!(t.on(&watcher::Event::Apply(deploy(1))), vec![shop()]);
        assert_eq!(t.on(&watcher::Event::Delete(deploy(1))), vec![shop()]);
    }

    #[test]
    fn other_children_wake_their_owner_only_when_they_go_away() {
        let svc = |rv: &str| PartialObjectMeta::<Service> {
            metadata: ObjectMeta {
                resource_version: Some(rv.into()),
                ..owned_meta("shop-app", "s1")
            },
            ..Default::default()
        };
        let mut t = Triggers::<PartialObjectMeta<Service>>::new(None);
        assert!(t.on(&watcher::Event::Apply(svc("1"))).is_empty());
        assert!(t.on(&watcher::Event::Apply(svc("2"))).is_empty());
        assert_eq!(t.on(&watcher::Event::Delete(svc("2"))), vec![shop()]);
        // Not owned by a ScalingPhase: nobody to wake.
        let mut foreign = svc("3");
        foreign.metadata.owner_references = None;
        assert!(t.on(&watcher::Event::Delete(foreign)).is_empty());
    }

    #[test]
    fn a_relist_wakes_the_owners_of_children_that_vanished_meanwhile() {
        let cm = |name: &str, uid: &str| PartialObjectMeta::<ConfigMap> {
            metadata: owned_meta(name, uid),
            ..Default::default()
        };
        let mut t = Triggers::<PartialObjectMeta<ConfigMap>>::new(None);
        t.on(&watcher::Event::Init);
        t.on(&watcher::Event::InitApply(cm("a", "1")));
        t.on(&watcher::Event::InitApply(cm("b", "2")));
        assert!(t.on(&watcher::Event::InitDone).is_empty());
        // The watch restarts; "b" was deleted while it was down.
        t.on(&watcher::Event::Init);
        t.on(&watcher::Event::InitApply(cm("a", "1")));
        assert_eq!(t.on(&watcher::Event::InitDone), vec![shop()]);
    }

    #[test]
    fn slimmed_workloads_keep_what_observe_reads() {
        let mut d = deploy(1);
        d.metadata.managed_fields = Some(vec![Default::default()]);
        d.spec = k8s_openapi::api::apps::v1::DeploymentSpec {
            template: PodTemplateSpec {
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("x".into()),
                        env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                            name: "LADDER_PHASE".into(),
                            value: Some("1".into()),
                            ..Default::default()
                        }]),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
                ..PodTemplateSpec::default()
            },
            ..Default::default()
        };
        slim::deployment(&mut d);
        assert_eq!(d.metadata.managed_fields, None);
        let c = &d.spec.template.spec.as_ref().expect("pod").containers[0];
        assert_eq!(c.image, None);
        assert_eq!(c.env.as_ref().map(Vec::len), Some(1));
        assert_eq!(readiness::deployment(&d), readiness::deployment(&deploy(1)));
    }

    #[test]
    fn slimmed_scalingphases_keep_spec_status_and_labels() {
        let mut sp: ScalingPhase = serde_json::from_value(serde_json::json!({
            "apiVersion": "ladder.dev/v1alpha1",
            "kind": "ScalingPhase",
            "metadata": {
                "name": "shop", "namespace": "prod", "generation": 3,
                "labels": {"team": "a"},
                "annotations": {
                    "ladder.dev/approve-transition": "1-to-0",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"phase": 1}
        }))
        .expect("a ScalingPhase");
        let before = sp.spec.clone();
        slim_metadata(&mut sp);
        assert_eq!(sp.metadata.managed_fields, None);
        let annotations = sp.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["ladder.dev/approve-transition"]
        );
        assert_eq!(sp.labels().get("team").map(String::as_str), Some("a"));
        assert_eq!(sp.metadata.generation, Some(3));
        assert_eq!(
            serde_json::to_value(&sp.spec).ok(),
            serde_json::to_value(&before).ok()
        );
    }
}
