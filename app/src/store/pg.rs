//! PostgreSQL tiers: direct (building block of the replica and shard tiers), through PgBouncer
//! (phase 1) and distributed SQL over the PostgreSQL wire protocol (phase 4, CockroachDB).
//!
//! ## Why PgBouncer needs special care
//! PgBouncer 1.18 in *transaction* mode hands a client a server connection for one transaction
//! only; the next transaction may run on another server connection. sqlx by default prepares every
//! query as a *named* statement (`sqlx_s_N`) and reuses it on later calls: through PgBouncer the
//! statement would be missing on the next server connection ("prepared statement does not exist")
//! or, worse, collide with another client's `sqlx_s_N` on the same server. So in
//! [`PgMode::Bouncer`]:
//! - the statement cache is off (`statement_cache_capacity(0)`) and every query is
//!   `persistent(false)`, i.e. uses the *unnamed* statement, which Postgres drops at the next Parse;
//! - the redirect lookup (`get_link`) uses the simple query protocol (no statement; one round
//!   trip) with the code inlined, which is safe because codes are `[A-Za-z0-9_-]` only;
//! - every other query, reads included, runs inside an explicit `BEGIN … COMMIT`, because sqlx sends
//!   Parse/Describe and Bind/Execute in two round trips (two Syncs): outside a transaction PgBouncer
//!   may switch server connections between them;
//! - schema migrations take `pg_advisory_xact_lock` (transaction-scoped) instead of a session lock,
//!   and run as plain simple-protocol SQL.
//!
//! ## Two sets of connections
//! The statements a request waits on (the redirect lookup, link writes, the WAL position of the
//! replica tier) run on [`super::conns::HotPool`], which does not ping a connection on every
//! checkout and return as sqlx's pool does; everything else (schema, fence, clicks, migration)
//! keeps sqlx's `PgPool`. Both open connections lazily and hold at most `max_connections` each.
//!
//! ## Distributed SQL
//! [`PgMode::Distributed`] runs every write transaction at SERIALIZABLE (CockroachDB's only level)
//! and retries it on SQLSTATE 40001 (and 40P01) with exponential backoff and jitter, counting
//! retries in `ladder_db_transaction_retries_total`. CockroachDB is not available in the test
//! environment: the tests exercise this path against PostgreSQL at SERIALIZABLE with real
//! concurrent conflicts (see docs/storage.md).
//!
//! Why this file is long (~880 lines): one type serves three modes and implements both the
//! serving [`Store`] and the [`MigrationStore`] (fence with lease, raw rows, checkpoints); each
//! SQL statement differs per mode in small ways that are easier to check side by side. TODO:
//! move the `MigrationStore` impl to `pg/migration.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use rand::Rng;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row};

use super::conns::HotPool;
use super::{
    Claim, ClickRow, Control, Holder, Link, LinkRow, MigrationStore, ReadCtx, ReadFrom, Store,
    StoreError, StoreOptions, StoreResult, WriteAck,
};
use crate::metrics::Metrics;

/// The database's clock in ms since the epoch: leases are written and read on one clock.
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

/// How the tier talks to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgMode {
    Direct,
    Bouncer,
    Distributed,
}

/// Write attempts before a serialization failure is given up (and surfaces as 503).
const MAX_ATTEMPTS: u32 = 10;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The request path's connections (see `super::conns`).
    hot: HotPool,
    mode: PgMode,
    tier_id: String,
    metrics: Arc<Metrics>,
}

type Q<'a> = sqlx::query::Query<'a, Postgres, PgArguments>;

/// The body of a write transaction: SQL errors go in the outer `Result` (retried or classified by
/// the driver), logical outcomes (not found, duplicate) in the inner one (rolled back, returned).
type TxBody<'c> = BoxFuture<'c, Result<StoreResult<()>, sqlx::Error>>;

fn e(err: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(err)
}

fn link_row(r: &sqlx::postgres::PgRow) -> LinkRow {
    LinkRow {
        code: r.get(0),
        target: r.get(1),
        created_ms: r.get(2),
        seq: r.get(3),
        deleted: r.get(4),
    }
}

