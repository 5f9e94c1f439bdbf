//! Two operators on one Lease, and the leader frozen (SIGSTOP) past its
//! Lease: the standby takes over only after the Lease went unrenewed for a
//! whole lease duration, does the work, and when the old leader resumes
//! (SIGCONT) it makes **no write at all**, as the apiserver's audit log
//! records it (every write, by User-Agent: each operator names itself with
//! its identity). The old leader stays up as a standby.
//!
//! The same with a network partition instead of a pause: the leader cut off
//! from the apiserver (and only it: a loopback proxy between them, see
//! `faults::Partition`) steps down by its own deadline, before the Lease
//! runs out, so two leaders never act at once; when the partition heals it
//! writes nothing and stays a standby.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use ladder_e2e::faults::{Partition, writes_by};
use ladder_e2e::{Operator, TestNamespace, client, install_crds, repo_root, wait_for};

const TIMEOUT: Duration = Duration::from_secs(180);
/// The e2e operators' `--lease-seconds`.
const LEASE: Duration = Duration::from_secs(6);

fn example(phase: i32) -> String {
    let name = match phase {
        1 => "phase-1-growth.yaml",
        _ => "phase-2-regional.yaml",
    };
    std::fs::read_to_string(repo_root().join("examples").join(name)).expect("example")
}

