//! LoadReport objects: with `--report-load` and Kubernetes credentials (a kubeconfig or the Pod's
//! service account), the app server-side-applies one `LoadReport` per instance every report
//! interval. In a Pod (the Pod named `--instance` exists in `--namespace`) the report is owned by
//! that Pod, so it goes away with it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use ladder_crds::load_report::{FIELD_MANAGER, LoadReport, LoadReportSpec};

use crate::AppState;
use crate::config::ServeArgs;
use crate::metrics::LoadSnapshot;

/// Who reports: the identity half of a LoadReport.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub name: String,
    pub namespace: String,
    pub scaling_phase: String,
    pub phase: u8,
}

/// Builds the object for one snapshot (pure: the tests check it without a cluster).
pub fn build(
    who: &Reporter,
    tier: &str,
    load: &LoadSnapshot,
    owner: Option<OwnerReference>,
    now: chrono::DateTime<chrono::Utc>,
) -> LoadReport {
    let (name, namespace, scaling_phase, phase) = (
        who.name.as_str(),
        who.namespace.as_str(),
        who.scaling_phase.as_str(),
        who.phase,
    );
    let mut report = LoadReport::new(
        name,
        LoadReportSpec {
            scaling_phase: scaling_phase.to_owned(),
            phase: i32::from(phase),
            tier: tier.to_owned(),
            instance: name.to_owned(),
            window_seconds: i32::try_from(load.window_seconds).unwrap_or(i32::MAX),
            requests_per_second: load.requests_per_second,
            transactions_per_second: load.transactions_per_second,
            p99_latency_ms: load.p99_ms,
            error_rate: load.error_rate,
            reported_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
    );
    report.metadata.namespace = Some(namespace.to_owned());
    report.metadata.labels = Some(
        [
            ("app.kubernetes.io/name".to_owned(), "ladder-app".to_owned()),
            (
                "ladder.dev/scalingphase".to_owned(),
                scaling_phase.to_owned(),
            ),
        ]
        .into(),
    );
    report.metadata.owner_references = owner.map(|o| vec![o]);
    report
}

/// Selects rustls' crypto provider for the process. Both `ring` (kube) and `aws-lc-rs`
/// (reqwest) are compiled in, so rustls cannot pick one by itself; the first call wins.
pub use crate::tls::install_crypto_provider;

async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    install_crypto_provider();
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            let config = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            Ok(kube::Client::try_from(config)?)
        }
        None => Ok(kube::Client::try_default().await?),
    }
}

/// Starts the reporting loop (errors are logged and retried next interval).
pub fn spawn(state: AppState, args: &ServeArgs) {
    let every = Duration::from_secs(args.report_interval_secs.max(1));
    let (ns, sp, phase) = (
        args.namespace.clone(),
        args.scaling_phase.clone(),
        args.phase,
    );
    let name = state.config.instance.clone();
    let kubeconfig = args.kubeconfig.clone();
    tokio::spawn(async move {
        let client = match client(kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "no Kubernetes credentials; LoadReports disabled");
                return;
            }
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let reports: Api<LoadReport> = Api::namespaced(client, &ns);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut owner: Option<OwnerReference> = None;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if owner.is_none()
                && let Ok(Some(pod)) = pods.get_opt(&name).await
            {
                owner = pod.metadata.uid.map(|uid| OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: name.clone(),
                    uid,
                    controller: Some(false),
                    block_owner_deletion: Some(false),
                });
            }
            let load = state.metrics.window.snapshot();
            let tier = state.store.get().tier();
            let who = Reporter {
                name: name.clone(),
                namespace: ns.clone(),
                scaling_phase: sp.clone(),
                phase,
            };
            let report = build(&who, tier, &load, owner.clone(), chrono::Utc::now());
            match reports.patch(&name, &params, &Patch::Apply(&report)).await {
                Ok(_) => tracing::debug!(rps = load.requests_per_second, "LoadReport written"),
                Err(err) => tracing::warn!(error = %err, "writing the LoadReport failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_carries_the_window() {
        let load = LoadSnapshot {
            window_seconds: 60,
            requests_per_second: 12.5,
            transactions_per_second: 3.0,
            p99_ms: 4.2,
            error_rate: 0.01,
            requests: 750,
        };
        let who = Reporter {
            name: "app-0".into(),
            namespace: "ns".into(),
            scaling_phase: "shop".into(),
            phase: 2,
        };
        let r = build(&who, "replicas", &load, None, chrono::DateTime::UNIX_EPOCH);
        let v = serde_json::to_value(&r).expect("serialises");
        assert_eq!(v["apiVersion"], "ladder.dev/v1alpha1");
        assert_eq!(v["kind"], "LoadReport");
        assert_eq!(v["metadata"]["namespace"], "ns");
        assert_eq!(v["spec"]["scalingPhase"], "shop");
        assert_eq!(v["spec"]["transactionsPerSecond"], 3.0);
        assert_eq!(v["spec"]["reportedAt"], "1970-01-01T00:00:00Z");
    }
}
