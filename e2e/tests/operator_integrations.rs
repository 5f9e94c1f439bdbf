//! Optional integrations detected while the operator runs: installing the
//! CRDs of cert-manager, the Prometheus Operator and KEDA (stand-ins from
//! `e2e/testdata/integration-crds.yaml`) switches existing ScalingPhases to
//! Certificates, ServiceMonitors and a ScaledObject without a restart;
//! deleting them switches back to generated Secrets, scrape annotations and
//! an HPA.
//!
//! CRDs are cluster-wide, so this file holds one test: nothing else in this
//! binary runs while the stand-ins are installed, and they are removed at
//! the end (or by a guard if the test fails).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use ladder_crds::scalingphase::ScalingPhase;
use ladder_e2e::{
    Operator, TestNamespace, apply_crds, client, delete_crds, install_crds, repo_root,
};
use ladder_operator::integrations::{Integrations, ThirdParty};
use ladder_operator::render::{self, SecretContent};
use ladder_operator::validate::{self, World};

const TIMEOUT: Duration = Duration::from_secs(180);
/// How long a CRD change may take to reach the rendered objects.
const SWITCH: Duration = Duration::from_secs(60);

fn stub_crds() -> String {
    std::fs::read_to_string(repo_root().join("e2e/testdata/integration-crds.yaml"))
        .expect("e2e/testdata/integration-crds.yaml")
}

fn stub_names() -> Vec<String> {
    ThirdParty::ALL.iter().map(|k| k.crd_name()).collect()
}

/// Deletes the stand-in CRDs when dropped, so a failed test never leaves
/// the cluster looking as if cert-manager were installed.
struct StubCrds {
    removed: bool,
}

impl StubCrds {
    async fn install(client: &Client) -> anyhow::Result<Self> {
        let mut names = apply_crds(client, &stub_crds()).await?;
        let mut expected = stub_names();
        names.sort();
        expected.sort();
        assert_eq!(names, expected, "one stand-in per third-party kind");
        Ok(Self { removed: false })
    }

    async fn remove(mut self, client: &Client) -> anyhow::Result<()> {
        self.removed = true;
        delete_crds(client, &stub_names()).await
    }
}

impl Drop for StubCrds {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Drop cannot await: delete from a runtime of its own.
        let _ = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = client().await?;
                delete_crds(&client, &stub_names()).await
            })
        })
        .join();
    }
}

fn third_party(ns: &TestNamespace, client: &Client, kind: ThirdParty) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), &ns.name, &kind.resource())
}

async fn names(api: &Api<DynamicObject>, sp: &str) -> anyhow::Result<Vec<String>> {
    let selector = format!("ladder.dev/scalingphase={sp}");
    let mut out: Vec<String> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    out.sort();
    Ok(out)
}

