//! Phase 2: one primary, N streaming read replicas.
//!
//! - Writes go to the primary. After each write the primary's WAL position (`pg_current_wal_lsn()`,
//!   taken after the commit, so at or past the commit record) is returned as the client's
//!   consistency token.
//! - Reads carrying a token (read-your-writes) go to a replica only if its last known replay
//!   position is at or past the token; otherwise to the primary. Reads without a token go
//!   round-robin to replicas in rotation.
//! - A background task polls every replica (`pg_last_wal_replay_lsn()`) and the primary
//!   (`pg_current_wal_lsn()`); a replica that fails the probe or lags more than
//!   `max_replica_lag_bytes` leaves rotation until it catches up.
//!
//! The poll interval bounds staleness of the *routing* decision only: a replica's cached replay
//! position can only be lower than its real one, so a stale cache sends reads to the primary,
//! never to a replica that lacks the client's write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;

use super::pg::{PgMode, PgStore};
use super::{
    Claim, ClickRow, Control, Holder, Link, LinkRow, MigrationStore, ReadCtx, ReadFrom, Store,
    StoreOptions, StoreResult, WriteAck,
};
use crate::metrics::Metrics;

#[derive(Debug)]
struct Replica {
    store: PgStore,
    in_rotation: AtomicBool,
    replay_lsn: AtomicU64,
    lag_bytes: AtomicU64,
}

#[derive(Debug)]
pub struct ReplicaStore {
    primary: PgStore,
    replicas: Arc<Vec<Replica>>,
    next: AtomicUsize,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReplicaStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplicaStore {
    pub async fn open(
        primary_url: &str,
        replica_urls: &[String],
        opts: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let primary = PgStore::connect(
            primary_url,
            PgMode::Direct,
            opts,
            metrics.clone(),
            "postgres",
        )?;
        primary.migrate_or_retry().await?;
        let mut replicas = Vec::new();
        for url in replica_urls {
            replicas.push(Replica {
                store: PgStore::connect(url, PgMode::Direct, opts, metrics.clone(), "postgres")?,
                in_rotation: AtomicBool::new(false),
                replay_lsn: AtomicU64::new(0),
                lag_bytes: AtomicU64::new(u64::MAX),
            });
        }
        let replicas = Arc::new(replicas);
        probe(&primary, &replicas, opts.max_replica_lag_bytes).await;
        let task = tokio::spawn({
            let (primary, replicas, max_lag, every) = (
                primary.clone(),
                replicas.clone(),
                opts.max_replica_lag_bytes,
                opts.poll_interval,
            );
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    probe(&primary, &replicas, max_lag).await;
                }
            }
        });
        Ok(ReplicaStore {
            primary,
            replicas,
            next: AtomicUsize::new(0),
            task,
        })
    }

    /// Picks a replica for a read, or None for the primary.
    fn pick(&self, ctx: ReadCtx) -> Option<&Replica> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &self.replicas[(start + i) % n]).find(|r| {
            r.in_rotation.load(Ordering::Acquire)
                && ctx
                    .min_lsn
                    .is_none_or(|min| r.replay_lsn.load(Ordering::Acquire) >= min)
        })
    }

    async fn ack(&self, mut ack: WriteAck) -> StoreResult<WriteAck> {
        ack.lsn = Some(self.primary.current_lsn().await?);
        Ok(ack)
    }
}

async fn probe(primary: &PgStore, replicas: &[Replica], max_lag: u64) {
    let head = primary.current_lsn().await.ok();
    for r in replicas {
        let probe =
            tokio::time::timeout(std::time::Duration::from_secs(1), r.store.replay_lsn()).await;
        let (ok, lag) = match (probe, head) {
            (Ok(Ok(Some(replayed))), Some(head)) => {
                // fetch_max: a slow probe must not move the known position backwards.
                r.replay_lsn.fetch_max(replayed, Ordering::AcqRel);
                let lag = head.saturating_sub(replayed);
                (lag <= max_lag, lag)
            }
            // Primary unknown: keep the replica for plain reads if it answers at all.
            (Ok(Ok(Some(replayed))), None) => {
                r.replay_lsn.fetch_max(replayed, Ordering::AcqRel);
                (true, 0)
            }
            _ => (false, u64::MAX),
        };
        r.lag_bytes.store(lag, Ordering::Release);
        let was = r.in_rotation.swap(ok, Ordering::AcqRel);
        if was != ok {
            tracing::warn!(
                replica_in_rotation = ok,
                lag_bytes = lag,
                "replica rotation changed"
            );
        }
    }
}