impl PgStore {
    /// Connects lazily (the app starts while the database is down and reports 503 until it is
    /// back) and applies the schema when reachable.
    pub async fn open(
        url: &str,
        mode: PgMode,
        opts: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let store = Self::connect(url, mode, opts, metrics, "postgres")?;
        store.migrate_or_retry().await?;
        Ok(store)
    }

    /// Applies the schema now, or, when the database cannot be reached, keeps retrying in the
    /// background: the app starts (answering 503, not ready) while its database is down.
    /// Errors other than "unreachable" (bad credentials, bad SQL) still fail the start.
    pub async fn migrate_or_retry(&self) -> anyhow::Result<()> {
        match self.migrate().await {
            Ok(()) => Ok(()),
            Err(err) if is_unreachable(&err) => {
                tracing::warn!(error = %format!("{err:#}"), "database unreachable; applying the schema once it is back");
                let me = self.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match me.migrate().await {
                            Ok(()) => {
                                tracing::info!("database reachable; schema applied");
                                return;
                            }
                            Err(err) if is_unreachable(&err) => continue,
                            Err(err) => {
                                tracing::error!(error = %format!("{err:#}"), "applying the schema failed");
                                return;
                            }
                        }
                    }
                });
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Builds the pool without touching the database.
    pub fn connect(
        url: &str,
        mode: PgMode,
        opts: &StoreOptions,
        metrics: Arc<Metrics>,
        tier_id: &str,
    ) -> anyhow::Result<Self> {
        // A `postgres+pgbouncer://` URL (how the operator names a database behind PgBouncer in
        // replica lists and shard maps) only changes how statements are sent. The fence row
        // (`tier_id`) never depends on the mode: one database, one fence, however it is reached.
        let (url, mode) = match url
            .strip_prefix(ladder_crds::contract::PGBOUNCER_SCHEME)
            .and_then(|rest| rest.strip_prefix("://"))
        {
            Some(rest) => (format!("postgres://{rest}"), PgMode::Bouncer),
            None => (url.to_owned(), mode),
        };
        let mut options: PgConnectOptions = url.parse().map_err(|err| {
            anyhow::anyhow!("invalid PostgreSQL URL {}: {err}", super::redact_url(&url))
        })?;
        let has_password = url::Url::parse(&url).is_ok_and(|u| u.password().is_some());
        if let (false, Some(password)) = (has_password, &opts.password) {
            options = options.password(password);
        }
        options = options.application_name("ladder-app");
        if mode == PgMode::Bouncer {
            options = options.statement_cache_capacity(0);
        } else if let Some(t) = opts.statement_timeout {
            // A startup parameter: set once per session, no extra round trip. PgBouncer 1.18
            // refuses (or, when told to ignore it, drops) `options`, so behind it the bouncer's
            // `query_timeout` bounds statements instead, and the app's request timeout bounds
            // what a client waits either way.
            options = options.options([("statement_timeout", t.as_millis().to_string())]);
        }
        let hot = HotPool::new(options.clone(), opts.max_connections, opts.acquire_timeout);
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(opts.acquire_timeout)
            .connect_lazy_with(options);
        Ok(PgStore {
            pool,
            hot,
            mode,
            tier_id: tier_id.to_owned(),
            metrics,
        })
    }

