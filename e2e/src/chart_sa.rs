//! The operator run as the Helm chart's ServiceAccount, with exactly the
//! RBAC the chart grants, instead of the cluster admin.
//!
//! [`ChartIdentity::install`] renders charts/ladder-operator with `helm
//! template` in namespaced mode (the e2e operator watches one namespace, with
//! its Lease there too), applies only its ServiceAccount, Roles, ClusterRoles
//! and bindings, and writes a kubeconfig holding the ServiceAccount's token
//! (same server and CA as the admin one). The Deployment is not applied:
//! kwok runs no containers, so the operator runs as a local process with that
//! kubeconfig ([`ChartIdentity::start_operator`]). Cluster-scoped objects are
//! removed on drop; the namespaced ones go with the test's namespace.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use std::io::Write as _;

use crate::{Operator, operator_bin, repo_root};

/// The helm binary: `LADDER_HELM`, or hack/build-helm.sh's (cached).
pub fn helm() -> anyhow::Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(h) = std::env::var_os("LADDER_HELM") {
            return Ok(PathBuf::from(h));
        }
        let out = Command::new("bash")
            .arg(repo_root().join("hack/build-helm.sh"))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err("hack/build-helm.sh failed".into());
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("kubectl")?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// The chart's ServiceAccount and RBAC in one namespace, and a kubeconfig for it.
#[derive(Debug)]
pub struct ChartIdentity {
    /// The namespace (release namespace and watched namespace at once).
    pub namespace: String,
    /// The ServiceAccount's name (the chart's full name).
    pub service_account: String,
    /// The Lease the chart's Role lets it write (the chart's full name).
    pub lease_name: String,
    /// A kubeconfig with the ServiceAccount's token.
    pub kubeconfig: PathBuf,
    cluster_scoped: Vec<String>,
}

impl ChartIdentity {
    /// Installs the chart's RBAC for an operator watching `namespace`, with
    /// extra `--set` values.
    pub async fn install(namespace: &str, sets: &[&str]) -> anyhow::Result<Self> {
        let namespace = namespace.to_owned();
        let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || Self::install_blocking(&namespace, &sets)).await?
    }

    fn install_blocking(namespace: &str, sets: &[String]) -> anyhow::Result<Self> {
        // `helm template` assumes an old Kubernetes unless told the cluster's.
        let version: serde_json::Value =
            serde_json::from_str(&kubectl(&["version", "-o", "json"], None)?)?;
        let kube_version = version["serverVersion"]["gitVersion"]
            .as_str()
            .context("the apiserver's version")?
            .to_owned();
        let mut cmd = Command::new(helm()?);
        cmd.current_dir(repo_root())
            .args(["template", namespace, "charts/ladder-operator"])
            .args(["--kube-version", &kube_version])
            .args(["--namespace", namespace])
            .args(["--set", &format!("watchNamespaces={{{namespace}}}")])
            .args(["--set", "crds.enabled=false"]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().context("helm template")?;
        if !out.status.success() {
            bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut keep = Vec::new();
        let mut cluster_scoped = Vec::new();
        let mut service_account = None;
        for doc in text.split("\n---") {
            let v: serde_json::Value = serde_yaml::from_str(doc).context("chart YAML")?;
            let kind = v["kind"].as_str().unwrap_or("");
            if !RBAC_KINDS.contains(&kind) {
                continue;
            }
            let name = v["metadata"]["name"].as_str().unwrap_or("").to_owned();
            match kind {
                "ClusterRole" | "ClusterRoleBinding" => {
                    cluster_scoped.push(format!("{}/{name}", kind.to_lowercase()));
                }
                "ServiceAccount" => service_account = Some(name),
                _ => {}
            }
            keep.push(doc.to_owned());
        }
        let service_account = service_account.context("the chart renders no ServiceAccount")?;
        let identity = Self {
            namespace: namespace.to_owned(),
            lease_name: service_account.clone(),
            service_account,
            kubeconfig: std::env::temp_dir().join(format!("ladder-sa-{namespace}.kubeconfig")),
            cluster_scoped,
        };
        kubectl(
            &["apply", "--server-side", "-f", "-"],
            Some(&keep.join("\n---\n")),
        )?;
        identity.write_kubeconfig()?;
        Ok(identity)
    }

    fn write_kubeconfig(&self) -> anyhow::Result<()> {
        let token = kubectl(
            &[
                "create",
                "token",
                &self.service_account,
                "-n",
                &self.namespace,
                "--duration",
                "2h",
            ],
            None,
        )?;
        let view = kubectl(&["config", "view", "--raw", "--minify", "-o", "json"], None)?;
        let view: serde_json::Value = serde_json::from_str(&view)?;
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": view["clusters"][0]["cluster"]}],
            "users": [{"name": "sa", "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa", "namespace": self.namespace}}],
            "current-context": "sa",
        });
        std::fs::write(&self.kubeconfig, serde_json::to_vec(&config)?)?;
        Ok(())
    }

    /// `system:serviceaccount:<namespace>:<name>`, for `kubectl auth can-i --as`.
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// `kubectl auth can-i VERB RESOURCE` as this ServiceAccount, in
    /// namespace `ns` (all namespaces when `None`).
    pub fn can_i(&self, verb: &str, resource: &str, ns: Option<&str>) -> anyhow::Result<bool> {
        let user = format!("--as={}", self.user());
        let mut args = vec!["auth", "can-i", verb, resource, user.as_str()];
        match ns {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        // can-i exits 1 for "no": read the answer, not the status.
        let out = Command::new("kubectl").args(&args).output()?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => Ok(true),
            "no" => Ok(false),
            other => bail!(
                "kubectl {args:?}: {other} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// `kubectl auth can-i --list -n NS` as this ServiceAccount.
    pub fn can_i_list(&self, ns: &str) -> anyhow::Result<String> {
        kubectl(
            &[
                "auth",
                "can-i",
                "--list",
                "-n",
                ns,
                &format!("--as={}", self.user()),
            ],
            None,
        )
    }

    /// Starts the operator for the namespace as this ServiceAccount (its
    /// Lease named as the chart's Role allows) and waits until it leads.
    pub async fn start_operator(&self, extra_args: &[&str]) -> anyhow::Result<Operator> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut args = vec!["--lease-name", &self.lease_name];
        args.extend_from_slice(extra_args);
        Operator::start_with(
            &self.namespace,
            &operator_bin()?,
            &args,
            &[("KUBECONFIG", kubeconfig.as_str())],
        )
        .await
    }
}

impl Drop for ChartIdentity {
    fn drop(&mut self) {
        for obj in &self.cluster_scoped {
            let _ = kubectl(&["delete", obj, "--ignore-not-found", "--wait=false"], None);
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}
