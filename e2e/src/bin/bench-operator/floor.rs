//! The floor: what any client must do to get the same objects running, with
//! no operator. For each ScalingPhase (created in a namespace no operator
//! watches, so that the owner references are real), the operator's own pure
//! validator and renderer produce the objects; a minimal client
//! server-side-applies them one by one in the operator's apply order (the
//! generated Secrets with placeholder data, in the same single apply each),
//! at most `concurrency` ScalingPhases at once, with no client-side rate
//! limit (the operator has none either), and the run ends when every
//! expected workload is ready by the operator's own rule, seen through
//! watches. No status, no events, no finalizer, no reads before writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use ladder_crds::scalingphase::ScalingPhase;
use ladder_operator::render::{self, Desired, ExpectedComponent};
use ladder_operator::validate;
use tokio::sync::Mutex;

/// Renders what the operator would for `sp` (which must carry its uid).
pub fn render_for(sp: &ScalingPhase, regions: &[String]) -> anyhow::Result<Desired> {
    let world = validate::World {
        node_regions: regions.to_vec(),
        integrations: Default::default(),
    };
    let (v, profile) = validate::validate(sp, &world).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(render::render(&v, &profile))
}

/// The objects of `desired` as the floor applies them: Secrets first (with
/// placeholder data), then everything else in apply order.
pub fn objects(desired: &Desired, ns: &str) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = desired
        .generated_secrets
        .iter()
        .map(|s| {
            let mut meta = serde_json::to_value(&s.meta).unwrap_or_default();
            meta["name"] = s.name.clone().into();
            meta["namespace"] = ns.into();
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta,
                               "stringData": {"placeholder": "floor"}})
        })
        .collect();
    out.extend(desired.objects());
    out
}

/// Resources of the kinds applied, resolved on first use (the warm-up
/// meets every kind before anything is timed).
#[derive(Clone, Default)]
pub struct Kinds(Arc<Mutex<BTreeMap<(String, String), ApiResource>>>);

impl Kinds {
    /// The resource of `apiVersion`/`kind` (discovery on first use).
    pub async fn get(
        &self,
        client: &Client,
        api_version: &str,
        kind: &str,
    ) -> anyhow::Result<ApiResource> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(r) = self.0.lock().await.get(&key) {
            return Ok(r.clone());
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, _) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("discover {api_version} {kind}"))?;
        self.0.lock().await.insert(key, ar.clone());
        Ok(ar)
    }
}

/// Applies `objs` one by one into `ns` (server-side apply, forced).
pub async fn apply_all(
    client: &Client,
    kinds: &Kinds,
    ns: &str,
    objs: &[serde_json::Value],
) -> anyhow::Result<()> {
    let pp = PatchParams::apply("ladder-bench-floor").force();
    for o in objs {
        let (av, k) = (
            o["apiVersion"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
        );
        let ar = kinds.get(client, av, k).await?;
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        api.patch(name, &pp, &Patch::Apply(o))
            .await
            .with_context(|| format!("apply {k} {name}"))?;
    }
    Ok(())
}

/// Watches of the workloads of one namespace (reflector stores), to judge
/// readiness without a request per check.
#[derive(Clone)]
pub struct Workloads {
    deploys: Store<Deployment>,
    stss: Store<StatefulSet>,
    jobs: Store<Job>,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Workloads {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1 {
            for t in self.tasks.iter() {
                t.abort();
            }
        }
    }
}

fn spawn_store<K>(api: Api<K>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let task = tokio::spawn(
        reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
            .for_each(|_| futures::future::ready(())),
    );
    (store, task)
}

impl Workloads {
    /// Starts watching `ns`.
    pub async fn watch(client: &Client, ns: &str) -> anyhow::Result<Self> {
        let (deploys, a) = spawn_store(Api::namespaced(client.clone(), ns));
        let (stss, b) = spawn_store(Api::namespaced(client.clone(), ns));
        let (jobs, c) = spawn_store(Api::namespaced(client.clone(), ns));
        for ready in [
            deploys.wait_until_ready().await,
            stss.wait_until_ready().await,
            jobs.wait_until_ready().await,
        ] {
            ready.context("watch workloads")?;
        }
        Ok(Self {
            deploys,
            stss,
            jobs,
            tasks: Arc::new(vec![a, b, c]),
        })
    }

    /// Is `e` ready, by the operator's rule?
    pub fn ready(&self, ns: &str, e: &ExpectedComponent) -> bool {
        match e.kind {
            "Deployment" => self
                .deploys
                .get(&reflector::ObjectRef::new(&e.name).within(ns))
                .and_then(|d| d.status.clone())
                .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= e.replicas),
            "StatefulSet" => self
                .stss
                .get(&reflector::ObjectRef::new(&e.name).within(ns))
                .and_then(|d| d.status.clone())
                .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= e.replicas),
            _ => self
                .jobs
                .get(&reflector::ObjectRef::new(&e.name).within(ns))
                .and_then(|j| j.status.clone())
                .is_some_and(|s| s.succeeded.unwrap_or(0) >= 1),
        }
    }
}

/// Renders and applies what the operator would for `sp`; returns the
/// workloads that must become ready.
pub async fn apply_for(
    client: &Client,
    kinds: &Kinds,
    ns: &str,
    regions: &[String],
    sp: &ScalingPhase,
) -> anyhow::Result<Vec<ExpectedComponent>> {
    let desired = render_for(sp, regions).with_context(|| format!("render {}", sp.name_any()))?;
    apply_all(client, kinds, ns, &objects(&desired, ns)).await?;
    Ok(desired.expected)
}

/// Waits until every `expected` workload of `ns` is ready; the time from `start`.
pub async fn wait_ready(
    workloads: &Workloads,
    ns: &str,
    expected: &[ExpectedComponent],
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    loop {
        let waiting = expected.iter().filter(|e| !workloads.ready(ns, e)).count();
        if waiting == 0 {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "floor: {waiting} of {} workloads not ready after {timeout:?}",
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies the rendered objects of every ScalingPhase `created` yields
/// (already created, uids known), `concurrency` at once, then waits until
/// every expected workload is ready. Returns when the last was applied and
/// when all were ready, both from `start`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: &Client,
    kinds: &Kinds,
    workloads: &Workloads,
    ns: &str,
    regions: &[String],
    created: tokio::sync::mpsc::Receiver<ScalingPhase>,
    concurrency: usize,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let stream = futures::stream::unfold(created, |mut rx| async move {
        rx.recv().await.map(|sp| (sp, rx))
    });
    let results: Vec<anyhow::Result<Vec<ExpectedComponent>>> = stream
        .map(|sp| async move { apply_for(client, kinds, ns, regions, &sp).await })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut expected = Vec::new();
    for r in results {
        expected.extend(r?);
    }
    let applied = start.elapsed();
    let ready = wait_ready(workloads, ns, &expected, start, timeout).await?;
    Ok((applied, ready))
}
