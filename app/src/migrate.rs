//! `ladder-app migrate --from <tier> --to <tier>`: copies links and clicks between any two tiers,
//! verifies the copy, and cuts the running app over, without losing or duplicating an
//! acknowledged write. The operator runs it as a Job during a data-tier phase change.
//!
//! ## Protocol (also in docs/migration.md)
//! 1. **Copy (live).** The app keeps serving from the source. The migrator walks every source
//!    partition in `seq` order (`seq` grows on every insert, update and delete; deletes are
//!    tombstones) in batches, upserting into the target (routed by the *target's* partitioning),
//!    and saves a checkpoint (per-partition cursor) in the target after every batch. Killed at any
//!    point, a rerun resumes from the checkpoint; re-copying a batch is harmless (upserts that
//!    change nothing are skipped). Each pass stops at the partition's *watermark*, the highest
//!    `seq` below which every row is committed (read under the write lock, see
//!    `Store::watermark`): a row whose `seq` was taken before another's but committed after it
//!    is never skipped by the cursor.
//! 2. **Fence.** The migrator sets `fenced` on the source's `ladder_control` row. Every app write
//!    transaction first locks that row `FOR SHARE` (SQLite: `BEGIN IMMEDIATE`), so the fence's
//!    UPDATE waits for in-flight writes, and once it commits every later write sees the fence and
//!    is refused with 503 + Retry-After — *not acknowledged*, so nothing acknowledged can be lost.
//!    Reads and redirects keep working.
//! 3. **Catch up.** With writes stopped, the source is final: the migrator copies the rows past
//!    each cursor (the writes made since the last pass: the fence waited for every in-flight
//!    one) and replaces the target's click counts with the source's. Only that delta is copied
//!    while the fence is up.
//! 4. **Verify.** Per table and per target partition: row count and an order-independent
//!    checksum of the rows' content, source (routed by the target map) against target. A mismatch
//!    unfences the source (the app keeps running on it), and the command exits with status 2.
//! 5. **Cut over.** The migrator clears the target's own fence and writes the target's spec into
//!    the source's `moved_to`. Every app instance polls its tier's control row; seeing `moved_to`,
//!    it opens the target and switches to it. The source stays fenced (read-only) for the
//!    retention window; nothing is deleted.
//!
//! A link is therefore written exactly once in the new tier: acknowledged writes before the fence
//! are copied (step 1 or 3), none is acknowledged during the fence, and writes after the switch go
//! only to the target. A code lives in exactly one target partition because every row is routed
//! by the target map.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::store::{
    self, ClickRow, Control, LinkRow, Store, StoreOptions, StoreSpec, click_checksum, link_checksum,
};

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
    /// Password for PostgreSQL URLs that carry none (as `serve --db-password`).
    #[arg(long, env = ladder_crds::contract::env::DB_PASSWORD, hide_env_values = true)]
    pub db_password: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Phase {
    Copy,
    Fenced,
    Done,
}

/// Saved in the target after every batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    phase: Phase,
    /// Per source partition: the highest `seq` copied.
    cursors: Vec<i64>,
    copied: u64,
}

/// Counts and checksums of one table in one target partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    pub count: u64,
    pub checksum: u64,
}

/// The verification of one table in one target partition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub table: &'static str,
    pub partition: usize,
    pub source: Tally,
    pub target: Tally,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub checks: Vec<Check>,
    /// Target rows outside their partition (left over by a resharding; ignored).
    pub strays: u64,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
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

/// The binary's entry point: exit 0 on success, 2 when verification fails, 1 on other errors.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    match migrate(&args).await {
        Ok(v) => {
            tracing::info!(verification = %serde_json::to_string(&v).unwrap_or_default(), "migration complete");
            Ok(ExitCode::SUCCESS)
        }
        Err(MigrateError::Verify(detail)) => {
            tracing::error!(
                detail,
                "migration verification failed; the source stays authoritative"
            );
            Ok(ExitCode::from(2))
        }
        Err(MigrateError::Other(err)) => {
            tracing::error!(error = %format!("{err:#}"), "migration failed; rerun to resume");
            Ok(ExitCode::from(1))
        }
    }
}

