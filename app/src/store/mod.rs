//! One storage interface, one implementation per tier of the roadmap.
//!
//! Handlers only see [`Store`], the serving part; `ladder-app migrate` and `sweep` use
//! [`MigrationStore`], which adds raw rows, partitions, checkpoints and the fence. The operator's configuration picks the tier through a
//! [`StoreSpec`] string (`--store`), e.g. `sqlite:ladder.db` or `shards:/etc/ladder/shard-map.json`.
//!
//! | spec | phase | implementation |
//! |---|---|---|
//! | `sqlite:PATH` | 0 | [`sqlite::SqliteStore`] |
//! | `postgres:URL` | 1 (direct) | [`pg::PgStore`] |
//! | `pgbouncer:URL` | 1 | [`pg::PgStore`] with unnamed statements inside explicit transactions |
//! | `replicas:PRIMARY,REPLICA,...` | 2 | [`replicas::ReplicaStore`] |
//! | `shards:MAP.json` | 3 | [`sharded::ShardedStore`] |
//! | `dsql:URL` | 4 | [`pg::PgStore`] at SERIALIZABLE, every write retried on SQLSTATE 40001 |
//!
//! Every tier keeps the same four tables (see `app/migrations/`): `links`, `clicks_daily`,
//! `ladder_control` (write fence with its lease + cut-over pointer, one row per data layout) and
//! `ladder_migrate_checkpoint`.

pub mod conns;
pub mod pg;
pub mod replicas;
pub mod sharded;
pub mod sqlite;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// A stored link, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub code: String,
    pub target: String,
    pub created_ms: i64,
}

/// A raw `links` row, tombstones included: what the migrator copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRow {
    pub code: String,
    pub target: String,
    pub created_ms: i64,
    pub seq: i64,
    pub deleted: bool,
}

/// Clicks of one code on one UTC day (`YYYY-MM-DD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickRow {
    pub code: String,
    pub day: String,
    pub clicks: i64,
}

/// What a write tells the caller about consistency: on the replica tier, the primary's WAL
/// position after the commit, so that later reads of the same client can wait for a replica
/// that has replayed past it (read-your-writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteAck {
    pub lsn: Option<u64>,
}

/// Per-request read context.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadCtx {
    /// The client's last write position; a replica is used only once it has replayed past it.
    pub min_lsn: Option<u64>,
}

/// Where a read was served from (reported in the `x-ladder-read-from` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Primary,
    Replica,
}

impl ReadFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Primary => "primary",
            ReadFrom::Replica => "replica",
        }
    }
}

/// The fence/cut-over state of a tier (of one partition, for the migrator).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// Writes are refused (503).
    pub fenced: bool,
    /// The tier was cut over: the spec of its successor, which every app instance opens.
    pub moved_to: Option<String>,
    /// The migrator run holding the fence (`<migration id> <run id> <host>`); after a cut-over
    /// it keeps naming the migration that moved the tier.
    pub lease_holder: Option<String>,
    /// When the holder's lease ends unless renewed (ms since the epoch, database clock).
    pub lease_until_ms: Option<i64>,
    /// As of this read: fenced by a migrator that stopped renewing its lease (not cut over).
    pub lease_expired: bool,
}

impl Control {
    /// True when the tier was cut over by the migration `migration` (a [`Holder::migration`]).
    pub fn moved_by(&self, migration: &str) -> bool {
        self.moved_to.is_some() && self.held_by(migration)
    }

    /// True when the fence row names a run of the migration `migration`.
    pub fn held_by(&self, migration: &str) -> bool {
        self.lease_holder
            .as_deref()
            .and_then(|h| h.split(' ').next())
            .is_some_and(|m| m == migration)
    }

    /// The error a write refused by this fence gets.
    pub fn refusal(&self) -> StoreError {
        match (
            &self.lease_holder,
            self.lease_expired && self.moved_to.is_none(),
        ) {
            (Some(holder), true) => StoreError::FenceExpired {
                holder: holder.clone(),
                expired_at_ms: self.lease_until_ms.unwrap_or_default(),
            },
            _ => StoreError::Fenced,
        }
    }
}

/// Who holds a fence: one run of one migration. The migration id is derived from the
/// identities of both tiers, so a rerun of the same migration (through any access path) may
/// take the fence over at once; any other migration only once the lease has expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub migration: String,
    pub run: String,
}

