//! Step 4 of the protocol: counts and order-independent checksums per table and target
//! partition, source (routed by the target map) against target.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::se;
use crate::store::{ClickRow, LinkRow, MigrationStore, click_checksum, link_checksum};

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

    /// The checks as the result file reports them.
    pub fn tables(&self) -> Vec<TableResult> {
        self.checks
            .iter()
            .map(|c| TableResult {
                table: c.table.to_owned(),
                partition: c.partition,
                source_rows: c.source.count,
                target_rows: c.target.count,
                source_checksum: format!("{:016x}", c.source.checksum),
                target_checksum: format!("{:016x}", c.target.checksum),
            })
            .collect()
    }

    /// One line naming every failed check.
    pub fn summary(&self) -> String {
        self.checks
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
}

/// One verified table of one target partition in the result file (checksums as 16 hex digits,
/// so that no JSON reader rounds them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableResult {
    pub table: String,
    pub partition: usize,
    pub source_rows: u64,
    pub target_rows: u64,
    pub source_checksum: String,
    pub target_checksum: String,
}

impl TableResult {
    pub fn ok(&self) -> bool {
        self.source_rows == self.target_rows && self.source_checksum == self.target_checksum
    }
}

/// Every row of a tier, keyed by code, keeping only rows in their owning partition.
pub async fn all_links(s: &dyn MigrationStore) -> anyhow::Result<(HashMap<String, LinkRow>, u64)> {
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

async fn all_clicks(s: &dyn MigrationStore) -> anyhow::Result<HashMap<(String, String), ClickRow>> {
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
pub async fn copy_clicks(
    src: &dyn MigrationStore,
    dst: &dyn MigrationStore,
) -> anyhow::Result<usize> {
    let clicks: Vec<ClickRow> = all_clicks(src).await?.into_values().collect();
    for chunk in clicks.chunks(500) {
        dst.put_clicks(chunk).await.map_err(se)?;
    }
    Ok(clicks.len())
}

/// For a dry run (`--no-cutover`, source live): upsert every source row the target lacks or
/// holds differently, and replace click counts.
pub async fn reconcile(src: &dyn MigrationStore, dst: &dyn MigrationStore) -> anyhow::Result<()> {
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

/// One table of one target partition: the rows `in_part` keeps on each side,
/// counted and checksummed.
fn compare<K, R: Clone>(
    table: &'static str,
    partition: usize,
    source: &HashMap<K, R>,
    target: &HashMap<K, R>,
    in_part: impl Fn(&R) -> bool,
    checksum: fn(&[R]) -> u64,
) -> Check {
    let tally = |rows: &HashMap<K, R>| {
        let kept: Vec<R> = rows.values().filter(|r| in_part(r)).cloned().collect();
        Tally {
            count: kept.len() as u64,
            checksum: checksum(&kept),
        }
    };
    let (source, target) = (tally(source), tally(target));
    Check {
        table,
        partition,
        source,
        target,
        ok: source == target,
    }
}

/// Counts and checksums per table and target partition, source against target.
pub async fn verify(
    src: &dyn MigrationStore,
    dst: &dyn MigrationStore,
) -> anyhow::Result<Verification> {
    let (source, _) = all_links(src).await?;
    let (target, strays) = all_links(dst).await?;
    let src_clicks = all_clicks(src).await?;
    let dst_clicks = all_clicks(dst).await?;
    let mut checks = Vec::new();
    for part in 0..dst.partitions() {
        let code_in = |code: &str| dst.partition_of(code) == part;
        checks.push(compare(
            "links",
            part,
            &source,
            &target,
            |r: &LinkRow| code_in(&r.code),
            link_checksum,
        ));
        checks.push(compare(
            "clicks_daily",
            part,
            &src_clicks,
            &dst_clicks,
            |r: &ClickRow| code_in(&r.code),
            click_checksum,
        ));
    }
    Ok(Verification { checks, strays })
}
