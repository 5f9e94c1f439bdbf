//! LoadReport objects against the local control plane (`make cluster-up`): one per instance,
//! owned by its Pod, carrying the window's rates.
//!
//! Needs the local control plane (`make cluster-up`; `make test-integration` starts it and sets
//! `LADDER_KUBECONFIG`). Without `LADDER_KUBECONFIG` the test uses the worktree's
//! `.ladder/cluster/kubeconfig`; with neither it fails: a LoadReport test that passes without a
//! control plane would prove nothing.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use ladder_app::store::StoreSpec;
use ladder_crds::load_report::LoadReport;

#[tokio::test]
async fn app_writes_a_load_report_owned_by_its_pod() {
    let path = std::env::var("LADDER_KUBECONFIG").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.ladder/cluster/kubeconfig").to_owned()
    });
    assert!(
        std::path::Path::new(&path).exists(),
        "no kubeconfig at {path}: start the control plane (`make cluster-up`) or set \
         LADDER_KUBECONFIG (`make test-integration` does both)"
    );
    ladder_app::report::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    // The integration tier runs before the operator's e2e tests: install the CRD here.
    {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::CustomResourceExt;
        use kube::api::{Patch, PatchParams};
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.patch(
            "loadreports.ladder.dev",
            &PatchParams::apply("ladder-app-tests").force(),
            &Patch::Apply(LoadReport::crd()),
        )
        .await
        .expect("install the LoadReport CRD");
        let established = kube::runtime::wait::await_condition(
            crds,
            "loadreports.ladder.dev",
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(60), established)
            .await
            .expect("LoadReport CRD established within 60 s")
            .expect("watch the CRD");
    }
    let ns_name = unique("lr").replace('_', "-");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    // A Pod object stands for the instance (kwok runs nothing; the app runs here on loopback).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "app-0" },
        "spec": { "containers": [ { "name": "app", "image": "ladder-app:test" } ] }
    }))
    .expect("pod");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");

    let mut a = args(StoreSpec::Sqlite {
        path: temp_sqlite(),
    });
    a.report_load = true;
    a.report_interval_secs = 1;
    a.kubeconfig = Some(path.into());
    a.namespace = ns_name.clone();
    a.instance = Some("app-0".into());
    a.scaling_phase = "shop".into();
    a.phase = 0;
    let app = start(&a).await;
    let c = http();
    for _ in 0..10 {
        create(&c, &app.url(), "https://example.com/", None).await;
    }
    let reports: Api<LoadReport> = Api::namespaced(client.clone(), &ns_name);
    let report = eventually(
        "a LoadReport with traffic",
        Duration::from_secs(20),
        || async {
            let r = reports.get_opt("app-0").await.ok()??;
            (r.spec.requests_per_second > 0.0 && r.spec.transactions_per_second > 0.0).then_some(r)
        },
    )
    .await;
    assert_eq!(report.spec.scaling_phase, "shop");
    assert_eq!(report.spec.tier, "sqlite");
    assert_eq!(report.spec.window_seconds, 60);
    let owner = &report.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Pod", "app-0"));
    assert_eq!(Some(&owner.uid), pod.metadata.uid.as_ref());
    drop(app);
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
}
