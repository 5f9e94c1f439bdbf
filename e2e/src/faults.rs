//! Control-plane faults for the e2e tests, and the apiserver's own record of
//! who wrote what.
//!
//! - [`Outage`] stops the local kube-apiserver or etcd alone
//!   (`hack/cluster.sh stop`), and starts it again (`hack/cluster.sh start`,
//!   which waits until it is healthy) when asked or when dropped, so a failing
//!   test never leaves the cluster down. Tests that take the control plane
//!   away hold [`CONTROL_PLANE`] so that two of them never overlap.
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
