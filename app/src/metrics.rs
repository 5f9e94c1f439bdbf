//! Prometheus metrics (prefix `ladder_`) and the sliding load window behind `GET /load`,
//! the `ladder_load_*` gauges and the LoadReport objects.
//!
//! The window keeps one bucket per second for `window` seconds: request, error and write-transaction
//! counts plus a small log-scale latency histogram, so requests/s, tx/s, error rate and p99 over the
//! last minute cost O(window) to compute and O(1) to record.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Labels of `ladder_http_requests_total`. Static strings: building them costs no allocation
/// on the request path (the route is a row of `crate::routes::ROUTES` or `unmatched`, the
/// method one of the standard ones or `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// What was re-read: `rules`, `shard_map`, `tls_certificate`.
    pub source: String,
    /// `applied` or `refused` (the current one is kept).
    pub outcome: String,
}

/// Every metric the app exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Histogram,
    /// Link API and redirect requests being served now (what the concurrency limit counts).
    pub in_flight: Gauge,
    /// Committed write transactions.
    pub tx: Counter,
    /// Write transactions retried after SQLSTATE 40001/40P01.
    pub tx_retries: Counter,
    pub cache: Family<OutcomeLabels, Counter>,
    /// `cache{outcome="hit"}`, `"miss"` and `"error"`, looked up once: the redirect path counts
    /// every lookup.
    pub cache_hit: Counter,
    pub cache_miss: Counter,
    pub cache_error: Counter,
    pub clicks: Family<OutcomeLabels, Counter>,
    /// `clicks{outcome="dropped"}`, looked up once (counted on the redirect path).
    pub clicks_dropped: Counter,
    pub rate_limited: Counter,
    pub purges: Family<OutcomeLabels, Counter>,
    /// Re-read configuration files by source and outcome.
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 while the data tier answers its health query, 0 while it does not.
    pub store_up: Gauge,
    /// 1 while the app serves in a degraded state (the data tier is down, cached redirects are
    /// still served), else 0.
    pub degraded: Gauge,
    pub load_rps: Gauge<f64, AtomicU64>,
    pub load_tps: Gauge<f64, AtomicU64>,
    pub load_p99_ms: Gauge<f64, AtomicU64>,
    pub load_error_rate: Gauge<f64, AtomicU64>,
    pub window: LoadWindow,
}

impl Metrics {
    pub fn new(window: Duration) -> Self {
        let mut registry = Registry::with_prefix("ladder");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        let http_duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "link API and redirect requests being served",
            in_flight.clone(),
        );
        let tx = Counter::default();
        registry.register(
            "db_transactions",
            "committed write transactions",
            tx.clone(),
        );
        let tx_retries = Counter::default();
        registry.register(
            "db_transaction_retries",
            "write transactions retried on serialization failure",
            tx_retries.clone(),
        );
        let cache = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "redirect cache lookups by outcome (hit, miss, error)",
            cache.clone(),
        );
        let clicks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "clicks",
            "clicks by outcome (stored, dropped, retried)",
            clicks.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "requests refused with 429",
            rate_limited.clone(),
        );
        let purges = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "edge_purges",
            "edge (Varnish) purges by outcome",
            purges.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "configuration files re-read, by source and outcome (applied, refused)",
            reloads.clone(),
        );
        let store_up = Gauge::default();
        // Up until a probe says otherwise (a fresh app has not failed yet).
        store_up.set(1);
        registry.register(
            "store_up",
            "1 while the data tier answers its health query",
            store_up.clone(),
        );
        let degraded = Gauge::default();
        registry.register(
            "degraded",
            "1 while only cached redirects can be served (the data tier is down)",
            degraded.clone(),
        );
        let load_rps = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "load_requests_per_second",
            "requests/s over the load window",
            load_rps.clone(),
        );
        let load_tps = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "load_transactions_per_second",
            "write transactions/s over the load window",
            load_tps.clone(),
        );
        let load_p99_ms = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "load_p99_milliseconds",
            "p99 request latency over the load window",
            load_p99_ms.clone(),
        );
        let load_error_rate = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "load_error_ratio",
            "share of 5xx responses over the load window",
            load_error_rate.clone(),
        );
        let outcome = |family: &Family<OutcomeLabels, Counter>, outcome: &str| {
            family
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        Metrics {
            cache_hit: outcome(&cache, "hit"),
            cache_miss: outcome(&cache, "miss"),
            cache_error: outcome(&cache, "error"),
            clicks_dropped: outcome(&clicks, "dropped"),
            registry,
            http_requests,
            http_duration,
            in_flight,
            tx,
            tx_retries,
            cache,
            clicks,
            rate_limited,
            purges,
            reloads,
            store_up,
            degraded,
            load_rps,
            load_tps,
            load_p99_ms,
            load_error_rate,
            window: LoadWindow::new(window),
        }
    }

    pub fn outcome(family: &Family<OutcomeLabels, Counter>, outcome: &str) -> u64 {
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .get()
    }

    pub fn inc(family: &Family<OutcomeLabels, Counter>, outcome: &str, by: u64) {
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc_by(by);
    }

    /// Counts one re-read of a configuration file.
    pub fn reloaded(&self, source: &str, applied: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                source: source.to_owned(),
                outcome: if applied { "applied" } else { "refused" }.to_owned(),
            })
            .inc();
    }

    /// Records a committed write transaction.
    pub fn record_tx(&self) {
        self.tx.inc();
        self.window.record_tx();
    }

    /// Text exposition for `/metrics`; refreshes the load gauges first.
    pub fn encode(&self) -> String {
        let load = self.window.snapshot();
        self.load_rps.set(load.requests_per_second);
        self.load_tps.set(load.transactions_per_second);
        self.load_p99_ms.set(load.p99_ms);
        self.load_error_rate.set(load.error_rate);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

/// Latency buckets of the window: upper bounds in microseconds, ×1.25 apart from 50 µs to ~60 s.
fn latency_bounds() -> &'static [u64] {
    static BOUNDS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        let mut v = Vec::new();
        let mut b = 50.0f64;
        while b < 60_000_000.0 {
            v.push(b as u64);
            b *= 1.25;
        }
        v.push(u64::MAX);
        v
    })
}

