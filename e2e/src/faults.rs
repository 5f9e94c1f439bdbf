//! Control-plane faults for the e2e tests, and the apiserver's own record of
//! who wrote what.
//!
//! - [`Outage`] stops the local kube-apiserver or etcd alone
//!   (`hack/cluster.sh stop`), and starts it again (`hack/cluster.sh start`,
//!   which waits until it is healthy) when asked or when dropped, so a failing
//!   test never leaves the cluster down. Tests that take the control plane
//!   away hold [`CONTROL_PLANE`] so that two of them never overlap.
//! - [`Partition`] puts a TCP proxy on loopback between one client (an
//!   operator, through the kubeconfig [`Partition::kubeconfig`] writes) and
//!   the apiserver, and cuts it: a network partition between that client and
//!   the control plane, while everyone else still reaches it.
//! - [`audit_writes`] reads the apiserver's audit log (hack/cluster.sh writes
//!   every create/update/patch/delete, metadata only, beside the kubeconfig),
//!   so a test can count the writes of one process by its User-Agent: each
//!   operator names itself `ladder-operator/<version> (<identity>)`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use k8s_openapi::jiff::Timestamp;

use crate::repo_root;

/// Held by every test that stops a control-plane component.
pub static CONTROL_PLANE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A control-plane component a test may stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// kube-apiserver: every client's connection drops, watches end.
    Apiserver,
    /// etcd: the apiserver stays up but can neither read nor write.
    Etcd,
}

impl Component {
    fn name(self) -> &'static str {
        match self {
            Self::Apiserver => "kube-apiserver",
            Self::Etcd => "etcd",
        }
    }
}

fn cluster(action: &str, c: Component) -> anyhow::Result<()> {
    let out = Command::new("bash")
        .arg(repo_root().join("hack/cluster.sh"))
        .args([action, c.name()])
        .output()
        .with_context(|| format!("hack/cluster.sh {action} {}", c.name()))?;
    if !out.status.success() {
        bail!(
            "hack/cluster.sh {action} {} failed: {}",
            c.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A component stopped until [`Outage::end`] (or drop) starts it again.
#[derive(Debug)]
pub struct Outage {
    component: Component,
    ended: bool,
}

impl Outage {
    /// Stops `component` (SIGTERM, SIGKILL after 10 s).
    pub async fn begin(component: Component) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || cluster("stop", component)).await??;
        Ok(Self {
            component,
            ended: false,
        })
    }

    /// Starts it again and waits until it is healthy.
    pub async fn end(mut self) -> anyhow::Result<()> {
        self.ended = true;
        let c = self.component;
        tokio::task::spawn_blocking(move || cluster("start", c)).await?
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.ended {
            let _ = cluster("start", self.component);
        }
    }
}

/// A network partition between one client and the apiserver, on loopback:
/// a TCP proxy the client's kubeconfig points at.
///
/// [`Partition::cut`]: nothing passes and nothing is refused; the open
/// connections hang and new ones are accepted but go nowhere, as when
/// packets are dropped. [`Partition::heal`]: every connection that lived
/// through the cut is closed without delivering what it buffered (as the
/// TCP and HTTP timeouts of a long partition end them), so no request sent
/// before or during the cut reaches the apiserver late; new connections
/// pass again. Dropped, the proxy stops.
#[derive(Debug)]
pub struct Partition {
    addr: std::net::SocketAddr,
    upstream: String,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// A proxy to the apiserver of `KUBECONFIG`, passing everything.
    pub async fn start() -> anyhow::Result<Self> {
        let upstream = apiserver_address(&kubeconfig_text()?)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, watch) = tokio::sync::watch::channel(false);
        let target = upstream.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pass(client, target.clone(), watch.clone()));
            }
        });
        Ok(Self {
            addr,
            upstream,
            cut,
            task,
        })
    }

    /// The cluster's kubeconfig with its server pointed at the proxy,
    /// written to `path` (the apiserver's certificate names 127.0.0.1, so
    /// TLS passes through unchanged).
    pub fn kubeconfig(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = kubeconfig_text()?;
        let proxied = text.replace(
            &format!("https://{}", self.upstream),
            &format!("https://{}", self.addr),
        );
        anyhow::ensure!(
            proxied != text,
            "no server https://{} in KUBECONFIG",
            self.upstream
        );
        std::fs::write(path, proxied)?;
        Ok(())
    }

    /// Cuts the client off.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Ends the partition.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
        // Ends the connections' tasks too: their `changed()` fails.
        self.heal();
    }
}