/// Runs (or resumes) one migration.
pub async fn migrate(args: &MigrateArgs) -> Result<Verification, MigrateError> {
    if args.from == args.to {
        return Err(anyhow::anyhow!("--from and --to name the same tier").into());
    }
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let opts = StoreOptions {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
        password: args.db_password.clone(),
        ..StoreOptions::default()
    };
    let src = store::open(&args.from, &opts, metrics.clone())
        .await
        .context("opening the source")?;
    let dst = store::open(&args.to, &opts, metrics)
        .await
        .context("opening the target")?;
    let id = format!(
        "{}->{}:{:016x}",
        src.tier_id(),
        dst.tier_id(),
        store::fnv1a64(format!("{}\u{1f}{}", args.from, args.to).as_bytes())
    );
    let mut cp = match dst.checkpoint_get(&id).await.map_err(se)? {
        Some(text) => serde_json::from_str::<Checkpoint>(&text).context("corrupt checkpoint")?,
        None => Checkpoint {
            phase: Phase::Copy,
            cursors: vec![0; src.partitions()],
            copied: 0,
        },
    };
    if cp.cursors.len() != src.partitions() {
        cp.cursors.resize(src.partitions(), 0);
    }
    tracing::info!(from = %args.from.redacted(), to = %args.to.redacted(), phase = ?cp.phase, copied = cp.copied, "migration starting");

    if cp.phase == Phase::Done {
        tracing::info!("already cut over; nothing to do");
        return Ok(Verification {
            checks: Vec::new(),
            strays: 0,
        });
    }

    if cp.phase == Phase::Copy {
        for pass in 0..args.passes.max(1) {
            let copied = copy_pass(&*src, &*dst, &id, &mut cp, args, false).await?;
            tracing::info!(pass, copied, total = cp.copied, "live copy pass done");
            if copied < args.batch_size as u64 {
                break;
            }
        }
        if args.no_cutover {
            reconcile(&*src, &*dst).await?;
            let v = verify(&*src, &*dst).await?;
            return if v.ok() {
                Ok(v)
            } else {
                Err(MigrateError::Verify(summary(&v)))
            };
        }
        // Fence: waits for in-flight writes; afterwards the source accepts none.
        src.set_control(&Control {
            fenced: true,
            moved_to: None,
        })
        .await
        .map_err(se)?;
        cp.phase = Phase::Fenced;
        save(&*dst, &id, &cp).await?;
        tracing::info!("source fenced");
    }

    // Phase::Fenced (possibly resumed after a crash here): only the writes since the last pass.
    let delta = copy_pass(&*src, &*dst, &id, &mut cp, args, true).await?;
    let clicks = copy_clicks(&*src, &*dst).await?;
    tracing::info!(
        links = delta,
        click_rows = clicks,
        "caught up behind the fence"
    );
    let v = verify(&*src, &*dst).await?;
    if !v.ok() {
        // Give the source back to the app; a rerun copies everything again from the start
        // (upserts skip unchanged rows), so whatever went wrong is not carried over.
        src.set_control(&Control {
            fenced: false,
            moved_to: None,
        })
        .await
        .map_err(se)?;
        cp.phase = Phase::Copy;
        cp.cursors.iter_mut().for_each(|c| *c = 0);
        save(&*dst, &id, &cp).await?;
        return Err(MigrateError::Verify(summary(&v)));
    }
    // Cut over: the target takes writes, the source points at it and stays read-only.
    dst.set_control(&Control {
        fenced: false,
        moved_to: None,
    })
    .await
    .map_err(se)?;
    // The pointer never holds a password: every app instance connects to the target with its
    // own (`LADDER_DB_PASSWORD`, the same Secret the operator gives the migration Job).
    src.set_control(&Control {
        fenced: true,
        moved_to: Some(args.to.without_passwords().to_string()),
    })
    .await
    .map_err(se)?;
    cp.phase = Phase::Done;
    save(&*dst, &id, &cp).await?;
    tracing::info!("cut over");
    Ok(v)
}

async fn save(dst: &dyn Store, id: &str, cp: &Checkpoint) -> anyhow::Result<()> {
    let text = serde_json::to_string(cp)?;
    dst.checkpoint_put(id, &text).await.map_err(se)
}

/// One pass over every source partition from its cursor (up to its watermark unless the source
/// is `fenced`); returns rows copied.
async fn copy_pass(
    src: &dyn Store,
    dst: &dyn Store,
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
            // Only rows the source partition owns (a resharded shard may hold strays).
            let owned: Vec<LinkRow> = rows
                .into_iter()
                .filter(|r| src.partition_of(&r.code) == part)
                .collect();
            dst.put_links(&owned).await.map_err(se)?;
            cp.cursors[part] = last;
            cp.copied += owned.len() as u64;
            copied += owned.len() as u64;
            save(dst, id, cp).await?;
            if args.batch_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(args.batch_delay_ms)).await;
            }
        }
    }
    Ok(copied)
}

