//! Deletion policy, idleness, crash recovery and invalid specs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, wait_for};

const TIMEOUT: Duration = Duration::from_secs(180);

const GROWTH: &str = "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop}\nspec: {phase: 1}\n";

async fn deleted_with(policy: &str) -> anyhow::Result<(usize, usize, usize, usize)> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, &format!("e2e-{}", policy.to_lowercase())).await?;
    let _op = Operator::start(&ns.name).await?;
    ns.apply_sp(
        &format!("{GROWTH}  deletionPolicy: {policy}\n")
            .replace("spec: {phase: 1}\n  ", "spec:\n  phase: 1\n  "),
    )
    .await?;
    ns.wait_ready("shop", 1, TIMEOUT).await?;
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let creds = ListParams::default().labels("ladder.dev/credential=true");
    let pvcs_before = pvcs.list(&ListParams::default()).await?.items.len();
    let secrets_before = secrets.list(&creds).await?.items.len();
    assert!(
        pvcs_before >= 2 && secrets_before >= 3,
        "{pvcs_before} PVCs, {secrets_before} Secrets"
    );

    ns.sps().delete("shop", &DeleteParams::background()).await?;
    let sps = ns.sps();
    wait_for("ScalingPhase gone", TIMEOUT, || {
        let sps = sps.clone();
        async move { Ok(sps.get_opt("shop").await?.is_none().then_some(())) }
    })
    .await?;
    // Garbage collection removes the owned workloads; wait for that, then count what is left.
    let deploys: Api<Deployment> = ns.api();
    wait_for("workloads collected", TIMEOUT, || {
        let deploys = deploys.clone();
        async move {
            Ok(deploys
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        }
    })
    .await?;
    let (pvcs_after, secrets_after) = if policy == "Delete" {
        wait_for("PVCs and Secrets deleted", TIMEOUT, || {
            let (pvcs, secrets, creds) = (pvcs.clone(), secrets.clone(), creds.clone());
            async move {
                let p = pvcs
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .count();
                let s = secrets.list(&creds).await?.items.len();
                Ok((p == 0 && s == 0).then_some((p, s)))
            }
        })
        .await?
    } else {
        let left = pvcs.list(&ListParams::default()).await?;
        for p in &left.items {
            assert!(
                p.metadata.deletion_timestamp.is_none(),
                "{} is being deleted",
                p.name_any()
            );
            assert!(
                p.owner_references().is_empty(),
                "{} still owned",
                p.name_any()
            );
        }
        let s = secrets.list(&creds).await?;
        for x in &s.items {
            assert!(
                x.owner_references().is_empty(),
                "{} still owned",
                x.name_any()
            );
        }
        (left.items.len(), s.items.len())
    };
    ns.delete().await;
    Ok((pvcs_before, pvcs_after, secrets_before, secrets_after))
}

#[tokio::test]
async fn deleting_with_retain_keeps_volumes_and_credentials() -> anyhow::Result<()> {
    let (pvcs_before, pvcs_after, secrets_before, secrets_after) = deleted_with("Retain").await?;
    assert_eq!(pvcs_after, pvcs_before, "every PVC is kept");
    assert_eq!(
        secrets_after, secrets_before,
        "every credential Secret is kept"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_with_delete_removes_volumes_and_credentials() -> anyhow::Result<()> {
    let (_, pvcs_after, _, secrets_after) = deleted_with("Delete").await?;
    assert_eq!((pvcs_after, secrets_after), (0, 0));
    Ok(())
}

/// resourceVersion of every object in the namespace, by kind/name.
async fn versions(ns: &TestNamespace) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($($t:ty),*) => {$(
            for o in ns.api::<$t>().list(&ListParams::default()).await?.items {
                out.insert(format!("{}/{}", stringify!($t), o.name_any()), o.resource_version().unwrap_or_default());
            }
        )*};
    }
    collect!(
        Deployment,
        StatefulSet,
        Service,
        ConfigMap,
        Secret,
        NetworkPolicy,
        PersistentVolumeClaim
    );
    for o in ns.sps().list(&ListParams::default()).await?.items {
        out.insert(
            format!("ScalingPhase/{}", o.name_any()),
            o.resource_version().unwrap_or_default(),
        );
    }
    Ok(out)
}

