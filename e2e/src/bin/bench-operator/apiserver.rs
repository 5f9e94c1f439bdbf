//! Counting requests from the kube-apiserver's side.
//!
//! - `apiserver_request_total` (scraped from the apiserver's `/metrics` over
//!   loopback with the admin credentials of KUBECONFIG) counts every client's
//!   requests by verb, group, resource and subresource: before/after a run
//!   gives where the requests went, but mixes the operator with the
//!   controller-manager, the scheduler, kwok and the bench itself.
//! - To count one client exactly, it runs under its own user name
//!   (impersonated: the admin credentials with `Impersonate-User`), and a
//!   FlowSchema of API Priority and Fairness matching only that user sends it
//!   to the `exempt` priority level (no queuing, no limit: nothing changes for
//!   the client). `apiserver_flowcontrol_dispatched_requests_total{flow_schema}`
//!   then counts that user's requests alone, as the apiserver dispatched them.
//!
//! A WATCH enters `apiserver_request_total` when it ends, but the dispatched
//! count when it starts: the two differ by the watches open at a scrape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

/// The user the operator runs as.
pub const OPERATOR_USER: &str = "ladder-bench-operator";
/// The user the floor's client runs as.
pub const FLOOR_USER: &str = "ladder-bench-floor";

/// A row of `apiserver_request_total`: verb, group, resource(/subresource).
pub type Row = (String, String, String);

/// One scrape of the apiserver's request counters.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// `apiserver_request_total` summed over codes, scopes and versions.
    pub requests: BTreeMap<Row, f64>,
    /// `apiserver_flowcontrol_dispatched_requests_total` by flow schema.
    pub dispatched: BTreeMap<String, f64>,
}

impl Counters {
    /// `self - before`, rows that did not move left out.
    pub fn since(&self, before: &Counters) -> Counters {
        fn diff<K: Ord + Clone>(a: &BTreeMap<K, f64>, b: &BTreeMap<K, f64>) -> BTreeMap<K, f64> {
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect()
        }
        Counters {
            requests: diff(&self.requests, &before.requests),
            dispatched: diff(&self.dispatched, &before.dispatched),
        }
    }

    /// Requests of one identity (its FlowSchema is named after it).
    pub fn of_user(&self, user: &str) -> f64 {
        self.dispatched.get(user).copied().unwrap_or(0.0)
    }

    /// Every request counted.
    pub fn total(&self) -> f64 {
        self.requests.values().sum()
    }
}

/// The labels of one exposition line, as a map.
fn labels(line: &str) -> Option<(BTreeMap<&str, &str>, f64)> {
    let open = line.find('{')?;
    let close = line.rfind('}')?;
    let value: f64 = line[close + 1..].trim().parse().ok()?;
    let mut out = BTreeMap::new();
    // Label values here never hold `",`, so a split is enough.
    for kv in line[open + 1..close].split("\",") {
        let (k, v) = kv.split_once("=\"")?;
        out.insert(k.trim_start_matches(','), v.trim_end_matches('"'));
    }
    Some((out, value))
}

/// Parses the counters out of a `/metrics` text.
pub fn parse(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines() {
        if line.starts_with("apiserver_request_total{") {
            let Some((l, v)) = labels(line) else { continue };
            let resource = match (l.get("resource"), l.get("subresource")) {
                (Some(r), Some(s)) if !r.is_empty() && !s.is_empty() => format!("{r}/{s}"),
                (Some(r), _) if !r.is_empty() => (*r).to_owned(),
                (_, Some(s)) => (*s).to_owned(), // non-resource paths (/healthz)
                _ => String::new(),
            };
            let row = (
                l.get("verb").copied().unwrap_or_default().to_owned(),
                l.get("group").copied().unwrap_or_default().to_owned(),
                resource,
            );
            *c.requests.entry(row).or_default() += v;
        } else if line.starts_with("apiserver_flowcontrol_dispatched_requests_total{") {
            let Some((l, v)) = labels(line) else { continue };
            let fs = l.get("flow_schema").copied().unwrap_or_default().to_owned();
            *c.dispatched.entry(fs).or_default() += v;
        }
    }
    c
}

