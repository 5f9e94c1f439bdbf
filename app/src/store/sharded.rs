//! Phase 3: sharded PostgreSQL, routed by the operator's versioned shard allocation map.
//!
//! The map is a JSON file (the operator mounts it from a ConfigMap):
//!
//! ```json
//! { "version": 2, "slots": 1024,
//!   "shards": [ { "name": "s0", "url": "postgres://…/ladder_s0" }, { "name": "s1", "url": "…" } ],
//!   "ranges": [ { "from": 0, "to": 511, "shard": "s0" }, { "from": 512, "to": 1023, "shard": "s1" } ] }
//! ```
//!
//! A code's slot is `fnv1a64(code) % slots`; the ranges (inclusive) must cover every slot exactly
//! once. The file is re-read every poll interval; a new `version` takes effect without restart
//! (new shards are connected and migrated first, then routing switches atomically). A map change
//! that moves slots holding data is a resharding: run `ladder-app migrate --from shards:OLD
//! --to shards:NEW` instead of editing the live map in place (see docs/migration.md).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use async_trait::async_trait;

use super::pg::{PgMode, PgStore};
use super::{
    Claim, ClickRow, Control, Holder, Link, LinkRow, MigrationStore, ReadCtx, ReadFrom, Store,
    StoreError, StoreOptions, StoreResult, WriteAck,
};
use crate::metrics::Metrics;

pub use ladder_crds::contract::{ShardDef, ShardMap, SlotRange};

#[derive(Debug)]
struct Routing {
    map: ShardMap,
    table: Vec<usize>,
    stores: Vec<PgStore>,
}

impl Routing {
    fn shard(&self, code: &str) -> &PgStore {
        &self.stores[self.table[self.map.slot_of(code) as usize]]
    }

    fn index(&self, code: &str) -> usize {
        self.table[self.map.slot_of(code) as usize]
    }
}