#[tokio::test]
async fn an_idle_operator_makes_no_writes() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-idle").await?;
    let op = Operator::start(&ns.name).await?;
    ns.apply_sp(GROWTH).await?;
    ns.wait_ready("shop", 1, TIMEOUT).await?;
    ns.wait_pods_running(TIMEOUT).await?;
    // Let the last status patch and pod updates land: wait until one full
    // observation round changes nothing, then measure a minute.
    let before = wait_for("a quiet namespace", TIMEOUT, || {
        let ns = &ns;
        async move {
            let a = versions(ns).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let b = versions(ns).await?;
            Ok((a == b).then_some(b))
        }
    })
    .await?;
    let applied = op.metric_sum("ladder_objects_applied_total").await?;
    let status_writes = op.metric_sum("ladder_status_writes_total").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    tokio::time::sleep_until(deadline).await;
    let after = versions(&ns).await?;
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        changed.is_empty(),
        "objects written while idle: {changed:?}"
    );
    assert_eq!(
        op.metric_sum("ladder_objects_applied_total").await?,
        applied,
        "server-side applies while idle"
    );
    assert_eq!(
        op.metric_sum("ladder_status_writes_total").await?,
        status_writes,
        "status writes while idle"
    );
    ns.delete().await;
    Ok(())
}

/// Objects the operator manages, with the fields that matter (spec of
/// workloads, data of config), to compare two runs.
async fn fingerprint(ns: &TestNamespace) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let sel = ListParams::default().labels("app.kubernetes.io/managed-by=ladder");
    for d in ns.api::<Deployment>().list(&sel).await?.items {
        let mut spec = serde_json::to_value(&d.spec)?;
        spec["replicas"] = serde_json::Value::Null; // owned by the HPA from phase 2
        spec["template"]["metadata"]["annotations"]["ladder.dev/config-hash"] =
            serde_json::Value::Null;
        out.insert(format!("Deployment/{}", d.name_any()), spec.to_string());
    }
    for s in ns.api::<StatefulSet>().list(&sel).await?.items {
        let mut t = serde_json::to_value(&s.spec.template)?;
        // The config hash covers text that names the namespace; the config
        // itself is compared through the ConfigMaps below.
        t["metadata"]["annotations"]["ladder.dev/config-hash"] = serde_json::Value::Null;
        out.insert(format!("StatefulSet/{}", s.name_any()), t.to_string());
    }
    for c in ns.api::<ConfigMap>().list(&sel).await?.items {
        out.insert(
            format!("ConfigMap/{}", c.name_any()),
            serde_json::to_string(&c.data)?,
        );
    }
    for s in ns.api::<Service>().list(&sel).await?.items {
        out.insert(
            format!("Service/{}", s.name_any()),
            serde_json::to_string(&s.spec.and_then(|s| s.ports))?,
        );
    }
    for s in ns.api::<Secret>().list(&sel).await?.items {
        out.insert(
            format!("Secret/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    Ok(out)
}

/// Immutable ConfigMaps are named after a hash of their content, which
/// names the namespace: `shop-shard-map-v1-1a2b3c4d` becomes
/// `shop-shard-map-v1-HASH` wherever it appears.
fn unhash(text: &str) -> String {
    const MARK: &str = "shard-map-v1-";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        let (head, tail) = rest.split_at(i + MARK.len());
        out.push_str(head);
        let hex = tail.bytes().take_while(u8::is_ascii_hexdigit).count();
        if hex > 0 {
            out.push_str("HASH");
        }
        rest = &tail[hex..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn an_operator_killed_mid_reconcile_converges_after_restart() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    // Reference run: phase 3 applied by an operator that is never interrupted.
    let reference = TestNamespace::new(&client, "e2e-ref").await?;
    let op = Operator::start(&reference.name).await?;
    let yaml = "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop}\nspec: {phase: 3}\n";
    reference.apply_sp(yaml).await?;
    reference.wait_ready("shop", 3, TIMEOUT).await?;
    let expected = fingerprint(&reference).await?;
    drop(op);

    let ns = TestNamespace::new(&client, "e2e-crash").await?;
    let mut op = Operator::start(&ns.name).await?;
    ns.apply_sp(yaml).await?;
    // Kill it as soon as it has written some children, before it is done.
    let deploys: Api<StatefulSet> = ns.api();
    wait_for("the first children", TIMEOUT, || {
        let deploys = deploys.clone();
        async move { Ok((!deploys.list(&ListParams::default()).await?.items.is_empty()).then_some(())) }
    })
    .await?;
    op.kill();
    let partial = ns.sps().get("shop").await?;
    let _op = Operator::start(&ns.name).await?;
    ns.wait_ready("shop", 3, TIMEOUT).await?;
    let got = fingerprint(&ns).await?;
    let norm = |m: &BTreeMap<String, String>, ns: &str| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (unhash(k), unhash(&v.replace(ns, "NS"))))
            .filter(|(k, _)| !k.starts_with("Secret/"))
            .collect()
    };
    let (got_n, expected_n) = (norm(&got, &ns.name), norm(&expected, &reference.name));
    let differing: Vec<_> = expected_n
        .keys()
        .chain(got_n.keys())
        .filter(|k| got_n.get(*k) != expected_n.get(*k))
        .collect();
    assert!(
        differing.is_empty(),
        "objects differ after a crash: {differing:?} (status when killed: {:?})",
        partial.status.map(|s| s.ready_components)
    );
    let secrets_keys: Vec<_> = got.keys().filter(|k| k.starts_with("Secret/")).collect();
    let expected_keys: Vec<_> = expected
        .keys()
        .filter(|k| k.starts_with("Secret/"))
        .collect();
    assert_eq!(secrets_keys, expected_keys);
    reference.delete().await;
    ns.delete().await;
    Ok(())
}

/// A spec the apiserver accepts but the operator refuses (a purge CIDR the
/// schema's pattern lets through but that is no network) gets a condition with a reason
/// and an Event, and the operator does not retry in a loop.
#[tokio::test]
async fn an_invalid_spec_gets_a_condition_and_an_event_not_a_crash_loop() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-badspec").await?;
    let op = Operator::start(&ns.name).await?;
    let yaml = "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop}\nspec:\n  phase: 2\n  edge:\n    purgeAllowedCidrs: ['300.0.0.0/8']\n";
    ns.apply_sp(yaml).await?;
    let sps = ns.sps();
    let sp = wait_for("InvalidSpec condition", TIMEOUT, || {
        let sps = sps.clone();
        async move {
            let sp = sps.get("shop").await?;
            let degraded = sp.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSpec"
                })
            });
            Ok(degraded.then_some(sp))
        }
    })
    .await?;
    let ready = sp
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready");
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("purgeAllowedCidrs"),
        "{}",
        ready.message
    );
    let events: Api<Event> = ns.api();
    let event = wait_for("InvalidSpec event", TIMEOUT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("InvalidSpec")))
        }
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        ns.api::<Deployment>()
            .list(&ListParams::default())
            .await?
            .items
            .is_empty(),
        "nothing half-applied"
    );
    let reconciles = op.metric_sum("ladder_reconciles_total").await?;
    tokio::time::sleep(Duration::from_secs(10)).await; // observe the absence of retries
    assert_eq!(
        op.metric_sum("ladder_reconciles_total").await?,
        reconciles,
        "no retry loop on a permanent error"
    );
    assert_eq!(op.metric_sum("ladder_reconcile_errors_total").await?, 0.0);

    // Fixing the spec recovers.
    let fix = serde_json::json!({"spec": {"edge": {"purgeAllowedCidrs": ["10.0.0.0/8"]}}});
    ns.sps()
        .patch("shop", &PatchParams::default(), &Patch::Merge(&fix))
        .await?;
    ns.wait_ready("shop", 2, TIMEOUT).await?;
    ns.delete().await;
    Ok(())
}