impl Holder {
    /// The value stored in `lease_holder`.
    pub fn as_stored(&self) -> String {
        format!("{} {}", self.migration, self.run)
    }

    /// A `LIKE` pattern matching every run of this migration (ids are `[a-z0-9-]`).
    pub fn migration_pattern(&self) -> String {
        format!("{} %", self.migration)
    }
}

/// The answer to [`MigrationStore::claim_fence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The fence is up and ours (taken, renewed or taken over).
    Granted,
    /// The partition was cut over already (to this spec).
    Moved(String),
    /// Another migration holds a live lease.
    HeldBy { holder: String, until_ms: i64 },
}

impl Claim {
    /// Why a claim the control row refused was refused, read from that row:
    /// the tier's cut-over pointer if it has one, else the lease in force.
    pub fn refused(control: Control) -> Claim {
        match control.moved_to {
            Some(to) => Claim::Moved(to),
            None => Claim::HeldBy {
                holder: control.lease_holder.unwrap_or_default(),
                until_ms: control.lease_until_ms.unwrap_or_default(),
            },
        }
    }
}

/// Storage failures, classified by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The code already exists (HTTP 409).
    #[error("code already exists")]
    Duplicate,
    /// No such code (HTTP 404).
    #[error("no such code")]
    NotFound,
    /// The tier is fenced for a cut-over; the client should retry shortly (HTTP 503).
    #[error("writes are fenced for a migration cut-over")]
    Fenced,
    /// The tier is fenced by a migrator that stopped renewing its lease (it died or hangs): writes
    /// stay refused, because the migrator may have copied the tier already, until a rerun of the
    /// migration (which takes the fence over and finishes) or `ladder-app migrate --abort`.
    #[error(
        "writes are fenced by a migration whose migrator stopped renewing its lease at {expired_at_ms} ms \
         since the epoch (holder {holder}); rerun the migration to finish it, or abort it with \
         `ladder-app migrate --abort`"
    )]
    FenceExpired { holder: String, expired_at_ms: i64 },
    /// The database cannot be reached or is overloaded (HTTP 503).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else (HTTP 500).
    #[error("database error")]
    Other(#[source] anyhow::Error),
}

impl StoreError {
    /// Classifies a sqlx error: connection-level problems are `Unavailable`.
    pub fn from_sqlx(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("23505") => StoreError::Duplicate,
                // admin shutdown, cannot connect now, too many connections, read-only tx
                Some("57P01" | "57P02" | "57P03" | "53300" | "25006" | "08006" | "08001") => {
                    StoreError::Unavailable(err)
                }
                _ if db.message().contains("database is locked") => StoreError::Unavailable(err),
                _ => StoreError::Other(err.into()),
            },
            _ => StoreError::Other(err.into()),
        }
    }

    /// True for SQLSTATE 40001 (serialization failure) and 40P01 (deadlock): retry the tx.
    pub fn is_retryable_conflict(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("40001" | "40P01")))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The serving part of a tier: what the HTTP handlers use. Every tier also implements
/// [`MigrationStore`], the part only `ladder-app migrate` and `sweep` use.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Short tier name (`sqlite`, `postgres`, `pgbouncer`, `replicas`, `shards`, `dsql`).
    fn tier(&self) -> &'static str;
    /// The key of this tier's fence row in `ladder_control`. It names the data layout, not the
    /// access path: `postgres` for an unsharded PostgreSQL database however it is reached
    /// (direct, PgBouncer, distributed SQL), `shards-vN` for shard map version N, `sqlite`.
    fn tier_id(&self) -> String;

    /// Inserts a link; `Duplicate` when the code is taken (a tombstone may be reused).
    async fn create_link(&self, link: &Link) -> StoreResult<WriteAck>;
    async fn get_link(&self, code: &str, ctx: ReadCtx) -> StoreResult<(Option<Link>, ReadFrom)>;
    async fn update_link(&self, code: &str, target: &str) -> StoreResult<WriteAck>;
    async fn delete_link(&self, code: &str) -> StoreResult<WriteAck>;
    /// Adds click counts (aggregated per code and day).
    async fn add_clicks(&self, clicks: &[ClickRow]) -> StoreResult<()>;
    async fn click_stats(&self, code: &str) -> StoreResult<Vec<ClickRow>>;
    /// Cheap liveness query against every backend the tier needs.
    async fn ping(&self) -> StoreResult<()>;
    /// Tier-specific readiness details (replicas in rotation, shard map version, ...).
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "tier": self.tier() })
    }
    /// The fence/cut-over state of this tier (sharded: fenced if any shard is, the first
    /// pointer found). The app polls it to follow a cut-over.
    async fn control(&self) -> StoreResult<Control>;
}

