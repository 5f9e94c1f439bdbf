//! Phase 0: SQLite in a local file (WAL mode). SQLite has one writer at a time, so every write
//! transaction starts with `BEGIN IMMEDIATE` (takes the write lock first, so the fence check and the
//! write see the same state and no deferred transaction fails half-way on upgrade).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    Claim, ClickRow, Control, Holder, Link, LinkRow, MigrationStore, ReadCtx, ReadFrom, Store,
    StoreError, StoreOptions, StoreResult, WriteAck,
};
use crate::metrics::Metrics;

const TIER_ID: &str = "sqlite";

/// SQLite's clock in ms since the epoch (leases are written and read on it).
macro_rules! now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: String,
    metrics: Arc<Metrics>,
}

type Q = sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

fn e(err: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(err)
}

impl SqliteStore {
    pub async fn open(
        path: &str,
        opts: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(opts.acquire_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.clamp(1, 8))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(options)
            .await?;
        let store = SqliteStore {
            pool,
            path: path.to_owned(),
            metrics,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let res = sqlx::raw_sql(include_str!("../../migrations/sqlite/0001_init.sql"))
            .execute(&mut *conn)
            .await;
        match res {
            Ok(_) => {
                // The fence's lease (0002): SQLite has no ADD COLUMN IF NOT EXISTS.
                let has_lease: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pragma_table_info('ladder_control') WHERE name = 'lease_holder'",
                )
                .fetch_one(&mut *conn)
                .await?;
                if has_lease == 0 {
                    sqlx::raw_sql(include_str!("../../migrations/sqlite/0002_fence_lease.sql"))
                        .execute(&mut *conn)
                        .await?;
                }
                sqlx::raw_sql("INSERT OR IGNORE INTO ladder_control (tier_id, fenced) VALUES ('sqlite', 0); COMMIT")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            Err(err) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                Err(err.into())
            }
        }
    }

