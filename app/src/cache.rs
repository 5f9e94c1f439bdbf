//! The redirect cache (cache-aside) and the edge purger.
//!
//! Phase 0 uses a bounded in-process map; from phase 1 Redis is shared by all replicas. Writes
//! invalidate (`DEL`) after the database commit. Redis is an optimisation, never a dependency:
//! every Redis call has a short timeout, and after a failure Redis is skipped for a cool-down so
//! a dead Redis costs one timeout per cool-down, not one per request; reads then go to the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::Metrics;

/// Redis calls give up after this long (a cache must be faster than the database it protects).
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// After a Redis failure, skip Redis for this long.
const REDIS_COOL_DOWN: Duration = Duration::from_millis(500);
/// Entries of the in-process cache.
const LOCAL_CAPACITY: usize = 100_000;

pub enum RedirectCache {
    Local(LocalCache),
    Redis(RedisCache),
}

impl std::fmt::Debug for RedirectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedirectCache::Local(_) => f.write_str("RedirectCache::Local"),
            RedirectCache::Redis(r) => write!(f, "RedirectCache::Redis(prefix={})", r.prefix),
        }
    }
}

#[derive(Debug)]
pub struct LocalCache {
    ttl: Duration,
    map: Mutex<HashMap<String, (String, Instant)>>,
}

/// Redis-backed cache (Debug shows only the prefix).
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    /// Milliseconds since `epoch` until which Redis is skipped.
    skip_until_ms: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisCache(prefix={})", self.prefix)
    }
}

impl RedirectCache {
    pub fn local(ttl: Duration) -> Self {
        RedirectCache::Local(LocalCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Connects lazily: the app starts even while Redis is down.
    pub fn redis(url: &str, prefix: &str, ttl: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedirectCache::Redis(RedisCache {
            conn,
            prefix: prefix.to_owned(),
            ttl,
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }

    /// The cached target of a code, if any. Errors count as misses.
    pub async fn get(&self, code: &str, metrics: &Metrics) -> Option<String> {
        let found = match self {
            RedirectCache::Local(c) => {
                let map = c.map.lock().unwrap_or_else(|e| e.into_inner());
                map.get(code)
                    .filter(|(_, at)| at.elapsed() < c.ttl)
                    .map(|(t, _)| t.clone())
            }
            RedirectCache::Redis(r) => {
                let key = format!("{}link:{code}", r.prefix);
                match r
                    .call(|mut c| async move { c.get::<_, Option<String>>(key).await })
                    .await
                {
                    Some(v) => v,
                    None => {
                        Metrics::inc(&metrics.cache, "error", 1);
                        None
                    }
                }
            }
        };
        Metrics::inc(
            &metrics.cache,
            if found.is_some() { "hit" } else { "miss" },
            1,
        );
        found
    }

    pub async fn put(&self, code: &str, target: &str) {
        match self {
            RedirectCache::Local(c) => {
                let mut map = c.map.lock().unwrap_or_else(|e| e.into_inner());
                if map.len() >= LOCAL_CAPACITY {
                    // Cheap bound: drop expired entries, then everything if still full.
                    map.retain(|_, (_, at)| at.elapsed() < c.ttl);
                    if map.len() >= LOCAL_CAPACITY {
                        map.clear();
                    }
                }
                map.insert(code.to_owned(), (target.to_owned(), Instant::now()));
            }
            RedirectCache::Redis(r) => {
                let key = format!("{}link:{code}", r.prefix);
                let (target, ttl) = (target.to_owned(), r.ttl.as_secs().max(1));
                let _ = r
                    .call(|mut c| async move { c.set_ex::<_, _, ()>(key, target, ttl).await })
                    .await;
            }
        }
    }

    /// Invalidates after an update or delete. A failed Redis DEL is retried once; if Redis is
    /// down the entry expires with its TTL (logged).
    pub async fn invalidate(&self, code: &str) {
        match self {
            RedirectCache::Local(c) => {
                c.map.lock().unwrap_or_else(|e| e.into_inner()).remove(code);
            }
            RedirectCache::Redis(r) => {
                let key = format!("{}link:{code}", r.prefix);
                for _ in 0..2 {
                    let k = key.clone();
                    // Invalidation ignores the cool-down: it matters more than a hit.
                    let res = tokio::time::timeout(REDIS_TIMEOUT, async {
                        let mut c = r.conn.clone();
                        c.del::<_, ()>(k).await
                    })
                    .await;
                    if matches!(res, Ok(Ok(()))) {
                        return;
                    }
                }
                tracing::warn!(
                    code,
                    "redis invalidation failed; entry expires with its TTL"
                );
            }
        }
    }

    /// The Redis connection (shared with the rate limiter), if any.
    pub fn redis_conn(&self) -> Option<ConnectionManager> {
        match self {
            RedirectCache::Redis(r) => Some(r.conn.clone()),
            RedirectCache::Local(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RedirectCache::Local(_) => "local",
            RedirectCache::Redis(_) => "redis",
        }
    }
}

impl RedisCache {
    /// Runs one Redis call with the timeout and cool-down; None on failure.
    async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.skip_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        match tokio::time::timeout(REDIS_TIMEOUT, f(self.conn.clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "redis call failed");
                self.skip_until_ms
                    .store(now + REDIS_COOL_DOWN.as_millis() as u64, Ordering::Relaxed);
                None
            }
            Err(_) => {
                self.skip_until_ms
                    .store(now + REDIS_COOL_DOWN.as_millis() as u64, Ordering::Relaxed);
                None
            }
        }
    }
}

/// PURGEs a redirect from the edge cache (Varnish) after an update or delete.
#[derive(Debug, Clone)]
pub struct EdgePurger {
    base: String,
    http: reqwest::Client,
}

impl EdgePurger {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        Ok(EdgePurger {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub async fn purge(&self, code: &str, metrics: &Metrics) {
        let method = reqwest::Method::from_bytes(b"PURGE").unwrap_or(reqwest::Method::DELETE);
        for _ in 0..2 {
            match self
                .http
                .request(method.clone(), format!("{}/{code}", self.base))
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    Metrics::inc(&metrics.purges, "ok", 1);
                    return;
                }
                Ok(resp) => tracing::warn!(status = %resp.status(), code, "edge purge refused"),
                Err(err) => tracing::warn!(error = %err, code, "edge purge failed"),
            }
        }
        Metrics::inc(&metrics.purges, "error", 1);
    }
}