/// One proxied connection (see [`Partition`]).
async fn pass(
    mut client: tokio::net::TcpStream,
    upstream: String,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    if !*cut.borrow_and_update() {
        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                cut_off = cut.wait_for(|c| *c) => {
                    if cut_off.is_err() {
                        return;
                    }
                }
            }
        } else {
            return;
        }
    }
    // Cut: hold the connection, forward nothing, and close it at the heal.
    let _ = cut.wait_for(|c| !*c).await;
}

fn kubeconfig_text() -> anyhow::Result<String> {
    let path = std::env::var_os("KUBECONFIG").context("KUBECONFIG is not set")?;
    Ok(std::fs::read_to_string(path)?)
}

/// `host:port` of the first `server: https://...` of a kubeconfig.
fn apiserver_address(kubeconfig: &str) -> anyhow::Result<String> {
    kubeconfig
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server:"))
        .filter_map(|v| v.trim().trim_matches('"').strip_prefix("https://"))
        .map(|hp| hp.trim_end_matches('/').to_owned())
        .next()
        .context("no https server in KUBECONFIG")
}

/// One write the apiserver recorded.
#[derive(Clone, Debug)]
pub struct AuditWrite {
    /// The client's User-Agent.
    pub user_agent: String,
    /// create, update, patch, delete or deletecollection.
    pub verb: String,
    /// `resource/namespace/name` (parts left empty when absent).
    pub object: String,
    /// The HTTP status the apiserver answered.
    pub code: u16,
    /// When the apiserver received the request.
    pub received: Timestamp,
}

/// The folder of the audit log: beside the kubeconfig (`.ladder/cluster/`).
fn audit_dir() -> anyhow::Result<PathBuf> {
    let kubeconfig = std::env::var_os("KUBECONFIG").context("KUBECONFIG is not set")?;
    Ok(PathBuf::from(kubeconfig)
        .parent()
        .context("KUBECONFIG has no folder")?
        .to_owned())
}

/// Every write in the audit log (and its rotated backup), oldest first.
pub fn audit_writes() -> anyhow::Result<Vec<AuditWrite>> {
    let dir = audit_dir()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit") && n.ends_with(".log"))
        })
        .collect();
    if !files.iter().any(|f| f.ends_with("audit.log")) {
        bail!(
            "no audit.log in {}: the cluster predates the audit log; restart it (hack/cluster.sh down && hack/cluster.sh up)",
            dir.display()
        );
    }
    files.sort();
    let mut writes = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // The apiserver may be writing the last line right now.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or("");
            let Ok(received) = s("/requestReceivedTimestamp").parse::<Timestamp>() else {
                continue;
            };
            writes.push(AuditWrite {
                user_agent: s("/userAgent").to_owned(),
                verb: s("/verb").to_owned(),
                object: format!(
                    "{}/{}/{}",
                    s("/objectRef/resource"),
                    s("/objectRef/namespace"),
                    s("/objectRef/name")
                ),
                code: v
                    .pointer("/responseStatus/code")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(0),
                received,
            });
        }
    }
    writes.sort_by_key(|w| w.received);
    Ok(writes)
}

/// The writes of the operator whose identity is `identity`, received at or after `since`.
pub fn writes_by(identity: &str, since: Timestamp) -> anyhow::Result<Vec<AuditWrite>> {
    let tag = format!("({identity})");
    Ok(audit_writes()?
        .into_iter()
        .filter(|w| w.user_agent.starts_with("ladder-operator/") && w.user_agent.ends_with(&tag))
        .filter(|w| w.received >= since)
        .collect())
}
