//! The migration runner (e2e/src/runner.rs) on its own, without the
//! operator: a Job shaped as the operator's migration Job (see
//! `operator/src/transition.rs`: label `ladder.dev/job=migrate`, one
//! container `migrate`, `args: [migrate]`, the env of both tiers, the app's
//! data claim at `/data`, TLS at `/etc/ladder/tls`) really runs
//! `ladder-app migrate` from the SQLite file of an app serving on loopback
//! under load into the local PostgreSQL through PgBouncer; the Job controller
//! marks the Job from the pod status the runner writes.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use ladder_e2e::app::{self, Load, LoopbackApp};
use ladder_e2e::runner::{Hosts, Runner, RunnerConfig};
use ladder_e2e::{TestNamespace, client, install_crds, wait_for};
use serde_json::json;

const SP: &str = "shop";

/// Creates what the pod needs to be scheduled and started: the app's data
/// claim, the credentials Secret (with a password only the cluster knows:
/// the runner must map it) and the TLS Secret.
async fn prerequisites(ns: &TestNamespace) {
    let sa: Api<ServiceAccount> = ns.api();
    wait_for("serviceaccount/default", Duration::from_secs(60), || {
        let sa = sa.clone();
        async move { Ok(sa.get_opt("default").await?.map(|_| ())) }
    })
    .await
    .expect("default service account");
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": format!("{SP}-app-data")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc");
    ns.api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create pvc");
    for (name, data) in [
        (
            format!("{SP}-postgres-credentials"),
            json!({"password": "generated-in-cluster"}),
        ),
        (
            format!("{SP}-tls"),
            json!({"ca.crt": "cluster CA", "tls.crt": "cluster cert", "tls.key": "cluster key"}),
        ),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": data
        }))
        .expect("secret");
        ns.api::<Secret>()
            .create(&PostParams::default(), &s)
            .await
            .expect("create secret");
    }
}

/// The migration Job 0→1 as the contract renders it.
fn migration_job() -> Job {
    let to = format!(
        "pgbouncer:postgres://ladder@{SP}-pgbouncer:6432/ladder?sslmode=verify-full&sslrootcert=/etc/ladder/tls/ca.crt"
    );
    serde_json::from_value(json!({
        "metadata": {"name": format!("{SP}-migrate-0-to-1"), "labels": {
            "app.kubernetes.io/managed-by": "ladder", "ladder.dev/scalingphase": SP}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"ladder.dev/job": "migrate"}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "migrate",
                        "image": "ghcr.io/ladder/ladder-app:dev",
                        "args": ["migrate"],
                        "securityContext": {"allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}},
                        "env": [
                            {"name": "LADDER_STORE", "value": "sqlite:/data/ladder.db"},
                            {"name": "LADDER_DB_PASSWORD", "valueFrom": {"secretKeyRef":
                                {"name": format!("{SP}-postgres-credentials"), "key": "password"}}},
                            {"name": "LADDER_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "LADDER_MIGRATE_FROM", "value": "$(LADDER_STORE)"},
                            {"name": "LADDER_MIGRATE_TO", "value": to},
                            {"name": "LADDER_MIGRATE_RESULT_FILE", "value": "/dev/termination-log"},
                            {"name": "RUST_LOG", "value": "info"},
                        ],
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data"},
                            {"name": "tls", "mountPath": "/etc/ladder/tls", "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": format!("{SP}-app-data")}},
                        {"name": "tls", "secret": {"secretName": format!("{SP}-tls")}},
                    ],
                }
            }
        }
    }))
    .expect("job")
}

/// The runner's mapping: the local services, the target database of this
/// test, the app's data claim → the loopback app's directory.
fn hosts(ns: &str, db: &str, data_dir: &std::path::Path, bouncer_port: Option<u16>) -> Hosts {
    let mut hosts = Hosts::local_services(SP, ns).expect("local services");
    let bouncer = bouncer_port.unwrap_or_else(|| {
        let url = ladder_e2e::service_env("LADDER_PGBOUNCER_URL").expect("pgbouncer");
        url.rsplit_once(':')
            .and_then(|(_, r)| r.split('/').next()?.parse().ok())
            .expect("port")
    });
    hosts.rewrites.insert(
        0,
        (
            format!("{SP}-pgbouncer:6432/ladder?"),
            format!("localhost:{bouncer}/{db}?"),
        ),
    );
    hosts.claims = BTreeMap::from([(format!("{SP}-app-data"), data_dir.to_owned())]);
    hosts
}

/// The Job's finished condition (`Complete` or `Failed`), once it has one.
/// A setup error of the runner fails the test at once, with its cause.
async fn job_condition(
    jobs: &Api<Job>,
    name: &str,
    runner: &Runner,
) -> anyhow::Result<Option<String>> {
    let errors = runner.errors();
    assert!(
        errors.is_empty(),
        "the runner could not start the pod: {errors:?}"
    );
    let job = jobs.get(name).await?;
    Ok(job
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_))
}