/// The migration part of a tier: raw rows, partitions, checkpoints and the fence with its lease
/// (see `crate::migrate`). Fence operations are per partition (shard); unsharded tiers have
/// partition 0 only. Every fence change waits for the writes in flight on that partition.
#[async_trait]
pub trait MigrationStore: Store {
    /// What the tier's data lives in, independent of the access path: for PostgreSQL the
    /// server's system identifier and the database name (so `pgbouncer:` and `postgres:` URLs
    /// of one database are one tier), for SQLite the file's canonical path, for shards the map
    /// version and every shard's identity.
    async fn identity(&self) -> StoreResult<String>;
    /// What partition `part` lives in ([`Self::identity`] of its own database). An in-place
    /// resharding reuses shards: a row whose old and new partitions are one database is
    /// already where it belongs, and the migration must not write it again (see
    /// `crate::migrate::copy_pass`). Default: the tier's identity (one partition).
    async fn partition_identity(&self, part: usize) -> StoreResult<String> {
        let _ = part;
        self.identity().await
    }
    /// Number of independent partitions (shards); 1 for unsharded tiers.
    fn partitions(&self) -> usize {
        1
    }
    /// Which partition a code belongs to.
    fn partition_of(&self, _code: &str) -> usize {
        0
    }
    /// The fence state of every partition, in partition order.
    async fn controls(&self) -> StoreResult<Vec<Control>>;
    /// Puts up the fence of one partition for `holder` with a lease of `ttl_ms`: granted when
    /// the partition is unfenced, fenced without a holder, held by any run of the same
    /// migration, or held under an expired lease. `clear_pointer` also drops a cut-over pointer
    /// (a retained old tier becoming a migration's target again). Waits for writes in flight.
    async fn claim_fence(
        &self,
        partition: usize,
        holder: &Holder,
        ttl_ms: i64,
        clear_pointer: bool,
    ) -> StoreResult<Claim>;
    /// Extends the lease of this exact run (true) or reports it lost (false).
    async fn renew_fence(
        &self,
        partition: usize,
        holder: &Holder,
        ttl_ms: i64,
    ) -> StoreResult<bool>;
    /// Drops the fence if a run of `holder`'s migration holds it and the partition was not cut
    /// over (true), else changes nothing (false).
    async fn release_fence(&self, partition: usize, holder: &Holder) -> StoreResult<bool>;
    /// The cut-over of one partition: keeps it fenced for good and sets `moved_to` (once: an
    /// existing pointer of the same migration is kept). True when the partition is now cut over
    /// by this migration; false when the fence is not this migration's (lost to another).
    async fn cut_over(
        &self,
        partition: usize,
        holder: &Holder,
        moved_to: &str,
    ) -> StoreResult<bool>;
    /// Rows of one partition with `seq > after`, ordered by `seq`.
    async fn scan_links(
        &self,
        partition: usize,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<LinkRow>>;
    /// The highest `seq` of a partition below which every row is committed: read while holding
    /// the partition's write lock (in-flight writes finish first, new ones wait for the read),
    /// so a copy cursor that stops there never skips a row that commits later with a lower
    /// `seq`. Writes pause for the length of one `max(seq)` lookup.
    async fn watermark(&self, partition: usize) -> StoreResult<i64>;
    /// Every click row of one partition.
    async fn scan_clicks(&self, partition: usize) -> StoreResult<Vec<ClickRow>>;
    /// Upserts raw rows (migrator only; bypasses the fence). Idempotent.
    async fn put_links(&self, rows: &[LinkRow]) -> StoreResult<()>;
    /// Upserts click rows, replacing counts (migrator only). Idempotent.
    async fn put_clicks(&self, rows: &[ClickRow]) -> StoreResult<()>;
    async fn checkpoint_get(&self, id: &str) -> StoreResult<Option<String>>;
    async fn checkpoint_put(&self, id: &str, state: &str) -> StoreResult<()>;
    /// Deletes the rows (links and their click counts) of `codes` from one partition only: rows
    /// the partition holds but no longer owns (see `migrate::sweep`). Refused while fenced.
    async fn delete_strays(&self, partition: usize, codes: &[String]) -> StoreResult<()> {
        let _ = (partition, codes);
        Err(StoreError::Other(anyhow::anyhow!(
            "the {} tier has no partitions to sweep",
            self.tier()
        )))
    }
}

/// Which tier to open: parsed from `--store`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Sqlite {
        path: String,
    },
    Postgres {
        url: String,
    },
    PgBouncer {
        url: String,
    },
    Replicas {
        primary: String,
        replicas: Vec<String>,
    },
    Shards {
        map_path: String,
    },
    Dsql {
        url: String,
    },
}

