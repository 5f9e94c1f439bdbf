//! Golden snapshots of every phase's rendered manifests, and property tests
//! of the renderer over arbitrary specs.

use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};
use ladder_operator::integrations::Integrations;
use ladder_operator::render::{self, Desired};
use ladder_operator::validate::{self, World};

fn world(keda: bool) -> World {
    World {
        node_regions: vec!["ap-south".into(), "eu-west".into(), "us-east".into()],
        integrations: Integrations {
            keda,
            ..Integrations::default()
        },
    }
}

fn fixture(yaml: &str) -> ScalingPhase {
    let spec: ScalingPhaseSpec = serde_yaml::from_str(yaml).expect("fixture parses");
    let mut sp = ScalingPhase::new("shop", spec);
    sp.metadata.namespace = Some("prod".into());
    sp.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
    sp
}

fn rendered(yaml: &str, keda: bool) -> Desired {
    rendered_with(
        yaml,
        Integrations {
            keda,
            ..Integrations::default()
        },
    )
}

fn rendered_with(yaml: &str, integrations: Integrations) -> Desired {
    let sp = fixture(yaml);
    let world = World {
        integrations,
        ..world(false)
    };
    let (v, profile) = validate::validate(&sp, &world).expect("fixture is valid");
    render::render(&v, &profile)
}

const ALL_INTEGRATIONS: Integrations = Integrations {
    keda: true,
    cert_manager: true,
    service_monitors: true,
};

const AUTH: &str =
    "auth: {issuerUrl: 'https://login.example.com/realms/shop', clientId: shop-app}\n";

#[test]
fn phase_0_mvp() {
    insta::assert_snapshot!(rendered("phase: 0", false).to_yaml());
}

#[test]
fn phase_1_growth() {
    insta::assert_snapshot!(rendered("phase: 1", false).to_yaml());
}

#[test]
fn phase_2_regional() {
    let yaml = "phase: 2\nedge: {blockedPaths: [/admin, /wp-login.php], trustedProxyCidrs: [10.244.0.0/16]}\n";
    insta::assert_snapshot!(rendered(yaml, false).to_yaml());
}

#[test]
fn phase_3_national() {
    let yaml = "phase: 3\nedge: {purgeAllowedCidrs: [10.0.0.0/8], trustedProxyCidrs: [10.244.0.0/16], blockedPaths: [/admin], cacheTtlSeconds: 120}\n";
    insta::assert_snapshot!(rendered(yaml, false).to_yaml());
}

#[test]
fn phase_4_global() {
    insta::assert_snapshot!(rendered(&format!("phase: 4\n{AUTH}"), false).to_yaml());
}

#[test]
fn phase_4_global_with_keda() {
    let d = rendered(&format!("phase: 4\n{AUTH}"), true);
    assert!(
        d.horizontal_pod_autoscalers.is_empty(),
        "KEDA replaces the HPA"
    );
    assert_eq!(d.scaled_objects.len(), 1);
}

/// Phase 4 with KEDA, cert-manager and the Prometheus Operator installed:
/// the golden file shows every third-party object that reaches a cluster.
#[test]
fn phase_4_global_with_every_integration() {
    insta::assert_snapshot!(
        rendered_with(&format!("phase: 4\n{AUTH}"), ALL_INTEGRATIONS).to_yaml()
    );
}

