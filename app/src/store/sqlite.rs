//! Phase 0: SQLite in a local file (WAL mode). SQLite has one writer at a time, so every write
//! transaction starts with `BEGIN IMMEDIATE` (takes the write lock first, so the fence check and the
//! write see the same state and no deferred transaction fails half-way on upgrade).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    ClickRow, Control, Link, LinkRow, ReadCtx, ReadFrom, Store, StoreError, StoreOptions,
    StoreResult, WriteAck,
};
use crate::metrics::Metrics;

const TIER_ID: &str = "sqlite";

#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    metrics: Arc<Metrics>,
}

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
        let store = SqliteStore { pool, metrics };
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
            Err(err) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                Err(err)
            }
        }
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
        let row = sqlx::query("SELECT fenced, moved_to FROM ladder_control WHERE tier_id = ?")
            .bind(TIER_ID)
            .fetch_optional(&self.pool)
            .await
            .map_err(e)?;
        Ok(row
            .map(|r| Control {
                fenced: r.get(0),
                moved_to: r.get(1),
            })
            .unwrap_or_default())
    }

    async fn set_control(&self, control: &Control) -> StoreResult<()> {
        // BEGIN IMMEDIATE waits for the current writer: once this commits, no write that has not
        // committed yet can commit without seeing the fence.
        let control = control.clone();
        self.write(false, move |conn, _| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO ladder_control (tier_id, fenced, moved_to) VALUES (?, ?, ?)
                     ON CONFLICT (tier_id) DO UPDATE SET fenced = excluded.fenced, moved_to = excluded.moved_to",
                )
                .bind(TIER_ID)
                .bind(control.fenced)
                .bind(&control.moved_to)
                .execute(&mut *conn)
                .await
                .map_err(e)?;
                Ok(())
            })
        })
        .await
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
