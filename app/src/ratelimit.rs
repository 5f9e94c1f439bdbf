//! Rate limiting and WAF rules.
//!
//! Rules come from a JSON file (`--rules-file`, rendered by the operator into a ConfigMap) and are
//! re-read when the file changes; without a file the defaults below apply. Limits are a token
//! bucket per client: `ratePerSecond` tokens refill continuously up to `burst`. With Redis, the
//! bucket lives in Redis (one Lua script, atomic, using Redis' clock) so all replicas share it;
//! if Redis fails the instance falls back to its local bucket for that request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::ConnectionManager;

use crate::metrics::Metrics;

pub use ladder_crds::contract::{PathRefusal, Rules};

/// Outcome of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Allow,
    /// Refused; retry after this many seconds (rounded up).
    Deny {
        retry_after_secs: u64,
    },
}

const BUCKET_SCRIPT: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"#;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limiter: current rules, local buckets, optional Redis.
pub struct Limiter {
    rules: Arc<RwLock<Arc<Rules>>>,
    local: Mutex<HashMap<String, Bucket>>,
    redis: Option<(ConnectionManager, String)>,
    script: redis::Script,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rules", &self.rules())
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl Limiter {
    pub fn new(rules: Rules, redis: Option<(ConnectionManager, String)>) -> Self {
        Limiter {
            rules: Arc::new(RwLock::new(Arc::new(rules))),
            local: Mutex::new(HashMap::new()),
            redis,
            script: redis::Script::new(BUCKET_SCRIPT),
        }
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_rules(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        self.local.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Loads a rules file.
    pub fn load_file(path: &std::path::Path) -> anyhow::Result<Rules> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Re-reads the rules file whenever its modification time changes.
    pub fn watch(self: &Arc<Self>, path: PathBuf, every: Duration, metrics: Arc<Metrics>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen: Option<SystemTime> =
                std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                if modified == seen {
                    continue;
                }
                seen = modified;
                match Limiter::load_file(&path) {
                    Ok(rules) => {
                        tracing::info!(?rules, "rules reloaded");
                        me.set_rules(rules);
                        metrics.reloaded("rules", true);
                    }
                    Err(err) => {
                        metrics.reloaded("rules", false);
                        tracing::error!(error = %err, "rules file invalid; keeping the current rules")
                    }
                }
            }
        });
    }

    /// Takes one token from `client`'s bucket.
    pub async fn check(&self, client: &str) -> Decision {
        let rules = self.rules();
        if rules.rate_per_second <= 0.0 {
            return Decision::Allow;
        }
        let burst = rules.burst.max(1.0);
        if let Some((conn, prefix)) = &self.redis {
            let mut conn = conn.clone();
            let mut inv = self.script.key(format!("{prefix}rl:{client}"));
            inv.arg(rules.rate_per_second).arg(burst);
            let fut = inv.invoke_async::<(i64, String)>(&mut conn);
            match tokio::time::timeout(Duration::from_millis(100), fut).await {
                Ok(Ok((allowed, wait))) => {
                    return if allowed == 1 {
                        Decision::Allow
                    } else {
                        Decision::Deny {
                            retry_after_secs: wait.parse::<f64>().unwrap_or(1.0).ceil().max(1.0)
                                as u64,
                        }
                    };
                }
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "redis rate limit failed; using the local bucket")
                }
                Err(_) => tracing::debug!("redis rate limit timed out; using the local bucket"),
            }
        }
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.len() > 100_000 {
            local.clear();
        }
        let now = Instant::now();
        let b = local.entry(client.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rules.rate_per_second).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Decision::Allow
        } else {
            let wait = (1.0 - b.tokens) / rules.rate_per_second;
            Decision::Deny {
                retry_after_secs: wait.ceil().max(1.0) as u64,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_bucket_allows_burst_then_denies() {
        let l = Limiter::new(
            Rules {
                rate_per_second: 1.0,
                burst: 3.0,
                ..Rules::default()
            },
            None,
        );
        for _ in 0..3 {
            assert_eq!(l.check("a").await, Decision::Allow);
        }
        assert!(matches!(
            l.check("a").await,
            Decision::Deny {
                retry_after_secs: 1
            }
        ));
        assert_eq!(
            l.check("b").await,
            Decision::Allow,
            "buckets are per client"
        );
    }

    #[test]
    fn blocked_hosts_match_subdomains() {
        let r = Rules {
            blocked_hosts: vec!["evil.example".into()],
            ..Rules::default()
        };
        assert!(r.host_blocked("evil.example"));
        assert!(r.host_blocked("a.EVIL.example"));
        assert!(!r.host_blocked("notevil.example"));
    }

    #[test]
    fn partial_rules_file_keeps_defaults() {
        let r: Rules = serde_json::from_str(r#"{"ratePerSecond": 5}"#).expect("parses");
        assert_eq!(r.rate_per_second, 5.0);
        assert_eq!(r.max_body_bytes, 8 * 1024);
    }
}