impl fmt::Debug for StoreSpec {
    // URLs carry passwords: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!(
                "store spec must be KIND:VALUE, e.g. sqlite:ladder.db (got {})",
                redact_url(s)
            )
        })?;
        if rest.is_empty() {
            return Err(format!("store spec {kind}: needs a value"));
        }
        let rest = rest.to_owned();
        Ok(match kind {
            "sqlite" => StoreSpec::Sqlite { path: rest },
            "postgres" | "postgresql" => StoreSpec::Postgres { url: rest },
            "pgbouncer" => StoreSpec::PgBouncer { url: rest },
            "replicas" => {
                let mut parts = rest.split(',').map(str::to_owned);
                let primary = parts.next().unwrap_or_default();
                StoreSpec::Replicas {
                    primary,
                    replicas: parts.collect(),
                }
            }
            "shards" => StoreSpec::Shards { map_path: rest },
            "dsql" | "cockroachdb" => StoreSpec::Dsql { url: rest },
            other => return Err(format!("unknown store kind {other:?}")),
        })
    }
}

impl fmt::Display for StoreSpec {
    /// The full spec (with credentials): only for storing, never for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Sqlite { path } => write!(f, "sqlite:{path}"),
            StoreSpec::Postgres { url } => write!(f, "postgres:{url}"),
            StoreSpec::PgBouncer { url } => write!(f, "pgbouncer:{url}"),
            StoreSpec::Replicas { primary, replicas } => {
                write!(f, "replicas:{primary}")?;
                for r in replicas {
                    write!(f, ",{r}")?;
                }
                Ok(())
            }
            StoreSpec::Shards { map_path } => write!(f, "shards:{map_path}"),
            StoreSpec::Dsql { url } => write!(f, "dsql:{url}"),
        }
    }
}

impl StoreSpec {
    /// The same spec with every URL's password removed (what may be stored or shown).
    pub fn without_passwords(&self) -> StoreSpec {
        let strip = |u: &str| match url::Url::parse(u) {
            Ok(mut p) if p.password().is_some() => {
                let _ = p.set_password(None);
                p.to_string()
            }
            _ => u.to_owned(),
        };
        match self {
            StoreSpec::Sqlite { .. } | StoreSpec::Shards { .. } => self.clone(),
            StoreSpec::Postgres { url } => StoreSpec::Postgres { url: strip(url) },
            StoreSpec::PgBouncer { url } => StoreSpec::PgBouncer { url: strip(url) },
            StoreSpec::Dsql { url } => StoreSpec::Dsql { url: strip(url) },
            StoreSpec::Replicas { primary, replicas } => StoreSpec::Replicas {
                primary: strip(primary),
                replicas: replicas.iter().map(|r| strip(r)).collect(),
            },
        }
    }

    /// The spec with passwords removed, for logs and errors.
    pub fn redacted(&self) -> String {
        let full = self.to_string();
        let (kind, rest) = full.split_once(':').unwrap_or(("", &full));
        let parts: Vec<String> = rest.split(',').map(redact_url).collect();
        format!("{kind}:{}", parts.join(","))
    }
}

pub use ladder_crds::contract::redact_url;