/// Two operators on one Lease: only one acts; when it stops gracefully the
/// other takes over and reconciles.
#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-leader").await?;
    let mut first = Operator::start(&ns.name).await?;
    let second = Operator::spawn_candidate(&ns.name)?;
    second.wait_log("waiting to become leader", TIMEOUT).await?;
    ns.apply_sp(GROWTH).await?;
    ns.wait_ready("shop", 1, TIMEOUT).await?;
    assert!(
        !second.log_text().contains("became leader"),
        "two leaders at once"
    );
    assert!(
        !second.log_text().contains("\"applied\""),
        "the standby reconciled"
    );
    let status = first.stop()?;
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status:?}\n{}",
        first.log_text()
    );
    assert!(first.log_text().contains("controller stopped"));
    second.wait_log("became leader", TIMEOUT).await?;
    // 1 → 2 moves no data: the new leader walks it to Done by itself.
    let patch = serde_json::json!({"spec": {"phase": 2}});
    ns.sps()
        .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    ns.wait_ready("shop", 2, TIMEOUT).await?;
    assert!(second.log_text().contains("\"applied\""));
    ns.delete().await;
    Ok(())
}

fn claim_size(c: &PersistentVolumeClaim) -> Option<String> {
    c.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// A larger volume size grows the existing claims in place (same claims, same pods) and the
/// StatefulSet's templates follow; a smaller one never shrinks them.
#[tokio::test]
async fn a_larger_volume_size_grows_the_claims_in_place() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-grow").await?;
    let _op = Operator::start(&ns.name).await?;
    let sized = |size: &str| {
        format!(
            "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: shop}}\n\
             spec:\n  phase: 1\n  overrides:\n    postgres:\n      storage: {{size: {size}}}\n"
        )
    };
    ns.apply_sp(&sized("10Gi")).await?;
    ns.wait_ready("shop", 1, TIMEOUT).await?;
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    let claim = claims.get("data-shop-postgres-0").await?;
    assert_eq!(claim_size(&claim).as_deref(), Some("10Gi"));
    let pod_uid = pods.get("shop-postgres-0").await?.uid();

    ns.apply_sp(&sized("20Gi")).await?;
    let sets: Api<StatefulSet> = ns.api();
    let (claims2, sets2) = (claims.clone(), sets.clone());
    wait_for("claim and template at 20Gi", TIMEOUT, move || {
        let (claims, sets) = (claims2.clone(), sets2.clone());
        async move {
            let c = claims.get("data-shop-postgres-0").await?;
            let Some(s) = sets.get_opt("shop-postgres").await? else {
                return Ok(None);
            };
            let template = s
                .spec
                .volume_claim_templates
                .unwrap_or_default()
                .first()
                .and_then(claim_size);
            Ok(
                (claim_size(&c).as_deref() == Some("20Gi") && template.as_deref() == Some("20Gi"))
                    .then_some(()),
            )
        }
    })
    .await?;
    ns.wait_ready("shop", 1, TIMEOUT).await?;
    assert_eq!(
        claims.get("data-shop-postgres-0").await?.uid(),
        claim.uid(),
        "the same claim, grown: no data volume was replaced"
    );
    assert_eq!(
        pods.get("shop-postgres-0").await?.uid(),
        pod_uid,
        "the running pod was kept (orphaned, then adopted)"
    );
    ns.delete().await;
    Ok(())
}

