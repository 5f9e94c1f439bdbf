//! `ladder-app migrate --from <tier> --to <tier>`: copies links and clicks between any two tiers,
//! verifies the copy, and cuts the running app over, without losing or duplicating an
//! acknowledged write, and survives being killed at any point. Run by hand, or as a Kubernetes
//! Job during a data-tier phase change (the operator's contract is in docs/migration.md).
//!
//! ## Protocol (in more detail in docs/migration.md)
//! 0. **Claim the target.** The migrator fences the target for itself (a retained old tier
//!    that still points elsewhere stays as it is), so nothing but the migrator writes to it
//!    before the cut-over.
//! 1. **Copy (live).** The app keeps serving from the source. The migrator walks every source
//!    partition in `seq` order (`seq` grows on every insert, update and delete; deletes are
//!    tombstones) in batches, upserting into the target (routed by the *target's* partitioning),
//!    and saves a checkpoint (per-partition cursor) in the target after every batch. A row
//!    whose old and new partitions are one database (an in-place resharding reusing a shard)
//!    is already in place and never written: writing the scanned copy back would overwrite an
//!    update the app committed meanwhile (see `Placement`). Each pass
//!    stops at the partition's *watermark* (see `MigrationStore::watermark`), so a row whose
//!    `seq` was taken before another's but committed after it is never skipped.
//! 2. **Fence.** The migrator fences every source partition with a *lease* that it renews
//!    while it runs. The fence's UPDATE waits for in-flight writes; every later write is
//!    refused with 503 (not acknowledged). Reads and redirects keep working.
//! 3. **Catch up** the rows past each cursor and replace the target's click counts.
//! 4. **Verify** per table and target partition (count + order-independent checksum). A
//!    mismatch unfences the source and exits 2.
//! 5. **Cut over.** The verification is saved in the checkpoint, the target's pointer (if it
//!    was a retained old tier) is dropped while it stays fenced, then every source partition
//!    gets `moved_to` = the target, the **commit point**: from the first partition so marked,
//!    every run of this migration only finishes the cut-over (never copies, verifies or
//!    unfences again). Then the target is unfenced and the checkpoint says `Done`.
//!
//! ## Crash safety
//! A rerun reads the source's fence rows before anything else: a source cut over by this
//! migration is finished (remaining partitions pointed at the target, target unfenced), never
//! unfenced and never copied from again, so target rows written after the cut-over are never
//! overwritten. Otherwise it resumes from the checkpoint, taking the fence over at once (same
//! migration) and re-verifying. `LADDER_MIGRATE_CRASH_AT=<point>` (test only; see
//! [`CRASH_POINTS`]) aborts the process at a named point, and `app/tests/migrate.rs` kills and
//! reruns at every one.
//!
//! ## The lease
//! The fence row records its holder (`<migration id> <run id>`; the migration id hashes both
//! tiers' identities, so the access path does not matter) and when the lease ends. A dead
//! migrator's lease runs out: writers then get [`store::StoreError::FenceExpired`] (HTTP 503,
//! code `migration_stalled`) instead of a plain "retry shortly"; writes stay refused, because
//! the dead run may have copied and even half cut over. A rerun of the same migration takes the
//! fence over at once; another migration only once the lease has expired; `--abort` drops the
//! fence of a migration that was not cut over.

mod result;
mod sweep;
mod verify;