/// Tunables shared by the database tiers.
#[derive(Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: std::time::Duration,
    /// The server-side `statement_timeout` of PostgreSQL sessions (not through PgBouncer: see
    /// `pg`); None: the server's default.
    pub statement_timeout: Option<std::time::Duration>,
    /// Replicas whose replay position is further behind the primary than this leave rotation.
    pub max_replica_lag_bytes: u64,
    /// How often replica health and shard-map files are checked.
    pub poll_interval: std::time::Duration,
    /// Password for PostgreSQL URLs that carry none (see `ladder_crds::contract`).
    pub password: Option<String>,
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_replica_lag_bytes", &self.max_replica_lag_bytes)
            .field("poll_interval", &self.poll_interval)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(3),
            statement_timeout: None,
            max_replica_lag_bytes: 1024 * 1024,
            poll_interval: std::time::Duration::from_millis(250),
            password: None,
        }
    }
}

/// Opens (and migrates) the tier a spec names, for serving.
pub async fn open(
    spec: &StoreSpec,
    opts: &StoreOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = open_for_migration(spec, opts, metrics).await?;
    Ok(store)
}

/// Opens (and migrates) the tier a spec names with its migration part (`migrate`, `sweep`).
pub async fn open_for_migration(
    spec: &StoreSpec,
    opts: &StoreOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<dyn MigrationStore>> {
    // Opening creates what is missing of the schema and the fence (DDL), which can deadlock
    // with the writes of the app serving from the same database (SQLSTATE 40P01). Opening
    // is idempotent, so it is retried like a write that hit a conflict.
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match open_for_migration_once(spec, opts, metrics.clone()).await {
            Err(e) if attempt < ATTEMPTS && is_conflict(&e) => {
                tracing::warn!(attempt, error = %e, "opening a store hit a conflict; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether `e` was caused by a serialization failure or a deadlock.
fn is_conflict(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(StoreError::is_retryable_conflict)
    })
}

async fn open_for_migration_once(
    spec: &StoreSpec,
    opts: &StoreOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<dyn MigrationStore>> {
    Ok(match spec {
        StoreSpec::Sqlite { path } => {
            Arc::new(sqlite::SqliteStore::open(path, opts, metrics).await?)
        }
        StoreSpec::Postgres { url } => {
            Arc::new(pg::PgStore::open(url, pg::PgMode::Direct, opts, metrics).await?)
        }
        StoreSpec::PgBouncer { url } => {
            Arc::new(pg::PgStore::open(url, pg::PgMode::Bouncer, opts, metrics).await?)
        }
        StoreSpec::Dsql { url } => {
            Arc::new(pg::PgStore::open(url, pg::PgMode::Distributed, opts, metrics).await?)
        }
        StoreSpec::Replicas { primary, replicas } => {
            Arc::new(replicas::ReplicaStore::open(primary, replicas, opts, metrics).await?)
        }
        StoreSpec::Shards { map_path } => {
            Arc::new(sharded::ShardedStore::open(map_path, opts, metrics).await?)
        }
    })
}

/// An order-independent checksum of link rows (used by `migrate` to verify copies).
pub fn link_checksum(rows: &[LinkRow]) -> u64 {
    rows.iter().fold(0u64, |acc, r| {
        acc.wrapping_add(fnv1a64(
            format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}{}",
                r.code, r.target, r.created_ms, r.deleted
            )
            .as_bytes(),
        ))
    })
}

/// An order-independent checksum of click rows.
pub fn click_checksum(rows: &[ClickRow]) -> u64 {
    rows.iter().fold(0u64, |acc, r| {
        acc.wrapping_add(fnv1a64(
            format!("{}\u{1f}{}\u{1f}{}", r.code, r.day, r.clicks).as_bytes(),
        ))
    })
}

/// FNV-1a, 64 bit: the shard-slot hash (documented in docs/storage.md so the operator and any
/// other client compute the same slot) and the row checksum.
pub use ladder_crds::contract::fnv1a64;

#[cfg(test)]
mod tests;

/// The store in force. A cut-over (see `crate::migrate`) swaps it without a restart.
#[derive(Debug, Clone)]
pub struct StoreHandle(Arc<std::sync::RwLock<Arc<dyn Store>>>);

impl StoreHandle {
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreHandle(Arc::new(std::sync::RwLock::new(store)))
    }

    pub fn get(&self) -> Arc<dyn Store> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, store: Arc<dyn Store>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = store;
    }
}