    pub fn with_tier_id(mut self, tier_id: &str) -> Self {
        self.tier_id = tier_id.to_owned();
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A query that is safe for this mode (unnamed statement through PgBouncer).
    fn q(&self, sql: &'static str) -> Q<'static> {
        sqlx::query(sql).persistent(self.mode != PgMode::Bouncer)
    }

    /// Writes daily click rows with `upsert` (one statement per row, binding code, day, clicks)
    /// in one write transaction; the statement decides whether a count adds up or replaces.
    async fn upsert_clicks(
        &self,
        rows: &[ClickRow],
        fence: bool,
        upsert: &'static str,
    ) -> StoreResult<()> {
        self.write(fence, |conn, _| {
            let qs: Vec<Q<'static>> = rows
                .iter()
                .map(|c| {
                    self.q(upsert)
                        .bind(c.code.clone())
                        .bind(c.day.clone())
                        .bind(c.clicks)
                })
                .collect();
            Box::pin(async move {
                for q in qs {
                    q.execute(&mut *conn).await?;
                }
                Ok(Ok(()))
            })
        })
        .await
    }

    /// Applies `migrations/postgres` (idempotent), serialised by a transaction-scoped advisory
    /// lock so that it is safe through PgBouncer and with many replicas starting at once.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql("SELECT pg_advisory_xact_lock(7428823)")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(include_str!("../../migrations/postgres/0001_init.sql"))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(include_str!(
            "../../migrations/postgres/0002_fence_lease.sql"
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.ensure_control_row().await?;
        Ok(())
    }

    /// The fence row must exist: writers lock it `FOR SHARE`, which locks nothing when it is absent.
    pub async fn ensure_control_row(&self) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(e)?;
        self.q("INSERT INTO ladder_control (tier_id, fenced) VALUES ($1, FALSE) ON CONFLICT (tier_id) DO NOTHING")
            .bind(self.tier_id.clone())
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        tx.commit().await.map_err(e)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        match self.mode {
            PgMode::Distributed => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
                    .await
            }
            _ => self.pool.begin().await,
        }
    }

    /// Runs one write transaction: fence check (`FOR SHARE` on this tier's control row, so a
    /// fence waits for in-flight writes), `body`, commit; retried on serialization failures.
    async fn write<F>(&self, fence: bool, body: F) -> StoreResult<()>
    where
        F: for<'c> Fn(&'c mut PgConnection, i64) -> TxBody<'c> + Send + Sync,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_write(fence, &body).await {
                Ok(Err(StoreError::Fenced)) => {
                    return Err(self.fenced_or(StoreError::Fenced).await);
                }
                Ok(outcome) => return outcome,
                Err(err) if StoreError::is_retryable_conflict(&err) && attempt < MAX_ATTEMPTS => {
                    self.metrics.tx_retries.inc();
                    // 5 ms, 10 ms, … capped at 320 ms, with full jitter.
                    let cap = 5u64 << attempt.min(6);
                    let wait = rand::rng().random_range(1..=cap);
                    tracing::debug!(attempt, wait_ms = wait, "serialization failure, retrying");
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Err(err) => return Err(e(err)),
            }
        }
    }

    async fn try_write<F>(&self, fence: bool, body: &F) -> Result<StoreResult<()>, sqlx::Error>
    where
        F: for<'c> Fn(&'c mut PgConnection, i64) -> TxBody<'c> + Send + Sync,
    {
        let mut tx = self.begin().await?;
        if fence {
            let row = self
                .q("SELECT fenced FROM ladder_control WHERE tier_id = $1 FOR SHARE")
                .bind(self.tier_id.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if row.is_some_and(|r| r.get::<bool, _>(0)) {
                tx.rollback().await?;
                return Ok(Err(StoreError::Fenced));
            }
        }
        let seq: i64 = self
            .q("SELECT nextval('ladder_links_seq')")
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        match body(&mut tx, seq).await? {
            Ok(()) => {
                tx.commit().await?;
                self.metrics.record_tx();
                Ok(Ok(()))
            }
            Err(outcome) => {
                tx.rollback().await?;
                Ok(Err(outcome))
            }
        }
    }

    /// Runs a read: inside a transaction through PgBouncer (see the module doc).
    async fn read_rows(&self, query: Q<'static>) -> StoreResult<Vec<sqlx::postgres::PgRow>> {
        if self.mode == PgMode::Bouncer {
            let mut tx = self.pool.begin().await.map_err(e)?;
            let rows = query.fetch_all(&mut *tx).await.map_err(e)?;
            tx.commit().await.map_err(e)?;
            Ok(rows)
        } else {
            query.fetch_all(&self.pool).await.map_err(e)
        }
    }

    /// Runs one self-contained write statement that checks the fence itself (a `FOR SHARE`
    /// CTE on the control row) and returns the rows it changed, on a request-path connection
    /// (`super::conns`). Direct mode sends it alone: one
    /// round trip with a cached prepared statement, atomic by itself. Through PgBouncer it is
    /// wrapped in BEGIN/COMMIT (see the module doc); in distributed mode it runs at SERIALIZABLE
    /// and is retried on 40001 like every write.
    async fn write_stmt<F>(&self, make: F) -> StoreResult<u64>
    where
        F: Fn() -> Q<'static> + Send + Sync,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut c = self.hot.acquire().await?;
                let result = match self.mode {
                    PgMode::Direct => make().execute(c.conn()).await.map(|r| r.rows_affected()),
                    mode => {
                        async {
                            let mut tx = match mode {
                                PgMode::Distributed => {
                                    c.conn()
                                        .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
                                        .await?
                                }
                                _ => c.conn().begin().await?,
                            };
                            let n = make().execute(&mut *tx).await?.rows_affected();
                            tx.commit().await?;
                            Ok::<u64, sqlx::Error>(n)
                        }
                        .await
                    }
                };
                c.settle(&result, self.mode != PgMode::Direct);
                result
            }
            .await;
            match result {
                Ok(n) => {
                    self.metrics.record_tx();
                    return Ok(n);
                }
                Err(err) if StoreError::is_retryable_conflict(&err) && attempt < MAX_ATTEMPTS => {
                    self.metrics.tx_retries.inc();
                    let cap = 5u64 << attempt.min(6);
                    let wait = rand::rng().random_range(1..=cap);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Err(err) => return Err(e(err)),
            }
        }
    }

    /// After a write changed nothing: was it the fence (and is its lease live), or `otherwise`?
    async fn fenced_or(&self, otherwise: StoreError) -> StoreError {
        match self.control().await {
            Ok(c) if c.fenced => c.refusal(),
            Ok(_) => otherwise,
            Err(err) => err,
        }
    }

    /// Runs one statement on the fence row in its own transaction; returns the rows it changed.
    async fn control_stmt(&self, query: Q<'static>) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(e)?;
        let n = query.execute(&mut *tx).await.map_err(e)?.rows_affected();
        tx.commit().await.map_err(e)?;
        Ok(n)
    }

    /// The primary's current WAL position (replica tier: read-your-writes token).
    /// Read on a request-path connection (`super::conns`): every write of the replica tier waits
    /// for it.
    pub async fn current_lsn(&self) -> StoreResult<u64> {
        let text: String = if self.mode == PgMode::Bouncer {
            // Through PgBouncer: the simple protocol, one round trip and no statement.
            let mut c = self.hot.acquire().await.map_err(e)?;
            let row = sqlx::raw_sql("SELECT pg_current_wal_lsn()::text")
                .fetch_one(c.conn())
                .await;
            c.settle(&row, false);
            row.map_err(e)?.get(0)
        } else {
            let mut c = self.hot.acquire().await.map_err(e)?;
            let row = self
                .q("SELECT pg_current_wal_lsn()::text")
                .fetch_one(c.conn())
                .await;
            c.settle(&row, false);
            row.map_err(e)?.get(0)
        };
        parse_lsn(&text).ok_or_else(|| StoreError::Other(anyhow::anyhow!("bad LSN {text:?}")))
    }

    /// A replica's last replayed WAL position (None on a primary).
    pub async fn replay_lsn(&self) -> StoreResult<Option<u64>> {
        let rows = self
            .read_rows(self.q("SELECT pg_last_wal_replay_lsn()::text"))
            .await?;
        let text: Option<String> = rows.first().and_then(|r| r.get(0));
        Ok(text.as_deref().and_then(parse_lsn))
    }
}

