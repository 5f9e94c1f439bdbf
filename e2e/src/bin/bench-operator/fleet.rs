//! The operator's side of the benchmark: ScalingPhases created and watched,
//! the operator's `/metrics` read back, its memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector as reflect;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};

/// The bench's field manager.
pub const MANAGER: &str = "ladder-bench";

/// The spec of a ScalingPhase at `phase` (phase 4 needs an identity provider).
pub fn spec(phase: i32) -> anyhow::Result<ScalingPhaseSpec> {
    let auth = if phase == 4 {
        "auth: {issuerUrl: 'https://login.example.com', clientId: bench}\n"
    } else {
        ""
    };
    Ok(serde_yaml::from_str(&format!("phase: {phase}\n{auth}"))?)
}

/// Creates (server-side apply) ScalingPhase `name` at `phase`; returns it as
/// stored (with its uid).
pub async fn create(
    api: &Api<ScalingPhase>,
    name: &str,
    phase: i32,
) -> anyhow::Result<ScalingPhase> {
    let sp = ScalingPhase::new(name, spec(phase)?);
    let pp = PatchParams::apply(MANAGER).force();
    Ok(api.patch(name, &pp, &Patch::Apply(&sp)).await?)
}

/// Creates `names` at phase 0, `in_flight` at once, sending each created
/// object to `created` (the floor applies from there).
pub async fn create_many(
    api: &Api<ScalingPhase>,
    names: Vec<String>,
    in_flight: usize,
    created: Option<tokio::sync::mpsc::Sender<ScalingPhase>>,
) -> anyhow::Result<()> {
    futures::stream::iter(names)
        .map(|name| {
            let created = created.clone();
            async move {
                let sp = create(api, &name, 0).await?;
                if let Some(tx) = created {
                    tx.send(sp).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// `prefix-0000` ... for `range`.
pub fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Is `sp` Ready for its current generation (at `phase` when given)?
pub fn is_ready(sp: &ScalingPhase, phase: Option<i32>) -> bool {
    sp.status.as_ref().is_some_and(|st| {
        phase.is_none_or(|p| st.active_phase == Some(p))
            && st.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "True"
                    && c.observed_generation == sp.metadata.generation
            })
    })
}

/// What a ScalingPhase's status says against readiness: its conditions and
/// the components not ready, for a timeout's message.
fn why_not_ready(sp: &ScalingPhase) -> String {
    let Some(st) = sp.status.as_ref() else {
        return "no status".into();
    };
    let conditions: Vec<String> = st
        .conditions
        .iter()
        .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
        .collect();
    let waiting: Vec<String> = st
        .components
        .iter()
        .filter(|c| !c.ready)
        .map(|c| format!("{} {}: {}", c.kind, c.name, c.message))
        .collect();
    format!(
        "generation {:?}, activePhase {:?}, conditions [{}], not ready [{}]",
        sp.metadata.generation,
        st.active_phase,
        conditions.join("; "),
        waiting.join("; ")
    )
}

/// A watch of the ScalingPhases of one namespace (the bench's view: one
/// WATCH instead of a LIST per check).
pub struct Watched {
    /// The store.
    pub store: Store<ScalingPhase>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watched {
    /// Starts watching `api`'s namespace.
    pub async fn start(api: Api<ScalingPhase>) -> anyhow::Result<Self> {
        let (store, writer) = reflector::store();
        let task = tokio::spawn(
            reflect::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .touched_objects()
                .for_each(|_| futures::future::ready(())),
        );
        store.wait_until_ready().await?;
        Ok(Self { store, task })
    }

    /// How many of those accepted by `which` are Ready.
    pub fn ready(&self, which: impl Fn(&ScalingPhase) -> bool) -> usize {
        self.store
            .state()
            .iter()
            .filter(|s| which(s) && is_ready(s, None))
            .count()
    }

    /// Waits until `n` ScalingPhases accepted by `which` are Ready; the time from `start`.
    pub async fn wait_ready(
        &self,
        n: usize,
        which: impl Fn(&ScalingPhase) -> bool,
        start: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        loop {
            let ready = self.ready(&which);
            if ready >= n {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "only {ready}/{n} ScalingPhases Ready after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `name` is Ready at `phase`; the time from `start` and its components.
    pub async fn wait_one(
        &self,
        ns: &str,
        name: &str,
        phase: i32,
        start: Instant,
        timeout: Duration,
    ) -> anyhow::Result<(Duration, usize)> {
        let r = reflector::ObjectRef::new(name).within(ns);
        loop {
            if let Some(sp) = self.store.get(&r)
                && is_ready(&sp, Some(phase))
            {
                let comps = sp.status.as_ref().map_or(0, |s| s.components.len());
                return Ok((start.elapsed(), comps));
            }
            if start.elapsed() >= timeout {
                anyhow::bail!(
                    "{name} not Ready at phase {phase} after {timeout:?}; last seen: {}",
                    self.store
                        .get(&r)
                        .map_or("never".into(), |sp| why_not_ready(&sp))
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Deletes every ScalingPhase of `ns` and waits until they, their
/// workloads and pods are gone (garbage collection done), so the next
/// measurement starts on a quiet cluster. `strip` removes the finalizers
/// first (no operator-side clean-up: the harness's business, not a measure).
pub async fn clear(
    client: &Client,
    ns: &str,
    strip: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let sps: Api<ScalingPhase> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = sps
        .list_metadata(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let strip_patch = serde_json::json!({"metadata": {"finalizers": null}});
    futures::stream::iter(names)
        .for_each_concurrent(16, |n| {
            let sps = sps.clone();
            let strip_patch = strip_patch.clone();
            async move {
                if strip {
                    let _ = sps
                        .patch(&n, &PatchParams::default(), &Patch::Merge(&strip_patch))
                        .await;
                }
                let _ = sps.delete(&n, &DeleteParams::background()).await;
            }
        })
        .await;
    let start = Instant::now();
    loop {
        let left = count::<ScalingPhase>(client, ns).await?
            + count::<Deployment>(client, ns).await?
            + count::<StatefulSet>(client, ns).await?
            + count::<Job>(client, ns).await?
            + count::<Pod>(client, ns).await?;
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{left} objects left in {ns} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn count<K>(client: &Client, ns: &str) -> anyhow::Result<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len())
}

/// A scrape of the operator's `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Scrape(pub String);

impl Scrape {
    /// Sum of the series of family `name` whose labels contain every `needle`.
    pub fn sum(&self, name: &str, needles: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| {
                let rest = l.strip_prefix(name).unwrap_or("#");
                (rest.starts_with('{') || rest.starts_with(' '))
                    && needles.iter().all(|n| l.contains(n))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `ladder_api_requests_total` by (verb, group, resource).
    pub fn requests(&self) -> BTreeMap<(String, String, String), f64> {
        let mut out = BTreeMap::new();
        for l in self
            .0
            .lines()
            .filter(|l| l.starts_with("ladder_api_requests_total{"))
        {
            let get = |k: &str| {
                l.split(&format!("{k}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            let v: f64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *out.entry((get("verb"), get("group"), get("resource")))
                .or_default() += v;
        }
        out
    }

    /// Cumulative buckets (upper bound, count) of a histogram family.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{");
        let mut out: Vec<(f64, f64)> = self
            .0
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// The `q` quantile of the observations between two scrapes of a
/// histogram, interpolated inside the bucket as PromQL's
/// `histogram_quantile` does.
pub fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, c - b)
        })
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in &diff {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = le - prev.0;
            let inside = (rank - prev.1) / (c - prev.1).max(f64::MIN_POSITIVE);
            return Some(prev.0 + width * inside);
        }
        prev = (le, c);
    }
    None
}

/// VmRSS and VmHWM of a process, KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What the operator's caches hold for namespace `ns`, as JSON bytes: the
/// full ScalingPhases (the Controller's store) and the metadata of its
/// workloads and app pods (metadata-only watches), with and without their
/// `managedFields`. An estimate of what pruning managedFields would save.
pub async fn cache_bytes(client: &Client, ns: &str) -> anyhow::Result<(usize, usize)> {
    fn sizes<T: serde::Serialize>(items: &[T], fields: impl Fn(&T) -> usize) -> (usize, usize) {
        items.iter().fold((0, 0), |(all, mf), o| {
            (
                all + serde_json::to_vec(o).map_or(0, |v| v.len()),
                mf + fields(o),
            )
        })
    }
    fn mf_len(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> usize {
        m.managed_fields
            .as_ref()
            .and_then(|f| serde_json::to_vec(f).ok())
            .map_or(0, |v| v.len())
    }
    let lp = ListParams::default();
    let sps = Api::<ScalingPhase>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let mut total = sizes(&sps, |s| mf_len(&s.metadata));
    let meta = |items: Vec<PartialObjectMeta<Deployment>>| sizes(&items, |o| mf_len(&o.metadata));
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await?
        .items;
    let add = |t: &mut (usize, usize), s: (usize, usize)| {
        t.0 += s.0;
        t.1 += s.1;
    };
    add(&mut total, meta(d));
    let s = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await?
        .items;
    add(&mut total, sizes(&s, |o| mf_len(&o.metadata)));
    let j = Api::<Job>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await?
        .items;
    add(&mut total, sizes(&j, |o| mf_len(&o.metadata)));
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list_metadata(&ListParams::default().labels("app.kubernetes.io/component=app"))
        .await?
        .items;
    add(&mut total, sizes(&pods, |o| mf_len(&o.metadata)));
    Ok(total)
}

/// Samples of the operator's queue while something runs: (seconds since
/// start, workqueue_depth, active workers).
pub type DepthSamples = Arc<std::sync::Mutex<Vec<(f64, f64, f64)>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_promql() {
        let before = vec![(0.1, 0.0), (0.2, 0.0), (f64::INFINITY, 0.0)];
        let after = vec![(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        let p50 = quantile(0.5, &before, &after).expect("p50");
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p75 = quantile(0.75, &before, &after).expect("p75");
        assert!((p75 - 0.15).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(0.5, &after, &after), None, "nothing observed");
    }

    #[test]
    fn scrapes_sum_and_split_requests() {
        let s = Scrape(
            r#"ladder_api_requests_total{method="PATCH",verb="APPLY",group="apps",resource="deployments"} 4
ladder_api_requests_total{method="GET",verb="LIST",group="apps",resource="deployments"} 2
workqueue_depth{controller="scalingphase",name="scalingphase"} 3
"#
            .into(),
        );
        assert_eq!(s.sum("ladder_api_requests_total", &[]), 6.0);
        assert_eq!(
            s.sum("ladder_api_requests_total", &[r#"verb="APPLY""#]),
            4.0
        );
        assert_eq!(s.sum("workqueue_depth", &[]), 3.0);
        assert_eq!(
            s.requests()
                .get(&("LIST".into(), "apps".into(), "deployments".into())),
            Some(&2.0)
        );
    }
}
