//! controller-runtime-compatible metrics: the names, labels and buckets Go
//! operators export, so the same PromQL and dashboards work for Ladder.
//!
//! - `controller_runtime_reconcile_total{controller,result}` (`success`,
//!   `error`, `requeue`, `requeue_after`), `controller_runtime_reconcile_errors_total`,
//!   `controller_runtime_reconcile_time_seconds` (histogram),
//!   `controller_runtime_active_workers`, `controller_runtime_max_concurrent_reconciles`;
//! - `workqueue_depth`, `workqueue_adds_total`, `workqueue_retries_total`,
//!   `workqueue_queue_duration_seconds`, `workqueue_work_duration_seconds`,
//!   `workqueue_unfinished_work_seconds`, `workqueue_longest_running_processor_seconds`
//!   (labels `controller` and `name`, both the controller's name);
//! - `rest_client_requests_total{code,host,method}` (fed by [`super::client`]).
//!
//! kube-runtime's Controller keeps its queue (the scheduler) to itself: it
//! exports no depth (kube-rs issue 1917). So the queue is modelled here from
//! what goes in and what comes out, the way the scheduler behaves:
//! every trigger (a watch event of the object, of a child it owns, of a
//! related object, a reconcile-all) makes the object due now; a requeue
//! (`Action::requeue`, the error policy's backoff) makes it due later; an
//! object appears once however often it is triggered, and the earliest due
//! time wins; it leaves when its reconcile starts; a trigger during a
//! reconcile makes it due again when that reconcile ends. The depth is the
//! number of objects due now and not running, computed at each scrape, as
//! client-go counts it (delayed requeues are not in the queue until due).
//! The triggers are counted by stream adapters ([`Runtime::triggers`],
//! [`Runtime::owner_triggers`], [`Runtime::mapped_triggers`],
//! [`Runtime::all_triggers`]) around the same watches the Controller uses;
//! starts and ends by wrappers around the reconciler and the error policy.
//! Objects no longer in the Controller's store are dropped (a deleted
//! object's pending requeue is discarded by the Controller too).
//!
//! Why this file is long (~660 lines, tests in `runtime/tests.rs`): the queue
//! model, the stream adapters that feed it and the metric families it
//! exports only make sense together; split, each part would have to expose
//! the queue's internals to the others.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The name of Ladder's one controller (controller-runtime uses the
/// lowercased kind).
pub const CONTROLLER: &str = "scalingphase";

/// `{controller}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// The controller's name.
    pub controller: String,
}

/// `{controller,result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The controller's name.
    pub controller: String,
    /// `success`, `error`, `requeue` or `requeue_after`.
    pub result: String,
}

/// `{controller,name}` of the workqueue metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// The controller's name.
    pub controller: String,
    /// The queue's name (the controller's name, as controller-runtime does).
    pub name: String,
}

/// `{code,host,method}` of `rest_client_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestLabel {
    /// HTTP status code, or `<error>` when no answer came.
    pub code: String,
    /// `host:port` of the API server.
    pub host: String,
    /// HTTP method.
    pub method: String,
}