/// What each row of ROADMAP.md promises, checked on the rendered objects.
#[test]
fn every_phase_builds_what_the_roadmap_names() {
    let names = |d: &Desired| -> Vec<String> {
        d.objects()
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let p0 = rendered("phase: 0", false);
    assert_eq!(p0.deployments.len(), 1);
    assert_eq!(p0.persistent_volume_claims.len(), 1);
    assert!(p0.stateful_sets.is_empty() && p0.network_policies.is_empty());

    let p1 = names(&rendered("phase: 1", false));
    for n in [
        "StatefulSet/shop-postgres",
        "Deployment/shop-pgbouncer",
        "StatefulSet/shop-redis",
        "Deployment/shop-app",
        "PodDisruptionBudget/shop-app",
        "NetworkPolicy/shop-default-deny",
    ] {
        assert!(p1.contains(&n.to_owned()), "phase 1 lacks {n}: {p1:?}");
    }
    let d1 = rendered("phase: 1", false);
    assert!(d1.deployments.iter().any(|d| d.spec.replicas >= Some(2)));

    let d2 = rendered("phase: 2", false);
    let replicas = d2
        .stateful_sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("shop-postgres-replica"))
        .expect("replicas");
    assert_eq!(replicas.spec.replicas, Some(3));
    assert_eq!(d2.horizontal_pod_autoscalers.len(), 1);
    let app = d2
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("shop-app"))
        .expect("app");
    let spread = app
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.clone())
        .expect("spread");
    assert!(
        spread
            .iter()
            .any(|c| c.topology_key == "topology.kubernetes.io/region"
                && c.when_unsatisfiable == "DoNotSchedule")
    );

    let d3 = rendered("phase: 3", false);
    let shards = d3
        .stateful_sets
        .iter()
        .filter(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("shop-pg-shard-") && !n.ends_with("-replica"))
        })
        .count();
    assert_eq!(shards, 4);
    assert!(d3.config_maps.iter().any(|c| {
        c.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("shop-shard-map-v1-"))
            && c.immutable == Some(true)
    }));
    assert!(
        d3.stateful_sets
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("shop-clickhouse"))
    );
    assert!(d3.config_maps.iter().any(|c| {
        c.data
            .as_ref()
            .is_some_and(|d| d.contains_key("default.vcl"))
    }));

    let d4 = rendered(&format!("phase: 4\n{AUTH}"), false);
    let crdb: Vec<_> = d4
        .stateful_sets
        .iter()
        .filter(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("shop-crdb-"))
        })
        .collect();
    assert_eq!(crdb.len(), 3, "one StatefulSet per region");
    assert!(crdb.iter().all(|s| s.spec.replicas >= Some(3)));
    assert_eq!(d4.jobs.len(), 1);
    assert!(d4.postgres_free());
    let hpa = &d4.horizontal_pod_autoscalers[0];
    assert_eq!(
        hpa.spec
            .behavior
            .as_ref()
            .and_then(|b| b.scale_up.as_ref())
            .and_then(|s| s.stabilization_window_seconds),
        Some(0)
    );
}

trait PostgresFree {
    fn postgres_free(&self) -> bool;
}
impl PostgresFree for Desired {
    fn postgres_free(&self) -> bool {
        !self.stateful_sets.iter().any(|s| {
            s.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get("ladder.dev/tier").map(String::as_str) == Some("postgres"))
        })
    }
}

/// Every object of every phase carries the labels and owner reference, and
/// every pod runs under the restricted profile.
#[test]
fn every_child_is_labelled_owned_and_restricted() {
    for yaml in [
        "phase: 0",
        "phase: 1",
        "phase: 2",
        "phase: 3",
        &format!("phase: 4\n{AUTH}"),
    ] {
        let d = rendered(yaml, false);
        for o in d.objects() {
            let m = &o["metadata"];
            assert_eq!(m["labels"]["app.kubernetes.io/managed-by"], "ladder", "{o}");
            assert_eq!(m["labels"]["ladder.dev/scalingphase"], "shop");
            assert_eq!(m["ownerReferences"][0]["controller"], true);
            assert_eq!(m["ownerReferences"][0]["kind"], "ScalingPhase");
            if let Some(pod) = o["spec"]["template"]["spec"].as_object() {
                assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
                assert_eq!(
                    pod["securityContext"]["seccompProfile"]["type"],
                    "RuntimeDefault"
                );
                let containers = pod["containers"].as_array().into_iter().flatten().chain(
                    pod.get("initContainers")
                        .and_then(|c| c.as_array())
                        .into_iter()
                        .flatten(),
                );
                for c in containers {
                    assert_eq!(
                        c["securityContext"]["allowPrivilegeEscalation"], false,
                        "{}",
                        c["name"]
                    );
                    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
                }
            }
        }
    }
}

#[test]
fn rendering_is_deterministic() {
    let yaml = format!("phase: 4\n{AUTH}");
    assert_eq!(
        rendered(&yaml, false).to_yaml(),
        rendered(&yaml, false).to_yaml()
    );
}

/// Names of the Secrets the pods of `d` mount or read env from.
fn secrets_used(d: &Desired) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for o in d.objects() {
        let Some(pod) = o["spec"]["template"]["spec"].as_object() else {
            continue;
        };
        for vol in pod
            .get("volumes")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(n) = vol["secret"]["secretName"].as_str() {
                out.insert(n.to_owned());
            }
        }
        let containers = ["containers", "initContainers"]
            .iter()
            .filter_map(|k| pod.get(*k)?.as_array())
            .flatten();
        for c in containers {
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(n) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                    out.insert(n.to_owned());
                }
            }
        }
    }
    out
}

