//! The deadline and takeover rules of [`super`], on tokio's paused clock,
//! against an in-memory Lease that behaves like the apiserver's (a
//! resourceVersion per write, 409 on a stale one) and records every write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use futures::FutureExt;
use k8s_openapi::jiff::Timestamp;
use kube::core::Status;
use tokio::time::sleep_until;
use tower::ServiceExt;

use super::*;

/// The reachability of the fake apiserver from one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Up,
    /// Every request fails (connection refused).
    Down,
    /// Every request is sent and never answered.
    Hang,
}

#[derive(Debug, Default)]
struct Server {
    lease: Option<Lease>,
    version: u64,
    /// Every write that reached the server: who sent it, when.
    writes: Vec<(String, Instant)>,
}

#[derive(Clone, Debug)]
struct Handle {
    server: Arc<Mutex<Server>>,
    who: String,
    link: Arc<Mutex<Link>>,
    /// The next request is answered only after this long.
    slow_next: Arc<Mutex<Option<Duration>>>,
}

fn api_error(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(Status::failure(reason, reason).with_code(code).boxed())
}

impl Handle {
    fn set(&self, link: Link) {
        *self.link.lock().expect("lock") = link;
    }

    async fn reach(&self) -> Result<(), kube::Error> {
        let slow = self.slow_next.lock().expect("lock").take();
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        let link = *self.link.lock().expect("lock");
        match link {
            Link::Up => Ok(()),
            Link::Down => Err(api_error(503, "ServiceUnavailable")),
            Link::Hang => futures::future::pending().await,
        }
    }

    fn write(&self, lease: Lease, create: bool) -> Result<Lease, kube::Error> {
        let mut s = self.server.lock().expect("lock");
        s.writes.push((self.who.clone(), Instant::now()));
        let current = s
            .lease
            .as_ref()
            .map(|l| l.metadata.resource_version.clone());
        match (create, current) {
            (true, Some(_)) => return Err(api_error(409, "AlreadyExists")),
            (false, None) => return Err(api_error(404, "NotFound")),
            (false, Some(v)) if v != lease.metadata.resource_version => {
                return Err(api_error(409, "Conflict"));
            }
            _ => {}
        }
        s.version += 1;
        let mut lease = lease;
        lease.metadata.resource_version = Some(s.version.to_string());
        s.lease = Some(lease.clone());
        Ok(lease)
    }
}

impl LeaseStore for Handle {
    async fn get(&self) -> Result<Option<Lease>, kube::Error> {
        self.reach().await?;
        Ok(self.server.lock().expect("lock").lease.clone())
    }
    async fn create(&self, lease: Lease) -> Result<Lease, kube::Error> {
        self.reach().await?;
        self.write(lease, true)
    }
    async fn replace(&self, lease: Lease) -> Result<Lease, kube::Error> {
        self.reach().await?;
        self.write(lease, false)
    }
}

fn server() -> Arc<Mutex<Server>> {
    Arc::new(Mutex::new(Server::default()))
}

fn handle(server: &Arc<Mutex<Server>>, who: &str) -> Handle {
    Handle {
        server: server.clone(),
        who: who.into(),
        link: Arc::new(Mutex::new(Link::Up)),
        slow_next: Arc::new(Mutex::new(None)),
    }
}

/// A 6 s Lease (the e2e tests'): deadline 4 s, a look every second.
fn timing() -> Timing {
    Timing::from_lease_seconds(6).expect("valid")
}

fn elector(h: &Handle) -> Elector<Handle> {
    Elector::new(h.clone(), "ladder", &h.who, timing(), Fence::closed())
}

fn writes_by(server: &Arc<Mutex<Server>>, who: &str) -> Vec<Instant> {
    let s = server.lock().expect("lock");
    s.writes
        .iter()
        .filter(|(w, _)| w == who)
        .map(|(_, t)| *t)
        .collect()
}

fn stored_holder(server: &Arc<Mutex<Server>>) -> String {
    let s = server.lock().expect("lock");
    s.lease.as_ref().map(holder).unwrap_or("").to_owned()
}