/// Waits until `check` holds, polling every 250 ms for at most [`SWITCH`].
async fn until(
    what: &str,
    op: &Operator,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > SWITCH {
            anyhow::bail!(
                "timed out after {SWITCH:?} waiting for {what} (last error: {last_err:?})\noperator log:\n{}",
                op.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The sorted names of the CA and TLS Secrets the operator generates for a
/// manifest without cert-manager: each needs a Certificate of that name with it.
fn expected_certificates(manifest: &str, namespace: &str) -> anyhow::Result<Vec<String>> {
    let mut sp: ScalingPhase = serde_yaml::from_str(manifest)?;
    sp.metadata.namespace = Some(namespace.into());
    sp.metadata.uid = Some("e2e".into());
    let world = World {
        node_regions: vec!["ap-south".into(), "eu-west".into(), "us-east".into()],
        integrations: Integrations::default(),
    };
    let (v, profile) = validate::validate(&sp, &world).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out: Vec<String> = render::render(&v, &profile)
        .generated_secrets
        .into_iter()
        .filter(|s| !matches!(s.content, SecretContent::Credentials { .. }))
        .map(|s| s.name)
        .collect();
    out.sort();
    Ok(out)
}

async fn app_annotated(ns: &TestNamespace, sp: &str) -> anyhow::Result<bool> {
    let d = ns.api::<Deployment>().get(&format!("{sp}-app")).await?;
    Ok(d.spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .is_some_and(|a| a.contains_key("prometheus.io/scrape")))
}

async fn secret_exists(ns: &TestNamespace, name: &str) -> anyhow::Result<bool> {
    Ok(ns.api::<Secret>().get_opt(name).await?.is_some())
}

#[tokio::test]
async fn integrations_follow_their_crds_at_run_time() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    // Left over from an interrupted run: start from a cluster without them.
    delete_crds(&client, &stub_names()).await?;
    let ns = TestNamespace::new(&client, "e2e-integrations").await?;
    let op = Operator::start(&ns.name).await?;
    op.wait_log("optional integrations detected", Duration::from_secs(30))
        .await?;

    // 1. Without the CRDs: generated Secrets, annotations, an HPA.
    let global = std::fs::read_to_string(repo_root().join("examples/phase-4-global.yaml"))?;
    ns.apply_sp(&global).await?;
    ns.wait_ready("shop", 4, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_text()))?;
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    assert!(
        hpas.get_opt("shop-app").await?.is_some(),
        "HPA without KEDA"
    );
    assert!(secret_exists(&ns, "shop-app-tls").await?);
    assert!(app_annotated(&ns, "shop").await?);

    // 2. Install the CRDs while the operator runs.
    let stubs = StubCrds::install(&client).await?;
    let certificates = third_party(&ns, &client, ThirdParty::Certificate);
    let issuers = third_party(&ns, &client, ThirdParty::Issuer);
    let monitors = third_party(&ns, &client, ThirdParty::ServiceMonitor);
    let scaled = third_party(&ns, &client, ThirdParty::ScaledObject);
    until("KEDA replaces the HPA", &op, async || {
        Ok(
            scaled.get_opt("shop-app").await?.is_some()
                && hpas.get_opt("shop-app").await?.is_none(),
        )
    })
    .await?;
    let so = scaled.get("shop-app").await?;
    assert_eq!(so.data["spec"]["scaleTargetRef"]["name"], "shop-app");
    assert_eq!(
        so.data["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"],
        0,
        "burst scaling"
    );
    let shop_certs = expected_certificates(&global, &ns.name)?;
    assert!(
        shop_certs.contains(&"shop-ca".to_owned())
            && shop_certs.contains(&"shop-app-tls".to_owned()),
        "{shop_certs:?}"
    );
    until("Certificates for every TLS Secret", &op, async || {
        Ok(names(&certificates, "shop").await? == shop_certs)
    })
    .await?;
    assert_eq!(
        names(&issuers, "shop").await?,
        ["shop-ca", "shop-selfsigned"]
    );
    let app_cert = certificates.get("shop-app-tls").await?;
    assert_eq!(app_cert.data["spec"]["secretName"], "shop-app-tls");
    assert_eq!(app_cert.data["spec"]["issuerRef"]["name"], "shop-ca");
    until("ServiceMonitors replace the annotations", &op, async || {
        Ok(
            // The app, CockroachDB's own endpoint, and the exporters of
            // phase 4's Redis and ClickHouse.
            names(&monitors, "shop").await?
                == [
                    "shop-app",
                    "shop-clickhouse",
                    "shop-cockroach-public",
                    "shop-redis",
                ]
                && !app_annotated(&ns, "shop").await?,
        )
    })
    .await?;
    let svc = ns.api::<Service>().get("shop-cockroach-public").await?;
    assert_eq!(
        svc.labels().get("ladder.dev/scrape").map(String::as_str),
        Some("true"),
        "the ServiceMonitor's selector matches the public Service"
    );
    // The Secrets the pods mount are still there (cert-manager takes them over).
    assert!(secret_exists(&ns, "shop-app-tls").await?);

    // 3. A new ScalingPhase under cert-manager gets Certificates, not
    //    generated TLS Secrets; its credentials are still generated.
    let growth = "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: fresh}\nspec: {phase: 1}\n";
    ns.apply_sp(growth).await?;
    let fresh_certs = expected_certificates(growth, &ns.name)?;
    until("Certificates of a new ScalingPhase", &op, async || {
        Ok(names(&certificates, "fresh").await? == fresh_certs)
    })
    .await?;
    assert!(secret_exists(&ns, "fresh-postgres-credentials").await?);
    for tls in ["fresh-ca", "fresh-app-tls", "fresh-postgres-tls"] {
        assert!(
            !secret_exists(&ns, tls).await?,
            "{tls} generated under cert-manager"
        );
    }

    // 4. Stepping "fresh" down to phase 0 moves data (PostgreSQL → SQLite):
    //    without an approval nothing changes, its Certificates included. A
    //    ScalingPhase created at phase 0 has no TLS, so it gets no
    //    Certificates or Issuers, and its app is scraped over plain HTTP.
    ns.apply_sp(&growth.replace("phase: 1", "phase: 0")).await?;
    let sps = ns.sps();
    until("the demotion held for approval", &op, async || {
        let sp = sps.get("fresh").await?;
        Ok(sp.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "TransitionBlocked"
                    && c.status == "True"
                    && c.reason == "ApprovalRequired"
            })
        }))
    })
    .await?;
    assert_eq!(
        names(&certificates, "fresh").await?,
        fresh_certs,
        "nothing pruned without approval"
    );
    let zero = "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: zero}\nspec: {phase: 0}\n";
    ns.apply_sp(zero).await?;
    ns.wait_ready("zero", 0, TIMEOUT).await?;
    assert!(names(&certificates, "zero").await?.is_empty());
    assert!(names(&issuers, "zero").await?.is_empty());
    let m = monitors.get("zero-app").await?;
    assert_eq!(m.data["spec"]["endpoints"][0]["scheme"], "http");
    ns.apply_sp(growth).await?;
    until("Certificates still there in phase 1", &op, async || {
        Ok(names(&certificates, "fresh").await? == fresh_certs)
    })
    .await?;

    // 5. Delete the CRDs: generated Secrets, annotations and the HPA again.
    stubs.remove(&client).await?;
    until("TLS Secrets generated again", &op, async || {
        Ok(secret_exists(&ns, "fresh-ca").await?
            && secret_exists(&ns, "fresh-app-tls").await?
            && secret_exists(&ns, "fresh-postgres-tls").await?)
    })
    .await?;
    until("HPA and annotations back", &op, async || {
        Ok(hpas.get_opt("shop-app").await?.is_some()
            && app_annotated(&ns, "shop").await?
            && app_annotated(&ns, "fresh").await?)
    })
    .await?;
    let ca = ns.api::<Secret>().get("fresh-ca").await?;
    assert_eq!(ca.type_.as_deref(), Some("kubernetes.io/tls"));
    ns.wait_ready("fresh", 1, TIMEOUT).await?;
    assert!(
        op.log_text().contains("\"cert_manager\":true"),
        "the operator logged the switch"
    );
    ns.delete().await;
    Ok(())
}