/// True when an error means the database could not be reached (as opposed to refusing us).
fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain().any(|e| match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)) => true,
        Some(sqlx::Error::Database(db)) => matches!(db.code().as_deref(), Some("57P03" | "57P01")),
        _ => false,
    })
}

/// Parses a `pg_lsn` text (`16/B374D848`) into a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[async_trait]
impl Store for PgStore {
    fn tier(&self) -> &'static str {
        match self.mode {
            PgMode::Direct => "postgres",
            PgMode::Bouncer => "pgbouncer",
            PgMode::Distributed => "dsql",
        }
    }

    fn tier_id(&self) -> String {
        self.tier_id.clone()
    }

    async fn create_link(&self, link: &Link) -> StoreResult<WriteAck> {
        // One statement: fence check (FOR SHARE), seq, insert. A tombstone (deleted link) may be
        // reused; a live code may not.
        let n = self
            .write_stmt(|| {
                self.q(
                    "WITH fence AS (SELECT fenced FROM ladder_control WHERE tier_id = $4 FOR SHARE)
                     INSERT INTO links (code, target, created_ms, seq, deleted)
                     SELECT $1, $2, $3, nextval('ladder_links_seq'), FALSE
                     WHERE NOT COALESCE((SELECT fenced FROM fence), FALSE)
                     ON CONFLICT (code) DO UPDATE SET target = excluded.target,
                       created_ms = excluded.created_ms, seq = excluded.seq, deleted = FALSE
                     WHERE links.deleted",
                )
                .bind(link.code.clone())
                .bind(link.target.clone())
                .bind(link.created_ms)
                .bind(self.tier_id.clone())
            })
            .await?;
        if n == 0 {
            return Err(self.fenced_or(StoreError::Duplicate).await);
        }
        Ok(WriteAck::default())
    }

    async fn get_link(&self, code: &str, _ctx: ReadCtx) -> StoreResult<(Option<Link>, ReadFrom)> {
        let row = if self.mode == PgMode::Bouncer {
            // The redirect hot path through PgBouncer: one simple-protocol query (one round trip,
            // no statement at all) instead of BEGIN + Parse + Bind + COMMIT. Safe to inline:
            // only codes of [A-Za-z0-9_-] are looked up, anything else cannot exist.
            if !crate::links::valid_code_chars(code) {
                return Ok((None, ReadFrom::Primary));
            }
            let sql = format!(
                "SELECT code, target, created_ms FROM links WHERE code = '{code}' AND NOT deleted"
            );
            let mut c = self.hot.acquire().await.map_err(e)?;
            let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .fetch_optional(c.conn())
                .await;
            c.settle(&row, false);
            row.map_err(e)?
        } else {
            let mut c = self.hot.acquire().await.map_err(e)?;
            let row = self
                .q("SELECT code, target, created_ms FROM links WHERE code = $1 AND NOT deleted")
                .bind(code.to_owned())
                .fetch_optional(c.conn())
                .await;
            c.settle(&row, false);
            row.map_err(e)?
        };
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
        let n = self
            .write_stmt(|| {
                self.q(
                    "WITH fence AS (SELECT fenced FROM ladder_control WHERE tier_id = $3 FOR SHARE)
                     UPDATE links SET target = $1, seq = nextval('ladder_links_seq')
                     WHERE code = $2 AND NOT deleted AND NOT COALESCE((SELECT fenced FROM fence), FALSE)",
                )
                .bind(target.to_owned())
                .bind(code.to_owned())
                .bind(self.tier_id.clone())
            })
            .await?;
        if n == 0 {
            return Err(self.fenced_or(StoreError::NotFound).await);
        }
        Ok(WriteAck::default())
    }

    async fn delete_link(&self, code: &str) -> StoreResult<WriteAck> {
        let n = self
            .write_stmt(|| {
                self.q(
                    "WITH fence AS (SELECT fenced FROM ladder_control WHERE tier_id = $2 FOR SHARE)
                     UPDATE links SET deleted = TRUE, seq = nextval('ladder_links_seq')
                     WHERE code = $1 AND NOT deleted AND NOT COALESCE((SELECT fenced FROM fence), FALSE)",
                )
                .bind(code.to_owned())
                .bind(self.tier_id.clone())
            })
            .await?;
        if n == 0 {
            return Err(self.fenced_or(StoreError::NotFound).await);
        }
        Ok(WriteAck::default())
    }

    async fn add_clicks(&self, clicks: &[ClickRow]) -> StoreResult<()> {
        // Concurrent flushes of the same (code, day) from
        // several instances conflict at SERIALIZABLE and are retried.
        self.upsert_clicks(
            clicks,
            true,
            "INSERT INTO clicks_daily (code, day, clicks) VALUES ($1, $2, $3)
             ON CONFLICT (code, day) DO UPDATE SET clicks = clicks_daily.clicks + excluded.clicks",
        )
        .await
    }

    async fn click_stats(&self, code: &str) -> StoreResult<Vec<ClickRow>> {
        let rows = self
            .read_rows(
                self.q("SELECT code, day, clicks FROM clicks_daily WHERE code = $1 ORDER BY day")
                    .bind(code.to_owned()),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ClickRow {
                code: r.get(0),
                day: r.get(1),
                clicks: r.get(2),
            })
            .collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        // Reads the control table, so "ready" also means "schema applied".
        self.read_rows(self.q("SELECT 1 FROM ladder_control LIMIT 1"))
            .await
            .map(|_| ())
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "tier": self.tier(), "tierId": self.tier_id })
    }

    async fn control(&self) -> StoreResult<Control> {
        let rows = self
            .read_rows(
                self.q(concat!(
                    "SELECT fenced, moved_to, lease_holder, lease_until_ms, ",
                    now_ms!(),
                    " FROM ladder_control WHERE tier_id = $1"
                ))
                .bind(self.tier_id.clone()),
            )
            .await?;
        Ok(rows
            .first()
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
impl MigrationStore for PgStore {
    async fn identity(&self) -> StoreResult<String> {
        // The cluster's system identifier survives renames and access paths; a dump restored
        // elsewhere gets another. CockroachDB has no pg_control_system(): its cluster id instead
        // (not exercised by the tests, see the module doc).
        let sql = "SELECT (SELECT system_identifier::text FROM pg_control_system()) || '/' || current_database()";
        match self.read_rows(self.q(sql)).await {
            Ok(rows) => Ok(format!(
                "pg:{}",
                rows.first()
                    .map(|r| r.get::<String, _>(0))
                    .unwrap_or_default()
            )),
            Err(_) if self.mode == PgMode::Distributed => {
                let rows = self
                    .read_rows(
                        self.q(
                            "SELECT crdb_internal.cluster_id()::text || '/' || current_database()",
                        ),
                    )
                    .await?;
                Ok(format!(
                    "crdb:{}",
                    rows.first()
                        .map(|r| r.get::<String, _>(0))
                        .unwrap_or_default()
                ))
            }
            Err(err) => Err(err),
        }
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
        // The UPDATE waits for every writer holding FOR SHARE on the row: when it commits, every
        // write that committed before is in, and every later write sees the fence.
        self.ensure_control_row().await?;
        let n = self
            .control_stmt(
                self.q(concat!(
                    "UPDATE ladder_control SET fenced = TRUE, lease_holder = $2, lease_until_ms = ",
                    now_ms!(),
                    " + $3, moved_to = CASE WHEN $5 THEN NULL ELSE moved_to END
                     WHERE tier_id = $1 AND ($5 OR moved_to IS NULL)
                       AND ($5 OR NOT fenced OR lease_holder IS NULL OR lease_holder LIKE $4
                            OR lease_until_ms < ",
                    now_ms!(),
                    ")"
                ))
                .bind(self.tier_id.clone())
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
                self.q(concat!(
                    "UPDATE ladder_control SET lease_until_ms = ",
                    now_ms!(),
                    " + $3 WHERE tier_id = $1 AND lease_holder = $2 AND moved_to IS NULL"
                ))
                .bind(self.tier_id.clone())
                .bind(holder.as_stored())
                .bind(ttl_ms),
            )
            .await?;
        Ok(n == 1)
    }

    async fn release_fence(&self, _partition: usize, holder: &Holder) -> StoreResult<bool> {
        let n = self
            .control_stmt(
                self.q(
                    "UPDATE ladder_control SET fenced = FALSE, lease_holder = NULL, lease_until_ms = NULL
                     WHERE tier_id = $1 AND moved_to IS NULL AND lease_holder LIKE $2",
                )
                .bind(self.tier_id.clone())
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
                self.q(
                    "UPDATE ladder_control SET moved_to = COALESCE(moved_to, $3), lease_holder = $2,
                       lease_until_ms = NULL
                     WHERE tier_id = $1 AND fenced AND lease_holder LIKE $4",
                )
                .bind(self.tier_id.clone())
                .bind(holder.as_stored())
                .bind(moved_to.to_owned())
                .bind(holder.migration_pattern()),
            )
            .await?;
        Ok(n == 1)
    }

    async fn scan_links(
        &self,
        _partition: usize,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<LinkRow>> {
        let rows = self
            .read_rows(
                self.q("SELECT code, target, created_ms, seq, deleted FROM links WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(limit),
            )
            .await?;
        Ok(rows.iter().map(link_row).collect())
    }

    async fn watermark(&self, _partition: usize) -> StoreResult<i64> {
        // Writers lock the fence row FOR SHARE before they take a `seq`; FOR UPDATE waits for
        // them to finish and holds new ones back until this transaction ends.
        self.ensure_control_row().await?;
        let mut tx = self.begin().await.map_err(e)?;
        self.q("SELECT fenced FROM ladder_control WHERE tier_id = $1 FOR UPDATE")
            .bind(self.tier_id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(e)?;
        let w: i64 = self
            .q("SELECT COALESCE(MAX(seq), 0) FROM links")
            .fetch_one(&mut *tx)
            .await
            .map_err(e)?
            .get(0);
        tx.commit().await.map_err(e)?;
        Ok(w)
    }

    async fn scan_clicks(&self, _partition: usize) -> StoreResult<Vec<ClickRow>> {
        let rows = self
            .read_rows(self.q("SELECT code, day, clicks FROM clicks_daily"))
            .await?;
        Ok(rows
            .iter()
            .map(|r| ClickRow {
                code: r.get(0),
                day: r.get(1),
                clicks: r.get(2),
            })
            .collect())
    }

    async fn put_links(&self, rows: &[LinkRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // One statement per batch (the rows as arrays), not one round trip
        // per row: through PgBouncer the copy was bound by round trips.
        // Content from the source, a fresh local seq (so a later migration
        // away from this tier sees the row in order); unchanged rows are
        // left alone. Codes are unique within a batch (one partition's scan).
        let codes: Vec<String> = rows.iter().map(|r| r.code.clone()).collect();
        let targets: Vec<String> = rows.iter().map(|r| r.target.clone()).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.created_ms).collect();
        let deleted: Vec<bool> = rows.iter().map(|r| r.deleted).collect();
        self.write(false, |conn, _| {
            let q = self
                .q("INSERT INTO links (code, target, created_ms, seq, deleted)
                 SELECT code, target, created_ms, nextval('ladder_links_seq'), deleted
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bool[])
                   AS batch (code, target, created_ms, deleted)
                 ON CONFLICT (code) DO UPDATE SET target = excluded.target, created_ms = excluded.created_ms,
                   seq = excluded.seq, deleted = excluded.deleted
                 WHERE (links.target, links.created_ms, links.deleted)
                   IS DISTINCT FROM (excluded.target, excluded.created_ms, excluded.deleted)")
                .bind(codes.clone())
                .bind(targets.clone())
                .bind(created.clone())
                .bind(deleted.clone());
            Box::pin(async move {
                q.execute(&mut *conn).await?;
                Ok(Ok(()))
            })
        })
        .await
    }

    async fn delete_strays(&self, _partition: usize, codes: &[String]) -> StoreResult<()> {
        self.write(true, |conn, _| {
            let clicks = self
                .q("DELETE FROM clicks_daily WHERE code = ANY($1)")
                .bind(codes.to_vec());
            let links = self
                .q("DELETE FROM links WHERE code = ANY($1)")
                .bind(codes.to_vec());
            Box::pin(async move {
                clicks.execute(&mut *conn).await?;
                links.execute(&mut *conn).await?;
                Ok(Ok(()))
            })
        })
        .await
    }

    async fn put_clicks(&self, rows: &[ClickRow]) -> StoreResult<()> {
        self.upsert_clicks(
            rows,
            false,
            "INSERT INTO clicks_daily (code, day, clicks) VALUES ($1, $2, $3)
             ON CONFLICT (code, day) DO UPDATE SET clicks = excluded.clicks",
        )
        .await
    }

    async fn checkpoint_get(&self, id: &str) -> StoreResult<Option<String>> {
        let rows = self
            .read_rows(
                self.q("SELECT state FROM ladder_migrate_checkpoint WHERE id = $1")
                    .bind(id.to_owned()),
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn checkpoint_put(&self, id: &str, state: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(e)?;
        self.q(
            "INSERT INTO ladder_migrate_checkpoint (id, state) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        )
        .bind(id.to_owned())
        .bind(state.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_lsn;

    #[test]
    fn lsn_parses() {
        assert_eq!(parse_lsn("0/3019088"), Some(0x0301_9088));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("nope"), None);
    }
}