fn spec_str<'a>(o: &'a kube::api::DynamicObject, path: &[&str]) -> Option<&'a str> {
    let mut v = &o.data["spec"];
    for p in path {
        v = &v[*p];
    }
    v.as_str()
}

/// With cert-manager, every TLS Secret a pod mounts is written by a
/// Certificate of the same name, signed through the namespaced CA chain;
/// credentials stay generated; without it, nothing of cert-manager appears.
#[test]
fn cert_manager_issues_the_same_secrets() {
    let cm = Integrations {
        cert_manager: true,
        ..Integrations::default()
    };
    for yaml in [
        "phase: 1",
        "phase: 2",
        "phase: 3",
        &format!("phase: 4\n{AUTH}"),
    ] {
        let off = rendered(yaml, false);
        let on = rendered_with(yaml, cm);
        assert!(off.certificates.is_empty() && off.issuers.is_empty());
        // Pods mount exactly the same Secrets either way.
        assert_eq!(secrets_used(&off), secrets_used(&on), "{yaml}");
        let tls: Vec<_> = off
            .generated_secrets
            .iter()
            .filter(|s| !matches!(s.content, render::SecretContent::Credentials { .. }))
            .map(|s| s.name.clone())
            .collect();
        let issued: Vec<_> = on
            .certificates
            .iter()
            .map(|c| spec_str(c, &["secretName"]).expect("secretName").to_owned())
            .collect();
        assert_eq!(
            tls, issued,
            "one Certificate per generated CA/TLS Secret, same order"
        );
        assert!(
            on.generated_secrets
                .iter()
                .all(|s| matches!(s.content, render::SecretContent::Credentials { .. })),
            "only credentials are generated with cert-manager"
        );
        assert_eq!(
            on.generated_secrets.len() + on.certificates.len(),
            off.generated_secrets.len()
        );
        // The chain: self-signed Issuer -> CA Certificate -> CA Issuer -> leaves.
        let issuer = |name: &str| {
            on.issuers
                .iter()
                .find(|i| i.metadata.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no Issuer {name}"))
        };
        let root = issuer("shop-selfsigned");
        assert!(root.data["spec"]["selfSigned"].is_object());
        let ca_cert = &on.certificates[0];
        assert_eq!(ca_cert.data["spec"]["isCA"], true);
        assert_eq!(
            spec_str(ca_cert, &["issuerRef", "name"]),
            Some("shop-selfsigned")
        );
        assert_eq!(
            spec_str(issuer("shop-ca"), &["ca", "secretName"]),
            Some("shop-ca")
        );
        for leaf in &on.certificates[1..] {
            assert_eq!(spec_str(leaf, &["issuerRef", "name"]), Some("shop-ca"));
            assert_eq!(spec_str(leaf, &["issuerRef", "kind"]), Some("Issuer"));
            assert_eq!(leaf.data["spec"]["isCA"], serde_json::Value::Null);
            // The Secret is a credential (never pruned); the Certificate is not.
            assert_eq!(
                leaf.data["spec"]["secretTemplate"]["labels"]["ladder.dev/credential"],
                "true"
            );
            assert!(
                !leaf
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("ladder.dev/credential"))
            );
        }
    }
    // Phase 0 has no TLS, so nothing to issue.
    let p0 = rendered_with("phase: 0", cm);
    assert!(p0.certificates.is_empty() && p0.issuers.is_empty());
}

