//! Load for the promoter's end-to-end tests and benchmark.
//!
//! - [`App`]: the real `ladder-app` binary on loopback (phase 0, SQLite in a
//!   temp dir), writing real LoadReports to the local control plane as if it
//!   ran in one of the kwok Pods of a ScalingPhase's app: kwok runs no
//!   containers, so the test plays the kubelet and starts the process with
//!   that Pod's name. The ownership check then passes for the same reason it
//!   passes in a cluster: the Pod named by `LADDER_POD_NAME` exists.
//! - [`LoadGen`]: a bounded write load (N `POST /api/v1/links` per second for
//!   at most M seconds), each request over loopback.
//! - [`report`] / [`put_report`]: LoadReports written by hand, owned by a
//!   kwok Pod, for loads this box cannot make (1k, 10k, 100k TPS) and for
//!   reports that lie or go stale.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use ladder_crds::load_report::{LoadReport, LoadReportSpec};

use crate::wait_for;

/// Field manager of LoadReports the tests write by hand.
pub const INJECT_MANAGER: &str = "ladder-e2e-reporter";

pub use crate::app_bin;

/// A blocking HTTP/1.0 request over loopback: `(status, body)`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes())?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .context("no HTTP status line")?;
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    Ok((status, body.to_owned()))
}

/// How the app reports: its load window and report interval.
#[derive(Clone, Copy, Debug)]
pub struct Reporting {
    /// `LADDER_LOAD_WINDOW_SECS` (the app's default is 60).
    pub window_secs: u64,
    /// `LADDER_REPORT_INTERVAL_SECS` (the app's default is 15).
    pub interval_secs: u64,
}

/// A `ladder-app serve` process on loopback that reports its load as Pod
/// `pod` of ScalingPhase `sp`.
#[derive(Debug)]
pub struct App {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl App {
    /// Starts it in `dir` (its SQLite file lives there, so a restarted
    /// instance keeps its links) and waits for `/readyz`.
    pub async fn start(
        dir: &std::path::Path,
        namespace: &str,
        sp: &str,
        pod: &str,
        reporting: Reporting,
    ) -> anyhow::Result<Self> {
        let kubeconfig = std::env::var("KUBECONFIG").context("KUBECONFIG is not set")?;
        std::fs::create_dir_all(dir)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = dir.join(format!("app-{pod}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(app_bin()?)
            .arg("serve")
            .current_dir(dir)
            // Only what a kubelet would pass for phase 0: no ambient LADDER_* settings.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("LADDER_LISTEN", addr.to_string())
            .env("LADDER_STORE", "sqlite:ladder.db")
            .env("LADDER_REPORT_LOAD", "true")
            .env("LADDER_KUBECONFIG", &kubeconfig)
            .env("LADDER_SCALING_PHASE", sp)
            .env("LADDER_NAMESPACE", namespace)
            .env("LADDER_POD_NAME", pod)
            .env("LADDER_LOAD_WINDOW_SECS", reporting.window_secs.to_string())
            .env(
                "LADDER_REPORT_INTERVAL_SECS",
                reporting.interval_secs.to_string(),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("start ladder-app")?;
        let app = Self { child, addr, log };
        wait_for("ladder-app /readyz", Duration::from_secs(60), || {
            let addr = app.addr;
            async move {
                let r = tokio::task::spawn_blocking(move || http(addr, "GET", "/readyz", None))
                    .await??;
                Ok((r.0 == 200).then_some(()))
            }
        })
        .await
        .with_context(|| format!("ladder-app log:\n{}", app.log_text()))?;
        Ok(app)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGKILL: the next instance starts from the same files).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bounded write load on one app: `per_sec` link creations per second for
/// at most `secs` seconds, or until stopped.
#[derive(Debug)]
pub struct LoadGen {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoadGen {
    /// Starts it on its own thread (blocking loopback requests, paced to the
    /// schedule; a slow answer delays the next one, never adds a burst).
    pub fn start(addr: SocketAddr, per_sec: u32, secs: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let total = u64::from(per_sec) * secs;
            let gap = Duration::from_secs(1) / per_sec.max(1);
            for i in 0..total {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let due = start + gap * u32::try_from(i).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let body = format!("{{\"url\":\"https://example.com/load/{i}\"}}");
                match http(addr, "POST", "/api/v1/links", Some(&body)) {
                    Ok((201, _)) => o.fetch_add(1, Ordering::Relaxed),
                    _ => f.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        Self {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Links created so far and requests that failed.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops it and returns the final counts.
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.counts()
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The Running, not-terminating app Pods of ScalingPhase `sp` (what the
/// promoter believes reports from), by name.
pub async fn app_pods(client: &Client, ns: &str, sp: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "ladder.dev/scalingphase={sp},app.kubernetes.io/component=app"
    ));
    let mut pods: Vec<Pod> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect();
    pods.sort_by_key(ResourceExt::name_any);
    Ok(pods)
}

/// Waits for at least one Running app Pod of `sp` and returns them.
pub async fn wait_app_pods(
    client: &Client,
    ns: &str,
    sp: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Pod>> {
    wait_for(&format!("app pods of {sp}"), timeout, || async move {
        let pods = app_pods(client, ns, sp).await?;
        Ok((!pods.is_empty()).then_some(pods))
    })
    .await
}

/// A LoadReport as an app instance writes it, owned by `owner` (a Pod) when
/// given, claiming `tps` write transactions per second over `window` seconds,
/// reported `age` seconds ago.
pub fn report(
    name: &str,
    sp: &str,
    owner: Option<&Pod>,
    tps: f64,
    window: i32,
    age: i64,
) -> LoadReport {
    let at =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(age);
    let mut r = LoadReport::new(
        name,
        LoadReportSpec {
            scaling_phase: sp.to_owned(),
            phase: 0,
            tier: "sqlite".into(),
            instance: name.to_owned(),
            window_seconds: window,
            requests_per_second: tps * 2.0,
            transactions_per_second: tps,
            p99_latency_ms: 5.0,
            error_rate: 0.0,
            reported_at: at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        },
    );
    r.metadata.labels = Some(
        [
            ("app.kubernetes.io/name".to_owned(), "ladder-app".to_owned()),
            ("ladder.dev/scalingphase".to_owned(), sp.to_owned()),
        ]
        .into(),
    );
    r.metadata.owner_references = owner.map(|p| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: p.name_any(),
            uid: p.uid().unwrap_or_default(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        }]
    });
    r
}

/// Writes a report (server-side apply, as the app does).
pub async fn put_report(api: &Api<LoadReport>, r: &LoadReport) -> anyhow::Result<()> {
    let pp = PatchParams::apply(INJECT_MANAGER).force();
    api.patch(&r.name_any(), &pp, &Patch::Apply(r))
        .await
        .with_context(|| format!("write LoadReport {}", r.name_any()))?;
    Ok(())
}

/// Fails unless `cond` holds; for loops that watch an invariant.
pub fn check(cond: bool, what: impl FnOnce() -> String) -> anyhow::Result<()> {
    if !cond {
        bail!("{}", what());
    }
    Ok(())
}