/// Every row of a tier, keyed by code, keeping only rows in their owning partition.
async fn all_links(s: &dyn Store) -> anyhow::Result<(HashMap<String, LinkRow>, u64)> {
    let mut out = HashMap::new();
    let mut strays = 0;
    for part in 0..s.partitions() {
        let mut after = 0;
        loop {
            let rows = s.scan_links(part, after, 5000).await.map_err(se)?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for r in rows {
                if s.partition_of(&r.code) == part {
                    out.insert(r.code.clone(), r);
                } else {
                    strays += 1;
                }
            }
        }
    }
    Ok((out, strays))
}

async fn all_clicks(s: &dyn Store) -> anyhow::Result<HashMap<(String, String), ClickRow>> {
    let mut out = HashMap::new();
    for part in 0..s.partitions() {
        for r in s.scan_clicks(part).await.map_err(se)? {
            if s.partition_of(&r.code) == part {
                out.insert((r.code.clone(), r.day.clone()), r);
            }
        }
    }
    Ok(out)
}

fn same(a: &LinkRow, b: &LinkRow) -> bool {
    a.target == b.target && a.created_ms == b.created_ms && a.deleted == b.deleted
}

/// Replaces the target's click counts with the source's.
async fn copy_clicks(src: &dyn Store, dst: &dyn Store) -> anyhow::Result<usize> {
    let clicks: Vec<ClickRow> = all_clicks(src).await?.into_values().collect();
    for chunk in clicks.chunks(500) {
        dst.put_clicks(chunk).await.map_err(se)?;
    }
    Ok(clicks.len())
}

/// For a dry run (`--no-cutover`, source live): upsert every source row the target lacks or
/// holds differently, and replace click counts.
async fn reconcile(src: &dyn Store, dst: &dyn Store) -> anyhow::Result<()> {
    let (source, _) = all_links(src).await?;
    let (target, _) = all_links(dst).await?;
    let diff: Vec<LinkRow> = source
        .values()
        .filter(|r| target.get(&r.code).is_none_or(|t| !same(r, t)))
        .cloned()
        .collect();
    for chunk in diff.chunks(500) {
        dst.put_links(chunk).await.map_err(se)?;
    }
    let clicks = copy_clicks(src, dst).await?;
    tracing::info!(links = diff.len(), click_rows = clicks, "reconciled");
    Ok(())
}

/// Counts and checksums per table and target partition, source against target.
pub async fn verify(src: &dyn Store, dst: &dyn Store) -> anyhow::Result<Verification> {
    let (source, _) = all_links(src).await?;
    let (target, strays) = all_links(dst).await?;
    let src_clicks = all_clicks(src).await?;
    let dst_clicks = all_clicks(dst).await?;
    let n = dst.partitions();
    let mut checks = Vec::new();
    for part in 0..n {
        let s: Vec<LinkRow> = source
            .values()
            .filter(|r| dst.partition_of(&r.code) == part)
            .cloned()
            .collect();
        let t: Vec<LinkRow> = target
            .values()
            .filter(|r| dst.partition_of(&r.code) == part)
            .cloned()
            .collect();
        let (st, tt) = (
            Tally {
                count: s.len() as u64,
                checksum: link_checksum(&s),
            },
            Tally {
                count: t.len() as u64,
                checksum: link_checksum(&t),
            },
        );
        checks.push(Check {
            table: "links",
            partition: part,
            source: st,
            target: tt,
            ok: st == tt,
        });
        let s: Vec<ClickRow> = src_clicks
            .values()
            .filter(|r| dst.partition_of(&r.code) == part)
            .cloned()
            .collect();
        let t: Vec<ClickRow> = dst_clicks
            .values()
            .filter(|r| dst.partition_of(&r.code) == part)
            .cloned()
            .collect();
        let (st, tt) = (
            Tally {
                count: s.len() as u64,
                checksum: click_checksum(&s),
            },
            Tally {
                count: t.len() as u64,
                checksum: click_checksum(&t),
            },
        );
        checks.push(Check {
            table: "clicks_daily",
            partition: part,
            source: st,
            target: tt,
            ok: st == tt,
        });
    }
    Ok(Verification { checks, strays })
}

