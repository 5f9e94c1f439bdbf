//! The router: resources, operational endpoints, and the two middlewares (observe → limit).
//!
//! Request flow: `observe` (latency, status, load window) → `limit` (blocked clients, token
//! bucket; skipped for operational endpoints) → handler.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::HttpLabels;
use crate::ratelimit::Decision;

/// Hard cap on any request body; the (reloadable) rules apply a lower limit per route.
const HARD_BODY_LIMIT: usize = 1024 * 1024;

/// Builds the whole application.
pub fn app(state: AppState) -> Router {
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/load", get(load))
        .route("/api/v1/openapi.json", get(openapi));
    Router::new()
        .merge(
            crate::links::router()
                .layer(middleware::from_fn_with_state(state.clone(), limit))
                .layer(middleware::from_fn_with_state(state.clone(), authenticate)),
        )
        .merge(ops)
        .layer(axum::extract::DefaultBodyLimit::max(HARD_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Who the client is: the peer address, or the first `X-Forwarded-For` hop when trusted.
/// An explicit `x-ladder-client` header (opaque id) takes precedence for read-your-writes only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub addr: String,
    pub session: Option<String>,
}

impl ClientKey {
    /// The key of the read-your-writes table.
    pub fn ryw_key(&self) -> &str {
        self.session.as_deref().unwrap_or(&self.addr)
    }
}

impl FromRequestParts<AppState> for ClientKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(client_key(parts, state))
    }
}

pub(crate) fn client_key(parts: &Parts, state: &AppState) -> ClientKey {
    let forwarded = state
        .config
        .trust_forwarded_for
        .then(|| {
            parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
        })
        .flatten()
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().to_owned());
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let session = parts
        .headers
        .get("x-ladder-client")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_owned);
    ClientKey {
        addr: forwarded.or(peer).unwrap_or_else(|| "unknown".into()),
        session,
    }
}

async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let status = resp.status();
    let operational = matches!(
        route.as_str(),
        "/metrics" | "/healthz" | "/readyz" | "/load"
    );
    if !operational {
        state
            .metrics
            .window
            .record_request(elapsed, status.is_server_error());
        state.metrics.http_duration.observe(elapsed.as_secs_f64());
    }
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: status.as_u16(),
        })
        .inc();
    resp
}

/// With OIDC configured (phase 4): the management API needs a bearer token; reads need the
/// viewer or admin role, writes the admin role. Redirects stay public.
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(auth) = &state.config.auth else {
        return next.run(req).await;
    };
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let outcome = match token {
        None => Err(crate::auth::AuthError::Missing),
        Some(t) => auth.role(t).await,
    };
    let refused = |status: StatusCode, code: &str, message: String, challenge: &'static str| {
        let mut r = (
            status,
            Json(serde_json::json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static(challenge),
        );
        r
    };
    match outcome {
        Ok(crate::auth::Role::Admin) => next.run(req).await,
        Ok(crate::auth::Role::Viewer) if read => next.run(req).await,
        Ok(crate::auth::Role::Viewer) | Err(crate::auth::AuthError::Forbidden) => refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token's groups do not allow the request".into(),
            "Bearer error=\"insufficient_scope\"",
        ),
        Err(e @ crate::auth::AuthError::Missing) => refused(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            e.to_string(),
            "Bearer realm=\"ladder\"",
        ),
        Err(e @ crate::auth::AuthError::Invalid(_)) => refused(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            e.to_string(),
            "Bearer error=\"invalid_token\"",
        ),
        Err(crate::auth::AuthError::Unavailable) => {
            let mut r = refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the identity provider's keys are not available yet".into(),
                "Bearer realm=\"ladder\"",
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let rules = state.limiter.rules();
    if !rules.any_request_checks() {
        return next.run(req).await;
    }
    if rules.method_blocked(req.method().as_str()) {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            Json(serde_json::json!({"error": {"code": "method_blocked", "message": "method refused by the WAF rules"}})),
        )
            .into_response();
    }
    if rules.path_blocked(req.uri().path()) {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"error": {"code": "path_blocked", "message": "path refused by the WAF rules"}})),
        )
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let client = client_key(&parts, &state);
    if rules.blocked_clients.contains(&client.addr) {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"error": {"code": "forbidden", "message": "client blocked"}})),
        )
            .into_response();
    }
    if let Decision::Deny { retry_after_secs } = state.limiter.check(&client.addr).await {
        state.metrics.rate_limited.inc();
        return ApiError::RateLimited { retry_after_secs }.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.get();
    let ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), store.ping()).await,
        Ok(Ok(()))
    );
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "unavailable" },
        "phase": state.config.phase,
        "store": store.describe(),
        "cache": state.cache.kind(),
        "clicks": state.clicks.kind(),
    });
    let mut resp = (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
        .into_response();
    if !ok {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn load(State(state): State<AppState>) -> Json<serde_json::Value> {
    let snap = state.metrics.window.snapshot();
    let mut v = serde_json::to_value(snap).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("phase".into(), state.config.phase.into());
        o.insert("tier".into(), state.store.get().tier().into());
        o.insert("instance".into(), state.config.instance.clone().into());
    }
    Json(v)
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
