//! Ladder's companion app: a link shortener with click analytics that serves real traffic on
//! whatever data tier its phase provides, moves its data between tiers (`migrate`), and reports
//! its load (`/load`, `/metrics`, LoadReport objects).
//!
//! Layout:
//! - [`api`]: the router (`app(state)`), middlewares and operational endpoints; [`routes`]: the
//!   one route table the router, reserved codes and [`openapi`] document derive from;
//!   [`links`]: the link resource and redirects; [`error`]: the one API error type.
//! - [`store`]: one storage trait, one implementation per tier; [`cache`]: redirect cache and
//!   edge purge; [`clicks`]: analytics sinks; [`ratelimit`]: token buckets and WAF rules;
//!   [`client`]: who the client is (peer, edge certificate, trusted proxies).
//! - [`server`]: builds the state from [`config`] and runs it; [`migrate`]: tier-to-tier copy,
//!   verify and cut-over; [`report`]: LoadReport objects; [`metrics`]: Prometheus + load window.

pub mod api;
pub mod auth;
pub mod cache;
pub mod clicks;
pub mod client;
pub mod config;
pub mod error;
pub mod links;
pub mod metrics;
pub mod migrate;
pub mod openapi;
pub mod ratelimit;
pub mod report;
pub mod routes;
pub mod server;
pub mod store;
pub mod tls;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};

pub use api::app;

use crate::api::ClientKey;
use crate::cache::{EdgePurger, RedirectCache};
use crate::clicks::ClickSink;
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::store::{ReadCtx, StoreHandle, WriteAck};

/// How long a client's last write position is remembered for read-your-writes. Replicas that
/// lag longer than this are out of rotation anyway.
const RYW_TTL: Duration = Duration::from_secs(30);

/// Settings handlers need.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub phase: u8,
    pub redirect_max_age_secs: u64,
    /// `Cache-Control` of redirects, built once.
    pub cache_control: HeaderValue,
    pub public_url: String,
    /// Which peers may name the client in `X-Forwarded-For`.
    pub forwarded: crate::client::ForwardedTrust,
    pub instance: String,
    /// OIDC bearer tokens on the management API (phase 4).
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// The management API key's hash. With neither this nor `auth`: open.
    pub api_key: Option<crate::auth::ApiKeyHash>,
    /// Longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Link API and redirect requests served at once; beyond it: 503 at once.
    pub max_in_flight: usize,
    /// Continue the caller's W3C trace context (`traceparent`): set from the telemetry, only
    /// when spans are exported and `OTEL_PROPAGATORS` allows it (see
    /// `ladder_telemetry::propagation`, which also says why a public app may take it).
    pub trace_context: bool,
}

/// Everything a handler can reach. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub store: StoreHandle,
    pub cache: RedirectCache,
    pub clicks: ClickSink,
    pub limiter: Arc<Limiter>,
    pub purger: Option<EdgePurger>,
    pub metrics: Arc<Metrics>,
    pub config: AppConfig,
    /// Client → (WAL position of its last write, when).
    ryw: Mutex<HashMap<String, (u64, Instant)>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        store: StoreHandle,
        cache: RedirectCache,
        clicks: ClickSink,
        limiter: Arc<Limiter>,
        purger: Option<EdgePurger>,
        metrics: Arc<Metrics>,
        config: AppConfig,
    ) -> Self {
        AppState(Arc::new(Inner {
            store,
            cache,
            clicks,
            limiter,
            purger,
            metrics,
            config,
            ryw: Mutex::default(),
        }))
    }

    /// Remembers a write for read-your-writes and hands the token to the client
    /// (`x-ladder-consistency`), so that a client talking to several instances can send it back.
    pub(crate) fn note_write(&self, client: &ClientKey, ack: WriteAck, headers: &mut HeaderMap) {
        let Some(lsn) = ack.lsn else { return };
        let mut map = self.ryw.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, at)| at.elapsed() < RYW_TTL);
        }
        let entry = map
            .entry(client.ryw_key().to_owned())
            .or_insert((0, Instant::now()));
        *entry = (entry.0.max(lsn), Instant::now());
        if let Ok(v) = HeaderValue::from_str(&lsn.to_string()) {
            headers.insert("x-ladder-consistency", v);
        }
    }

    /// The read context of a request: the highest of the remembered and the presented token.
    pub(crate) fn read_ctx(&self, client: &ClientKey, headers: &HeaderMap) -> ReadCtx {
        let presented = headers
            .get("x-ladder-consistency")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let remembered = {
            let map = self.ryw.lock().unwrap_or_else(|e| e.into_inner());
            map.get(client.ryw_key())
                .filter(|(_, at)| at.elapsed() < RYW_TTL)
                .map(|(lsn, _)| *lsn)
        };
        ReadCtx {
            min_lsn: presented.max(remembered),
        }
    }

    /// After an update or delete: drop the cached redirect and purge the edge.
    pub(crate) async fn invalidate_everywhere(&self, code: &str) {
        self.cache.invalidate(code).await;
        if let Some(p) = &self.purger {
            p.purge(code, &self.metrics).await;
        }
        // Once more after a near-cache lifetime: whatever raced the first round (a reader that
        // put what it read before the update, a message that was lost) is gone after this.
        if let Some(after) = self.cache.second_invalidation_after() {
            let (state, code) = (self.clone(), code.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                state.cache.invalidate(&code).await;
                if let Some(p) = &state.purger {
                    p.purge(&code, &state.metrics).await;
                }
            });
        }
    }
}
