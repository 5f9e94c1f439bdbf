//! The redirect cache (cache-aside) and the edge purger.
//!
//! Phase 0 uses a bounded in-process map; from phase 1 Redis is shared by all replicas. Writes
//! invalidate (`DEL`) after the database commit. Redis is an optimisation, never a dependency:
//! every Redis call has a short timeout, and after a failure Redis is skipped for a cool-down so
//! a dead Redis costs one timeout per cool-down, not one per request; reads then go to the database.
//!
//! In front of Redis each instance keeps a short-lived near cache (`--near-cache-ttl-ms`, 1 s by
//! default): a hot redirect costs no Redis round trip. It stays coherent across instances:
//! - every invalidation is `DEL` + `PUBLISH <prefix>invalidate <code>`; every instance
//!   subscribes and drops the code from its near cache;
//! - while the subscription is down the near cache is off (and emptied when it comes back), so
//!   a lost message can never keep a stale entry beyond the outage;
//! - a Redis read that raced an invalidation is not kept (a generation counter);
//! - the app invalidates (and purges the edge) a second time once a near-cache lifetime has
//!   passed, which bounds any remaining race, including the classic cache-aside one (a reader
//!   putting a value it read before the update).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
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
    map: Mutex<Entries>,
}

/// code → (target, stored at): the in-process cache and the near cache.
type Entries = HashMap<String, (String, Instant)>;

/// The target of `code` if stored less than `ttl` ago.
fn fresh(map: &Entries, code: &str, ttl: Duration) -> Option<String> {
    map.get(code)
        .filter(|(_, at)| at.elapsed() < ttl)
        .map(|(t, _)| t.clone())
}

/// Stores `code`, keeping at most [`LOCAL_CAPACITY`] entries. Cheap bound: drop expired
/// entries, then everything if still full.
fn insert_bounded(map: &mut Entries, ttl: Duration, code: &str, target: &str) {
    if map.len() >= LOCAL_CAPACITY {
        map.retain(|_, (_, at)| at.elapsed() < ttl);
        if map.len() >= LOCAL_CAPACITY {
            map.clear();
        }
    }
    map.insert(code.to_owned(), (target.to_owned(), Instant::now()));
}

/// The per-instance near cache in front of Redis (see the module doc).
#[derive(Debug)]
struct Near {
    ttl: Duration,
    map: Mutex<Entries>,
    /// The invalidation subscription is up: only then may entries be served.
    live: AtomicBool,
    /// Bumped by every invalidation: a Redis read started before one is not kept.
    generation: AtomicU64,
}

impl Near {
    fn get(&self, code: &str) -> Option<String> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        fresh(
            &self.map.lock().unwrap_or_else(|e| e.into_inner()),
            code,
            self.ttl,
        )
    }

    fn keep(&self, code: &str, target: &str, generation: u64) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock: `drop_code` bumps the generation under it too.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        insert_bounded(&mut map, self.ttl, code, target);
    }

    fn drop_code(&self, code: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.remove(code);
    }

    fn set_live(&self, live: bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
        self.live.store(live, Ordering::Release);
    }
}

/// Follows `<prefix>invalidate` for as long as the near cache exists.
fn follow_invalidations(client: redis::Client, channel: String, near: std::sync::Weak<Near>) {
    tokio::spawn(async move {
        use futures::StreamExt;
        loop {
            let Some(n) = near.upgrade() else { return };
            drop(n);
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                redis::RedisResult::Ok(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
                Ok(Ok(mut pubsub)) => {
                    if let Some(n) = near.upgrade() {
                        n.set_live(true);
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(n) = near.upgrade() else { return };
                        if let Ok(code) = msg.get_payload::<String>() {
                            n.drop_code(&code);
                        }
                    }
                    tracing::warn!("redis invalidation subscription lost; near cache off");
                }
                _ => tracing::debug!("redis invalidation subscription unavailable; near cache off"),
            }
            if let Some(n) = near.upgrade() {
                n.set_live(false);
            }
            tokio::time::sleep(REDIS_COOL_DOWN).await;
        }
    });
}

/// Redis-backed cache (Debug shows only the prefix).
pub struct RedisCache {
    conn: ConnectionManager,
    near: Option<Arc<Near>>,
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

