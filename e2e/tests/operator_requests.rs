//! API requests per phase-0 ScalingPhase, counted by the apiserver.
//!
//! The operator runs as its own user (the admin kubeconfig impersonating
//! `ladder-e2e-op-<namespace>`, bound to cluster-admin for the test), and a
//! FlowSchema puts that user's requests in a flow of their own: the
//! apiserver's `apiserver_flowcontrol_dispatched_requests_total` for that
//! flow counts exactly what the operator sent, whatever its own counters
//! say. Leader election is off (its renewals are a per-process cost, not a
//! per-ScalingPhase one).
//!
//! From creating N ScalingPhases at phase 0 until all are Ready and the
//! operator has gone quiet, the requests per ScalingPhase must stay within
//! the budget of issue 12 (8). The figures are printed beside the
//! operator's own `ladder_api_requests_total` by method and the apiserver's
//! `apiserver_request_total` over every client (the controller manager,
//! the scheduler and kwok react to what the operator creates, too).
//! Run alone: `cargo test -p ladder-e2e --test operator_requests -- --nocapture`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::ApiResource;
use ladder_e2e::{Operator, TEST_MANAGER, TestNamespace, client, install_crds};

/// The goal of issue 12: API requests per phase-0 ScalingPhase, creation to Ready.
const BUDGET: f64 = 8.0;
const TIMEOUT: Duration = Duration::from_secs(300);

/// The apiserver's `/metrics`, as text.
async fn apiserver_metrics(client: &Client) -> anyhow::Result<String> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

/// Sum of the samples of `family` whose labels contain every `(key, value)`.
fn sum(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `apiserver_request_total` by verb and resource.
fn by_verb_resource(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |k: &str| {
            l.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let sub = label("subresource");
        let key = format!(
            "{} {}{}",
            label("verb"),
            label("resource"),
            if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            }
        );
        *out.entry(key).or_insert(0.0) += v;
    }
    out
}

/// The admin kubeconfig, impersonating `user`.
fn impersonating_kubeconfig(user: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var("KUBECONFIG")?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
    for u in config["users"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow::anyhow!("kubeconfig has no users"))?
    {
        u["user"]["as"] = serde_yaml::Value::String(user.to_owned());
    }
    let out = std::env::temp_dir().join(format!("{user}.kubeconfig"));
    std::fs::write(&out, serde_yaml::to_string(&config)?)?;
    Ok(out)
}

/// The cluster-scoped objects of the test: a binding to cluster-admin and a
/// FlowSchema of the operator's own, removed at the end.
struct Identity {
    user: String,
    client: Client,
}

impl Identity {
    async fn create(client: &Client, user: &str) -> anyhow::Result<Self> {
        let pp = PatchParams::apply(TEST_MANAGER).force();
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))?;
        Api::<ClusterRoleBinding>::all(client.clone())
            .patch(user, &pp, &Patch::Apply(&binding))
            .await?;
        let flow: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": user},
            "spec": {
                // Below every default schema the user could fall in
                // (global-default is 9900), above none it must not.
                "matchingPrecedence": 1000,
                // Not queued: the test measures requests, not fairness.
                "priorityLevelConfiguration": {"name": "exempt"},
                "rules": [{
                    "subjects": [{"kind": "User", "user": {"name": user}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": true}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }],
            },
        }))?;
        Self::flow_schemas(client)
            .patch(user, &pp, &Patch::Apply(&flow))
            .await?;
        Ok(Self {
            user: user.to_owned(),
            client: client.clone(),
        })
    }

    fn flow_schemas(client: &Client) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema");
        Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
    }

    /// Requests the apiserver dispatched for this user so far.
    async fn dispatched(&self) -> anyhow::Result<f64> {
        let text = apiserver_metrics(&self.client).await?;
        Ok(sum(
            &text,
            "apiserver_flowcontrol_dispatched_requests_total",
            &[("flow_schema", &self.user)],
        ))
    }

    async fn remove(self) {
        let dp = DeleteParams::default();
        let _ = Self::flow_schemas(&self.client)
            .delete(&self.user, &dp)
            .await;
        let _ = Api::<ClusterRoleBinding>::all(self.client.clone())
            .delete(&self.user, &dp)
            .await;
    }
}