#[derive(Debug)]
pub struct ShardedStore {
    path: String,
    routing: Arc<RwLock<Arc<Routing>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ShardedStore {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn build(
    map: ShardMap,
    opts: &StoreOptions,
    metrics: &Arc<Metrics>,
    old: Option<&Routing>,
) -> anyhow::Result<Routing> {
    let table = map.slot_table()?;
    let tier_id = format!("shards-v{}", map.version);
    let mut stores = Vec::new();
    for def in &map.shards {
        // Reuse the pool of a shard whose URL did not change.
        let reused = old.and_then(|o| {
            o.map
                .shards
                .iter()
                .position(|d| d.url == def.url)
                .map(|i| o.stores[i].clone().with_tier_id(&tier_id))
        });
        let store = match reused {
            Some(s) => s,
            None => PgStore::connect(&def.url, PgMode::Direct, opts, metrics.clone(), &tier_id)?,
        };
        store
            .migrate()
            .await
            .with_context(|| format!("migrating shard {}", def.name))?;
        stores.push(store);
    }
    Ok(Routing { map, table, stores })
}

impl ShardedStore {
    pub async fn open(
        path: &str,
        opts: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let map = ShardMap::load(path)?;
        let routing = Arc::new(RwLock::new(Arc::new(
            build(map, opts, &metrics, None).await?,
        )));
        let task = tokio::spawn({
            let (routing, path, opts) = (routing.clone(), path.to_owned(), opts.clone());
            async move {
                let mut seen: Option<SystemTime> =
                    std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                let mut tick = tokio::time::interval(opts.poll_interval);
                loop {
                    tick.tick().await;
                    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                    if modified == seen {
                        continue;
                    }
                    seen = modified;
                    match reload(&routing, &path, &opts, &metrics).await {
                        Ok(()) => metrics.reloaded("shard_map", true),
                        Err(err) => {
                            metrics.reloaded("shard_map", false);
                            tracing::error!(error = %format!("{err:#}"), "shard map reload failed; keeping the current map");
                        }
                    }
                }
            }
        });
        Ok(ShardedStore {
            path: path.to_owned(),
            routing,
            task: Some(task),
        })
    }

    fn current(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The version of the map in force.
    pub fn map_version(&self) -> u64 {
        self.current().map.version
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

async fn reload(
    routing: &RwLock<Arc<Routing>>,
    path: &str,
    opts: &StoreOptions,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    let map = ShardMap::load(path)?;
    let old = routing.read().unwrap_or_else(|e| e.into_inner()).clone();
    if map == old.map {
        return Ok(());
    }
    let new = build(map, opts, metrics, Some(&old)).await?;
    for s in &new.stores {
        s.ensure_control_row()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    tracing::info!(
        from = old.map.version,
        to = new.map.version,
        "shard map reloaded"
    );
    *routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
    Ok(())
}

#[async_trait]
impl Store for ShardedStore {
    fn tier(&self) -> &'static str {
        "shards"
    }

    fn tier_id(&self) -> String {
        format!("shards-v{}", self.map_version())
    }

    async fn create_link(&self, link: &Link) -> StoreResult<WriteAck> {
        self.current().shard(&link.code).create_link(link).await
    }

    async fn get_link(&self, code: &str, ctx: ReadCtx) -> StoreResult<(Option<Link>, ReadFrom)> {
        self.current().shard(code).get_link(code, ctx).await
    }

    async fn update_link(&self, code: &str, target: &str) -> StoreResult<WriteAck> {
        self.current().shard(code).update_link(code, target).await
    }

    async fn delete_link(&self, code: &str) -> StoreResult<WriteAck> {
        self.current().shard(code).delete_link(code).await
    }

    async fn add_clicks(&self, clicks: &[ClickRow]) -> StoreResult<()> {
        let r = self.current();
        let mut by_shard: HashMap<usize, Vec<ClickRow>> = HashMap::new();
        for c in clicks {
            by_shard
                .entry(r.index(&c.code))
                .or_default()
                .push(c.clone());
        }
        for (i, rows) in by_shard {
            r.stores[i].add_clicks(&rows).await?;
        }
        Ok(())
    }

    async fn click_stats(&self, code: &str) -> StoreResult<Vec<ClickRow>> {
        self.current().shard(code).click_stats(code).await
    }

    async fn ping(&self) -> StoreResult<()> {
        for s in &self.current().stores {
            s.ping().await?;
        }
        Ok(())
    }

    fn describe(&self) -> serde_json::Value {
        let r = self.current();
        serde_json::json!({
            "tier": "shards",
            "shardMapVersion": r.map.version,
            "shards": r.map.shards.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        })
    }

    async fn control(&self) -> StoreResult<Control> {
        let r = self.current();
        // Fenced if any shard is fenced; the cut-over pointer is written to every shard.
        let mut out = Control::default();
        for s in &r.stores {
            let c = s.control().await?;
            out.fenced |= c.fenced;
            if out.moved_to.is_none() {
                out.moved_to = c.moved_to;
            }
        }
        Ok(out)
    }
}

impl ShardedStore {
    fn shard(&self, partition: usize) -> StoreResult<PgStore> {
        self.current()
            .stores
            .get(partition)
            .cloned()
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("no shard {partition}")))
    }
}

/// Every shard is a partition with its own fence row (`shards-vN`, so that a resharding onto
/// the same databases fences the old map's routing, not the new one's).
#[async_trait]
impl MigrationStore for ShardedStore {
    async fn identity(&self) -> StoreResult<String> {
        let r = self.current();
        let mut ids = Vec::new();
        for s in &r.stores {
            ids.push(s.identity().await?);
        }
        Ok(format!("shards-v{}[{}]", r.map.version, ids.join(",")))
    }

    async fn partition_identity(&self, part: usize) -> StoreResult<String> {
        let r = self.current();
        match r.stores.get(part) {
            Some(s) => s.identity().await,
            None => Err(StoreError::Other(anyhow::anyhow!(
                "partition {part} of a map with {} shards",
                r.stores.len()
            ))),
        }
    }

    async fn controls(&self) -> StoreResult<Vec<Control>> {
        let mut out = Vec::new();
        for s in &self.current().stores {
            out.push(s.control().await?);
        }
        Ok(out)
    }

    async fn claim_fence(
        &self,
        partition: usize,
        holder: &Holder,
        ttl_ms: i64,
        clear_pointer: bool,
    ) -> StoreResult<Claim> {
        self.shard(partition)?
            .claim_fence(0, holder, ttl_ms, clear_pointer)
            .await
    }

    async fn renew_fence(
        &self,
        partition: usize,
        holder: &Holder,
        ttl_ms: i64,
    ) -> StoreResult<bool> {
        self.shard(partition)?.renew_fence(0, holder, ttl_ms).await
    }

    async fn release_fence(&self, partition: usize, holder: &Holder) -> StoreResult<bool> {
        self.shard(partition)?.release_fence(0, holder).await
    }

    async fn cut_over(
        &self,
        partition: usize,
        holder: &Holder,
        moved_to: &str,
    ) -> StoreResult<bool> {
        self.shard(partition)?.cut_over(0, holder, moved_to).await
    }

    fn partitions(&self) -> usize {
        self.current().stores.len()
    }

    fn partition_of(&self, code: &str) -> usize {
        self.current().index(code)
    }

    async fn scan_links(
        &self,
        partition: usize,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<LinkRow>> {
        let r = self.current();
        let s = r
            .stores
            .get(partition)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("no shard {partition}")))?;
        // Rows a shard holds but no longer owns (left behind by a resharding) are returned too;
        // `migrate` routes every row by the target map, and its verify step ignores strays.
        s.scan_links(0, after, limit).await
    }

    async fn watermark(&self, partition: usize) -> StoreResult<i64> {
        let r = self.current();
        let s = r
            .stores
            .get(partition)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("no shard {partition}")))?;
        s.watermark(0).await
    }

