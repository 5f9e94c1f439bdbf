//! Unit-test support: an [`AppState`] on an in-memory SQLite store, and a one-call request
//! helper for `app(state).oneshot(request)` (axum's `examples/testing`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use tower::ServiceExt;

use crate::cache::RedirectCache;
use crate::clicks::ClickSink;
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, Rules};
use crate::store::{StoreHandle, StoreOptions, sqlite::SqliteStore};
use crate::{AppConfig, AppState};

/// Settings of a test app: phase 0, no auth, no edge.
pub fn config() -> AppConfig {
    AppConfig {
        phase: 0,
        redirect_max_age_secs: 60,
        cache_control: axum::http::HeaderValue::from_static("public, max-age=60"),
        public_url: "http://short.test".into(),
        forwarded: Default::default(),
        instance: "unit".into(),
        auth: None,
        api_key: None,
        request_timeout: Duration::from_secs(5),
        max_in_flight: 64,
        trace_context: false,
    }
}

/// A state on a fresh in-memory SQLite database. One connection: every connection to
/// `:memory:` is a database of its own.
pub async fn state_with(config: AppConfig) -> AppState {
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let opts = StoreOptions {
        max_connections: 1,
        ..StoreOptions::default()
    };
    let store = SqliteStore::open(":memory:", &opts, metrics.clone())
        .await
        .expect("in-memory SQLite");
    AppState::new(
        StoreHandle::new(Arc::new(store)),
        RedirectCache::local(Duration::from_secs(300)),
        ClickSink::Off,
        Arc::new(Limiter::new(Rules::default(), None)),
        None,
        metrics,
        config,
    )
}

pub async fn state() -> AppState {
    state_with(config()).await
}

/// One answer, its body parsed as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
}

/// Sends one request through the whole router.
pub async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    send(state, req).await
}

/// Sends a prepared request through the whole router.
pub async fn send(state: &AppState, req: Request<Body>) -> Answer {
    let resp = crate::app(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    Answer {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}