/// Waits until the operator's request count stays the same for three
/// seconds in a row, and returns it.
async fn quiet(identity: &Identity) -> anyhow::Result<f64> {
    let start = tokio::time::Instant::now();
    let mut last = identity.dispatched().await?;
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = identity.dispatched().await?;
        if now != last {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= Duration::from_secs(3) {
            return Ok(now);
        }
        anyhow::ensure!(
            start.elapsed() < TIMEOUT,
            "the operator did not go quiet in {TIMEOUT:?}"
        );
    }
}

#[tokio::test]
async fn a_phase_0_scaling_phase_costs_at_most_the_budget_in_requests() -> anyhow::Result<()> {
    let n: usize = std::env::var("LADDER_E2E_REQUEST_SPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-requests").await?;
    let user = format!("ladder-e2e-op-{}", ns.name);
    let identity = Identity::create(&client, &user).await?;
    let kubeconfig = impersonating_kubeconfig(&user)?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let op = Operator::start_with(
        &ns.name,
        &ladder_e2e::operator_bin()?,
        &["--leader-election", "false"],
        &[("KUBECONFIG", kubeconfig.as_str())],
    )
    .await?;
    let result = measure(&client, &ns, &identity, &op, n).await;
    drop(op);
    ns.delete().await;
    identity.remove().await;
    let (per_sp, report) = result?;
    eprintln!("{report}");
    assert!(
        per_sp <= BUDGET,
        "{per_sp:.1} API requests per phase-0 ScalingPhase, over the budget of {BUDGET}\n{report}"
    );
    Ok(())
}

async fn measure(
    client: &Client,
    ns: &TestNamespace,
    identity: &Identity,
    op: &Operator,
    n: usize,
) -> anyhow::Result<(f64, String)> {
    // The start-up lists and watches are done once the count stops moving.
    let before = quiet(identity).await?;
    anyhow::ensure!(
        before > 0.0,
        "the apiserver counted no request in the operator's flow: is it impersonating?"
    );
    let own_before = op.metrics().await?;
    let all_before = apiserver_metrics(client).await?;
    let sps = ns.sps();
    let pp = PatchParams::apply(TEST_MANAGER).force();
    futures::stream::iter(0..n)
        .map(|i| {
            let sps = sps.clone();
            let pp = pp.clone();
            async move {
                let name = format!("req-{i:03}");
                let sp: ladder_crds::scalingphase::ScalingPhase = serde_yaml::from_str(&format!(
                    "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: {name}}}\nspec: {{phase: 0}}\n"
                ))?;
                sps.patch(&name, &pp, &Patch::Apply(&sp)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    for i in 0..n {
        ns.wait_ready(&format!("req-{i:03}"), 0, TIMEOUT).await?;
    }
    let after = quiet(identity).await?;
    let own_after = op.metrics().await?;
    let all_after = apiserver_metrics(client).await?;

    let per_sp = (after - before) / n as f64;
    let mut report = format!(
        "{n} phase-0 ScalingPhases, creation to Ready and quiet:\n  apiserver, the operator's flow: {:.0} requests, {per_sp:.2} per ScalingPhase\n",
        after - before
    );
    report.push_str("  the operator's own count (ladder_api_requests_total) by method:");
    for method in ["GET", "LIST", "POST", "PUT", "PATCH", "DELETE"] {
        let d = sum(
            &own_after,
            "ladder_api_requests_total",
            &[("method", method)],
        ) - sum(
            &own_before,
            "ladder_api_requests_total",
            &[("method", method)],
        );
        if d > 0.0 {
            report.push_str(&format!(" {method} {:.2}", d / n as f64));
        }
    }
    report.push_str("\n  apiserver_request_total over every client, per ScalingPhase:\n");
    let (b, a) = (by_verb_resource(&all_before), by_verb_resource(&all_after));
    let mut total = 0.0;
    for (k, v) in &a {
        let d = v - b.get(k).copied().unwrap_or(0.0);
        if d >= n as f64 / 2.0 {
            report.push_str(&format!("    {k}: {:.2}\n", d / n as f64));
        }
        total += d;
    }
    report.push_str(&format!("    total: {:.2}\n", total / n as f64));
    Ok((per_sp, report))
}
