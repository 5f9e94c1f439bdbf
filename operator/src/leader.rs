//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas of
//! the operator never write at once.
//!
//! # Guarantees
//!
//! - **The leader stops writing at its renew deadline**, measured on its own
//!   monotonic clock: every successful renewal (or acquisition) opens the
//!   [`Fence`] until *the instant the request was sent* plus
//!   [`Timing::renew_deadline`]. The operator's client goes through a
//!   [`WriteGateLayer`] that refuses every write (POST, PUT, PATCH, DELETE)
//!   once that instant has passed, before the request leaves the process. So
//!   a leader that cannot reach the apiserver, or that was paused (SIGSTOP, a
//!   VM freeze, a long GC-like stall) makes no write after its deadline, even
//!   from a reconcile that was already running: nothing has to notice the loss
//!   first. It also never renews after the deadline: on waking up late it
//!   goes back to being a candidate, which only reads until it may take over.
//! - **A standby takes over only after it has seen the Lease unchanged for a
//!   full `leaseDurationSeconds` on its own monotonic clock**: it remembers
//!   the Lease's `resourceVersion` and when it first saw it, and any write to
//!   the Lease (a renewal) restarts that wait. It never compares the holder's
//!   `renewTime` with its local wall clock, so clock skew between nodes cannot
//!   make it take over early. `renewTime`/`acquireTime` are still written,
//!   for people and tools that read them (`kubectl get lease`).
//! - **Every write carries the Lease's `resourceVersion`**: of two
//!   candidates racing for one expired Lease, the apiserver accepts exactly one.
//!
//! # Assumptions
//!
//! The safety margin is `duration - renew_deadline` (a third of the lease by
//! default): it covers how much faster the leader's clock may run than the
//! standby's over one lease, plus how long a request sent before the deadline
//! may still travel before the apiserver applies it. What no Lease can cover:
//! a process frozen *between* the gate's check and the socket write (a window
//! of microseconds) sends that one request when it wakes; only fencing tokens
//! checked by the apiserver could refuse it, and Kubernetes has none for
//! arbitrary writes. Deleting the Lease by hand while a leader holds it lets a
//! standby create it at once: an administrator's action, not a fault.
//!
//! # Why not `kube-lease-manager`
//!
//! kube-lease-manager 0.13 (built on kube 5, like us) is maintained and
//! ergonomic, but gives neither guarantee above: a standby computes expiry as
//! the holder's `renewTime + leaseDurationSeconds` against its own
//! `SystemTime` (wall clock, so skew between nodes decides who leads); the
//! leader learns nothing when renewals fail (its `watch()` hides errors and
//! keeps reporting `true`), so it has no deadline of its own; and an expired
//! Lease is force-released with an unconditional patch. Those are design
//! choices of the crate, not bugs we could work around from outside, so this
//! module stays hand-written and is tested with tokio's
//! paused clock in `leader/tests.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::BoxError;
use tracing::{error, info, warn};

/// How long a Lease lasts, and when its holder gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long the Lease stays valid without renewal (`leaseDurationSeconds`):
    /// what a standby waits, on its own clock, after the last change it saw.
    pub duration: Duration,
    /// The leader stops writing this long after sending its last successful
    /// renewal. Shorter than `duration`: the difference is the safety margin.
    pub renew_deadline: Duration,
    /// Pause between two renewals, or two looks by a standby.
    pub retry: Duration,
}

impl Timing {
    /// The timing for a Lease of `secs` seconds: the leader gives up after
    /// two thirds of it and renews every sixth (15 s → 10 s and 2.5 s, the
    /// proportions of client-go's defaults).
    pub fn from_lease_seconds(secs: u64) -> Result<Self, String> {
        if !(3..=3600).contains(&secs) {
            return Err(format!(
                "a leader Lease of {secs}s is out of range: use 3 to 3600 seconds"
            ));
        }
        let duration = Duration::from_secs(secs);
        Ok(Self {
            duration,
            renew_deadline: duration * 2 / 3,
            retry: duration / 6,
        })
    }
}

