//! `ladder-app sweep`: after an in-place resharding, removes the rows a shard holds but no
//! longer owns, once their new owner provably holds them.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::se;
use crate::metrics::Metrics;
use crate::store::{self, ClickRow, LinkRow, MigrationStore, StoreOptions, StoreSpec};

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
pub async fn sweep(store: &dyn MigrationStore, dry_run: bool) -> anyhow::Result<SweepReport> {
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
    let store = store::open_for_migration(&args.store, &opts, metrics).await?;
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