    /// Connects lazily: the app starts even while Redis is down. `password` is used when the
    /// URL has none; `ca_pem` is the CA a `rediss://` server's certificate must chain to;
    /// `near_ttl` is the near cache's entry lifetime (zero: no near cache).
    pub fn redis(
        url: &str,
        password: Option<&str>,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
        ttl: Duration,
        near_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(url)?;
        if let Some(p) = password
            && info.redis_settings().password().is_none()
        {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client = match ca_pem {
            Some(root) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            )?,
            None => redis::Client::open(info)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let near = (!near_ttl.is_zero()).then(|| {
            let near = Arc::new(Near {
                ttl: near_ttl,
                map: Mutex::new(HashMap::new()),
                live: AtomicBool::new(false),
                generation: AtomicU64::new(0),
            });
            follow_invalidations(client, format!("{prefix}invalidate"), Arc::downgrade(&near));
            near
        });
        Ok(RedirectCache::Redis(RedisCache {
            conn,
            near,
            prefix: prefix.to_owned(),
            ttl,
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }

    /// The cached target of a code, if any. Errors count as misses.
    pub async fn get(&self, code: &str, metrics: &Metrics) -> Option<String> {
        let found = match self {
            RedirectCache::Local(c) => fresh(
                &c.map.lock().unwrap_or_else(|e| e.into_inner()),
                code,
                c.ttl,
            ),
            RedirectCache::Redis(r) => {
                if let Some(hit) = r.near.as_ref().and_then(|n| n.get(code)) {
                    metrics.cache_hit.inc();
                    return Some(hit);
                }
                let generation = r
                    .near
                    .as_ref()
                    .map(|n| n.generation.load(Ordering::Acquire));
                let key = format!("{}link:{code}", r.prefix);
                match r
                    .call(|mut c| async move { c.get::<_, Option<String>>(key).await })
                    .await
                {
                    Some(v) => {
                        if let (Some(n), Some(g), Some(t)) = (&r.near, generation, &v) {
                            n.keep(code, t, g);
                        }
                        v
                    }
                    None => {
                        metrics.cache_error.inc();
                        None
                    }
                }
            }
        };
        if found.is_some() {
            metrics.cache_hit.inc();
        } else {
            metrics.cache_miss.inc();
        }
        found
    }

    pub async fn put(&self, code: &str, target: &str) {
        match self {
            RedirectCache::Local(c) => {
                let mut map = c.map.lock().unwrap_or_else(|e| e.into_inner());
                insert_bounded(&mut map, c.ttl, code, target);
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
                if let Some(n) = &r.near {
                    n.drop_code(code);
                }
                let key = format!("{}link:{code}", r.prefix);
                let channel = format!("{}invalidate", r.prefix);
                for _ in 0..2 {
                    let (k, ch) = (key.clone(), channel.clone());
                    // Invalidation ignores the cool-down: it matters more than a hit.
                    let res = tokio::time::timeout(REDIS_TIMEOUT, async {
                        let mut c = r.conn.clone();
                        redis::pipe()
                            .del(k)
                            .ignore()
                            .publish(ch, code)
                            .ignore()
                            .query_async::<()>(&mut c)
                            .await
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

    /// How long after an invalidation a second one is due (see the module doc), if any.
    pub fn second_invalidation_after(&self) -> Option<Duration> {
        match self {
            RedirectCache::Redis(r) => {
                Some(r.near.as_ref().map_or(Duration::ZERO, |n| n.ttl) + Duration::from_millis(250))
            }
            RedirectCache::Local(_) => None,
        }
    }

    /// Whether cached redirects can be served now: always for the in-process cache; for Redis,
    /// whether it answers a PING (within the usual Redis timeout).
    pub async fn healthy(&self) -> bool {
        match self {
            RedirectCache::Local(_) => true,
            RedirectCache::Redis(r) => r
                .call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
                .await
                .is_some(),
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

/// PURGEs a redirect from the edge caches (Varnish) after an update or delete. Every edge
/// instance keeps its own cache, so the purge goes to each base URL, and to every address its
/// host name resolves to (the operator names a headless Service: one address per edge pod).
#[derive(Debug, Clone)]
pub struct EdgePurger {
    bases: Vec<String>,
    http: reqwest::Client,
}

impl EdgePurger {
    /// `bases`: comma-separated base URLs, one per edge instance.
    pub fn new(bases: &str) -> anyhow::Result<Self> {
        let bases: Vec<String> = bases
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        anyhow::ensure!(!bases.is_empty(), "no edge URL given");
        for b in &bases {
            url::Url::parse(b).with_context(|| format!("edge URL {b:?}"))?;
        }
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        Ok(EdgePurger { bases, http })
    }

    pub async fn purge(&self, code: &str, metrics: &Metrics) {
        let mut targets = Vec::new();
        for base in &self.bases {
            targets.extend(Self::instances(base).await);
        }
        futures::future::join_all(
            targets
                .iter()
                .map(|(url, host)| self.purge_one(url, host.as_deref(), code, metrics)),
        )
        .await;
    }

    /// `(base URL, Host header)` of each instance behind `base`.
    async fn instances(base: &str) -> Vec<(String, Option<String>)> {
        let Ok(url) = url::Url::parse(base) else {
            return vec![];
        };
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return vec![(base.to_owned(), None)];
        };
        let url::Host::Domain(name) = host else {
            return vec![(base.to_owned(), None)];
        };
        match tokio::net::lookup_host((name, port)).await {
            Ok(addrs) => {
                let mut addrs: Vec<_> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                addrs
                    .into_iter()
                    .map(|a| {
                        let mut u = url.clone();
                        let _ = u.set_ip_host(a.ip());
                        let base = u.as_str().trim_end_matches('/').to_owned();
                        (base, Some(format!("{name}:{port}")))
                    })
                    .collect()
            }
            // Let the request report the failure (and count it).
            Err(_) => vec![(base.to_owned(), None)],
        }
    }

    async fn purge_one(&self, base: &str, host: Option<&str>, code: &str, metrics: &Metrics) {
        let method = reqwest::Method::from_bytes(b"PURGE").unwrap_or(reqwest::Method::DELETE);
        for _ in 0..2 {
            let mut req = self.http.request(method.clone(), format!("{base}/{code}"));
            if let Some(h) = host {
                req = req.header(reqwest::header::HOST, h);
            }
            match req.send().await {
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