pub use result::{MAX_BYTES, MigrateResult, Outcome, Report};
pub use sweep::{SweepArgs, SweepReport, run_sweep, sweep};
pub use verify::{Check, TableResult, Tally, Verification, verify};

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::store::{self, Claim, Holder, LinkRow, MigrationStore, StoreOptions, StoreSpec};

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The tier to copy from (same syntax as `serve --store`).
    #[arg(long, env = "LADDER_MIGRATE_FROM")]
    pub from: StoreSpec,
    /// The tier to copy to.
    #[arg(long, env = "LADDER_MIGRATE_TO")]
    pub to: StoreSpec,
    /// Rows per copy batch (one checkpoint per batch).
    #[arg(long, env = "LADDER_MIGRATE_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: i64,
    /// Pause between batches, to bound the load the copy adds to the source.
    #[arg(long, env = "LADDER_MIGRATE_BATCH_DELAY_MS", default_value_t = 0)]
    pub batch_delay_ms: u64,
    /// Live copy passes before fencing (each catches up with writes made during the previous).
    #[arg(long, env = "LADDER_MIGRATE_PASSES", default_value_t = 3)]
    pub passes: u32,
    /// Copy and verify, but do not fence or cut over (a dry run of the copy).
    #[arg(long, env = "LADDER_MIGRATE_NO_CUTOVER")]
    pub no_cutover: bool,
    /// Length of the fence's lease; the migrator renews it every third of it while it runs.
    #[arg(long, env = "LADDER_MIGRATE_LEASE_TTL_MS", default_value_t = 30_000)]
    pub lease_ttl_ms: u64,
    /// Write the result as JSON here at exit (e.g. /dev/termination-log).
    #[arg(long, env = "LADDER_MIGRATE_RESULT_FILE")]
    pub result_file: Option<std::path::PathBuf>,
    /// Give up this migration: drop the source's fence (refused once it was cut over; migrate
    /// back with --from and --to swapped instead).
    #[arg(long, env = "LADDER_MIGRATE_ABORT")]
    pub abort: bool,
    /// Password for PostgreSQL URLs that carry none (as `serve --db-password`).
    #[arg(long, env = ladder_crds::contract::env::DB_PASSWORD, hide_env_values = true)]
    pub db_password: Option<String>,
}

/// Test only: `LADDER_MIGRATE_CRASH_AT=<point>` aborts the process (SIGABRT, no cleanup, no
/// result file) when the run reaches that point, as a SIGKILL there would.
pub const CRASH_AT_ENV: &str = "LADDER_MIGRATE_CRASH_AT";

/// Every point [`CRASH_AT_ENV`] can name, in the order a migration passes them.
pub const CRASH_POINTS: &[&str] = &[
    // The target is fenced for the copy; nothing copied.
    "target-claimed",
    // The first live batch is copied and checkpointed.
    "copy-batch",
    // The source is fenced; the checkpoint still says Copy.
    "source-fenced",
    // The checkpoint says Fenced; nothing caught up.
    "fenced-checkpoint",
    // Delta and clicks copied; not verified.
    "caught-up",
    // Verified, the verification saved with phase CuttingOver; nothing cut over.
    "verified",
    // The target's old pointer dropped (it stays fenced for us).
    "target-detached",
    // The first source partition points at the target: the cut-over is decided.
    "first-partition-cut-over",
    // Every source partition points at the target; the target is still fenced.
    "cut-over",
    // The target takes writes; the checkpoint does not say Done yet.
    "target-released",
    // The checkpoint says Done; the result file is not written.
    "done",
    // Verification failed and the checkpoint was reset; the source is still fenced.
    "verification-failed",
];