/// Scrapes the apiserver's `/metrics` (the admin client: a loopback request).
pub async fn scrape(client: &Client) -> anyhow::Result<Counters> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(req)
        .await
        .context("GET /metrics of the kube-apiserver")?;
    Ok(parse(&text))
}

/// Makes `users` cluster-admins counted apart (a ClusterRoleBinding and one
/// FlowSchema each, to the exempt priority level).
pub async fn set_up_identities(client: &Client, users: &[&str]) -> anyhow::Result<()> {
    let pp = PatchParams::apply("ladder-bench").force();
    let crb = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
        "clusterrolebindings",
    );
    let subjects: Vec<_> = users
        .iter()
        .map(|u| serde_json::json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u}))
        .collect();
    let binding: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "ladder-bench"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": subjects,
    }))?;
    Api::<DynamicObject>::all_with(client.clone(), &crb)
        .patch("ladder-bench", &pp, &Patch::Apply(&binding))
        .await
        .context("ClusterRoleBinding for the bench identities")?;
    let fs = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema"),
        "flowschemas",
    );
    for user in users {
        let schema: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": user},
            "spec": {
                "matchingPrecedence": 500,
                "priorityLevelConfiguration": {"name": "exempt"},
                "rules": [{
                    "subjects": [{"kind": "User", "user": {"name": user}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                       "namespaces": ["*"], "clusterScope": true}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }],
            },
        }))?;
        Api::<DynamicObject>::all_with(client.clone(), &fs)
            .patch(user, &pp, &Patch::Apply(&schema))
            .await
            .with_context(|| format!("FlowSchema {user}"))?;
    }
    Ok(())
}

/// A copy of the kubeconfig at `from` whose users impersonate `user`
/// (`as:`), for a process (the operator) to run as that user.
pub fn impersonating_kubeconfig(from: &Path, user: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(from).with_context(|| format!("read {}", from.display()))?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let users = doc
        .get_mut("users")
        .and_then(|u| u.as_sequence_mut())
        .context("kubeconfig has no users")?;
    for u in users {
        if let Some(m) = u.get_mut("user").and_then(|x| x.as_mapping_mut()) {
            m.insert("as".into(), user.into());
        }
    }
    let out = std::env::temp_dir().join(format!("ladder-bench-{user}.kubeconfig"));
    std::fs::write(&out, serde_yaml::to_string(&doc)?)?;
    Ok(out)
}

/// A client of KUBECONFIG that impersonates `user`.
pub async fn client_as(user: &str) -> anyhow::Result<Client> {
    let mut cfg = kube::Config::infer().await?;
    cfg.auth_info.impersonate = Some(user.to_owned());
    Ok(Client::try_from(cfg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_subtracts_the_counters() {
        let before = parse(
            r#"
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 10
apiserver_request_total{code="201",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 5
apiserver_flowcontrol_dispatched_requests_total{flow_schema="ladder-bench-operator",priority_level="exempt"} 7
"#,
        );
        let after = parse(
            r#"
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 14
apiserver_request_total{code="201",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="ladder.dev",resource="scalingphases",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 3
apiserver_flowcontrol_dispatched_requests_total{flow_schema="ladder-bench-operator",priority_level="exempt"} 19
"#,
        );
        let d = after.since(&before);
        assert_eq!(
            d.requests
                .get(&("APPLY".into(), "apps".into(), "deployments".into())),
            Some(&4.0)
        );
        assert_eq!(
            d.requests.get(&(
                "PATCH".into(),
                "ladder.dev".into(),
                "scalingphases/status".into()
            )),
            Some(&3.0)
        );
        assert_eq!(d.total(), 7.0);
        assert_eq!(d.of_user(OPERATOR_USER), 12.0);
    }
}
