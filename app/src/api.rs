//! The router: resources, operational endpoints, and the two middlewares (observe → limit).
//!
//! Request flow: `observe` (latency, status, load window) → `limit` (blocked clients, token
//! bucket; skipped for operational endpoints) → handler.

use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use axum::error_handling::HandleErrorLayer;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tracing::Instrument as _;

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::HttpLabels;
use crate::ratelimit::{Decision, PathRefusal};

/// Hard cap on any request body; the (reloadable) rules apply a lower limit per route.
pub(crate) const HARD_BODY_LIMIT: usize = 1024 * 1024;

/// Builds the whole application from the route table ([`crate::routes::ROUTES`]).
///
/// Layers, outermost first: `observe` → the request timeout (503 `timeout`) → the body limit →
/// the router → for resources (and paths no route serves) only: load shedding at the concurrency limit (503 `overloaded`)
/// → `limit` (WAF, rate) → for the management API only: `authenticate` → handler. Operational
/// endpoints sit outside the concurrency limit so a kubelet probe gets through an overloaded
/// app. Timeout and limit are tower's, behind `HandleErrorLayer`, as in axum's examples: their
/// refusals are [`ApiError`]s like every other.
///
/// Why it is put together this way (the redirect is the hot path): `Router::layer` wraps every
/// route separately and boxes each layer, so a request paid one boxed clone of the service
/// per layer. The layers every request passes are therefore one static stack around the whole
/// router, and the resource layers one stack per route.
pub fn app(state: AppState) -> Router {
    use crate::routes::{Access, router};
    let management = router(Access::Management)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let resources = management
        .merge(router(Access::Public))
        // Inside `limit`: a path no route serves still meets the WAF and the rate limit, so a
        // blocked prefix is refused (403) whether or not a route exists under it.
        .fallback(|| async { ApiError::NotFound })
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(refusal))
                .load_shed()
                // Global: `Router::layer` applies a layer per route, and one budget must cover
                // them all.
                .layer(GlobalConcurrencyLimitLayer::new(state.config.max_in_flight))
                .layer(middleware::from_fn_with_state(state.clone(), limit)),
        );
    let routes = Router::new()
        .merge(resources)
        .merge(router(Access::Operational))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state.clone());
    let front = ServiceBuilder::new()
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(HandleErrorLayer::new(refusal))
        .timeout(state.config.request_timeout)
        .layer(axum::extract::DefaultBodyLimit::max(HARD_BODY_LIMIT))
        .service(routes);
    Router::new().fallback_service(front)
}

/// The errors of tower's timeout and load-shedding layers, as API errors.
async fn refusal(err: tower::BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded
    } else {
        ApiError::Internal(anyhow::anyhow!(err))
    }
}

pub use crate::client::ClientKey;

impl FromRequestParts<AppState> for ClientKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(client_key(parts, state))
    }
}

/// Who the client is ([`crate::client`]): the peer, or what a trusted peer says.
pub(crate) fn client_key(parts: &Parts, state: &AppState) -> ClientKey {
    crate::client::client_key(parts, &state.config.forwarded)
}

/// One request counted in `ladder_http_requests_in_flight` while it lives.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn enter(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `method` label: the standard methods by name, anything else `other` (an attacker's
/// made-up methods must not grow the metric without bound).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Counts and times every request. It runs outside the router (see [`app`]), so the route
/// label comes from the route table ([`crate::routes::matching`]) rather than axum's
/// `MatchedPath`: the same row, found without allocating.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = crate::routes::matching(req.uri().path()).map_or("unmatched", |r| r.path);
    let operational = matches!(route, "/metrics" | "/healthz" | "/readyz" | "/load");
    // Dropped (and the gauge decremented) however the request ends.
    let _in_flight = (!operational).then(|| InFlight::enter(&state.metrics.in_flight));
    // One span per request, exported over OTLP when the app is given an endpoint (see
    // `ladder_telemetry`): read per request, the tier follows a cut-over.
    let span = request_span(method, route, state.store.get().tier());
    if state.config.trace_context {
        // Before the span is first entered: a child of the caller's span when the request
        // carries a valid `traceparent`, a root otherwise (a malformed header is ignored, never
        // refused). Public callers are trusted with it: see `ladder_telemetry::propagation`.
        ladder_telemetry::propagation::continue_trace(&span, req.headers());
    }
    let resp = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let status = resp.status();
    record_status(&span, status);
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

/// The span of one request, named `<METHOD> <route>` as OpenTelemetry's HTTP conventions name
/// server spans; the route is the template (`/{code}`), never the path. The store tier is
/// `ladder.store.tier` (what `/readyz` reports as `store.tier`); the status is recorded by
/// [`record_status`].
pub(crate) fn request_span(method: &str, route: &str, tier: &str) -> tracing::Span {
    tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        ladder.store.tier = tier,
    )
}