fn crash_point(point: &str) {
    debug_assert!(CRASH_POINTS.contains(&point), "{point}");
    if std::env::var(CRASH_AT_ENV).is_ok_and(|p| p == point) {
        eprintln!("{CRASH_AT_ENV}={point}: aborting");
        std::process::abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Phase {
    Copy,
    Fenced,
    /// Verified; the cut-over may have started (the source's fence rows say whether).
    CuttingOver,
    Done,
}

/// Saved in the target after every batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    phase: Phase,
    /// Per source partition: the highest `seq` copied.
    cursors: Vec<i64>,
    copied: u64,
    /// The verification that allowed the cut-over (reported again by a rerun that finishes it).
    #[serde(default)]
    verification: Option<Vec<TableResult>>,
}

impl Checkpoint {
    fn fresh(partitions: usize) -> Self {
        Checkpoint {
            phase: Phase::Copy,
            cursors: vec![0; partitions],
            copied: 0,
            verification: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("verification failed: {0}")]
    Verify(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn se(err: store::StoreError) -> anyhow::Error {
    anyhow::Error::new(err)
}

/// The binary's entry point: exit 0 on success, 2 when verification fails, 1 on other errors;
/// the result file (if asked for) says the same in JSON.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let mut report = Report::default();
    let outcome = match migrate(&args, &mut report).await {
        Ok(outcome) => {
            tracing::info!(outcome = ?outcome, message = %report.message, "migration finished");
            outcome
        }
        Err(MigrateError::Verify(detail)) => {
            tracing::error!(
                detail,
                "migration verification failed; the source stays authoritative"
            );
            report.message = format!("verification failed: {detail}");
            Outcome::VerificationFailed
        }
        Err(MigrateError::Other(err)) => {
            let text = format!("{err:#}");
            tracing::error!(error = %text, "migration failed; rerun to resume");
            report.message = text;
            Outcome::Error
        }
    };
    if let Some(path) = &args.result_file {
        let text = report.render(outcome);
        if let Err(err) = std::fs::write(path, text) {
            tracing::error!(error = %err, path = %path.display(), "cannot write the result file");
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::from(outcome.exit_code()))
}

/// A unique id for this run, with the host (the Job's pod) for people reading the fence row.
fn run_id() -> String {
    let host: String = std::env::var("HOSTNAME")
        .unwrap_or_else(|_| "local".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .collect();
    format!("{:016x}@{host}", rand::random::<u64>())
}

/// Renews this run's leases on both tiers until dropped.
struct Renewer(tokio::task::JoinHandle<()>);

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Renewer {
    fn spawn(
        src: Arc<dyn MigrationStore>,
        dst: Arc<dyn MigrationStore>,
        holder: Holder,
        ttl_ms: i64,
    ) -> Self {
        Renewer(tokio::spawn(async move {
            let every = Duration::from_millis((ttl_ms / 3).max(10) as u64);
            loop {
                tokio::time::sleep(every).await;
                // Rows this run does not hold are left alone (the UPDATE matches nothing); a
                // lost lease shows at the cut-over, which checks the holder atomically.
                for tier in [&src, &dst] {
                    for part in 0..tier.partitions() {
                        if let Err(err) = tier.renew_fence(part, &holder, ttl_ms).await {
                            tracing::warn!(error = %err, part, "renewing the fence lease failed");
                        }
                    }
                }
            }
        }))
    }
}

/// Runs (or resumes, or finishes) one migration, filling `report` as it goes.
pub async fn migrate(args: &MigrateArgs, report: &mut Report) -> Result<Outcome, MigrateError> {
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let opts = StoreOptions {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
        password: args.db_password.clone(),
        ..StoreOptions::default()
    };
    let src = store::open_for_migration(&args.from, &opts, metrics.clone())
        .await
        .context("opening the source")?;
    let dst = store::open_for_migration(&args.to, &opts, metrics)
        .await
        .context("opening the target")?;
    let src_id = src
        .identity()
        .await
        .map_err(se)
        .context("identifying the source")?;
    let dst_id = dst
        .identity()
        .await
        .map_err(se)
        .context("identifying the target")?;
    if src_id == dst_id {
        return Err(anyhow::anyhow!(
            "--from and --to are the same database ({src_id}), whatever path reaches it"
        )
        .into());
    }
    let migration = format!(
        "mig-{:016x}",
        store::fnv1a64(format!("{src_id}\u{1f}{dst_id}").as_bytes())
    );
    let placement = Placement::read(&*src, &*dst).await?;
    let holder = Holder {
        migration: migration.clone(),
        run: run_id(),
    };
    let ttl = args.lease_ttl_ms.max(100) as i64;
    let mut cp = match dst.checkpoint_get(&migration).await.map_err(se)? {
        Some(text) => serde_json::from_str::<Checkpoint>(&text).context("corrupt checkpoint")?,
        None => Checkpoint::fresh(src.partitions()),
    };
    tracing::info!(from = %args.from.redacted(), to = %args.to.redacted(), %src_id, %dst_id,
        holder = %holder.as_stored(), phase = ?cp.phase, copied = cp.copied, "migration starting");

    // The source's fence rows decide, not the checkpoint: a cut-over once decided is finished.
    let controls = src.controls().await.map_err(se)?;
    if let Some(other) = controls
        .iter()
        .find(|c| c.moved_to.is_some() && !c.held_by(&migration))
    {
        return Err(anyhow::anyhow!(
            "the source was cut over by another migration (holder {}, to {}); migrate from that tier instead",
            other.lease_holder.as_deref().unwrap_or("unknown"),
            other
                .moved_to
                .as_deref()
                .map(store::redact_url)
                .unwrap_or_default()
        )
        .into());
    }
    if controls.iter().any(|c| c.moved_by(&migration)) {
        if args.abort {
            return Err(anyhow::anyhow!(
                "the source was cut over already: a migration cannot be aborted after its cut-over; migrate back with --from and --to swapped"
            )
            .into());
        }
        report.tables = cp.verification.clone().unwrap_or_default();
        report.verified = cp.verification.is_some();
        let done = cp.phase == Phase::Done;
        finish_cut_over(&*src, &*dst, &holder, args, &mut cp).await?;
        report.message = match done {
            true => "already cut over; nothing to do".into(),
            false => "finished a cut-over an earlier run had decided".into(),
        };
        return Ok(Outcome::CutOver);
    }
    if args.abort {
        return abort(&*src, &*dst, &holder, &mut cp, report).await;
    }
    if cp.phase == Phase::Done {
        // Left by an earlier migration between the same tiers that was reversed since.
        cp = Checkpoint::fresh(src.partitions());
    }
    if cp.cursors.len() != src.partitions() {
        cp.cursors.resize(src.partitions(), 0);
    }

    // Step 0: the target is ours until the cut-over. A retained old tier keeps its fence and
    // pointer (its pointer is dropped just before the cut-over).
    for part in 0..dst.partitions() {
        if let Claim::HeldBy { holder, until_ms } = dst
            .claim_fence(part, &holder, ttl, false)
            .await
            .map_err(se)?
        {
            return Err(anyhow::anyhow!(
                "the target is fenced by another migration ({holder}) whose lease runs until {until_ms} ms since the epoch; rerun after it, or abort that migration"
            )
            .into());
        }
    }
    let _renewer = Renewer::spawn(src.clone(), dst.clone(), holder.clone(), ttl);
    crash_point("target-claimed");

    if cp.phase == Phase::Copy {
        for pass in 0..args.passes.max(1) {
            let copied =
                copy_pass(&*src, &*dst, &placement, &migration, &mut cp, args, false).await?;
            tracing::info!(pass, copied, total = cp.copied, "live copy pass done");
            if copied < args.batch_size as u64 {
                break;
            }
        }
        if args.no_cutover {
            verify::reconcile(&*src, &*dst).await?;
            let v = verify(&*src, &*dst).await?;
            report.tables = v.tables();
            report.verified = v.ok();
            return match v.ok() {
                true => {
                    report.message = "copied and verified; nothing fenced or cut over".into();
                    Ok(Outcome::Verified)
                }
                false => Err(MigrateError::Verify(v.summary())),
            };
        }
        fence_source(&*src, &holder, ttl).await?;
        crash_point("source-fenced");
        cp.phase = Phase::Fenced;
        save(&*dst, &migration, &cp).await?;
        crash_point("fenced-checkpoint");
        tracing::info!("source fenced");
    } else {
        // Resumed behind the fence or in the cut-over: take the fence over (same migration)
        // and verify again, since nothing the dead run saw can be trusted to still hold.
        fence_source(&*src, &holder, ttl).await?;
        tracing::info!(phase = ?cp.phase, "resumed; source fenced again");
    }
    let fenced_at = Instant::now();

    let delta = copy_pass(&*src, &*dst, &placement, &migration, &mut cp, args, true).await?;
    let clicks = verify::copy_clicks(&*src, &*dst).await?;
    tracing::info!(
        links = delta,
        click_rows = clicks,
        "caught up behind the fence"
    );
    crash_point("caught-up");
    let v = verify(&*src, &*dst).await?;
    report.tables = v.tables();
    report.verified = v.ok();
    if !v.ok() {
        // Reset first, then give the source back: a rerun copies everything again from the
        // start (upserts skip unchanged rows), so whatever went wrong is not carried over.
        cp = Checkpoint::fresh(src.partitions());
        save(&*dst, &migration, &cp).await?;
        crash_point("verification-failed");
        for part in 0..src.partitions() {
            src.release_fence(part, &holder).await.map_err(se)?;
        }
        report.fence = fenced_at.elapsed();
        return Err(MigrateError::Verify(v.summary()));
    }
    cp.phase = Phase::CuttingOver;
    cp.verification = Some(v.tables());
    save(&*dst, &migration, &cp).await?;
    crash_point("verified");
    // A retained old tier loses its pointer now (it stays fenced, for us), so that no app
    // instance bounces between the two tiers while the source's pointer is being written.
    for part in 0..dst.partitions() {
        if dst
            .claim_fence(part, &holder, ttl, true)
            .await
            .map_err(se)?
            != Claim::Granted
        {
            return Err(anyhow::anyhow!("lost the target's fence to another migration").into());
        }
    }
    crash_point("target-detached");
    finish_cut_over(&*src, &*dst, &holder, args, &mut cp).await?;
    report.fence = fenced_at.elapsed();
    report.message = format!(
        "cut over: {} links and {} click rows caught up behind the fence",
        delta, clicks
    );
    Ok(Outcome::CutOver)
}

/// Fences every source partition for `holder`; on refusal, drops what it took and fails.
async fn fence_source(src: &dyn MigrationStore, holder: &Holder, ttl: i64) -> anyhow::Result<()> {
    for part in 0..src.partitions() {
        let refusal = match src
            .claim_fence(part, holder, ttl, false)
            .await
            .map_err(se)?
        {
            Claim::Granted => continue,
            Claim::Moved(to) => format!(
                "source partition {part} was cut over already (to {})",
                store::redact_url(&to)
            ),
            Claim::HeldBy { holder, until_ms } => format!(
                "another migration ({holder}) holds the fence of source partition {part}; its lease runs until {until_ms} ms since the epoch"
            ),
        };
        for taken in 0..part {
            src.release_fence(taken, holder).await.map_err(se)?;
        }
        anyhow::bail!(refusal);
    }
    Ok(())
}

/// From the commit point on: point every source partition at the target (idempotent), unfence
/// the target, record `Done`. Never copies, verifies or unfences the source.
async fn finish_cut_over(
    src: &dyn MigrationStore,
    dst: &dyn MigrationStore,
    holder: &Holder,
    args: &MigrateArgs,
    cp: &mut Checkpoint,
) -> anyhow::Result<()> {
    // The pointer never holds a password: every app instance connects to the target with its
    // own (`LADDER_DB_PASSWORD`; the operator must give the migration Job the same Secret).
    let pointer = args.to.without_passwords().to_string();
    for part in 0..src.partitions() {
        anyhow::ensure!(
            src.cut_over(part, holder, &pointer).await.map_err(se)?,
            "source partition {part} is no longer fenced by this migration; not cutting over"
        );
        if part == 0 {
            crash_point("first-partition-cut-over");
        }
    }
    crash_point("cut-over");
    for part in 0..dst.partitions() {
        // False when an earlier run released it already.
        dst.release_fence(part, holder).await.map_err(se)?;
    }
    crash_point("target-released");
    cp.phase = Phase::Done;
    save(dst, &holder.migration, cp).await?;
    crash_point("done");
    tracing::info!("cut over");
    Ok(())
}

/// `--abort`: drops the source's fence of this migration (the target stays fenced: a retained
/// old tier must not become writable beside the source) and resets the checkpoint.
async fn abort(
    src: &dyn MigrationStore,
    dst: &dyn MigrationStore,
    holder: &Holder,
    cp: &mut Checkpoint,
    report: &mut Report,
) -> Result<Outcome, MigrateError> {
    let mut released = 0;
    for part in 0..src.partitions() {
        released += src.release_fence(part, holder).await.map_err(se)? as usize;
    }
    *cp = Checkpoint::fresh(src.partitions());
    save(dst, &holder.migration, cp).await?;
    report.message = format!(
        "aborted: the fence of {released} of {} source partitions dropped",
        src.partitions()
    );
    Ok(Outcome::Aborted)
}

async fn save(dst: &dyn MigrationStore, id: &str, cp: &Checkpoint) -> anyhow::Result<()> {
    let text = serde_json::to_string(cp)?;
    dst.checkpoint_put(id, &text).await.map_err(se)
}

/// Where each partition of both tiers lives ([`MigrationStore::partition_identity`]), read once
/// per run. An in-place resharding reuses shards: a row whose old and new partitions are one
/// database is already in place. Writing the scanned copy back would race the app: an update
/// committed between the scan and the write would be overwritten by the older copy (with a
/// fresh seq, so every later pass and the verification would agree with it), and an
/// acknowledged write would be lost.
struct Placement {
    src: Vec<String>,
    dst: Vec<String>,
}

impl Placement {
    async fn read(src: &dyn MigrationStore, dst: &dyn MigrationStore) -> anyhow::Result<Self> {
        async fn ids(s: &dyn MigrationStore) -> anyhow::Result<Vec<String>> {
            let mut ids = Vec::with_capacity(s.partitions());
            for part in 0..s.partitions() {
                ids.push(s.partition_identity(part).await.map_err(se)?);
            }
            Ok(ids)
        }
        Ok(Self {
            src: ids(src).await?,
            dst: ids(dst).await?,
        })
    }

    /// Whether a row of source partition `src` changes database when it goes to target
    /// partition `dst`.
    fn moves(&self, src: usize, dst: usize) -> bool {
        self.src.get(src) != self.dst.get(dst)
    }
}

/// One pass over every source partition from its cursor (up to its watermark unless the source
/// is `fenced`); returns rows copied.
async fn copy_pass(
    src: &dyn MigrationStore,
    dst: &dyn MigrationStore,
    placement: &Placement,
    id: &str,
    cp: &mut Checkpoint,
    args: &MigrateArgs,
    fenced: bool,
) -> anyhow::Result<u64> {
    let mut copied = 0;
    for part in 0..src.partitions() {
        // None: the source is fenced, nothing is in flight, copy to the end.
        let upto = match fenced {
            true => None,
            false => Some(src.watermark(part).await.map_err(se)?),
        };
        loop {
            let mut rows = src
                .scan_links(part, cp.cursors[part], args.batch_size)
                .await
                .map_err(se)?;
            if let Some(w) = upto {
                rows.retain(|r| r.seq <= w);
            }
            let Some(last) = rows.last() else { break };
            let last = last.seq;
            // Only rows the source partition owns (a resharded shard may hold strays), and
            // only those that move to another database ([`Placement`]).
            let owned: Vec<LinkRow> = rows
                .into_iter()
                .filter(|r| src.partition_of(&r.code) == part)
                .filter(|r| placement.moves(part, dst.partition_of(&r.code)))
                .collect();
            dst.put_links(&owned).await.map_err(se)?;
            cp.cursors[part] = last;
            cp.copied += owned.len() as u64;
            copied += owned.len() as u64;
            save(dst, id, cp).await?;
            if !fenced {
                crash_point("copy-batch");
            }
            if args.batch_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(args.batch_delay_ms)).await;
            }
        }
    }
    Ok(copied)
}
