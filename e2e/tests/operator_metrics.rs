//! The operator's controller-runtime-compatible metrics, scraped over
//! loopback from a real operator working against the local control plane:
//! present (at zero) before any work, and moving with it: reconciles counted
//! and timed, the queue filling up when more ScalingPhases arrive than the
//! operator reconciles at once and draining after, the client's requests
//! counted by status code and, in `ladder_api_requests_total`, by the
//! apiserver's verb.
//!
//! Needs a KUBECONFIG for the local control plane.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Patch, PatchParams};
use ladder_crds::scalingphase::{ScalingPhase, ScalingPhaseSpec};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, operator_bin, wait_for};

/// The value of one exact series (name and labels as exported), if present.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Sum of every series of a family whose labels contain `needle`.
fn sum_where(text: &str, name: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const DEPTH: &str = r#"workqueue_depth{controller="scalingphase",name="scalingphase"}"#;

#[tokio::test]
async fn controller_runtime_metrics_move_with_the_work() -> anyhow::Result<()> {
    const N: usize = 20;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-metrics").await?;
    // One reconcile at a time, so that N ScalingPhases created at once must queue.
    let op = Operator::start_with(&ns.name, &operator_bin()?, &["--concurrency", "1"], &[]).await?;

    let idle = op.metrics().await?;
    assert_eq!(series(&idle, DEPTH), Some(0.0), "{idle}");
    assert_eq!(
        series(
            &idle,
            r#"controller_runtime_max_concurrent_reconciles{controller="scalingphase"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &idle,
            r#"controller_runtime_reconcile_total{controller="scalingphase",result="success"}"#
        ),
        Some(0.0),
        "series exist before the first reconcile"
    );
    let rest_before = op.metric_sum("rest_client_requests_total").await?;
    assert!(
        rest_before > 0.0,
        "start-up requests (lease, lists) counted"
    );

    let sps = ns.sps();
    let spec: ScalingPhaseSpec = serde_yaml::from_str("phase: 0")?;
    let pp = PatchParams::apply("e2e-metrics").force();
    futures::stream::iter(0..N)
        .map(|i| {
            let (sps, pp, spec) = (sps.clone(), pp.clone(), spec.clone());
            async move {
                let name = format!("m-{i:02}");
                let sp = ScalingPhase::new(&name, spec);
                sps.patch(&name, &pp, &Patch::Apply(&sp)).await
            }
        })
        .buffer_unordered(N)
        .try_collect::<Vec<_>>()
        .await?;

    // Scrape while they are worked through; remember the deepest queue seen.
    let start = Instant::now();
    let mut deepest = 0.0f64;
    loop {
        let text = op.metrics().await?;
        deepest = deepest.max(series(&text, DEPTH).unwrap_or(0.0));
        let ready = sps
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == N {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "only {ready}/{N} Ready after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        deepest >= 2.0,
        "{N} ScalingPhases created at once with one worker must queue; deepest workqueue_depth seen: {deepest}"
    );

    // Once idle, the queue drains to zero.
    wait_for("workqueue_depth back to 0", Duration::from_secs(60), || {
        let op = &op;
        async move { Ok((series(&op.metrics().await?, DEPTH) == Some(0.0)).then_some(())) }
    })
    .await?;

    let text = op.metrics().await?;
    let reconciles = sum_where(
        &text,
        "controller_runtime_reconcile_total",
        r#"controller="scalingphase""#,
    );
    assert!(
        reconciles >= N as f64,
        "at least one reconcile each: {reconciles}"
    );
    let timed = series(
        &text,
        r#"controller_runtime_reconcile_time_seconds_count{controller="scalingphase"}"#,
    )
    .unwrap_or(0.0);
    assert_eq!(timed, reconciles, "every reconcile is timed");
    assert_eq!(
        series(
            &text,
            r#"controller_runtime_active_workers{controller="scalingphase"}"#
        ),
        Some(0.0)
    );
    let adds = series(
        &text,
        r#"workqueue_adds_total{controller="scalingphase",name="scalingphase"}"#,
    )
    .unwrap_or(0.0);
    assert!(adds >= N as f64, "each new ScalingPhase was added: {adds}");
    assert_eq!(
        series(
            &text,
            r#"workqueue_queue_duration_seconds_count{controller="scalingphase",name="scalingphase"}"#
        ),
        Some(reconciles),
        "every reconcile left the queue once"
    );
    let rest_ok = sum_where(&text, "rest_client_requests_total", r#"code="20"#);
    assert!(
        rest_ok > rest_before,
        "answered requests counted by code: {rest_ok}"
    );
    let applies = sum_where(&text, "ladder_api_requests_total", r#"verb="APPLY""#);
    let status_patches = sum_where(
        &text,
        "ladder_api_requests_total",
        r#"resource="scalingphases/status""#,
    );
    assert!(
        applies >= N as f64 && status_patches >= N as f64,
        "server-side applies {applies} and status patches {status_patches}, at least one each per ScalingPhase"
    );
    // Every request sent is answered (or failed) once: the two counts agree
    // but for requests in flight at the scrape.
    let sent = sum_where(&text, "ladder_api_requests_total", "");
    let answered = sum_where(&text, "rest_client_requests_total", "");
    assert!(
        answered <= sent && sent - answered <= 5.0,
        "sent {sent}, answered {answered}"
    );

    ns.delete().await; // while the operator runs, to clear the finalizers
    drop(op);
    Ok(())
}