#[async_trait]
impl Store for ReplicaStore {
    fn tier(&self) -> &'static str {
        "replicas"
    }

    fn tier_id(&self) -> String {
        self.primary.tier_id()
    }

    async fn create_link(&self, link: &Link) -> StoreResult<WriteAck> {
        let ack = self.primary.create_link(link).await?;
        self.ack(ack).await
    }

    async fn get_link(&self, code: &str, ctx: ReadCtx) -> StoreResult<(Option<Link>, ReadFrom)> {
        if let Some(r) = self.pick(ctx) {
            match r.store.get_link(code, ctx).await {
                Ok((link, _)) => return Ok((link, ReadFrom::Replica)),
                Err(err) => {
                    // Take it out now rather than at the next probe; fall through to the primary.
                    r.in_rotation.store(false, Ordering::Release);
                    tracing::warn!(error = %err, "replica read failed, using the primary");
                }
            }
        }
        let (link, _) = self.primary.get_link(code, ctx).await?;
        Ok((link, ReadFrom::Primary))
    }

    async fn update_link(&self, code: &str, target: &str) -> StoreResult<WriteAck> {
        let ack = self.primary.update_link(code, target).await?;
        self.ack(ack).await
    }

    async fn delete_link(&self, code: &str) -> StoreResult<WriteAck> {
        let ack = self.primary.delete_link(code).await?;
        self.ack(ack).await
    }

    async fn add_clicks(&self, clicks: &[ClickRow]) -> StoreResult<()> {
        self.primary.add_clicks(clicks).await
    }

    async fn click_stats(&self, code: &str) -> StoreResult<Vec<ClickRow>> {
        // Analytics tolerate replica lag; use a replica when one is in rotation.
        match self.pick(ReadCtx::default()) {
            Some(r) => match r.store.click_stats(code).await {
                Ok(rows) => Ok(rows),
                Err(_) => self.primary.click_stats(code).await,
            },
            None => self.primary.click_stats(code).await,
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        self.primary.ping().await
    }

    fn describe(&self) -> serde_json::Value {
        let replicas: Vec<_> = self
            .replicas
            .iter()
            .map(|r| {
                let lag = r.lag_bytes.load(Ordering::Acquire);
                serde_json::json!({
                    "inRotation": r.in_rotation.load(Ordering::Acquire),
                    "replayLsn": r.replay_lsn.load(Ordering::Acquire),
                    "lagBytes": if lag == u64::MAX { serde_json::Value::Null } else { lag.into() },
                })
            })
            .collect();
        serde_json::json!({ "tier": "replicas", "replicas": replicas })
    }

    async fn control(&self) -> StoreResult<Control> {
        self.primary.control().await
    }
}

/// Migration goes to the primary only (the replicas follow it).
#[async_trait]
impl MigrationStore for ReplicaStore {
    async fn identity(&self) -> StoreResult<String> {
        self.primary.identity().await
    }

    async fn controls(&self) -> StoreResult<Vec<Control>> {
        self.primary.controls().await
    }

    async fn claim_fence(
        &self,
        partition: usize,
        holder: &Holder,
        ttl_ms: i64,
        clear_pointer: bool,
    ) -> StoreResult<Claim> {
        self.primary
            .claim_fence(partition, holder, ttl_ms, clear_pointer)
            .await
    }

    async fn renew_fence(
        &self,
        partition: usize,
        holder: &Holder,
        ttl_ms: i64,
    ) -> StoreResult<bool> {
        self.primary.renew_fence(partition, holder, ttl_ms).await
    }

    async fn release_fence(&self, partition: usize, holder: &Holder) -> StoreResult<bool> {
        self.primary.release_fence(partition, holder).await
    }

    async fn cut_over(
        &self,
        partition: usize,
        holder: &Holder,
        moved_to: &str,
    ) -> StoreResult<bool> {
        self.primary.cut_over(partition, holder, moved_to).await
    }

    async fn scan_links(
        &self,
        partition: usize,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<LinkRow>> {
        self.primary.scan_links(partition, after, limit).await
    }

    async fn scan_clicks(&self, partition: usize) -> StoreResult<Vec<ClickRow>> {
        self.primary.scan_clicks(partition).await
    }

    async fn watermark(&self, partition: usize) -> StoreResult<i64> {
        self.primary.watermark(partition).await
    }

    async fn put_links(&self, rows: &[LinkRow]) -> StoreResult<()> {
        self.primary.put_links(rows).await
    }

    async fn put_clicks(&self, rows: &[ClickRow]) -> StoreResult<()> {
        self.primary.put_clicks(rows).await
    }

    async fn checkpoint_get(&self, id: &str) -> StoreResult<Option<String>> {
        self.primary.checkpoint_get(id).await
    }

    async fn checkpoint_put(&self, id: &str, state: &str) -> StoreResult<()> {
        self.primary.checkpoint_put(id, state).await
    }
}
