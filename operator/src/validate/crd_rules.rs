//! The CRD's CEL rules and [`super::validate`] refuse the same specs.
//!
//! The apiserver enforces the `x-kubernetes-validations` rules of the
//! generated schema; the operator checks again because it cannot trust the
//! installed CRD. [`RULES`] pairs every rule (by its message) with specs
//! that break it and the field `validate` must name when refusing them.
//! The tests fail when the schema gains a rule the table lacks, when the
//! table names a rule the schema no longer has, or when `validate` accepts
//! a spec the rule refuses. Transition rules (`oldSelf`) compare with the
//! previous object, which `validate` never sees: the table says so, and the
//! test checks they really are transition rules.

use kube::CustomResourceExt;
use serde_json::Value;

use super::{Invalid, World, validate};
use ladder_crds::contract;
use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};

/// A spec that breaks a rule, and the field `validate` names.
struct Violation {
    /// `metadata.name` (the fixtures' default is `shop`).
    name: &'static str,
    /// The spec, as YAML.
    spec: &'static str,
    /// The field of the refusal.
    field: &'static str,
}

const fn breaks(spec: &'static str, field: &'static str) -> Violation {
    Violation {
        name: "shop",
        spec,
        field,
    }
}

/// What `validate` does about one CEL rule.
enum Mirror {
    /// It refuses these specs.
    Refuses(&'static [Violation]),
    /// A transition rule: only the apiserver has the old object.
    Transition,
}

const AUTH: &str = "auth: {issuerUrl: 'https://id.example.com', clientId: app}";

/// Every CEL rule of the CRD, by message.
const RULES: &[(&str, Mirror)] = &[
    (
        "metadata.name must be at most 40 characters: child objects append suffixes to it",
        Mirror::Refuses(&[Violation {
            name: "a-name-of-forty-one-characters-xxxxxxxxxx",
            spec: "phase: 0",
            field: "metadata.name",
        }]),
    ),
    (
        "overrides.app.replicas must be at least 2 from phase 1 (Growth) up",
        Mirror::Refuses(&[
            breaks(
                "phase: 1\noverrides: {app: {replicas: 1}}",
                "spec.overrides.app.replicas",
            ),
            breaks(
                "phase: 3\noverrides: {app: {replicas: 1}}",
                "spec.overrides.app.replicas",
            ),
        ]),
    ),
    (
        "phase 0 (MVP) runs exactly one app replica: SQLite on one volume cannot be shared",
        Mirror::Refuses(&[breaks(
            "phase: 0\noverrides: {app: {replicas: 2}}",
            "spec.overrides.app.replicas",
        )]),
    ),
    (
        "overrides.postgres.readReplicas must be at least 1 in phases 2 and 3",
        Mirror::Refuses(&[
            breaks(
                "phase: 2\noverrides: {postgres: {readReplicas: 0}}",
                "spec.overrides.postgres.readReplicas",
            ),
            breaks(
                "phase: 3\noverrides: {postgres: {readReplicas: 0}}",
                "spec.overrides.postgres.readReplicas",
            ),
        ]),
    ),
    (
        "phase 4 (Global) needs spec.auth: enterprise OIDC settings for the app",
        Mirror::Refuses(&[breaks("phase: 4", "spec.auth")]),
    ),
    (
        "autoscale.maxPhase must not be below spec.phase",
        Mirror::Refuses(&[breaks(
            "phase: 2\nautoscale: {maxPhase: 1}",
            "spec.autoscale.maxPhase",
        )]),
    ),
    (
        "autoscale.minPhase must not be above autoscale.maxPhase",
        Mirror::Refuses(&[breaks(
            "phase: 0\nautoscale: {minPhase: 3, maxPhase: 2}",
            "spec.autoscale.minPhase",
        )]),
    ),
    (
        "autoscale.demoteBelow must leave a gap of at least 0.1 under autoscale.promoteAt (hysteresis), or the phase would flap",
        Mirror::Refuses(&[
            breaks(
                "phase: 0\nautoscale: {promoteAt: 0.5, demoteBelow: 0.45}",
                "spec.autoscale.demoteBelow",
            ),
            breaks(
                "phase: 0\nautoscale: {promoteAt: 0.3}",
                "spec.autoscale.demoteBelow",
            ),
        ]),
    ),
    (
        "env names starting with LADDER_, and the OTEL_ variables the operator sets (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG), are reserved for the operator",
        Mirror::Refuses(&[
            breaks(
                "phase: 0\napp: {env: [{name: LADDER_PHASE, value: '9'}]}",
                "spec.app.env[0].name",
            ),
            breaks(
                "phase: 0\napp: {env: [{name: A}, {name: OTEL_SERVICE_NAME}]}",
                "spec.app.env[1].name",
            ),
            breaks(
                "phase: 0\napp: {env: [{name: OTEL_RESOURCE_ATTRIBUTES}]}",
                "spec.app.env[0].name",
            ),
            breaks(
                "phase: 0\napp: {env: [{name: OTEL_TRACES_SAMPLER}]}",
                "spec.app.env[0].name",
            ),
            breaks(
                "phase: 0\napp: {env: [{name: OTEL_TRACES_SAMPLER_ARG}]}",
                "spec.app.env[0].name",
            ),
        ]),
    ),
    (
        "volumes can grow but never shrink: size must be at least the previous size",
        Mirror::Transition,
    ),
    (
        "postgres parameter names must be lower-case identifiers (a-z, 0-9, '_', '.'), at most 63 characters",
        Mirror::Refuses(&[
            breaks(
                "phase: 1\noverrides: {postgres: {parameters: {Work_mem: '1'}}}",
                "spec.overrides.postgres.parameters.Work_mem",
            ),
            breaks(
                "phase: 1\noverrides: {postgres: {parameters: {'1x': '1'}}}",
                "spec.overrides.postgres.parameters.1x",
            ),
        ]),
    ),
    (
        "CockroachDB needs at least 3 nodes per region to keep a quorum when one fails",
        Mirror::Refuses(&[breaks(
            "phase: 4\noverrides: {cockroach: {nodesPerRegion: 2}}\nauth: {issuerUrl: 'https://id.example.com', clientId: app}",
            "spec.overrides.cockroach.nodesPerRegion",
        )]),
    ),
];

/// Every `(rule, message)` of the generated CRD's schema.
fn cel_rules() -> Vec<(String, String)> {
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                    for r in rules {
                        let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                        out.push((text("rule"), text("message")));
                    }
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let crd = serde_json::to_value(ScalingPhase::crd()).expect("the CRD serialises");
    let mut out = Vec::new();
    walk(&crd, &mut out);
    out
}

fn refusal(name: &str, spec: &str) -> Option<Invalid> {
    let spec: ScalingPhaseSpec = serde_yaml::from_str(spec).expect("example parses");
    let mut sp = ScalingPhase::new(name, spec);
    sp.metadata.namespace = Some("prod".into());
    sp.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
    let world = World {
        node_regions: vec!["a".into(), "b".into(), "c".into()],
        ..World::default()
    };
    validate(&sp, &world).err()
}

#[test]
fn every_cel_rule_is_in_the_table_and_every_table_entry_in_the_crd() {
    let schema = cel_rules();
    assert!(!schema.is_empty(), "the CRD has CEL rules");
    for (rule, message) in &schema {
        assert!(
            RULES.iter().any(|(m, _)| m == message),
            "CEL rule {rule:?} ({message:?}) has no entry in crd_rules::RULES: \
             add specs it refuses, and make validate refuse them too"
        );
    }
    for (message, _) in RULES {
        assert!(
            schema.iter().any(|(_, m)| m == message),
            "crd_rules::RULES names a rule the CRD no longer has: {message:?}"
        );
    }
}

#[test]
fn validate_refuses_what_each_cel_rule_refuses() {
    let schema = cel_rules();
    for (message, mirror) in RULES {
        let rule = schema
            .iter()
            .find(|(_, m)| m == message)
            .map(|(r, _)| r.as_str())
            .unwrap_or_default();
        match mirror {
            Mirror::Transition => assert!(
                rule.contains("oldSelf"),
                "{message:?} is listed as a transition rule but does not read oldSelf: {rule}"
            ),
            Mirror::Refuses(examples) => {
                assert!(!examples.is_empty(), "{message:?} needs an example");
                for v in *examples {
                    match refusal(v.name, v.spec) {
                        Some(Invalid::Field { field, .. }) => assert_eq!(
                            field, v.field,
                            "{message:?}: validate refused {:?} for another reason",
                            v.spec
                        ),
                        None => panic!("{message:?}: validate accepted {:?}", v.spec),
                    }
                }
            }
        }
    }
}

/// The examples break only their rule: without the offending part, the
/// same phase validates (so a refusal above is not an accident).
#[test]
fn the_examples_bases_are_valid() {
    let global = format!("phase: 4\n{AUTH}");
    for spec in [
        "phase: 0",
        "phase: 1",
        "phase: 2",
        "phase: 3",
        &global,
        "phase: 0\napp: {env: [{name: OTEL_EXPORTER_OTLP_ENDPOINT, value: 'http://c:4318'}]}",
    ] {
        assert_eq!(refusal("shop", spec), None, "{spec}");
    }
}

/// The env rule's CEL text names exactly the reserved names of the contract.
#[test]
fn the_env_rule_names_the_contracts_reserved_names() {
    let schema = cel_rules();
    let (rule, _) = schema
        .iter()
        .find(|(r, _)| r.contains("self.name"))
        .expect("the env name rule");
    assert!(
        rule.contains(&format!(
            "!self.name.startsWith('{}')",
            contract::env::RESERVED_PREFIX
        )),
        "{rule}"
    );
    for name in contract::env::OTEL_SET_BY_OPERATOR {
        assert!(
            rule.contains(&format!("'{name}'")),
            "{name} missing: {rule}"
        );
    }
    assert_eq!(
        rule.matches("'OTEL_").count(),
        contract::env::OTEL_SET_BY_OPERATOR.len(),
        "{rule}"
    );
}

/// A shard count below 2 (or above 64) is refused by the schema's bounds on
/// `overrides.postgres.shards` (the apiserver) and by `validate` alike; any
/// count in bounds may change in phase 3 (a resharding), so no rule refuses
/// a change of it any more.
#[test]
fn shard_counts_out_of_bounds_are_refused_by_the_schema_and_validate() {
    let crd = serde_json::to_value(ScalingPhase::crd()).expect("crd");
    let shards = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["overrides"]["properties"]["postgres"]["properties"]["shards"];
    assert_eq!(shards["minimum"].as_f64(), Some(2.0), "{shards}");
    assert_eq!(shards["maximum"].as_f64(), Some(64.0), "{shards}");
    for bad in [0, 1, 65] {
        let spec = format!("phase: 3\noverrides: {{postgres: {{shards: {bad}}}}}");
        match refusal("shop", &spec) {
            Some(Invalid::Field { field, .. }) => {
                assert_eq!(field, "spec.overrides.postgres.shards", "{bad}")
            }
            None => panic!("validate accepted shards: {bad}"),
        }
    }
    assert!(refusal("shop", "phase: 3\noverrides: {postgres: {shards: 2}}").is_none());
    let rules = cel_rules();
    assert!(
        !rules
            .iter()
            .any(|(r, _)| r.contains("shards") && r.contains("oldSelf")),
        "a CEL rule still refuses a shard-count change: {rules:?}"
    );
}
