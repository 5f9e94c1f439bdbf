//! The CRDs install, and the apiserver refuses invalid ScalingPhases with a
//! message a human can act on (schema bounds and CEL rules).

use kube::api::{DynamicObject, PostParams};
use ladder_e2e::{TestNamespace, client, install_crds};
use serde_json::json;

#[tokio::test]
async fn crds_install_and_are_served() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-crd").await?;
    let sps = ns.sps().list(&Default::default()).await?;
    assert!(sps.items.is_empty());
    ns.delete().await;
    Ok(())
}

/// (what is wrong, spec, text the refusal must contain)
fn invalid_cases() -> Vec<(&'static str, serde_json::Value, &'static str)> {
    vec![
        (
            "phase above 4",
            json!({"phase": 5}),
            "less than or equal to 4",
        ),
        (
            "negative phase",
            json!({"phase": -1}),
            "greater than or equal to 0",
        ),
        ("missing phase", json!({}), "phase: Required value"),
        (
            "unknown deletion policy",
            json!({"phase": 0, "deletionPolicy": "Maybe"}),
            "supported values: \"Retain\", \"Delete\"",
        ),
        (
            "CockroachDB below quorum",
            json!({"phase": 4, "auth": {"issuerUrl": "https://id.example.com", "clientId": "c"}, "overrides": {"cockroach": {"nodesPerRegion": 2}}}),
            "at least 3 nodes per region",
        ),
        (
            "one app replica in phase 1",
            json!({"phase": 1, "overrides": {"app": {"replicas": 1}}}),
            "at least 2 from phase 1",
        ),
        (
            "two app replicas in phase 0",
            json!({"phase": 0, "overrides": {"app": {"replicas": 2}}}),
            "exactly one app replica",
        ),
        (
            "no read replica in phase 2",
            json!({"phase": 2, "overrides": {"postgres": {"readReplicas": 0}}}),
            "readReplicas must be at least 1",
        ),
        (
            "phase 4 without OIDC",
            json!({"phase": 4}),
            "needs spec.auth",
        ),
        (
            "maxPhase below phase",
            json!({"phase": 2, "autoscale": {"maxPhase": 1}}),
            "must not be below spec.phase",
        ),
        (
            "config key injection",
            json!({"phase": 1, "overrides": {"postgres": {"parameters": {"ssl = off\nwork_mem": "1"}}}}),
            "lower-case identifiers",
        ),
        (
            "config value injection",
            json!({"phase": 1, "overrides": {"postgres": {"parameters": {"work_mem": "1MB'\nssl = off"}}}}),
            "should match",
        ),
        (
            "reserved env name",
            json!({"phase": 0, "app": {"env": [{"name": "LADDER_PHASE", "value": "4"}]}}),
            "reserved for the operator",
        ),
        (
            "privileged port",
            json!({"phase": 0, "app": {"port": 80}}),
            "greater than or equal to 1024",
        ),
        (
            "too many regions",
            json!({"phase": 2, "regions": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}),
            "must have at most 8 items",
        ),
        (
            "duplicate regions",
            json!({"phase": 2, "regions": ["a", "a"]}),
            "Duplicate value",
        ),
        (
            "VCL injection in a path",
            json!({"phase": 3, "edge": {"blockedPaths": ["/a\"; return (pass);"]}}),
            "should match",
        ),
        (
            "image with spaces",
            json!({"phase": 0, "app": {"image": "evil image"}}),
            "should match",
        ),
    ]
}

#[tokio::test]
async fn invalid_scalingphases_are_refused_with_a_clear_message() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-invalid").await?;
    let api = ns.raw_sps();
    let mut refused = 0;
    for (i, (what, spec, expected)) in invalid_cases().into_iter().enumerate() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "ladder.dev/v1alpha1",
            "kind": "ScalingPhase",
            "metadata": {"name": format!("bad-{i}")},
            "spec": spec,
        }))?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => panic!("accepted an invalid ScalingPhase ({what})"),
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{what}: {}", e.message);
                assert!(
                    e.message.contains(expected),
                    "{what}: message {:?} lacks {expected:?}",
                    e.message
                );
                refused += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    assert!(refused >= 8);

    // Resharding: the shard count may change in phase 3 (the operator runs
    // it as a transition onto a new shard map), from a set count or from the
    // default; fewer than 2 shards is refused by the schema.
    let ok: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ladder.dev/v1alpha1", "kind": "ScalingPhase",
        "metadata": {"name": "sharded"},
        "spec": {"phase": 3, "overrides": {"postgres": {"shards": 4}}},
    }))?;
    api.create(&PostParams::default(), &ok).await?;
    let shards = |n: i32| json!({"spec": {"overrides": {"postgres": {"shards": n}}}});
    let merge = kube::api::PatchParams::default();
    api.patch("sharded", &merge, &kube::api::Patch::Merge(&shards(8)))
        .await?;
    let unset: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ladder.dev/v1alpha1", "kind": "ScalingPhase",
        "metadata": {"name": "sharded-default"},
        "spec": {"phase": 3},
    }))?;
    api.create(&PostParams::default(), &unset).await?;
    api.patch(
        "sharded-default",
        &merge,
        &kube::api::Patch::Merge(&shards(2)),
    )
    .await?;
    let err = api
        .patch("sharded", &merge, &kube::api::Patch::Merge(&shards(1)))
        .await
        .expect_err("one shard refused");
    assert!(
        err.to_string().contains("greater than or equal to 2"),
        "{err}"
    );
    let now = api.get("sharded").await?;
    assert_eq!(
        now.data["spec"]["overrides"]["postgres"]["shards"],
        json!(8),
        "the refused change left the object as it was"
    );

    // Transition rule: volumes grow, never shrink.
    let sized: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ladder.dev/v1alpha1", "kind": "ScalingPhase",
        "metadata": {"name": "sized"},
        "spec": {"phase": 1, "overrides": {"postgres": {"storage": {"size": "10Gi"}}}},
    }))?;
    api.create(&PostParams::default(), &sized).await?;
    let patch = json!({"spec": {"overrides": {"postgres": {"storage": {"size": "9Gi"}}}}});
    let err = api
        .patch(
            "sized",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect_err("shrinking refused");
    assert!(err.to_string().contains("never shrink"), "{err}");
    let patch = json!({"spec": {"overrides": {"postgres": {"storage": {"size": "20480Mi"}}}}});
    api.patch(
        "sized",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;

    // Name length: children append suffixes.
    let long: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ladder.dev/v1alpha1", "kind": "ScalingPhase",
        "metadata": {"name": "a".repeat(41)}, "spec": {"phase": 0},
    }))?;
    let err = api
        .create(&PostParams::default(), &long)
        .await
        .expect_err("long name refused");
    assert!(err.to_string().contains("at most 40 characters"), "{err}");
    ns.delete().await;
    Ok(())
}