/// An object in the queue: namespace and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Namespace (`None` for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl Key {
    /// The key of an object.
    pub fn of<K: Resource>(obj: &K) -> Self {
        let m = obj.meta();
        Self {
            namespace: m.namespace.clone(),
            name: m.name.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// When the object is (or becomes) due; `None`: not queued.
    due: Option<Instant>,
    /// `due` came from a requeue and its entry into the queue is not yet
    /// counted in `workqueue_adds_total`.
    delayed: bool,
    /// When its running reconcile started.
    running: Option<Instant>,
}

#[derive(Debug, Default)]
struct Queue {
    entries: HashMap<Key, Entry>,
}

impl Queue {
    /// A trigger at `now`; true when it added the object to the queue.
    fn trigger(&mut self, key: Key, now: Instant) -> bool {
        let e = self.entries.entry(key).or_default();
        match e.due {
            Some(due) if due <= now => {
                // Already queued: merged. A delayed requeue that came due
                // entered the queue then: count that entry.
                std::mem::take(&mut e.delayed)
            }
            _ => {
                e.due = Some(now);
                e.delayed = false;
                true
            }
        }
    }

    /// A requeue `after` from `now`; the earliest due time wins.
    fn requeue(&mut self, key: Key, now: Instant, after: Duration) {
        let at = now + after;
        let e = self.entries.entry(key).or_default();
        if e.due.is_none_or(|d| at < d) {
            e.due = Some(at);
            e.delayed = true;
        }
    }

    /// A reconcile starts: the object leaves the queue. Returns how long it
    /// waited and whether it entered through an uncounted delayed requeue.
    fn start(&mut self, key: Key, now: Instant) -> (Option<Duration>, bool) {
        let e = self.entries.entry(key).or_default();
        let waited = e.due.map(|d| now.saturating_duration_since(d));
        let delayed = std::mem::take(&mut e.delayed);
        e.due = None;
        e.running = Some(now);
        (waited, delayed)
    }

    /// A reconcile ended: a trigger that came meanwhile queues it now.
    fn finish(&mut self, key: &Key, now: Instant) -> Option<Duration> {
        let e = self.entries.get_mut(key)?;
        let started = e.running.take();
        if e.due.is_some_and(|d| d <= now) {
            e.due = Some(now);
        }
        started.map(|s| now.saturating_duration_since(s))
    }

    /// Depth (due, not running, still alive), seconds of unfinished work and
    /// the longest running reconcile; forgets what is idle or gone.
    fn sample(&mut self, now: Instant, alive: Option<&HashSet<Key>>) -> (i64, f64, f64) {
        self.entries.retain(|k, e| {
            e.running.is_some() || (e.due.is_some() && alive.is_none_or(|a| a.contains(k)))
        });
        let mut depth = 0;
        let (mut unfinished, mut longest) = (0.0, 0.0f64);
        for e in self.entries.values() {
            match e.running {
                Some(s) => {
                    let secs = now.saturating_duration_since(s).as_secs_f64();
                    unfinished += secs;
                    longest = longest.max(secs);
                }
                None if e.due.is_some_and(|d| d <= now) => depth += 1,
                None => {}
            }
        }
        (depth, unfinished, longest)
    }
}

/// The duration of a requeue. kube's [`Action`] keeps it private; its
/// `Debug` form (`Action { requeue_after: Some(1.5s) }`) is the only way to
/// read it. A unit test pins the form, so a kube upgrade that changes it fails
/// there and not silently here.
pub fn requeue_after(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    let split = inner.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = inner.split_at(split);
    let value: f64 = number.parse().ok()?;
    let secs = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A wrapped reconcile in flight.
pub type Reconciling<E> = std::pin::Pin<Box<dyn Future<Output = Result<Action, E>> + Send>>;

/// controller-runtime's label for a reconcile's outcome.
pub fn result_label<E>(result: &Result<Action, E>) -> &'static str {
    match result {
        Err(_) => "error",
        Ok(a) if *a == Action::await_change() => "success",
        Ok(a) if requeue_after(a) == Some(Duration::ZERO) => "requeue",
        Ok(_) => "requeue_after",
    }
}

/// The controller-runtime-compatible metrics of one controller and the
/// client's requests; registered without the `ladder_` prefix.
pub struct Runtime {
    controller: String,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<ControllerLabel, Counter>,
    reconcile_time: Family<ControllerLabel, Histogram>,
    active_workers: Family<ControllerLabel, Gauge>,
    max_concurrent: Family<ControllerLabel, Gauge>,
    depth: Family<QueueLabel, Gauge>,
    adds: Family<QueueLabel, Counter>,
    retries: Family<QueueLabel, Counter>,
    queue_duration: Family<QueueLabel, Histogram>,
    work_duration: Family<QueueLabel, Histogram>,
    unfinished: Family<QueueLabel, Gauge<f64, AtomicU64>>,
    longest: Family<QueueLabel, Gauge<f64, AtomicU64>>,
    rest_requests: Family<RestLabel, Counter>,
    queue: Mutex<Queue>,
    #[allow(clippy::type_complexity)]
    alive: OnceLock<Box<dyn Fn() -> HashSet<Key> + Send + Sync>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

/// controller-runtime's reconcile-time buckets (seconds).
const RECONCILE_BUCKETS: [f64; 42] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6,
    0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0,
    10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0,
];

/// client-go's workqueue buckets: 10 ns to 1,000 s, ×10.
fn queue_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-8, 10.0, 12)
}