/// Deletes `shop-app` (a child every operator of the namespace watches) and
/// waits until the leader has restored it: a reason for any process that
/// believes it leads to write.
async fn restore_deleted_app(ns: &TestNamespace) -> anyhow::Result<()> {
    let deploys = ns.api::<Deployment>();
    let old_uid = deploys.get("shop-app").await?.uid();
    deploys
        .delete("shop-app", &DeleteParams::background())
        .await?;
    wait_for("shop-app restored by the new leader", TIMEOUT, || {
        let deploys = deploys.clone();
        let old_uid = old_uid.clone();
        async move {
            let d = deploys.get_opt("shop-app").await?;
            Ok(d.filter(|d| d.uid() != old_uid).map(|_| ()))
        }
    })
    .await
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_writes_nothing_after_it_resumes() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-paused-leader").await?;
    let (id_a, id_b) = (format!("{}-a", ns.name), format!("{}-b", ns.name));
    let start = Timestamp::now();
    let mut a = Operator::start_with(
        &ns.name,
        &ladder_e2e::operator_bin()?,
        &["--identity", &id_a],
        &[],
    )
    .await?;
    let mut b = Operator::spawn_candidate_with(&ns.name, &["--identity", &id_b], &[])?;
    b.wait_log("standing by", TIMEOUT).await?;

    // The leader works; the audit log sees its writes (so it would see more).
    ns.apply_sp(&example(1)).await?;
    ns.wait_ready("shop", 1, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", a.log_text()))?;
    let before = writes_by(&id_a, start)?;
    anyhow::ensure!(
        !before.is_empty(),
        "the audit log shows no write by the leader {id_a}: is the cluster's audit log on?"
    );
    assert!(
        writes_by(&id_b, start)?.is_empty(),
        "the standby wrote: {:?}",
        writes_by(&id_b, start)?
    );

    // Freeze the leader, and ask for work: only a new leader can do it.
    a.signal("STOP")?;
    let stopped = Instant::now();
    let stopped_at = Timestamp::now();
    ns.apply_sp(&example(2)).await?;
    b.wait_log("became leader", TIMEOUT).await?;
    let waited = stopped.elapsed();
    assert!(
        waited >= LEASE - Duration::from_secs(1),
        "the standby took over {waited:?} after the leader froze: before the Lease ({LEASE:?}) ran out unrenewed"
    );
    ns.wait_ready("shop", 2, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", b.log_text()))?;

    // Resume the old leader, and give it reasons to write: a child deleted
    // under both (each watches it), which the new leader restores.
    a.signal("CONT")?;
    let resumed_at = Timestamp::now();
    restore_deleted_app(&ns).await?;
    a.wait_log("lost the leader Lease", TIMEOUT).await?;
    // A spec change too (a metadata-only edit of the ScalingPhase).
    let touch = serde_json::json!({"metadata": {"annotations": {"e2e.ladder.dev/touch": "1"}}});
    ns.sps()
        .patch("shop", &PatchParams::default(), &Patch::Merge(&touch))
        .await?;
    ns.wait_ready("shop", 2, TIMEOUT).await?;
    // Proving an absence needs a window: two more Leases, during which the
    // resumed process runs (its reflectors catch up, its renew loop wakes).
    tokio::time::sleep(2 * LEASE).await;

    let late = writes_by(&id_a, resumed_at)?;
    assert!(
        late.is_empty(),
        "the old leader wrote after it resumed: {late:#?}\n{}",
        a.log_text()
    );
    let frozen = writes_by(&id_a, stopped_at)?;
    assert!(
        frozen.is_empty(),
        "the old leader wrote while frozen or after: {frozen:#?}"
    );
    let new_leader = writes_by(&id_b, resumed_at)?;
    assert!(
        new_leader
            .iter()
            .any(|w| w.object.starts_with("deployments/") && w.verb != "delete"),
        "the audit log shows the new leader restoring shop-app: {new_leader:#?}"
    );
    assert!(a.is_running(), "the old leader stays up as a standby");
    assert!(b.is_running());
    assert_eq!(a.metric_sum("ladder_leader").await?, 0.0);
    assert_eq!(b.metric_sum("ladder_leader").await?, 1.0);
    let log_a = a.log_text();
    assert!(
        !log_a.contains("leading again"),
        "the old leader took the Lease back:\n{log_a}"
    );
    eprintln!(
        "writes by the old leader: {} before SIGSTOP, 0 after; the standby took over {waited:?} after the freeze; {} writes by the new leader after SIGCONT",
        before.len(),
        new_leader.len()
    );
    drop(a);
    ns.delete().await;
    Ok(())
}

#[tokio::test]
async fn a_leader_cut_off_from_the_apiserver_steps_down_by_its_deadline() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(&client, "e2e-partitioned-leader").await?;
    let (id_a, id_b) = (format!("{}-a", ns.name), format!("{}-b", ns.name));
    let partition = Partition::start().await?;
    let kubeconfig = std::env::temp_dir().join(format!("{}-a.kubeconfig", ns.name));
    partition.kubeconfig(&kubeconfig)?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let start = Timestamp::now();
    let mut a = Operator::start_with(
        &ns.name,
        &ladder_e2e::operator_bin()?,
        &["--identity", &id_a],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .await?;
    let mut b = Operator::spawn_candidate_with(&ns.name, &["--identity", &id_b], &[])?;
    b.wait_log("standing by", TIMEOUT).await?;
    ns.apply_sp(&example(1)).await?;
    ns.wait_ready("shop", 1, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", a.log_text()))?;
    anyhow::ensure!(
        !writes_by(&id_a, start)?.is_empty(),
        "the audit log shows no write by the leader {id_a} through the proxy"
    );

    // Cut the leader off; ask for work only a leader can do.
    partition.cut();
    let cut = Instant::now();
    let cut_at = Timestamp::now();
    ns.apply_sp(&example(2)).await?;
    a.wait_log("lost the leader Lease", TIMEOUT).await?;
    let stepped_down = cut.elapsed();
    b.wait_log("became leader", TIMEOUT).await?;
    let took_over = cut.elapsed();
    // The leader's own deadline comes before the Lease can run out for the
    // standby: there is no moment with two leaders.
    assert!(
        stepped_down < took_over,
        "the cut-off leader stepped down {stepped_down:?} after the cut, the standby took over at {took_over:?}"
    );
    assert!(
        stepped_down <= LEASE,
        "the cut-off leader acted as leader for {stepped_down:?} after its last renewal chance (Lease {LEASE:?})"
    );
    assert!(
        took_over >= LEASE - Duration::from_secs(1),
        "the standby took over {took_over:?} after the cut: before the Lease ({LEASE:?}) ran out"
    );
    ns.wait_ready("shop", 2, TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", b.log_text()))?;

    // Heal, and give the old leader reasons to write: a child deleted (the
    // new leader restores it) and a spec change.
    partition.heal();
    let healed_at = Timestamp::now();
    restore_deleted_app(&ns).await?;
    let touch = serde_json::json!({"metadata": {"annotations": {"e2e.ladder.dev/touch": "1"}}});
    ns.sps()
        .patch("shop", &PatchParams::default(), &Patch::Merge(&touch))
        .await?;
    ns.wait_ready("shop", 2, TIMEOUT).await?;
    tokio::time::sleep(2 * LEASE).await;

    // Nothing from the old leader reached the apiserver after the cut: not
    // a request stuck in the partition, not a write after the heal.
    let late = writes_by(&id_a, cut_at)?;
    assert!(
        late.is_empty(),
        "the cut-off leader wrote after the cut: {late:#?}\n{}",
        a.log_text()
    );
    assert!(
        writes_by(&id_b, healed_at)?
            .iter()
            .any(|w| w.object.starts_with("deployments/") && w.verb != "delete"),
        "the audit log shows the new leader restoring shop-app"
    );
    assert!(a.is_running(), "the old leader stays up as a standby");
    assert!(b.is_running());
    // Its metrics are on loopback, not behind the partition.
    assert_eq!(a.metric_sum("ladder_leader").await?, 0.0);
    assert_eq!(b.metric_sum("ladder_leader").await?, 1.0);
    assert!(
        !a.log_text().contains("leading again"),
        "the old leader took the Lease back:\n{}",
        a.log_text()
    );
    eprintln!(
        "cut-off leader stepped down {stepped_down:?} after the cut; the standby led after {took_over:?}"
    );
    drop(a);
    let _ = std::fs::remove_file(&kubeconfig);
    ns.delete().await;
    Ok(())
}
