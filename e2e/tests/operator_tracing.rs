//! OTLP trace export: the operator, run with `--otlp-endpoint`, sends its
//! reconcile spans over OTLP/HTTP (protobuf) to a tiny receiver this test
//! serves on 127.0.0.1 (`ladder_telemetry::receiver`, shared with the app's
//! tests), which decodes every request.

use std::time::{Duration, Instant};

use ladder_e2e::{Operator, TestNamespace, client, install_crds, operator_bin};
use ladder_telemetry::receiver::Receiver;

#[tokio::test]
async fn reconcile_spans_reach_an_otlp_receiver() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-tracing").await?;
    let endpoint = receiver.endpoint();
    let op = Operator::start_with(
        &ns.name,
        &operator_bin()?,
        &["--otlp-endpoint", &endpoint],
        // Export every 200 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    )
    .await?;
    op.wait_log("exporting traces over OTLP/HTTP", Duration::from_secs(10))
        .await?;
    ns.apply_sp("apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {name: shop}\nspec: {phase: 0}\n")
        .await?;
    ns.wait_ready("shop", 0, Duration::from_secs(120)).await?;

    let start = Instant::now();
    let reconcile = loop {
        let found = receiver
            .spans()
            .iter()
            .find(|s| {
                s.name == "reconcile"
                    && s.attributes.contains(&("name".into(), "shop".into()))
                    && s.attributes
                        .contains(&("namespace".into(), ns.name.clone()))
            })
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no reconcile span of shop after 30 s; requests {:?}; spans {:?}\noperator log:\n{}",
            receiver.requests(),
            receiver.spans(),
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(reconcile.service.as_deref(), Some("ladder-operator"));
    let requests = receiver.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.content_type.as_deref() == Some("application/x-protobuf") && r.bytes > 0),
        "{requests:?}"
    );
    ns.delete().await;
    Ok(())
}
