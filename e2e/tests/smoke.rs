//! Smoke tests of the local control plane (`make cluster-up`): the things every
//! later e2e test assumes. Each test runs in a namespace of its own.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const REGION: &str = "topology.kubernetes.io/region";

async fn client() -> Client {
    ladder_e2e::client()
        .await
        .expect("KUBECONFIG must point at the local control plane (make cluster-up)")
}

/// Creates a fresh namespace and waits until pods may be created in it.
async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:08x}", rand::random::<u32>());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    // Pods are refused until the service-account controller made `default`.
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait(
        await_condition(sa, "default", |s: Option<&ServiceAccount>| s.is_some()),
        60,
        "serviceaccount/default",
    )
    .await;
    name
}

async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await;
}

async fn wait<F, T, E>(fut: F, secs: u64, what: &str) -> T
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s waiting for {what}"))
        .unwrap_or_else(|e| panic!("watch failed while waiting for {what}: {e:?}"))
}

#[tokio::test]
async fn six_ready_nodes_over_three_regions_and_six_zones() {
    let nodes = Api::<Node>::all(client().await)
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    let ready: Vec<&Node> = nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect();
    assert!(
        ready.len() >= 6,
        "expected at least 6 Ready nodes, found {}",
        ready.len()
    );
    let regions: BTreeSet<_> = ready
        .iter()
        .filter_map(|n| n.labels().get(REGION).cloned())
        .collect();
    let zones: BTreeSet<_> = ready
        .iter()
        .filter_map(|n| n.labels().get("topology.kubernetes.io/zone").cloned())
        .collect();
    assert!(regions.len() >= 3, "regions: {regions:?}");
    assert!(zones.len() >= 6, "zones: {zones:?}");
    for n in &ready {
        let tainted = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| !t.is_empty());
        assert!(!tainted, "node {} carries a taint", n.name_any());
    }
}

#[tokio::test]
async fn statefulset_with_volumes_spreads_over_regions_and_is_garbage_collected() {
    let client = client().await;
    let ns = namespace(&client, "smoke-sts").await;
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 3,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": REGION, "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "db"}}
                    }],
                    "containers": [{"name": "db", "image": "postgres:15",
                                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]
                }
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            }]
        }
    }))
    .expect("statefulset");
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    sts_api
        .create(&PostParams::default(), &sts)
        .await
        .expect("create statefulset");

    wait(
        await_condition(sts_api.clone(), "db", |s: Option<&StatefulSet>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|st| st.ready_replicas)
                == Some(3)
        }),
        120,
        "3 ready replicas",
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels("app=db"))
        .await
        .expect("list pods");
    assert_eq!(list.items.len(), 3);
    let nodes: Api<Node> = Api::all(client.clone());
    let mut regions = BTreeSet::new();
    for p in &list.items {
        let phase = p.status.as_ref().and_then(|s| s.phase.clone());
        assert_eq!(
            phase.as_deref(),
            Some("Running"),
            "pod {} not Running",
            p.name_any()
        );
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .expect("scheduled");
        let node = nodes.get(&node).await.expect("node");
        regions.insert(node.labels().get(REGION).cloned().expect("region label"));
    }
    assert_eq!(
        regions.len(),
        3,
        "pods must spread over three regions, got {regions:?}"
    );

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for claim in pvcs
        .list(&ListParams::default())
        .await
        .expect("list pvcs")
        .items
    {
        let phase = claim.status.and_then(|s| s.phase);
        assert_eq!(
            phase.as_deref(),
            Some("Bound"),
            "claim {:?} not bound",
            claim.metadata.name
        );
    }

    // Deleting the owner: the garbage collector removes its pods.
    sts_api
        .delete("db", &DeleteParams::background())
        .await
        .expect("delete statefulset");
    ladder_e2e::wait_for(
        "the garbage collector to remove the pods",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let left = pods.list(&ListParams::default().labels("app=db")).await?;
                Ok(left.items.is_empty().then_some(()))
            }
        },
    )
    .await
    .expect("garbage collection of the pods");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn job_completes() {
    let client = client().await;
    let ns = namespace(&client, "smoke-job").await;
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "once"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "once", "image": "busybox", "command": ["true"]}]}}
        }
    }))
    .expect("job");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    wait(
        await_condition(jobs.clone(), "once", conditions::is_job_completed()),
        120,
        "the job to complete",
    )
    .await;
    let done = jobs.get("once").await.expect("get job");
    assert_eq!(done.status.and_then(|s| s.succeeded), Some(1));
    delete_namespace(&client, &ns).await;
}

/// kwok leaves migration pods (label `ladder.dev/job=migrate`) alone: they are scheduled but
/// never made Running nor completed, so only the e2e runner (e2e/src/runner.rs) can finish
/// them. An ordinary Job created *after* the labelled pod was scheduled completes, so kwok had
/// its chance at the labelled pod and let it be.
#[tokio::test]
async fn kwok_leaves_migration_pods_to_the_runner() {
    let client = client().await;
    let ns = namespace(&client, "smoke-migrate").await;
    let job = |name: &str, labels: serde_json::Value| -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {"metadata": {"labels": labels},
                    "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "migrate", "image": "ladder-app", "args": ["migrate"]}]}}
            }
        }))
        .expect("job")
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &job("labelled", json!({"ladder.dev/job": "migrate"})),
    )
    .await
    .expect("create labelled job");
    let scheduled = ladder_e2e::wait_for(
        "the labelled job's pod to be scheduled",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("job-name=labelled"))
                    .await?;
                Ok(list
                    .items
                    .into_iter()
                    .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()))
            }
        },
    )
    .await
    .expect("scheduled");

    jobs.create(
        &PostParams::default(),
        &job("plain", json!({"app": "plain"})),
    )
    .await
    .expect("create plain job");
    wait(
        await_condition(jobs.clone(), "plain", conditions::is_job_completed()),
        120,
        "the plain job to complete",
    )
    .await;

    let pod = pods.get(&scheduled.name_any()).await.expect("get pod");
    let status = pod.status.unwrap_or_default();
    assert_eq!(
        status.phase.as_deref(),
        Some("Pending"),
        "kwok must not run a migration pod: {status:?}"
    );
    assert!(
        status.container_statuses.unwrap_or_default().is_empty(),
        "kwok must not report container states of a migration pod"
    );
    let labelled = jobs.get("labelled").await.expect("get job");
    let st = labelled.status.unwrap_or_default();
    assert_eq!(st.succeeded.unwrap_or(0), 0, "{st:?}");
    assert_eq!(st.failed.unwrap_or(0), 0, "{st:?}");
    delete_namespace(&client, &ns).await;
}