/// `(scrape port, path)` of every pod template that asks for scraping.
fn scrape_annotations(d: &Desired) -> Vec<(String, String, String)> {
    d.objects()
        .iter()
        .filter_map(|o| {
            let a = o["spec"]["template"]["metadata"]["annotations"].as_object()?;
            (a.get("prometheus.io/scrape")? == "true").then(|| {
                (
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    a["prometheus.io/port"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    a["prometheus.io/path"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
        })
        .collect()
}

/// With the ServiceMonitor CRD, the scrape annotations become one
/// ServiceMonitor per scraped component, each selecting exactly one Service
/// that routes to the annotated port; without it, annotations as before.
#[test]
fn service_monitors_replace_scrape_annotations() {
    let sm = Integrations {
        service_monitors: true,
        ..Integrations::default()
    };
    for (yaml, monitors) in [
        // The app; from phase 1 the data tiers' exporters (PostgreSQL per
        // StatefulSet, PgBouncer, Redis) and ClickHouse's own endpoint.
        ("phase: 0".to_owned(), 1),
        ("phase: 1".to_owned(), 4),
        ("phase: 3".to_owned(), 12),
        (format!("phase: 4\n{AUTH}"), 4),
    ] {
        let off = rendered(&yaml, false);
        let on = rendered_with(&yaml, sm);
        assert!(off.service_monitors.is_empty());
        let annotated = scrape_annotations(&off);
        assert!(!annotated.is_empty(), "{yaml}: the app is always scraped");
        assert!(
            scrape_annotations(&on).is_empty(),
            "{yaml}: annotations left"
        );
        assert_eq!(on.service_monitors.len(), monitors, "{yaml}");
        let mut covered = std::collections::BTreeSet::new();
        for m in &on.service_monitors {
            let selector = m.data["spec"]["selector"]["matchLabels"]
                .as_object()
                .expect("matchLabels");
            let selected: Vec<_> = on
                .services
                .iter()
                .filter(|s| {
                    let labels = s.metadata.labels.clone().unwrap_or_default();
                    selector
                        .iter()
                        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
                })
                .collect();
            assert_eq!(
                selected.len(),
                1,
                "{yaml}: {selector:?} selects {selected:?}"
            );
            let endpoint = &m.data["spec"]["endpoints"][0];
            let port_name = endpoint["port"].as_str().expect("port");
            let spec = selected[0].spec.as_ref().expect("spec");
            let port = spec
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(port_name))
                .expect("the Service has the named port");
            // The annotated workload behind the Service uses the same port and path.
            let pods = spec.selector.clone().unwrap_or_default();
            let behind: Vec<_> = annotated
                .iter()
                .filter(|(workload, p, path)| {
                    *p == port.port.to_string()
                        && Some(path.as_str()) == endpoint["path"].as_str()
                        && on.objects().iter().any(|o| {
                            o["metadata"]["name"] == workload.as_str()
                                && pods.iter().all(|(k, v)| {
                                    o["spec"]["template"]["metadata"]["labels"][k] == v.as_str()
                                })
                        })
                })
                .collect();
            assert!(
                !behind.is_empty(),
                "{yaml}: {port_name} {endpoint} scrapes no annotated pods"
            );
            covered.extend(behind.into_iter().cloned());
            if endpoint["scheme"] == "https" {
                assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["name"], "shop-ca");
            }
        }
        assert_eq!(
            covered,
            annotated.into_iter().collect(),
            "{yaml}: every annotated workload is covered by a ServiceMonitor"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn is_dns_label(s: &str) -> bool {
        validate::is_dns_label(s, 63)
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9._/-]{0,20}",
            ".{0,40}",
            Just("x'\nssl = off".to_owned()),
            Just("\"; return (pass); #".to_owned()),
            Just("/a\r\nb".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Any spec either is refused by validation or renders objects with
        /// valid names and config with no injected line or key.
        #[test]
        fn any_spec_renders_safely(
            name in "[a-z]([a-z0-9-]{0,38}[a-z0-9])?",
            phase in 0i32..=4,
            region in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
            replicas in proptest::option::of(1i32..8),
            shards in proptest::option::of(2i32..9),
            pk in prop_oneof!["[a-z][a-z_.]{0,10}", "[a-z_.A-Z =\n]{1,12}"],
            pv in arb_text(),
            paths in proptest::collection::vec(prop_oneof!["/[a-zA-Z0-9._~-]{0,10}", arb_text()], 0..3),
            cidrs in proptest::collection::vec(prop_oneof!["[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,2}", arb_text()], 0..2),
            env_value in arb_text(),
        ) {
            let spec = serde_json::json!({
                "phase": phase,
                "regions": [region],
                "overrides": {
                    "app": {"replicas": replicas},
                    "postgres": {"shards": shards, "parameters": {pk.clone(): pv.clone()}},
                },
                "edge": {"blockedPaths": paths, "purgeAllowedCidrs": cidrs},
                "app": {"env": [{"name": "GREETING", "value": env_value}]},
                "auth": {"issuerUrl": "https://id.example.com", "clientId": "c"},
            });
            let spec: ScalingPhaseSpec = serde_json::from_value(spec).expect("deserializes");
            let mut sp = ScalingPhase::new(&name, spec);
            sp.metadata.namespace = Some("ns".into());
            sp.metadata.uid = Some("u".into());
            let Ok((v, profile)) = validate::validate(&sp, &world(false)) else {
                // Refused specs are fine; `accepted_share` checks enough get through.
                return Ok(());
            };
            let d = render::render(&v, &profile);
            for o in d.objects() {
                let n = o["metadata"]["name"].as_str().unwrap_or_default();
                prop_assert!(is_dns_label(n) && n.len() <= render::MAX_CHILD_NAME, "bad name {n:?}");
                for (_, l) in o["metadata"]["labels"].as_object().into_iter().flatten() {
                    let l = l.as_str().unwrap_or_default();
                    prop_assert!(l.len() <= 63, "label too long {l:?}");
                }
                if let Some(data) = o["data"].as_object() {
                    for (key, text) in data {
                        let text = text.as_str().unwrap_or_default();
                        prop_assert!(!text.contains('\r'), "{key} has a carriage return");
                        if key == "postgresql.conf" {
                            prop_assert_eq!(text.lines().filter(|l| l.starts_with("ssl =")).count(), 1);
                            for line in text.lines().filter(|l| !l.starts_with('#')) {
                                let (k, _) = line.split_once(" = ").expect("key = value");
                                prop_assert!(validate::is_pg_param_name(k), "injected key {k:?}");
                            }
                        }
                        if key == "default.vcl" {
                            prop_assert_eq!(text.matches("vcl 4.1;").count(), 1);
                            prop_assert!(!text.contains("return (pass); #"), "VCL injection");
                            prop_assert_eq!(text.matches('"').count() % 2, 0);
                        }
                    }
                }
            }
        }
    }
}

/// The property test above is only worth something if many generated specs
/// pass validation: check a few of the shapes it produces are accepted.
#[test]
fn accepted_share() {
    let ok = [
        "phase: 3\noverrides: {postgres: {parameters: {work_mem: \"x'\\\\y\"}}}\nedge: {blockedPaths: [/a.b], purgeAllowedCidrs: [1.2.3.4/8]}",
        "phase: 2\nregions: [r1]\nedge: {blockedPaths: []}",
    ];
    for y in ok {
        let sp = fixture(y);
        assert!(validate::validate(&sp, &world(false)).is_ok(), "{y}");
    }
    let bad = [
        "phase: 3\noverrides: {postgres: {parameters: {work_mem: \"x\\ny = 1\"}}}",
        "phase: 3\noverrides: {postgres: {parameters: {\"Bad Key\": \"1\"}}}",
        "phase: 3\nedge: {purgeAllowedCidrs: [300.1.1.1/8]}",
        "phase: 3\nedge: {blockedPaths: [\"/a\\\" ; return (pass)\"]}",
        "phase: 4",
        "phase: 4\nauth: {issuerUrl: 'https://x', clientId: c}\noverrides: {cockroach: {nodesPerRegion: 2}}",
        "phase: 1\noverrides: {app: {replicas: 1}}",
        "phase: 0\napp: {env: [{name: LADDER_PHASE, value: '9'}]}",
    ];
    for y in bad {
        let sp = fixture(y);
        assert!(
            validate::validate(&sp, &world(false)).is_err(),
            "accepted: {y}"
        );
    }
}

/// Certificate names: a wildcard only as the whole leftmost label, never two.
#[test]
fn certificate_names_have_at_most_one_leftmost_wildcard() {
    for yaml in [
        "phase: 1".to_owned(),
        "phase: 2".to_owned(),
        "phase: 3".to_owned(),
        format!("phase: 4\n{AUTH}"),
    ] {
        let d = rendered(&yaml, false);
        for s in &d.generated_secrets {
            if let render::SecretContent::Tls { dns_names, .. } = &s.content {
                for n in dns_names {
                    let rest = n.strip_prefix("*.").unwrap_or(n);
                    assert!(!rest.contains('*'), "{}: bad name {n}", s.name);
                }
            }
        }
    }
}

/// The app may reach its OIDC issuer on the port the issuer URL names.
#[test]
fn the_app_may_reach_an_oidc_issuer_on_its_own_port() {
    let d = rendered(
        "phase: 4\nauth: {issuerUrl: 'https://login.example.com:8443/realms/shop', clientId: shop-app}\n",
        false,
    );
    let policy = d
        .network_policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("shop-allow-app"))
        .expect("the app's NetworkPolicy");
    let egress_ports: Vec<String> = policy
        .spec
        .as_ref()
        .and_then(|s| s.egress.clone())
        .unwrap_or_default()
        .iter()
        .flat_map(|r| r.ports.clone().unwrap_or_default())
        .filter_map(|p| p.port.map(|p| format!("{p:?}")))
        .collect();
    assert!(
        egress_ports.iter().any(|p| p.contains("8443")),
        "{egress_ports:?}"
    );
}

/// `objects()` (what the golden files hold and the applier applies) walks
/// `Kind::APPLY_ORDER`, and `len()` counts every object of every kind.
#[test]
fn objects_follow_the_one_apply_order() {
    use ladder_operator::render::Kind;
    let d = rendered_with(&format!("phase: 4\n{AUTH}"), ALL_INTEGRATIONS);
    let position = |kind: &str| {
        Kind::APPLY_ORDER
            .iter()
            .position(|k| k.name() == kind)
            .unwrap_or_else(|| panic!("{kind} is not in the apply order"))
    };
    let order: Vec<usize> = d
        .objects()
        .iter()
        .map(|o| position(o["kind"].as_str().unwrap_or_default()))
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    let counted: usize = Kind::APPLY_ORDER.iter().map(|k| d.names(*k).len()).sum();
    assert_eq!(d.len(), counted);
    assert_eq!(d.len(), d.objects().len() + d.generated_secrets.len());
}

/// Every PostgreSQL, PgBouncer and Redis pod runs its exporter (never with a
/// readiness probe: a failing exporter must not take a database out of its
/// Service), is annotated for scraping on the exporter's port, and the
/// monitoring namespaces may reach that port; ClickHouse serves its own.
#[test]
fn data_tiers_are_scraped_through_their_exporters() {
    let d = rendered("phase: 3", false);
    let expect = [
        ("postgres", "postgres-exporter", 9187),
        ("pgbouncer", "pgbouncer-exporter", 9127),
        ("redis", "redis-exporter", 9121),
        ("clickhouse", "", 9363),
    ];
    for (tier, exporter, port) in expect {
        let workloads: Vec<serde_json::Value> = d
            .objects()
            .into_iter()
            .filter(|o| {
                (o["kind"] == "StatefulSet" || o["kind"] == "Deployment")
                    && o["metadata"]["labels"]["ladder.dev/tier"] == tier
            })
            .collect();
        assert!(!workloads.is_empty(), "no {tier} workload");
        for w in &workloads {
            let t = &w["spec"]["template"];
            assert_eq!(
                t["metadata"]["annotations"]["prometheus.io/port"],
                port.to_string(),
                "{tier}"
            );
            let containers = t["spec"]["containers"].as_array().expect("containers");
            if exporter.is_empty() {
                continue;
            }
            let c = containers
                .iter()
                .find(|c| c["name"] == exporter)
                .unwrap_or_else(|| panic!("{} has no {exporter}", w["metadata"]["name"]));
            assert!(
                c["readinessProbe"].is_null(),
                "{exporter} has a readiness probe"
            );
            assert_eq!(c["ports"][0]["containerPort"], port);
        }
        let allowed = d.network_policies.iter().any(|p| {
            let p = serde_json::to_value(p).expect("json");
            p["spec"]["podSelector"]["matchLabels"]["ladder.dev/tier"] == tier
                && p["spec"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| {
                        r["from"][0]["namespaceSelector"]["matchLabels"]["ladder.dev/monitoring"]
                            == "true"
                            && r["ports"][0]["port"] == port
                    })
        });
        assert!(allowed, "monitoring cannot reach {tier}:{port}");
    }
    let ch = d
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("shop-clickhouse-config"))
        .expect("ClickHouse config");
    assert!(
        ch.data.as_ref().expect("data")["ladder.xml"].contains("<port>9363</port>"),
        "ClickHouse serves its metrics"
    );
    // Phase 0 has no data tier to export.
    let p0 = rendered("phase: 0", false);
    assert!(
        p0.objects()
            .iter()
            .all(|o| !o.to_string().contains("-exporter"))
    );
}
