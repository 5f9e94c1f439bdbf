//! The connections of the request path: a small pool of PostgreSQL connections for the
//! statements a request waits on (the redirect lookup, link writes, the replica tier's WAL
//! position), beside sqlx's `PgPool`, which keeps everything else (schema, fence, click flushes,
//! migration).
//!
//! Why not sqlx's pool for these: sqlx 0.9 sends a `Sync` and waits for the answer on every
//! connection it takes out of its pool (`test_before_acquire`, on by default) *and* on every
//! connection given back (unconditionally, in `return_to_pool`). A redirect lookup of one round
//! trip thus cost three, and through PgBouncer each `Sync` borrows a server connection. Here a
//! connection is checked only when it sat idle long enough to have died unseen
//! ([`CHECK_AFTER_IDLE`]), and it is given back only when its statement ran to the end
//! ([`Conn::settle`]): a statement that was cancelled (request timeout) or failed on the wire may
//! have left the protocol half-way, so that connection is dropped instead of reused.
//!
//! Bounded like sqlx's pool: at most `max` connections (a semaphore), `acquire_timeout` for the
//! permit, the check and the connect together, idle connections closed after [`IDLE_TIMEOUT`],
//! every connection retired after [`MAX_LIFETIME`] (sqlx's defaults).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection idle for longer than this is pinged before use (one round trip). Under load
/// connections are never idle this long, so the check costs nothing where it matters.
pub const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);
/// Idle connections older than this are closed instead of used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections are retired at this age (the server frees what a session accumulated).
const MAX_LIFETIME: Duration = Duration::from_secs(1800);

#[derive(Clone)]
pub struct HotPool(Arc<Inner>);

struct Inner {
    options: PgConnectOptions,
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
}

struct Idle {
    conn: PgConnection,
    since: Instant,
    born: Instant,
}

impl std::fmt::Debug for HotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotPool")
            .field("idle", &self.idle_count())
            .field("available", &self.0.permits.available_permits())
            .finish()
    }
}

impl HotPool {
    /// Opens nothing yet: connections are made on first use.
    pub fn new(options: PgConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        HotPool(Arc::new(Inner {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
            acquire_timeout,
        }))
    }

    /// Connections kept open between uses.
    pub fn idle_count(&self) -> usize {
        self.0.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A connection: the most recently used idle one (checked first if it idled for
    /// [`CHECK_AFTER_IDLE`]), else a new one. `PoolTimedOut` after `acquire_timeout`.
    pub async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        let inner = &self.0;
        let deadline = tokio::time::Instant::now() + inner.acquire_timeout;
        let permit = tokio::time::timeout_at(deadline, inner.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut idle) = idle else { break };
            let idled = idle.since.elapsed();
            if idled >= IDLE_TIMEOUT || idle.born.elapsed() >= MAX_LIFETIME {
                tokio::spawn(idle.conn.close());
                continue;
            }
            if idled >= CHECK_AFTER_IDLE
                && !matches!(
                    tokio::time::timeout_at(deadline, idle.conn.ping()).await,
                    Ok(Ok(()))
                )
            {
                // Dead (or too slow to tell): drop it, try the next one.
                continue;
            }
            return Ok(Conn {
                conn: Some(idle.conn),
                born: idle.born,
                keep: false,
                pool: inner.clone(),
                _permit: permit,
            });
        }
        let conn = tokio::time::timeout_at(deadline, PgConnection::connect_with(&inner.options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(Conn {
            conn: Some(conn),
            born: Instant::now(),
            keep: false,
            pool: inner.clone(),
            _permit: permit,
        })
    }
}

/// A connection taken from a [`HotPool`]. Dropped, it goes back to the pool only if
/// [`Conn::settle`] said its last statement finished; otherwise it is closed.
pub struct Conn {
    conn: Option<PgConnection>,
    born: Instant,
    keep: bool,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("keep", &self.keep).finish()
    }
}

impl Conn {
    pub fn conn(&mut self) -> &mut PgConnection {
        // Only `Drop` takes it out.
        self.conn
            .as_mut()
            .expect("connection present until dropped")
    }

    /// Records how the statement ended: success or an error the server answered (the protocol
    /// is back at ReadyForQuery, sqlx drains it on the next use) keep the connection; any other
    /// error (I/O, protocol) closes it. Pass `in_transaction` when a failure may have left a
    /// transaction open: such a connection is closed (the server rolls back), never reused.
    pub fn settle<T>(&mut self, result: &Result<T, sqlx::Error>, in_transaction: bool) {
        self.keep = match result {
            Ok(_) => true,
            Err(sqlx::Error::Database(_)) => !in_transaction,
            Err(_) => false,
        };
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.keep {
            return;
        }
        if self.born.elapsed() >= MAX_LIFETIME {
            tokio::spawn(conn.close());
            return;
        }
        self.pool
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Idle {
                conn,
                since: Instant::now(),
                born: self.born,
            });
    }
}