impl Runtime {
    /// The metrics of controller `controller`, registered in `registry`
    /// (which must have no prefix).
    pub fn new(controller: &str, registry: &mut Registry) -> Self {
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconciles.clone(),
        );
        let errors = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            errors.clone(),
        );
        let reconcile_time = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(RECONCILE_BUCKETS)
        });
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            reconcile_time.clone(),
        );
        let active_workers = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            active_workers.clone(),
        );
        let max_concurrent = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            max_concurrent.clone(),
        );
        let depth = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue",
            depth.clone(),
        );
        let adds = Family::<QueueLabel, Counter>::default();
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            adds.clone(),
        );
        let retries = Family::<QueueLabel, Counter>::default();
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            retries.clone(),
        );
        let queue_duration = Family::<QueueLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(queue_buckets())
        });
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            queue_duration.clone(),
        );
        let work_duration = Family::<QueueLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(queue_buckets())
        });
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            work_duration.clone(),
        );
        let unfinished = Family::<QueueLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been observed by work_duration",
            unfinished.clone(),
        );
        let longest = Family::<QueueLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            longest.clone(),
        );
        let rest_requests = Family::<RestLabel, Counter>::default();
        registry.register(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host",
            rest_requests.clone(),
        );
        let me = Self {
            controller: controller.to_owned(),
            reconciles,
            errors,
            reconcile_time,
            active_workers,
            max_concurrent,
            depth,
            adds,
            retries,
            queue_duration,
            work_duration,
            unfinished,
            longest,
            rest_requests,
            queue: Mutex::default(),
            alive: OnceLock::new(),
        };
        // Series that exist before the first event, as controller-runtime
        // initialises them (a rate() over a missing series is no rate).
        for result in ["success", "error", "requeue", "requeue_after"] {
            let _ = me.reconciles.get_or_create(&me.result(result));
        }
        let _ = me.errors.get_or_create(&me.label());
        let _ = me.reconcile_time.get_or_create(&me.label());
        let _ = me.active_workers.get_or_create(&me.label());
        let _ = me.max_concurrent.get_or_create(&me.label());
        let _ = me.queue_duration.get_or_create(&me.queue_label());
        let _ = me.work_duration.get_or_create(&me.queue_label());
        let _ = me.unfinished.get_or_create(&me.queue_label());
        let _ = me.longest.get_or_create(&me.queue_label());
        let _ = me.depth.get_or_create(&me.queue_label());
        let _ = me.adds.get_or_create(&me.queue_label());
        let _ = me.retries.get_or_create(&me.queue_label());
        me
    }

    fn label(&self) -> ControllerLabel {
        ControllerLabel {
            controller: self.controller.clone(),
        }
    }

    fn result(&self, result: &str) -> ResultLabel {
        ResultLabel {
            controller: self.controller.clone(),
            result: result.to_owned(),
        }
    }

    fn queue_label(&self) -> QueueLabel {
        QueueLabel {
            controller: self.controller.clone(),
            name: self.controller.clone(),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Controller runs at most `n` reconciles at once.
    pub fn set_max_concurrency(&self, n: u16) {
        self.max_concurrent
            .get_or_create(&self.label())
            .set(i64::from(n));
    }

    /// The Controller's store: objects no longer in it leave the queue.
    pub fn watch_store<K>(&self, store: Store<K>)
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
    {
        let _ = self.alive.set(Box::new(move || {
            store.state().iter().map(|o| Key::of(o.as_ref())).collect()
        }));
    }

    /// One answered (or failed) request of the kube client.
    pub fn rest_request(&self, code: &str, host: &str, method: &str) {
        self.rest_requests
            .get_or_create(&RestLabel {
                code: code.to_owned(),
                host: host.to_owned(),
                method: method.to_owned(),
            })
            .inc();
    }

    /// `key` was triggered now.
    pub fn triggered(&self, key: Key) {
        if self.queue().trigger(key, Instant::now()) {
            self.adds.get_or_create(&self.queue_label()).inc();
        }
    }

    /// `key` asked to run again `after` from now; `retry` when the error
    /// policy asked.
    pub fn requeued(&self, key: Key, after: Duration, retry: bool) {
        self.queue().requeue(key, Instant::now(), after);
        if retry {
            self.retries.get_or_create(&self.queue_label()).inc();
        }
    }

    /// A reconcile of `key` starts.
    pub fn started(&self, key: Key) {
        let (waited, delayed) = self.queue().start(key, Instant::now());
        if delayed {
            self.adds.get_or_create(&self.queue_label()).inc();
        }
        if let Some(w) = waited {
            self.queue_duration
                .get_or_create(&self.queue_label())
                .observe(w.as_secs_f64());
        }
        self.active_workers.get_or_create(&self.label()).inc();
    }

    /// A reconcile of `key` ended with `result`.
    pub fn finished<E>(&self, key: Key, result: &Result<Action, E>) {
        let now = Instant::now();
        let took = self.queue().finish(&key, now);
        self.active_workers.get_or_create(&self.label()).dec();
        if let Some(t) = took {
            let secs = t.as_secs_f64();
            self.reconcile_time
                .get_or_create(&self.label())
                .observe(secs);
            self.work_duration
                .get_or_create(&self.queue_label())
                .observe(secs);
        }
        self.reconciles
            .get_or_create(&self.result(result_label(result)))
            .inc();
        match result {
            Ok(action) => {
                if let Some(after) = requeue_after(action) {
                    self.requeued(key, after, false);
                }
            }
            Err(_) => {
                self.errors.get_or_create(&self.label()).inc();
            }
        }
    }

    /// Updates the gauges computed from the queue (call before encoding).
    pub fn refresh(&self) {
        let alive = self.alive.get().map(|f| f());
        let (depth, unfinished, longest) = self.queue().sample(Instant::now(), alive.as_ref());
        let l = self.queue_label();
        self.depth.get_or_create(&l).set(depth);
        self.unfinished.get_or_create(&l).set(unfinished);
        self.longest.get_or_create(&l).set(longest);
    }

    /// The Controller's own watch of its objects (after the reflector):
    /// each object seen triggers it.
    pub fn triggers<K, E, S>(
        self: &Arc<Self>,
        stream: S,
    ) -> impl Stream<Item = Result<K, E>> + use<K, E, S>
    where
        K: Resource,
        S: Stream<Item = Result<K, E>>,
    {
        let me = self.clone();
        stream.inspect(move |item| {
            if let Ok(obj) = item {
                me.triggered(Key::of(obj));
            }
        })
    }

    /// A watch of children: each triggers its owners of kind `Owner` (as
    /// `Controller::owns` maps them: every owner reference of that kind).
    pub fn owner_triggers<Owner, K, E, S>(
        self: &Arc<Self>,
        stream: S,
    ) -> impl Stream<Item = Result<K, E>> + use<Owner, K, E, S>
    where
        Owner: Resource<DynamicType = ()>,
        K: Resource,
        S: Stream<Item = Result<K, E>>,
    {
        let me = self.clone();
        let (kind, api_version) = (Owner::kind(&()), Owner::api_version(&()));
        stream.inspect(move |item| {
            if let Ok(obj) = item {
                let m = obj.meta();
                for o in m.owner_references.iter().flatten() {
                    if o.kind == kind && o.api_version == api_version {
                        me.triggered(Key {
                            namespace: m.namespace.clone(),
                            name: o.name.clone(),
                        });
                    }
                }
            }
        })
    }

    /// A watch of related objects: each triggers the objects `map` names
    /// (the same mapping the Controller is given).
    pub fn mapped_triggers<K, E, S, F, I, T>(
        self: &Arc<Self>,
        stream: S,
        map: F,
    ) -> impl Stream<Item = Result<K, E>> + use<K, E, S, F, I, T>
    where
        S: Stream<Item = Result<K, E>>,
        F: Fn(&K) -> I,
        I: IntoIterator<Item = ObjectRef<T>>,
        T: Lookup,
    {
        let me = self.clone();
        stream.inspect(move |item| {
            if let Ok(obj) = item {
                for o in map(obj) {
                    me.triggered(Key {
                        namespace: o.namespace,
                        name: o.name,
                    });
                }
            }
        })
    }

    /// A reconcile-all trigger (`Controller::reconcile_all_on`): every
    /// object in the store.
    pub fn all_triggers<S>(self: &Arc<Self>, stream: S) -> impl Stream<Item = ()> + use<S>
    where
        S: Stream<Item = ()>,
    {
        let me = self.clone();
        stream.inspect(move |()| {
            let keys = me.alive.get().map(|f| f()).unwrap_or_default();
            let now = Instant::now();
            let added = {
                let mut q = me.queue();
                keys.into_iter()
                    .filter(|k| q.trigger(k.clone(), now))
                    .count()
            };
            me.adds
                .get_or_create(&me.queue_label())
                .inc_by(u64::try_from(added).unwrap_or(0));
        })
    }

    /// Wraps the reconciler: counts starts, ends, results and times.
    pub fn reconciler<K, C, E, F, Fut>(
        self: &Arc<Self>,
        mut reconcile: F,
    ) -> impl FnMut(Arc<K>, Arc<C>) -> Reconciling<E> + use<K, C, E, F, Fut>
    where
        K: Resource,
        F: FnMut(Arc<K>, Arc<C>) -> Fut,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let me = self.clone();
        move |obj, ctx| {
            let key = Key::of(obj.as_ref());
            me.started(key.clone());
            let fut = reconcile(obj, ctx);
            let me = me.clone();
            Box::pin(async move {
                let result = fut.await;
                me.finished(key, &result);
                result
            })
        }
    }

    /// Wraps the error policy: its backoff is a retry in the queue.
    pub fn error_policy<K, C, E, P>(
        self: &Arc<Self>,
        policy: P,
    ) -> impl Fn(Arc<K>, &E, Arc<C>) -> Action + use<K, C, E, P>
    where
        K: Resource,
        P: Fn(Arc<K>, &E, Arc<C>) -> Action,
    {
        let me = self.clone();
        move |obj, error, ctx| {
            let key = Key::of(obj.as_ref());
            let action = policy(obj, error, ctx);
            if let Some(after) = requeue_after(&action) {
                me.requeued(key, after, true);
            }
            action
        }
    }
}

#[cfg(test)]
mod tests;