#[derive(Debug, Clone)]
struct Second {
    at: u64,
    requests: u64,
    errors: u64,
    txs: u64,
    latency: Vec<u32>,
}

/// The sliding window of per-second buckets.
#[derive(Debug)]
pub struct LoadWindow {
    start: Instant,
    window: u64,
    seconds: Mutex<VecDeque<Second>>,
}

/// What `GET /load` returns (and what a LoadReport carries).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadSnapshot {
    pub window_seconds: u64,
    pub requests_per_second: f64,
    pub transactions_per_second: f64,
    pub p99_ms: f64,
    pub error_rate: f64,
    pub requests: u64,
}

impl LoadWindow {
    pub fn new(window: Duration) -> Self {
        LoadWindow {
            start: Instant::now(),
            window: window.as_secs().max(1),
            seconds: Mutex::new(VecDeque::new()),
        }
    }

    fn with_current<F: FnOnce(&mut Second)>(&self, f: F) {
        let now = self.start.elapsed().as_secs();
        let mut q = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        if q.back().map(|s| s.at) != Some(now) {
            q.push_back(Second {
                at: now,
                requests: 0,
                errors: 0,
                txs: 0,
                latency: vec![0; latency_bounds().len()],
            });
        }
        while q.front().is_some_and(|s| s.at + self.window <= now) {
            q.pop_front();
        }
        if let Some(s) = q.back_mut() {
            f(s);
        }
    }

    pub fn record_request(&self, latency: Duration, server_error: bool) {
        let us = latency.as_micros() as u64;
        let idx = latency_bounds().partition_point(|b| *b < us);
        self.with_current(|s| {
            s.requests += 1;
            if server_error {
                s.errors += 1;
            }
            if let Some(c) = s.latency.get_mut(idx) {
                *c += 1;
            }
        });
    }

    pub fn record_tx(&self) {
        self.with_current(|s| s.txs += 1);
    }

    pub fn snapshot(&self) -> LoadSnapshot {
        let now = self.start.elapsed().as_secs();
        let q = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        // While the process is younger than the window, divide by its age instead.
        let span = self.window.min(now + 1) as f64;
        let mut requests = 0;
        let mut errors = 0;
        let mut txs = 0;
        let mut hist = vec![0u64; latency_bounds().len()];
        for s in q.iter().filter(|s| s.at + self.window > now) {
            requests += s.requests;
            errors += s.errors;
            txs += s.txs;
            for (h, c) in hist.iter_mut().zip(&s.latency) {
                *h += u64::from(*c);
            }
        }
        let p99_ms = if requests == 0 {
            0.0
        } else {
            let rank = (requests as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            let mut bound = 0;
            for (i, c) in hist.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    bound = latency_bounds()[i].min(60_000_000);
                    break;
                }
            }
            bound as f64 / 1000.0
        };
        LoadSnapshot {
            window_seconds: self.window,
            requests_per_second: requests as f64 / span,
            transactions_per_second: txs as f64 / span,
            p99_ms,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_computes_rates_and_p99() {
        let w = LoadWindow::new(Duration::from_secs(60));
        for _ in 0..98 {
            w.record_request(Duration::from_micros(100), false);
        }
        w.record_request(Duration::from_millis(20), true);
        w.record_request(Duration::from_millis(20), false);
        w.record_tx();
        let s = w.snapshot();
        assert_eq!(s.requests, 100);
        assert!((s.error_rate - 0.01).abs() < 1e-9);
        // p99 is the 99th of 100 samples: a 20 ms one (bucket upper bound within 25%).
        assert!(s.p99_ms >= 20.0 && s.p99_ms <= 25.0, "{}", s.p99_ms);
        assert!(s.transactions_per_second > 0.0);
    }
}