/// A Lease held by `who`, as another process (with any wall clock) would write it.
fn foreign(server: &Arc<Mutex<Server>>, who: &str, renewed: Timestamp) {
    let mut s = server.lock().expect("lock");
    s.version += 1;
    s.lease = Some(Lease {
        metadata: ObjectMeta {
            name: Some("ladder".into()),
            resource_version: Some(s.version.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(6),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }),
    });
}

/// Runs a future only while not frozen: what SIGSTOP does to a process.
struct Freezer {
    frozen: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Freezer {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            frozen: AtomicBool::new(false),
            waker: Mutex::new(None),
        })
    }
    fn stop(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
    fn cont(&self) {
        self.frozen.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().expect("lock").take() {
            w.wake();
        }
    }
    async fn run<F: Future>(self: Arc<Self>, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if self.frozen.load(Ordering::SeqCst) {
                *self.waker.lock().expect("lock") = Some(cx.waker().clone());
                return Poll::Pending;
            }
            fut.as_mut().poll(cx)
        })
        .await
    }
}

#[test]
fn timing_keeps_a_margin_and_refuses_silly_leases() {
    let t = Timing::from_lease_seconds(15).expect("valid");
    assert_eq!(t.renew_deadline, Duration::from_secs(10));
    assert_eq!(t.retry, Duration::from_millis(2500));
    assert!(t.renew_deadline < t.duration);
    let err = Timing::from_lease_seconds(1).expect_err("too short");
    assert!(err.contains("3 to 3600"), "{err}");
    assert!(Timing::from_lease_seconds(86_400).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_leader_stops_at_its_deadline_when_the_apiserver_hangs() {
    let s = server();
    let a = handle(&s, "a");
    let e = elector(&a);
    let t0 = Instant::now();
    let lease = e.acquire().await;
    assert_eq!(e.fence.valid_until(), Some(t0 + Duration::from_secs(4)));
    assert!(e.fence.allows_writes());
    a.set(Link::Hang);
    let lost = e.hold(lease).await;
    assert_eq!(lost, Lost::Deadline);
    assert_eq!(
        Instant::now(),
        t0 + Duration::from_secs(4),
        "not a moment later"
    );
    assert!(!e.fence.allows_writes());
    assert_eq!(e.fence.valid_until(), None);
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_end_the_term_four_seconds_after_the_last_success() {
    let s = server();
    let a = handle(&s, "a");
    let e = Arc::new(elector(&a));
    let t0 = Instant::now();
    let lease = e.acquire().await;
    let task = tokio::spawn({
        let e = e.clone();
        async move { e.hold(lease).await }
    });
    // Renewals at 1 s and 2 s succeed; from 2.5 s the apiserver refuses.
    sleep_until(t0 + Duration::from_millis(2500)).await;
    a.set(Link::Down);
    let last = *writes_by(&s, "a").last().expect("renewed");
    assert_eq!(last, t0 + Duration::from_secs(2));
    sleep_until(last + Duration::from_millis(3990)).await;
    assert!(e.fence.allows_writes(), "still inside the term");
    sleep_until(last + Duration::from_secs(4)).await;
    assert!(!e.fence.allows_writes(), "the deadline passed");
    assert_eq!(task.await.expect("joined"), Lost::Deadline);
    assert_eq!(
        writes_by(&s, "a").len(),
        3,
        "create + two renewals, nothing more"
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_leader_makes_no_write_after_a_standby_took_over() {
    let s = server();
    let (a, b) = (handle(&s, "a"), handle(&s, "b"));
    let (ea, eb) = (Arc::new(elector(&a)), Arc::new(elector(&b)));
    let t0 = Instant::now();
    let lease = ea.acquire().await;
    let freezer = Freezer::new();
    let (leading_a, _rx_a) = watch::channel(true);
    let old = tokio::spawn(freezer.clone().run({
        let ea = ea.clone();
        async move { ea.keep(lease, leading_a).await }
    }));
    let standby = tokio::spawn({
        let eb = eb.clone();
        async move {
            let lease = eb.acquire().await;
            (Instant::now(), lease)
        }
    });
    sleep_until(t0 + Duration::from_millis(2500)).await;
    freezer.stop(); // SIGSTOP
    let stopped = Instant::now();
    let a_deadline = ea.fence.valid_until().expect("leading when stopped");
    let last_renewal = *writes_by(&s, "a").last().expect("renewed");
    let (took_over, lease_b) = standby.await.expect("joined");
    assert!(
        took_over >= last_renewal + Duration::from_secs(6),
        "the standby waited a whole lease after the last change it could see"
    );
    assert!(
        a_deadline < took_over,
        "the old leader's writes ended ({a_deadline:?}) before the new one's began ({took_over:?})"
    );
    assert_eq!(stored_holder(&s), "b");
    let (leading_b, _rx_b) = watch::channel(true);
    let new = tokio::spawn({
        let eb = eb.clone();
        async move { eb.keep(lease_b, leading_b).await }
    });
    sleep_until(t0 + Duration::from_secs(20)).await;
    freezer.cont(); // SIGCONT
    let resumed = Instant::now();
    // It may look at the Lease as much as it likes; it must never write it.
    sleep_until(resumed + Duration::from_secs(30)).await;
    let late: Vec<_> = writes_by(&s, "a")
        .into_iter()
        .filter(|t| *t >= stopped)
        .collect();
    assert!(late.is_empty(), "the old leader wrote at {late:?}");
    assert!(!ea.fence.allows_writes());
    assert!(eb.fence.allows_writes());
    assert_eq!(stored_holder(&s), "b");
    assert!(
        writes_by(&s, "b").len() > 20,
        "the new leader kept renewing"
    );
    old.abort();
    new.abort();
}

#[tokio::test(start_paused = true)]
async fn a_standby_ignores_renew_time_and_waits_a_lease_on_its_own_clock() {
    for renewed in [Timestamp::UNIX_EPOCH, Timestamp::MAX] {
        let s = server();
        foreign(&s, "x", renewed);
        let b = handle(&s, "b");
        let eb = elector(&b);
        let t0 = Instant::now();
        eb.acquire().await;
        assert_eq!(
            Instant::now() - t0,
            Duration::from_secs(6),
            "renewTime {renewed} neither hastens nor delays the takeover"
        );
        assert_eq!(stored_holder(&s), "b");
        let spec = s.lock().expect("lock").lease.clone().and_then(|l| l.spec);
        assert_eq!(spec.and_then(|s| s.lease_transitions), Some(1));
    }
}

#[tokio::test(start_paused = true)]
async fn a_standby_never_takes_a_lease_that_keeps_changing() {
    let s = server();
    foreign(&s, "x", Timestamp::UNIX_EPOCH);
    // The holder renews every 2 s, with a wall clock stuck in 1970.
    let holder = tokio::spawn({
        let s = s.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                foreign(&s, "x", Timestamp::UNIX_EPOCH);
            }
        }
    });
    let b = handle(&s, "b");
    let eb = elector(&b);
    let outcome = tokio::time::timeout(Duration::from_secs(60), eb.acquire()).await;
    assert!(outcome.is_err(), "took over a live Lease");
    assert!(writes_by(&s, "b").is_empty(), "a standby only reads");
    assert!(!eb.fence.allows_writes());
    holder.abort();
}

#[tokio::test(start_paused = true)]
async fn its_own_and_released_leases_are_taken_at_once() {
    let s = server();
    let a = handle(&s, "a");
    let ea = elector(&a);
    ea.acquire().await;
    // The same identity again (a restarted container in the same pod).
    let again = elector(&a);
    let t0 = Instant::now();
    again.acquire().await;
    assert_eq!(Instant::now(), t0);
    again.release().await.expect("released");
    assert!(!again.fence.allows_writes());
    assert_eq!(stored_holder(&s), "");
    let b = handle(&s, "b");
    let eb = elector(&b);
    eb.acquire().await;
    assert_eq!(Instant::now(), t0, "a released Lease needs no wait");
    assert_eq!(stored_holder(&s), "b");
}

#[tokio::test(start_paused = true)]
async fn of_two_standbys_racing_for_an_expired_lease_one_wins() {
    let s = server();
    foreign(&s, "x", Timestamp::UNIX_EPOCH);
    let (b, c) = (handle(&s, "b"), handle(&s, "c"));
    let (eb, ec) = (elector(&b), elector(&c));
    let limit = Duration::from_secs(10);
    let (rb, rc) = tokio::join!(
        tokio::time::timeout(limit, eb.acquire()),
        tokio::time::timeout(limit, ec.acquire())
    );
    assert_eq!(
        usize::from(rb.is_ok()) + usize::from(rc.is_ok()),
        1,
        "exactly one leads"
    );
    // The winner's term (not renewed here) has run out by now; only it had one.
    assert_eq!(eb.fence.valid_until().is_some(), rb.is_ok());
    assert_eq!(ec.fence.valid_until().is_some(), rc.is_ok());
    assert_eq!(stored_holder(&s), if rb.is_ok() { "b" } else { "c" });
}

#[tokio::test(start_paused = true)]
async fn release_after_the_deadline_writes_nothing() {
    let s = server();
    let a = handle(&s, "a");
    let ea = elector(&a);
    ea.acquire().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ea.release().await.expect("nothing to do");
    assert_eq!(writes_by(&s, "a").len(), 1, "only the create");
    assert_eq!(stored_holder(&s), "a");
}

#[tokio::test(start_paused = true)]
async fn the_gate_refuses_writes_outside_the_term_and_passes_reads() {
    let fence = Fence::closed();
    let sent = Arc::new(Mutex::new(Vec::<Method>::new()));
    let inner = tower::service_fn({
        let sent = sent.clone();
        move |req: Request<()>| {
            sent.lock().expect("lock").push(req.method().clone());
            async { Ok::<_, BoxError>(()) }
        }
    });
    let gate = WriteGateLayer::new(fence.clone());
    let call = |method: Method| {
        let svc = tower::Layer::layer(&gate, inner.clone());
        let req = Request::builder()
            .method(method)
            .uri("/apis/apps/v1/namespaces/n/deployments/d")
            .body(())
            .expect("request");
        svc.oneshot(req).now_or_never().expect("ready at once")
    };
    let err = call(Method::PATCH).expect_err("a standby cannot write");
    assert!(
        err.to_string().contains("does not hold the leader Lease"),
        "{err}"
    );
    assert!(call(Method::GET).is_ok(), "reads always pass");
    fence.extend(Instant::now() + Duration::from_secs(4));
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        assert!(call(m).is_ok(), "inside the term");
    }
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(call(Method::DELETE).is_err(), "at the deadline");
    assert_eq!(
        sent.lock().expect("lock").len(),
        5,
        "refused writes never left"
    );
    let open = WriteGateLayer::new(Fence::open());
    let svc = tower::Layer::layer(&open, inner.clone());
    let req = Request::builder()
        .method(Method::POST)
        .body(())
        .expect("request");
    assert!(svc.oneshot(req).now_or_never().expect("ready").is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_acquisition_answered_after_the_deadline_does_not_lead() {
    let s = server();
    let a = handle(&s, "a");
    let e = elector(&a);
    // The create reaches the server only after 5 s: past a 4 s term.
    *a.slow_next.lock().expect("lock") = Some(Duration::from_secs(5));
    let t0 = Instant::now();
    e.acquire().await;
    assert!(e.fence.allows_writes(), "leads with a term still to run");
    let writes = writes_by(&s, "a");
    assert_eq!(writes.len(), 2, "the late create, then a prompt renewal");
    assert_eq!(
        writes[1],
        t0 + Duration::from_secs(6),
        "renewed on the next look"
    );
    assert_eq!(
        e.fence.valid_until(),
        Some(t0 + Duration::from_secs(10)),
        "the term counts from the prompt renewal"
    );
}