/// Records the response status on a [`request_span`]: a 5xx marks the span as an error.
pub(crate) fn record_status(span: &tracing::Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The management API's authentication (see `crate::auth`): with an API key hash and/or OIDC
/// configured, a bearer credential is required. A valid API key may do everything; an OIDC
/// token's groups decide (viewer reads, admin writes). Redirects and operational endpoints
/// never pass through here (see `crate::routes::Access`).
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (oidc, key) = (&state.config.auth, &state.config.api_key);
    if oidc.is_none() && key.is_none() {
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
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let (Some(k), Some(t)) = (key, token)
        && k.matches(t)
    {
        return next.run(req).await;
    }
    let Some(auth) = oidc else {
        return match token {
            None => ApiError::Unauthenticated {
                code: "unauthorized",
                message: "the management API needs `Authorization: Bearer <API key>`".into(),
                challenge: "Bearer realm=\"ladder\"",
            },
            Some(_) => ApiError::Unauthenticated {
                code: "invalid_token",
                message: "invalid API key".into(),
                challenge: "Bearer error=\"invalid_token\"",
            },
        }
        .into_response();
    };
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let outcome = match token {
        None => Err(crate::auth::AuthError::Missing),
        Some(t) => auth.role(t).await,
    };
    use crate::auth::{AuthError, Role};
    let refusal = match outcome {
        Ok(Role::Admin) => return next.run(req).await,
        Ok(Role::Viewer) if read => return next.run(req).await,
        Ok(Role::Viewer) | Err(AuthError::Forbidden) => {
            ApiError::Forbidden("this token's groups do not allow the request")
        }
        Err(e @ AuthError::Missing) => ApiError::Unauthenticated {
            code: "unauthorized",
            message: e.to_string(),
            challenge: "Bearer realm=\"ladder\"",
        },
        Err(e @ AuthError::Invalid(_)) => ApiError::Unauthenticated {
            code: "invalid_token",
            message: e.to_string(),
            challenge: "Bearer error=\"invalid_token\"",
        },
        Err(AuthError::Unavailable) => ApiError::AuthUnavailable,
    };
    refusal.into_response()
}

async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let rules = state.limiter.rules();
    if !rules.any_request_checks() {
        return next.run(req).await;
    }
    if rules.method_blocked(req.method().as_str()) {
        return ApiError::MethodBlocked.into_response();
    }
    match rules.check_path(req.uri().path()) {
        Ok(()) => {}
        Err(PathRefusal::Blocked) => return ApiError::PathBlocked.into_response(),
        Err(bad) => return ApiError::BadPath(bad).into_response(),
    }
    let (parts, body) = req.into_parts();
    let client = client_key(&parts, &state);
    if rules.blocked_clients.contains(&client.addr) {
        return ApiError::ClientBlocked.into_response();
    }
    if let Decision::Deny { retry_after_secs } = state.limiter.check(client.rate_key()).await {
        state.metrics.rate_limited.inc();
        return ApiError::RateLimited { retry_after_secs }.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long the readiness probe waits for the data tier: well inside a kubelet probe's
/// default one-second timeout, so a blackholed database makes the app degraded, not unready.
const READY_PING: Duration = Duration::from_millis(500);

/// What the app can serve right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Health {
    /// The data tier answers.
    pub store: bool,
    /// Cached redirects can be served (in-process cache, or Redis answers).
    pub cache: bool,
}

impl Health {
    /// `ready`, `degraded` (only cached redirects can be served) or `unavailable`.
    pub fn status(self) -> &'static str {
        match (self.store, self.cache) {
            (true, _) => "ready",
            (false, true) => "degraded",
            (false, false) => "unavailable",
        }
    }
}

/// Checks the data tier and the cache (concurrently) and records the outcome in
/// `ladder_store_up` and `ladder_degraded` (which `/load` reports).
pub(crate) async fn probe(state: &AppState) -> Health {
    let store = state.store.get();
    let (store, cache) = tokio::join!(
        tokio::time::timeout(READY_PING, store.ping()),
        state.cache.healthy()
    );
    let health = Health {
        store: matches!(store, Ok(Ok(()))),
        cache,
    };
    state.metrics.store_up.set(i64::from(health.store));
    state
        .metrics
        .degraded
        .set(i64::from(health.status() == "degraded"));
    health
}

/// Ready while redirects can be served: from the data tier, or (`degraded`) from the cache
/// alone. A database outage must not take every instance out of rotation while Redis or the
/// in-process cache can still answer the hot redirects; writes answer 503 meanwhile.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let health = probe(&state).await;
    let store = state.store.get();
    let body = serde_json::json!({
        "status": health.status(),
        "phase": state.config.phase,
        "store": store.describe(),
        "cache": state.cache.kind(),
        "clicks": state.clicks.kind(),
    });
    let ok = health.status() != "unavailable";
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

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

pub(crate) async fn load(State(state): State<AppState>) -> Json<serde_json::Value> {
    let snap = state.metrics.window.snapshot();
    let mut v = serde_json::to_value(snap).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("phase".into(), state.config.phase.into());
        o.insert("tier".into(), state.store.get().tier().into());
        o.insert("instance".into(), state.config.instance.clone().into());
        // Kept current by the background probe (`server`) and every `/readyz`.
        o.insert(
            "degraded".into(),
            (state.metrics.degraded.get() == 1).into(),
        );
        o.insert("storeUp".into(), (state.metrics.store_up.get() == 1).into());
    }
    Json(v)
}

pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

#[cfg(test)]
mod tests;