/// A deleted PostgreSQL credentials Secret is not regenerated while the
/// database's volume exists (a new password would lock the app out): the
/// ScalingPhase is Degraded with reason CredentialsMissing and nothing else
/// changes; restoring the Secret (here: the same data, as from a backup)
/// brings it back to Ready with the same password.
#[tokio::test]
async fn a_deleted_database_password_is_reported_not_regenerated() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-creds").await?;
    let _op = Operator::start(&ns.name).await?;
    ns.apply_sp(GROWTH).await?;
    ns.wait_ready("shop", 1, TIMEOUT).await?;
    let secrets: Api<Secret> = ns.api();
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    let name = "shop-postgres-credentials";
    let backup = secrets.get(name).await?;
    let password = backup
        .data
        .as_ref()
        .and_then(|d| d.get("password"))
        .cloned();
    assert!(password.is_some(), "the credentials carry a password");
    let claims_before: Vec<String> = pvcs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|c| c.uid().unwrap_or_default())
        .collect();
    assert!(!claims_before.is_empty(), "phase 1 has a database volume");

    secrets.delete(name, &DeleteParams::default()).await?;
    let sps = ns.sps();
    let degraded = wait_for("Degraded with CredentialsMissing", TIMEOUT, || {
        let sps = sps.clone();
        async move {
            let sp = sps.get("shop").await?;
            Ok(sp
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                .filter(|c| c.status == "True" && c.reason == "CredentialsMissing")
                .map(|c| c.message.clone()))
        }
    })
    .await?;
    assert!(
        degraded.contains(name) || degraded.contains("restore"),
        "{degraded}"
    );
    // Several reconciles later the Secret is still not there: nobody made a
    // password the database does not know.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        secrets.get_opt(name).await?.is_none(),
        "a new password was generated"
    );
    let claims_after: Vec<String> = pvcs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|c| c.uid().unwrap_or_default())
        .collect();
    assert_eq!(claims_before, claims_after, "volumes untouched");

    // Restore from the backup: Ready again, with the old password.
    let mut restored = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: backup.metadata.labels.clone(),
            ..Default::default()
        },
        data: backup.data.clone(),
        type_: backup.type_.clone(),
        ..Default::default()
    };
    restored.metadata.namespace = Some(ns.name.clone());
    secrets.create(&Default::default(), &restored).await?;
    ns.wait_ready("shop", 1, TIMEOUT).await?;
    let now = secrets.get(name).await?;
    assert_eq!(
        now.data.as_ref().and_then(|d| d.get("password")).cloned(),
        password
    );
    ns.delete().await;
    Ok(())
}