fn summary(v: &Verification) -> String {
    v.checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| {
            format!(
                "{}[{}]: source {} rows / target {} rows",
                c.table, c.partition, c.source.count, c.target.count
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `ladder-app sweep`: removes the rows a partition holds but no longer owns.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// The live tier (a shard map: `shards:MAP.json`).
    #[arg(long, env = "LADDER_STORE")]
    pub store: StoreSpec,
    /// Password for PostgreSQL URLs that carry none.
    #[arg(long, env = ladder_crds::contract::env::DB_PASSWORD, hide_env_values = true)]
    pub db_password: Option<String>,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a sweep found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Rows outside their owning partition.
    pub strays: u64,
    /// Strays deleted: each one's owner held the same row and at least its click counts.
    pub removed: u64,
    /// Strays kept because their owner did not hold them (yet): never deleted unverified.
    pub kept: Vec<String>,
}

/// After a resharding that reused shards, each shard still holds the rows whose slots moved
/// away (the migration copied them to their new owner and cut over). They are invisible to the
/// app, which routes by the new map, but they take space and make every later scan longer.
/// A sweep deletes such a row from the partition that no longer owns it only when the owner
/// holds the identical row (a tombstone: no live row) and at least its click counts per day;
/// otherwise it keeps the row and reports it. A fenced or retired tier is refused.
pub async fn sweep(store: &dyn Store, dry_run: bool) -> anyhow::Result<SweepReport> {
    let control = store.control().await.map_err(se)?;
    anyhow::ensure!(
        !control.fenced && control.moved_to.is_none(),
        "the tier is fenced or retired: sweep the live tier only"
    );
    let mut report = SweepReport::default();
    for part in 0..store.partitions() {
        let mut strays: Vec<LinkRow> = Vec::new();
        let mut after = 0;
        loop {
            let rows = store.scan_links(part, after, 5000).await.map_err(se)?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            strays.extend(
                rows.into_iter()
                    .filter(|r| store.partition_of(&r.code) != part),
            );
        }
        if strays.is_empty() {
            continue;
        }
        report.strays += strays.len() as u64;
        let stray_clicks: HashMap<String, Vec<ClickRow>> = store
            .scan_clicks(part)
            .await
            .map_err(se)?
            .into_iter()
            .filter(|c| store.partition_of(&c.code) != part)
            .fold(HashMap::new(), |mut m, c| {
                m.entry(c.code.clone()).or_default().push(c);
                m
            });
        let mut removable = Vec::new();
        for row in strays {
            // The routed read goes to the owner.
            let (owned, _) = store
                .get_link(&row.code, store::ReadCtx::default())
                .await
                .map_err(se)?;
            let same_link = match owned {
                Some(l) => !row.deleted && l.target == row.target && l.created_ms == row.created_ms,
                None => row.deleted,
            };
            let owner_clicks: HashMap<String, i64> = store
                .click_stats(&row.code)
                .await
                .map_err(se)?
                .into_iter()
                .map(|c| (c.day, c.clicks))
                .collect();
            let clicks_copied = stray_clicks.get(&row.code).is_none_or(|days| {
                days.iter()
                    .all(|c| owner_clicks.get(&c.day).is_some_and(|n| *n >= c.clicks))
            });
            if same_link && clicks_copied {
                removable.push(row.code);
            } else {
                report.kept.push(row.code);
            }
        }
        if !dry_run {
            for chunk in removable.chunks(500) {
                store.delete_strays(part, chunk).await.map_err(se)?;
            }
        }
        report.removed += removable.len() as u64;
    }
    Ok(report)
}

/// The binary's `sweep`: exit 0, or 1 on errors. Kept strays are reported, not an error.
pub async fn run_sweep(args: SweepArgs) -> anyhow::Result<ExitCode> {
    let opts = StoreOptions {
        max_connections: 4,
        password: args.db_password.clone(),
        ..StoreOptions::default()
    };
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let store = store::open(&args.store, &opts, metrics).await?;
    match sweep(&*store, args.dry_run).await {
        Ok(r) => {
            tracing::info!(report = %serde_json::to_string(&r).unwrap_or_default(), dry_run = args.dry_run, "sweep complete");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "sweep failed");
            Ok(ExitCode::from(1))
        }
    }
}