#[tokio::test]
async fn the_runner_migrates_sqlite_into_postgres_and_the_job_completes() {
    let client = client().await.expect("client");
    // (So that deleting the namespace finds no ScalingPhases at once.)
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::new(&client, "runner-ok").await.expect("ns");
    prerequisites(&ns).await;
    let data = std::env::temp_dir().join(format!("ladder-runner-app-{}", ns.name));
    std::fs::create_dir_all(&data).expect("data dir");
    let app = LoopbackApp::start_phase0(&data).await.expect("app");
    let load = Load::start(app.base.clone(), Duration::from_secs(120));
    wait_for("a few acknowledged writes", Duration::from_secs(30), || {
        let n = load.acked();
        async move { Ok((n >= 100).then_some(())) }
    })
    .await
    .expect("load");

    let db = app::fresh_db("runner").await.expect("db");
    let runner = Runner::start(
        client.clone(),
        RunnerConfig {
            namespace: ns.name.clone(),
            binary: ladder_e2e::app_bin().expect("ladder-app"),
            hosts: hosts(&ns.name, &db, &data, None),
            extra_env: vec![],
        },
    )
    .expect("runner");
    let jobs: Api<Job> = ns.api();
    jobs.create(&PostParams::default(), &migration_job())
        .await
        .expect("create job");
    let name = format!("{SP}-migrate-0-to-1");
    let outcome = wait_for("the Job to finish", Duration::from_secs(180), || {
        let jobs = jobs.clone();
        let (name, runner) = (name.clone(), &runner);
        async move { job_condition(&jobs, &name, runner).await }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", runner.logs()));
    assert_eq!(outcome, "Complete", "{}", runner.logs());
    let runs = runner.runs();
    assert_eq!(runs.len(), 1, "one pod ran: {}", runner.logs());
    assert_eq!(runs[0].exit_code, 0, "{}", runner.logs());

    // The app followed the cut-over pointer to PostgreSQL; writes go on there.
    let c = app::http();
    let tier = wait_for("the app on PostgreSQL", Duration::from_secs(30), || {
        let (c, app) = (c.clone(), &app);
        async move { Ok(app.tier(&c).await.filter(|t| t != "sqlite")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", app.log_text()));
    let before = load.acked();
    wait_for(
        "writes acknowledged after the cut-over",
        Duration::from_secs(30),
        || {
            let n = load.acked();
            async move { Ok((n >= before + 20).then_some(())) }
        },
    )
    .await
    .expect("writes after the cut-over");
    let ledger = load.finish().await.expect("ledger");
    let live = app::check_ledger_pg(&app::primary_db_url(&db).expect("url"), &ledger)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", runner.logs()));
    assert!(live > 0, "live links checked");
    eprintln!(
        "tier {tier}: {} acknowledged writes ({} refused while fenced), {live} live links in PostgreSQL; result {:?}",
        ledger.acked, ledger.refused, runs[0].message
    );
    // The pod's status is what the runner wrote: Succeeded, exit 0.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    let pod = pods.get(&runs[0].pod).await.expect("pod");
    let status = pod.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let term = status.container_statuses.expect("statuses")[0]
        .state
        .clone()
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(term.exit_code, 0);
    drop(runner);
    ns.delete().await;
}

#[tokio::test]
async fn a_migration_that_cannot_reach_its_target_fails_the_job_and_the_app_stays() {
    let client = client().await.expect("client");
    // (So that deleting the namespace finds no ScalingPhases at once.)
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::new(&client, "runner-fail")
        .await
        .expect("ns");
    prerequisites(&ns).await;
    let data = std::env::temp_dir().join(format!("ladder-runner-app-{}", ns.name));
    std::fs::create_dir_all(&data).expect("data dir");
    let app = LoopbackApp::start_phase0(&data).await.expect("app");
    let load = Load::start(app.base.clone(), Duration::from_secs(120));
    // PgBouncer "is" on a port where nothing listens.
    let runner = Runner::start(
        client.clone(),
        RunnerConfig {
            namespace: ns.name.clone(),
            binary: ladder_e2e::app_bin().expect("ladder-app"),
            hosts: hosts(&ns.name, "unreachable", &data, Some(app::free_port())),
            extra_env: vec![],
        },
    )
    .expect("runner");
    let jobs: Api<Job> = ns.api();
    jobs.create(&PostParams::default(), &migration_job())
        .await
        .expect("create job");
    let name = format!("{SP}-migrate-0-to-1");
    let outcome = wait_for("the Job to finish", Duration::from_secs(180), || {
        let jobs = jobs.clone();
        let (name, runner) = (name.clone(), &runner);
        async move { job_condition(&jobs, &name, runner).await }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", runner.logs()));
    assert_eq!(outcome, "Failed", "{}", runner.logs());
    let runs = runner.runs();
    assert_eq!(runs.len(), 1, "{}", runner.logs());
    assert_ne!(runs[0].exit_code, 0, "{}", runner.logs());
    // The app keeps serving, and writing, on SQLite.
    let c = app::http();
    assert_eq!(app.tier(&c).await.as_deref(), Some("sqlite"));
    let before = load.acked();
    wait_for(
        "writes acknowledged after the failure",
        Duration::from_secs(30),
        || {
            let n = load.acked();
            async move { Ok((n >= before + 20).then_some(())) }
        },
    )
    .await
    .expect("writes go on");
    let ledger = load.finish().await.expect("ledger");
    assert!(ledger.acked > 0);
    drop(runner);
    ns.delete().await;
}