/// Whether this process may write: open while it holds the Lease and its
/// renew deadline has not passed. Shared by the elector (which extends it)
/// and the [`WriteGate`] (which checks it on every request).
#[derive(Clone, Debug)]
pub struct Fence(Arc<FenceState>);

#[derive(Debug)]
struct FenceState {
    /// Without leader election the fence is always open.
    unconditional: bool,
    until: Mutex<Option<Instant>>,
}

impl Fence {
    /// Always open: for a single process run without leader election.
    pub fn open() -> Self {
        Self(Arc::new(FenceState {
            unconditional: true,
            until: Mutex::new(None),
        }))
    }

    /// Closed until the elector acquires the Lease.
    pub fn closed() -> Self {
        Self(Arc::new(FenceState {
            unconditional: false,
            until: Mutex::new(None),
        }))
    }

    /// Whether a write may be sent now.
    pub fn allows_writes(&self) -> bool {
        self.0.unconditional || self.valid_until().is_some_and(|u| Instant::now() < u)
    }

    /// The instant writes stop, while leading.
    pub fn valid_until(&self) -> Option<Instant> {
        *self.0.until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn extend(&self, until: Instant) {
        *self.0.until.lock().unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    fn close(&self) {
        *self.0.until.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A write refused because this process does not hold the Lease (or its
/// renew deadline passed).
#[derive(Debug, thiserror::Error)]
#[error("refused {method} {path}: this process does not hold the leader Lease")]
pub struct NotLeader {
    method: Method,
    path: String,
}

/// A tower layer for the Kubernetes client that refuses writes while the
/// [`Fence`] is closed. Reads (GET, and so list and watch) always pass: a
/// standby keeps its caches warm.
#[derive(Clone, Debug)]
pub struct WriteGateLayer {
    fence: Fence,
}

impl WriteGateLayer {
    /// A gate on `fence`.
    pub fn new(fence: Fence) -> Self {
        Self { fence }
    }
}

impl<S> tower::Layer<S> for WriteGateLayer {
    type Service = WriteGate<S>;
    fn layer(&self, inner: S) -> WriteGate<S> {
        WriteGate {
            inner,
            fence: self.fence.clone(),
        }
    }
}

/// See [`WriteGateLayer`].
#[derive(Clone, Debug)]
pub struct WriteGate<S> {
    inner: S,
    fence: Fence,
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl<S, B> tower::Service<Request<B>> for WriteGate<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if is_write(req.method()) && !self.fence.allows_writes() {
            let err = NotLeader {
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
            };
            return Box::pin(async move { Err(err.into()) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// Where the Lease lives: the apiserver ([`KubeLeases`]), or memory in tests.
pub trait LeaseStore: Send + Sync {
    /// The Lease, if it exists.
    fn get(&self) -> impl Future<Output = Result<Option<Lease>, kube::Error>> + Send;
    /// Creates it (409 when it exists).
    fn create(&self, lease: Lease) -> impl Future<Output = Result<Lease, kube::Error>> + Send;
    /// Replaces it if its `resourceVersion` is still `lease`'s (409 otherwise).
    fn replace(&self, lease: Lease) -> impl Future<Output = Result<Lease, kube::Error>> + Send;
}

/// One Lease on the apiserver. Its client must not go through the
/// [`WriteGate`]: a candidate writes the Lease before it leads.
#[derive(Clone, Debug)]
pub struct KubeLeases {
    api: Api<Lease>,
    name: String,
}

impl KubeLeases {
    /// Lease `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
        }
    }
}

impl LeaseStore for KubeLeases {
    async fn get(&self) -> Result<Option<Lease>, kube::Error> {
        self.api.get_opt(&self.name).await
    }
    async fn create(&self, lease: Lease) -> Result<Lease, kube::Error> {
        self.api.create(&PostParams::default(), &lease).await
    }
    async fn replace(&self, lease: Lease) -> Result<Lease, kube::Error> {
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
    }
}

/// Why a term as leader ended. The fence is closed by then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// No renewal succeeded before the renew deadline: the apiserver was
    /// unreachable or slow, or this process was paused.
    Deadline,
    /// The Lease names another holder (or was deleted: an empty name).
    Taken(String),
}

/// What a standby last saw of someone else's Lease, on its own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sighting {
    version: String,
    holder: String,
    since: Instant,
}

/// A candidate for one Lease.
#[derive(Debug)]
pub struct Elector<S> {
    store: S,
    name: String,
    identity: String,
    timing: Timing,
    fence: Fence,
    /// The Lease as this candidate last wrote it, while it leads.
    held: Mutex<Option<Lease>>,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn holder(lease: &Lease) -> &str {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("")
}

impl<S: LeaseStore> Elector<S> {
    /// Candidate `identity` for Lease `name` in `store`, opening `fence` while it leads.
    pub fn new(store: S, name: &str, identity: &str, timing: Timing, fence: Fence) -> Self {
        Self {
            store,
            name: name.into(),
            identity: identity.into(),
            timing,
            fence,
            held: Mutex::new(None),
        }
    }

    /// Its timing.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn hold_lease(&self, lease: Option<Lease>) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = lease;
    }

    /// `current` (or a new Lease) claimed by this candidate now.
    fn claim(&self, current: Option<&Lease>) -> Lease {
        let mut lease = current.cloned().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
        });
        let old = lease.spec.take().unwrap_or_default();
        let ours = old.holder_identity.as_deref() == Some(self.identity.as_str());
        let now = MicroTime(Timestamp::now());
        let transitions =
            old.lease_transitions.unwrap_or(0) + i32::from(!ours && current.is_some());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                old.acquire_time.clone().or(Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..old
        });
        lease
    }

    /// Leading from now on: writes allowed until `sent` + the renew deadline.
    fn lead(&self, lease: Lease, sent: Instant) -> Lease {
        self.fence.extend(sent + self.timing.renew_deadline);
        self.hold_lease(Some(lease.clone()));
        lease
    }

    /// Like [`Self::lead`] for an acquisition: `None` when the answer came so
    /// late that the term it started is already over (the apiserver was
    /// slow); the Lease is ours, so the next look renews it at once.
    fn lead_if_in_time(&self, lease: Lease, sent: Instant) -> Option<Lease> {
        let lease = self.lead(lease, sent);
        if self.fence.allows_writes() {
            Some(lease)
        } else {
            self.fence.close();
            None
        }
    }

    /// One look at the Lease as a candidate; `Some` when this candidate now leads.
    async fn try_acquire(&self, seen: &mut Option<Sighting>) -> Result<Option<Lease>, kube::Error> {
        // The term is counted from before the first request: never longer than it really is.
        let sent = Instant::now();
        let Some(lease) = self.store.get().await? else {
            return match self.store.create(self.claim(None)).await {
                Ok(l) => Ok(self.lead_if_in_time(l, sent)),
                Err(e) if conflict(&e) => Ok(None),
                Err(e) => Err(e),
            };
        };
        let current = holder(&lease);
        // Our own Lease (a restart with the same identity, or a term lost to the
        // deadline that nobody took over) and a released one may be taken at
        // once: the resourceVersion makes it a compare-and-swap.
        if !current.is_empty() && current != self.identity {
            let now = Instant::now();
            let version = lease.metadata.resource_version.clone().unwrap_or_default();
            let sighting = match seen.take() {
                Some(s) if s.version == version => s,
                previous => {
                    // Once per holder, not once per renewal.
                    if previous.is_none_or(|p| p.holder != current) {
                        info!(holder = current, "standing by: the leader Lease is held");
                    }
                    Sighting {
                        version,
                        holder: current.to_owned(),
                        since: now,
                    }
                }
            };
            let duration = lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .map_or(self.timing.duration, |s| {
                    Duration::from_secs(u64::try_from(s).unwrap_or(0))
                });
            let unchanged_for = now.duration_since(sighting.since);
            *seen = Some(sighting);
            if unchanged_for < duration {
                return Ok(None);
            }
            info!(
                holder = current,
                unchanged_for = ?unchanged_for,
                "the leader Lease was not renewed for its whole duration; taking over"
            );
        }
        match self.store.replace(self.claim(Some(&lease))).await {
            Ok(l) => {
                *seen = None;
                Ok(self.lead_if_in_time(l, sent))
            }
            Err(e) if conflict(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the Lease, then returns it. The fence
    /// is open from then on, until [`Elector::hold`] returns.
    pub async fn acquire(&self) -> Lease {
        let mut seen = None;
        loop {
            match self.try_acquire(&mut seen).await {
                Ok(Some(lease)) => return lease,
                Ok(None) => {}
                Err(e) => warn!(%e, "looking at the leader Lease failed; retrying"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// One renewal: the renewed Lease, or `Err(holder)` when someone else holds it now.
    async fn renew(&self, last: &Lease) -> Result<Result<Lease, String>, kube::Error> {
        let err = match self.store.replace(self.claim(Some(last))).await {
            Ok(l) => return Ok(Ok(l)),
            Err(e) if conflict(&e) => e,
            Err(e) => return Err(e),
        };
        // Changed under us: still ours if someone only edited something else
        // (a label): then renew that version, once.
        let Some(current) = self.store.get().await? else {
            return Ok(Err(String::new()));
        };
        if holder(&current) != self.identity {
            return Ok(Err(holder(&current).to_owned()));
        }
        match self.store.replace(self.claim(Some(&current))).await {
            Ok(l) => Ok(Ok(l)),
            Err(e) if conflict(&e) => Err(err),
            Err(e) => Err(e),
        }
    }

    /// Renews `lease` until a renewal misses the deadline or someone else
    /// holds it, and says which. Never writes after the deadline.
    pub async fn hold(&self, mut lease: Lease) -> Lost {
        loop {
            let Some(until) = self.fence.valid_until() else {
                return Lost::Deadline;
            };
            tokio::time::sleep_until((Instant::now() + self.timing.retry).min(until)).await;
            let sent = Instant::now();
            if sent >= until || !self.fence.allows_writes() {
                // Woke up too late (paused, or every renewal failed): a
                // standby may lead already, so do not even try to renew.
                return self.step_down(Lost::Deadline);
            }
            match tokio::time::timeout_at(until, self.renew(&lease)).await {
                Err(_) => return self.step_down(Lost::Deadline),
                Ok(Ok(Ok(l))) => lease = self.lead(l, sent),
                Ok(Ok(Err(taken))) => return self.step_down(Lost::Taken(taken)),
                Ok(Err(e)) => {
                    warn!(%e, "renewing the leader Lease failed; retrying until the deadline")
                }
            }
        }
    }

    fn step_down(&self, why: Lost) -> Lost {
        self.fence.close();
        self.hold_lease(None);
        why
    }

    /// Leads for as long as the process runs: holds the Lease, and after a
    /// lost term stands by and takes it again when it may. `leading` says
    /// whether this process leads now; it must start `true` (call after
    /// [`Elector::acquire`], with the Lease it returned).
    pub async fn keep(&self, first: Lease, leading: watch::Sender<bool>) {
        let mut lease = first;
        loop {
            let lost = self.hold(lease).await;
            let _ = leading.send(false);
            error!(
                ?lost,
                "lost the leader Lease: no writes until it is held again"
            );
            lease = self.acquire().await;
            let _ = leading.send(true);
            info!(identity = %self.identity, "leading again");
        }
    }

    /// Gives the Lease up (on graceful shutdown) so a standby takes over at
    /// once: only while the term is still valid, and only the version this
    /// process wrote (a conflict means someone else holds it).
    pub async fn release(&self) -> Result<(), kube::Error> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let valid = self.fence.allows_writes();
        self.fence.close();
        let (Some(mut lease), true) = (held, valid) else {
            return Ok(());
        };
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
        }
        match self.store.replace(lease).await {
            Ok(_) => Ok(()),
            Err(e) if conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
