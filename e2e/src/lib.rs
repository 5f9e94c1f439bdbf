//! Helpers for Ladder's end-to-end tests: a client for the local control
//! plane, one temporary namespace per test, the operator binary scoped to
//! that namespace, and waits on conditions (never fixed sleeps); and
//! [`runner`], which really runs the operator's migration Job pods (kwok runs
//! no containers) against the local services.
//!
//! Every connection goes to the local apiserver (127.0.0.1), to the
//! operator's own metrics endpoint on 127.0.0.1, or to `ladder-app`
//! processes the tests start on 127.0.0.1 ([`load`], and the migration
//! runner, which maps Service names to the local services on loopback); pod
//! and Service IPs are never contacted.

pub mod app;
pub mod chart_sa;
pub mod climb;
pub mod faults;
pub mod load;
pub mod runner;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use ladder_crds::scalingphase::ScalingPhase;

/// Field manager of the tests' own writes.
pub const TEST_MANAGER: &str = "ladder-e2e";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A local service's setting: the environment variable, else the line of
/// `.ladder/services.env` (written by `hack/services.sh up`).
pub fn service_env(name: &str) -> Option<String> {
    std::env::var(name).ok().or_else(|| {
        let text = std::fs::read_to_string(repo_root().join(".ladder/services.env")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            // Values with shell metacharacters (`&`) are single-quoted in the file.
            .map(|v| v.trim_matches('\'').to_owned())
    })
}

/// Selects rustls' ring provider for the process (kube and reqwest both
/// use rustls; with more than one provider compiled in, none is chosen).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for the cluster of `KUBECONFIG` (the local control plane).
pub async fn client() -> anyhow::Result<Client> {
    install_crypto_provider();
    if std::env::var_os("KUBECONFIG").is_none() {
        let local = repo_root().join(".ladder/cluster/kubeconfig");
        bail!(
            "KUBECONFIG is not set; start the local control plane (make cluster-up) and run with KUBECONFIG={}",
            local.display()
        );
    }
    Client::try_default().await.context("client for KUBECONFIG")
}

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Applies `crds/manifests/ladder.dev_crds.yaml` (server-side) and waits until every
/// CRD in it is Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo_root().join("crds/manifests/ladder.dev_crds.yaml"))?;
    apply_crds(client, &text).await.map(|_| ())
}

/// Applies every CustomResourceDefinition of a YAML stream (server-side)
/// and waits until each is Established. Returns their names.
pub async fn apply_crds(client: &Client, yaml: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(TEST_MANAGER).force();
    let mut names = Vec::new();
    for doc in yaml
        .split("\n---\n")
        .filter(|d| d.contains("kind: CustomResourceDefinition"))
    {
        let crd: CustomResourceDefinition = serde_yaml::from_str(doc).context("parse CRD")?;
        let name = crd.name_any();
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("apply CRD {name}"))?;
        names.push(name);
    }
    for name in &names {
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    let ok = crd
                        .status
                        .and_then(|s| s.conditions)
                        .into_iter()
                        .flatten()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(ok.then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(names)
}

/// Deletes CustomResourceDefinitions (and so every object of their kinds)
/// and waits until they are gone.
pub async fn delete_crds(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("delete CRD {name}")),
        }
    }
    for name in names {
        wait_for(
            &format!("CRD {name} deleted"),
            Duration::from_secs(60),
            || {
                let api = api.clone();
                let name = name.clone();
                async move { Ok(api.get_opt(&name).await?.is_none().then_some(())) }
            },
        )
        .await?;
    }
    Ok(())
}

/// A namespace created for one test, labelled to enforce the `restricted`
/// Pod Security profile (so every generated pod is checked by the apiserver).
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates `<prefix>-<random>`.
    pub async fn new(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let name = format!("{prefix}-{suffix:06}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "ladder.dev/e2e": "true",
            }}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace. Its ScalingPhases go first, while the test's
    /// operator still runs to clear their finalizers; any left after a
    /// minute (the operator is gone) lose their finalizers so the namespace
    /// never hangs in Terminating.
    pub async fn delete(self) {
        let sps = self.sps();
        let _ = sps
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await;
        let gone = wait_for("ScalingPhases deleted", Duration::from_secs(60), || {
            let sps = sps.clone();
            async move {
                Ok(sps
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            }
        })
        .await;
        if gone.is_err() {
            let strip = serde_json::json!({"metadata": {"finalizers": null}});
            for sp in sps
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let _ = sps
                    .patch(
                        &sp.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&strip),
                    )
                    .await;
            }
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await;
    }

    /// Typed ScalingPhases of this namespace.
    pub fn sps(&self) -> Api<ScalingPhase> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Untyped ScalingPhases (to send values the Rust types cannot hold).
    pub fn raw_sps(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.name,
            &ApiResource::erase::<ScalingPhase>(&()),
        )
    }

    /// Any namespaced typed API.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates a ScalingPhase from a YAML manifest (name and all).
    pub async fn apply_sp(&self, yaml: &str) -> anyhow::Result<ScalingPhase> {
        let sp: ScalingPhase = serde_yaml::from_str(yaml).context("manifest parses")?;
        let pp = PatchParams::apply(TEST_MANAGER).force();
        Ok(self
            .sps()
            .patch(&sp.name_any(), &pp, &Patch::Apply(&sp))
            .await?)
    }

    /// Waits until the ScalingPhase reports `Ready=True` for its current
    /// generation with `activePhase == phase`.
    pub async fn wait_ready(
        &self,
        name: &str,
        phase: i32,
        timeout: Duration,
    ) -> anyhow::Result<ScalingPhase> {
        let api = self.sps();
        wait_for(
            &format!("ScalingPhase {name} Ready in phase {phase}"),
            timeout,
            || {
                let api = api.clone();
                let name = name.to_owned();
                async move {
                    let sp = api.get(&name).await?;
                    let Some(status) = sp.status.as_ref() else {
                        return Ok(None);
                    };
                    let ready = status.conditions.iter().any(|c| {
                        c.type_ == "Ready"
                            && c.status == "True"
                            && c.observed_generation == sp.metadata.generation
                    });
                    Ok((ready && status.active_phase == Some(phase)).then_some(sp))
                }
            },
        )
        .await
    }

    /// Waits until every pod of the namespace is Running and Ready, or
    /// Succeeded (Jobs), and returns how many there are.
    pub async fn wait_pods_running(&self, timeout: Duration) -> anyhow::Result<usize> {
        let api: Api<Pod> = self.api();
        wait_for("all pods Running", timeout, || {
            let api = api.clone();
            async move {
                let pods = api.list(&ListParams::default()).await?;
                let ok = !pods.items.is_empty()
                    && pods.items.iter().all(|p| {
                        let s = p.status.clone().unwrap_or_default();
                        let ready = s
                            .conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        matches!(s.phase.as_deref(), Some("Succeeded"))
                            || (s.phase.as_deref() == Some("Running") && ready)
                    });
                Ok(ok.then_some(pods.items.len()))
            }
        })
        .await
    }
}