    /// Runs `f` inside `BEGIN IMMEDIATE … COMMIT` after checking the fence; returns the next `seq`.
    async fn write<F>(&self, fence: bool, f: F) -> StoreResult<()>
    where
        F: for<'c> FnOnce(
                &'c mut sqlx::SqliteConnection,
                i64,
            ) -> futures::future::BoxFuture<'c, StoreResult<()>>
            + Send,
    {
        let mut conn = self.pool.acquire().await.map_err(e)?;
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(e)?;
        let result = async {
            if fence {
                let fenced: Option<bool> =
                    sqlx::query_scalar("SELECT fenced FROM ladder_control WHERE tier_id = ?")
                        .bind(TIER_ID)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(e)?;
                if fenced == Some(true) {
                    return Err(StoreError::Fenced);
                }
            }
            let seq: i64 = sqlx::query_scalar(
                "UPDATE ladder_seq SET value = value + 1 WHERE id = 1 RETURNING value",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(e)?;
            f(&mut conn, seq).await
        }
        .await;
        match result {
            Ok(()) => {
                sqlx::raw_sql("COMMIT")
                    .execute(&mut *conn)
                    .await
                    .map_err(e)?;
                self.metrics.record_tx();
                Ok(())
            }
            Err(StoreError::Fenced) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                drop(conn);
                Err(match self.control().await {
                    Ok(c) => c.refusal(),
                    Err(_) => StoreError::Fenced,
                })
            }
            Err(err) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                Err(err)
            }
        }
    }

    /// Runs one statement on the fence row as a write transaction (`BEGIN IMMEDIATE` waits for
    /// the one writer there can be); returns the rows it changed.
    async fn control_stmt(&self, query: Q) -> StoreResult<u64> {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let out = n.clone();
        self.write(false, move |conn, _| {
            Box::pin(async move {
                let r = query.execute(&mut *conn).await.map_err(e)?;
                out.store(r.rows_affected(), std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })
        })
        .await?;
        Ok(n.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn tier(&self) -> &'static str {
        "sqlite"
    }

    fn tier_id(&self) -> String {
        TIER_ID.to_owned()
    }

    async fn create_link(&self, link: &Link) -> StoreResult<WriteAck> {
        let link = link.clone();
        self.write(true, move |conn, seq| {
            Box::pin(async move {
                // A tombstone (deleted link) may be reused; a live code may not.
                let res = sqlx::query(
                    "INSERT INTO links (code, target, created_ms, seq, deleted) VALUES (?, ?, ?, ?, 0)
                     ON CONFLICT (code) DO UPDATE SET target = excluded.target, created_ms = excluded.created_ms,
                       seq = excluded.seq, deleted = 0 WHERE links.deleted = 1",
                )
                .bind(&link.code)
                .bind(&link.target)
                .bind(link.created_ms)
                .bind(seq)
                .execute(&mut *conn)
                .await
                .map_err(e)?;
                if res.rows_affected() == 0 { Err(StoreError::Duplicate) } else { Ok(()) }
            })
        })
        .await?;
        Ok(WriteAck::default())
    }

    async fn get_link(&self, code: &str, _ctx: ReadCtx) -> StoreResult<(Option<Link>, ReadFrom)> {
        let row = sqlx::query(
            "SELECT code, target, created_ms FROM links WHERE code = ? AND deleted = 0",
        )
        .bind(code)
        .fetch_optional(&self.pool)
        .await
        .map_err(e)?;
        Ok((
            row.map(|r| Link {
                code: r.get(0),
                target: r.get(1),
                created_ms: r.get(2),
            }),
            ReadFrom::Primary,
        ))
    }

    async fn update_link(&self, code: &str, target: &str) -> StoreResult<WriteAck> {
        let (code, target) = (code.to_owned(), target.to_owned());
        self.write(true, move |conn, seq| {
            Box::pin(async move {
                let res = sqlx::query(
                    "UPDATE links SET target = ?, seq = ? WHERE code = ? AND deleted = 0",
                )
                .bind(&target)
                .bind(seq)
                .bind(&code)
                .execute(&mut *conn)
                .await
                .map_err(e)?;
                if res.rows_affected() == 0 {
                    Err(StoreError::NotFound)
                } else {
                    Ok(())
                }
            })
        })
        .await?;
        Ok(WriteAck::default())
    }

    async fn delete_link(&self, code: &str) -> StoreResult<WriteAck> {
        let code = code.to_owned();
        self.write(true, move |conn, seq| {
            Box::pin(async move {
                let res = sqlx::query(
                    "UPDATE links SET deleted = 1, seq = ? WHERE code = ? AND deleted = 0",
                )
                .bind(seq)
                .bind(&code)
                .execute(&mut *conn)
                .await
                .map_err(e)?;
                if res.rows_affected() == 0 {
                    Err(StoreError::NotFound)
                } else {
                    Ok(())
                }
            })
        })
        .await?;
        Ok(WriteAck::default())
    }

    async fn add_clicks(&self, clicks: &[ClickRow]) -> StoreResult<()> {
        let clicks = clicks.to_vec();
        self.write(true, move |conn, _seq| {
            Box::pin(async move {
                for c in &clicks {
                    sqlx::query(
                        "INSERT INTO clicks_daily (code, day, clicks) VALUES (?, ?, ?)
                         ON CONFLICT (code, day) DO UPDATE SET clicks = clicks_daily.clicks + excluded.clicks",
                    )
                    .bind(&c.code)
                    .bind(&c.day)
                    .bind(c.clicks)
                    .execute(&mut *conn)
                    .await
                    .map_err(e)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn click_stats(&self, code: &str) -> StoreResult<Vec<ClickRow>> {
        let rows =
            sqlx::query("SELECT code, day, clicks FROM clicks_daily WHERE code = ? ORDER BY day")
                .bind(code)
                .fetch_all(&self.pool)
                .await
                .map_err(e)?;
        Ok(rows
            .into_iter()
            .map(|r| ClickRow {
                code: r.get(0),
                day: r.get(1),
                clicks: r.get(2),
            })
            .collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(e)?;
        Ok(())
    }

    async fn control(&self) -> StoreResult<Control> {
        let row = sqlx::query(concat!(
            "SELECT fenced, moved_to, lease_holder, lease_until_ms, ",
            now_ms!(),
            " FROM ladder_control WHERE tier_id = ?"
        ))
        .bind(TIER_ID)
        .fetch_optional(&self.pool)
        .await
        .map_err(e)?;
        Ok(row
            .map(|r| {
                let until: Option<i64> = r.get(3);
                let now: i64 = r.get(4);
                Control {
                    fenced: r.get(0),
                    moved_to: r.get(1),
                    lease_holder: r.get(2),
                    lease_until_ms: until,
                    lease_expired: until.is_some_and(|u| u < now),
                }
            })
            .unwrap_or_default())
    }
}

#[async_trait]
impl MigrationStore for SqliteStore {
    async fn identity(&self) -> StoreResult<String> {
        // The file itself, however the path names it.
        let path = std::fs::canonicalize(&self.path)
            .map_err(|err| StoreError::Other(anyhow::anyhow!("{}: {err}", self.path)))?;
        Ok(format!("sqlite:{}", path.display()))
    }

    async fn controls(&self) -> StoreResult<Vec<Control>> {
        Ok(vec![self.control().await?])
    }

    async fn claim_fence(
        &self,
        _partition: usize,
        holder: &Holder,
        ttl_ms: i64,
        clear_pointer: bool,
    ) -> StoreResult<Claim> {
        let n = self
            .control_stmt(
                sqlx::query(concat!(
                    "UPDATE ladder_control SET fenced = 1, lease_holder = ?2, lease_until_ms = ",
                    now_ms!(),
                    " + ?3, moved_to = CASE WHEN ?5 THEN NULL ELSE moved_to END
                     WHERE tier_id = ?1 AND (?5 OR moved_to IS NULL)
                       AND (?5 OR NOT fenced OR lease_holder IS NULL OR lease_holder LIKE ?4
                            OR lease_until_ms < ",
                    now_ms!(),
                    ")"
                ))
                .bind(TIER_ID)
                .bind(holder.as_stored())
                .bind(ttl_ms)
                .bind(holder.migration_pattern())
                .bind(clear_pointer),
            )
            .await?;
        if n == 1 {
            return Ok(Claim::Granted);
        }
        Ok(Claim::refused(self.control().await?))
    }

    async fn renew_fence(
        &self,
        _partition: usize,
        holder: &Holder,
        ttl_ms: i64,
    ) -> StoreResult<bool> {
        let n = self
            .control_stmt(
                sqlx::query(concat!(
                    "UPDATE ladder_control SET lease_until_ms = ",
                    now_ms!(),
                    " + ?3 WHERE tier_id = ?1 AND lease_holder = ?2 AND moved_to IS NULL"
                ))
                .bind(TIER_ID)
                .bind(holder.as_stored())
                .bind(ttl_ms),
            )
            .await?;
        Ok(n == 1)
    }

    async fn release_fence(&self, _partition: usize, holder: &Holder) -> StoreResult<bool> {
        let n = self
            .control_stmt(
                sqlx::query(
                    "UPDATE ladder_control SET fenced = 0, lease_holder = NULL, lease_until_ms = NULL
                     WHERE tier_id = ?1 AND moved_to IS NULL AND lease_holder LIKE ?2",
                )
                .bind(TIER_ID)
                .bind(holder.migration_pattern()),
            )
            .await?;
        Ok(n == 1)
    }

    async fn cut_over(
        &self,
        _partition: usize,
        holder: &Holder,
        moved_to: &str,
    ) -> StoreResult<bool> {
        let n = self
            .control_stmt(
                sqlx::query(
                    "UPDATE ladder_control SET moved_to = COALESCE(moved_to, ?3), lease_holder = ?2,
                       lease_until_ms = NULL
                     WHERE tier_id = ?1 AND fenced AND lease_holder LIKE ?4",
                )
                .bind(TIER_ID)
                .bind(holder.as_stored())
                .bind(moved_to.to_owned())
                .bind(holder.migration_pattern()),
            )
            .await?;
        Ok(n == 1)
    }

    async fn watermark(&self, _partition: usize) -> StoreResult<i64> {
        // BEGIN IMMEDIATE waits for the one writer there can be.
        let mut conn = self.pool.acquire().await.map_err(e)?;
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(e)?;
        let w = sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(seq), 0) FROM links")
            .fetch_one(&mut *conn)
            .await;
        let end = if w.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::raw_sql(end).execute(&mut *conn).await.map_err(e)?;
        w.map_err(e)
    }

    async fn scan_links(
        &self,
        _partition: usize,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<LinkRow>> {
        let rows = sqlx::query(
            "SELECT code, target, created_ms, seq, deleted FROM links WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(e)?;
        Ok(rows
            .into_iter()
            .map(|r| LinkRow {
                code: r.get(0),
                target: r.get(1),
                created_ms: r.get(2),
                seq: r.get(3),
                deleted: r.get(4),
            })
            .collect())
    }

    async fn scan_clicks(&self, _partition: usize) -> StoreResult<Vec<ClickRow>> {
        let rows = sqlx::query("SELECT code, day, clicks FROM clicks_daily")
            .fetch_all(&self.pool)
            .await
            .map_err(e)?;
        Ok(rows
            .into_iter()
            .map(|r| ClickRow {
                code: r.get(0),
                day: r.get(1),
                clicks: r.get(2),
            })
            .collect())
    }

    async fn put_links(&self, rows: &[LinkRow]) -> StoreResult<()> {
        let rows = rows.to_vec();
        self.write(false, move |conn, _| {
            Box::pin(async move {
                for r in &rows {
                    // The copied row gets a fresh local seq (so a later migration away from this
                    // tier sees it in order), its content from the source.
                    let seq: i64 =
                        sqlx::query_scalar("UPDATE ladder_seq SET value = value + 1 WHERE id = 1 RETURNING value")
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(e)?;
                    sqlx::query(
                        "INSERT INTO links (code, target, created_ms, seq, deleted)
                         VALUES (?, ?, ?, ?, ?)
                         ON CONFLICT (code) DO UPDATE SET target = excluded.target, created_ms = excluded.created_ms,
                           seq = excluded.seq, deleted = excluded.deleted
                         WHERE links.target IS NOT excluded.target OR links.deleted IS NOT excluded.deleted
                           OR links.created_ms IS NOT excluded.created_ms",
                    )
                    .bind(&r.code)
                    .bind(&r.target)
                    .bind(r.created_ms)
                    .bind(seq)
                    .bind(r.deleted)
                    .execute(&mut *conn)
                    .await
                    .map_err(e)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn put_clicks(&self, rows: &[ClickRow]) -> StoreResult<()> {
        let rows = rows.to_vec();
        self.write(false, move |conn, _| {
            Box::pin(async move {
                for c in &rows {
                    sqlx::query(
                        "INSERT INTO clicks_daily (code, day, clicks) VALUES (?, ?, ?)
                         ON CONFLICT (code, day) DO UPDATE SET clicks = excluded.clicks",
                    )
                    .bind(&c.code)
                    .bind(&c.day)
                    .bind(c.clicks)
                    .execute(&mut *conn)
                    .await
                    .map_err(e)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn checkpoint_get(&self, id: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT state FROM ladder_migrate_checkpoint WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(e)
    }

    async fn checkpoint_put(&self, id: &str, state: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO ladder_migrate_checkpoint (id, state) VALUES (?, ?)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        )
        .bind(id)
        .bind(state)
        .execute(&self.pool)
        .await
        .map_err(e)?;
        Ok(())
    }
}