    async fn scan_clicks(&self, partition: usize) -> StoreResult<Vec<ClickRow>> {
        let r = self.current();
        let s = r
            .stores
            .get(partition)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("no shard {partition}")))?;
        s.scan_clicks(0).await
    }

    async fn put_links(&self, rows: &[LinkRow]) -> StoreResult<()> {
        let r = self.current();
        let mut by_shard: HashMap<usize, Vec<LinkRow>> = HashMap::new();
        for row in rows {
            by_shard
                .entry(r.index(&row.code))
                .or_default()
                .push(row.clone());
        }
        for (i, rows) in by_shard {
            r.stores[i].put_links(&rows).await?;
        }
        Ok(())
    }

    async fn put_clicks(&self, rows: &[ClickRow]) -> StoreResult<()> {
        let r = self.current();
        let mut by_shard: HashMap<usize, Vec<ClickRow>> = HashMap::new();
        for row in rows {
            by_shard
                .entry(r.index(&row.code))
                .or_default()
                .push(row.clone());
        }
        for (i, rows) in by_shard {
            r.stores[i].put_clicks(&rows).await?;
        }
        Ok(())
    }

    async fn checkpoint_get(&self, id: &str) -> StoreResult<Option<String>> {
        self.current().stores[0].checkpoint_get(id).await
    }

    async fn delete_strays(&self, partition: usize, codes: &[String]) -> StoreResult<()> {
        let r = self.current();
        let s = r
            .stores
            .get(partition)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("no shard {partition}")))?;
        // Never a code this shard owns, whatever the caller passes.
        let strays: Vec<String> = codes
            .iter()
            .filter(|c| r.index(c) != partition)
            .cloned()
            .collect();
        if strays.is_empty() {
            return Ok(());
        }
        s.delete_strays(0, &strays).await
    }

    async fn checkpoint_put(&self, id: &str, state: &str) -> StoreResult<()> {
        self.current().stores[0].checkpoint_put(id, state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ranges: &[(u32, u32, &str)]) -> ShardMap {
        ShardMap {
            version: 1,
            slots: 16,
            shards: vec![
                ShardDef {
                    name: "a".into(),
                    url: "postgres://x@127.0.0.1/a".into(),
                },
                ShardDef {
                    name: "b".into(),
                    url: "postgres://x@127.0.0.1/b".into(),
                },
            ],
            ranges: ranges
                .iter()
                .map(|(f, t, s)| SlotRange {
                    from: *f,
                    to: *t,
                    shard: (*s).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn validates_coverage() {
        assert!(map(&[(0, 7, "a"), (8, 15, "b")]).slot_table().is_ok());
        assert!(map(&[(0, 7, "a")]).slot_table().is_err(), "gap");
        assert!(
            map(&[(0, 8, "a"), (8, 15, "b")]).slot_table().is_err(),
            "overlap"
        );
        assert!(map(&[(0, 15, "c")]).slot_table().is_err(), "unknown shard");
    }

    #[test]
    fn routes_deterministically() {
        let m = map(&[(0, 7, "a"), (8, 15, "b")]);
        let t = m.slot_table().expect("valid");
        let shards: std::collections::HashSet<usize> = (0..200)
            .map(|i| t[m.slot_of(&format!("code{i}")) as usize])
            .collect();
        assert_eq!(shards.len(), 2, "codes spread over both shards");
        assert_eq!(m.slot_of("abc"), m.slot_of("abc"));
    }
}