/// The operator binary: `LADDER_OPERATOR_BIN`, or built once with cargo.
pub fn operator_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(&BIN, "LADDER_OPERATOR_BIN", "ladder-operator")
}

/// The `ladder-app` binary (the app image's entrypoint, which the migration
/// runner runs and the load tests start): `LADDER_APP_BIN`, or built once
/// with cargo.
pub fn app_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(&BIN, "LADDER_APP_BIN", "ladder-app")
}

/// The `kubectl-ladder` plugin binary: `LADDER_PLUGIN_BIN`, or built once with cargo.
pub fn plugin_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(&BIN, "LADDER_PLUGIN_BIN", "kubectl-ladder")
}

/// The debug binary of workspace package `package` (named like it): the
/// path in `$override_var` when set, else `cargo build` once per process.
fn built_once(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    override_var: &str,
    package: &str,
) -> anyhow::Result<PathBuf> {
    cell.get_or_init(|| {
        if let Some(bin) = std::env::var_os(override_var) {
            return Ok(PathBuf::from(bin));
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", package, "--bin", package])
            .current_dir(repo_root())
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("cargo build -p {package} failed"));
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        Ok(target.join("debug").join(package))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// An operator process watching one namespace, with its Lease there too.
#[derive(Debug)]
pub struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// Starts `ladder-operator run` for `namespace`, logging to a temp file,
    /// and waits until it leads and serves `/readyz`.
    pub async fn start(namespace: &str) -> anyhow::Result<Self> {
        Self::start_bin(namespace, &operator_bin()?).await
    }

    /// Like [`Operator::start`], with a given binary.
    pub async fn start_bin(namespace: &str, bin: &Path) -> anyhow::Result<Self> {
        Self::start_with(namespace, bin, &[], &[]).await
    }

    /// Like [`Operator::start_bin`], with extra arguments to `run` and extra
    /// environment variables.
    pub async fn start_with(
        namespace: &str,
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let op = Self::spawn_with(namespace, bin, args, env)?;
        op.wait_log("controller starting", Duration::from_secs(60))
            .await?;
        Ok(op)
    }

    /// Starts an operator without waiting for it to lead (for leader-election tests).
    pub fn spawn_candidate(namespace: &str) -> anyhow::Result<Self> {
        Self::spawn_bin(namespace, &operator_bin()?)
    }

    /// Like [`Operator::spawn_candidate`], with extra arguments to `run`
    /// and extra environment variables (e.g. `--identity`, a `KUBECONFIG`).
    pub fn spawn_candidate_with(
        namespace: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn_with(namespace, &operator_bin()?, args, env)
    }

    fn spawn_bin(namespace: &str, bin: &Path) -> anyhow::Result<Self> {
        Self::spawn_with(namespace, bin, &[], &[])
    }

    fn spawn_with(
        namespace: &str,
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "ladder-operator-{namespace}-{}.log",
            rand::random::<u32>()
        ));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args([
                "run",
                "--http-addr",
                "127.0.0.1:0",
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
                "--lease-seconds",
                "6",
            ])
            .args(args)
            .env("RUST_LOG", "info,kube=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("start the operator")?;
        Ok(Self { child, log })
    }

    /// Waits until its log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let log = self.log.clone();
        wait_for(&format!("operator log line {needle:?}"), timeout, || {
            let log = log.clone();
            let needle = needle.to_owned();
            async move {
                Ok(std::fs::read_to_string(&log)?
                    .contains(&needle)
                    .then_some(()))
            }
        })
        .await
        .with_context(|| format!("operator log:\n{}", self.log_text()))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of its log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The metrics address it bound (parsed from its log).
    pub fn http_addr(&self) -> Option<String> {
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains("serving /metrics"))?;
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        v["addr"].as_str().map(str::to_owned)
    }

    /// Reads `/metrics` over loopback.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let addr = self.http_addr().context("no metrics address in the log")?;
        // A tiny loopback HTTP/1.0 GET, blocking: the answer is small and local.
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(&addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream
                .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            stream.read_to_string(&mut out)?;
            Ok(out)
        })
        .await?
    }

    /// Sum of a metric family's samples (e.g. `ladder_objects_applied_total`).
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...) with `kill`.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {}", self.child.id());
        Ok(())
    }

    /// Whether the process is still running (has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks it to stop (SIGTERM via `kill`) and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
