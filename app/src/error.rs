//! The one error type of the HTTP API. Each variant documents its status code; the body is always
//! `{"error": {"code": "...", "message": "..."}}`. 5xx details are logged here, never returned.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not valid JSON or misses required fields.
    #[error("malformed request body: {0}")]
    MalformedJson(String),
    /// 422: the input is well-formed but not acceptable (bad URL, bad code, blocked target).
    #[error("{0}")]
    Invalid(String),
    /// 404: unknown code.
    #[error("no link with that code")]
    NotFound,
    /// 409: the custom code is taken.
    #[error("that code is already taken")]
    Conflict,
    /// 413: the body is larger than the configured limit.
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// 401: the management API needs credentials and none, or invalid ones, came. `challenge`
    /// is the `WWW-Authenticate` header (RFC 6750).
    #[error("{message}")]
    Unauthenticated {
        code: &'static str,
        message: String,
        challenge: &'static str,
    },
    /// 403: the credentials are valid but do not allow this request.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 400: the path is one the WAF refuses to read (malformed or double encoding, control
    /// characters, dot segments; see `contract::normalize_path`).
    #[error("{0}")]
    BadPath(ladder_crds::contract::PathRefusal),
    /// 403: the WAF rules refuse this path.
    #[error("path refused by the WAF rules")]
    PathBlocked,
    /// 403: the WAF rules block this client.
    #[error("client blocked")]
    ClientBlocked,
    /// 405: the WAF rules refuse this method.
    #[error("method refused by the WAF rules")]
    MethodBlocked,
    /// 405: the route exists but not with this method.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// 429: the client's token bucket is empty; retry after the given seconds.
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    /// 503: the database is down or writes are fenced for a migration cut-over; retry shortly.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] StoreError),
    /// 503 (code `migration_stalled`): writes are fenced by a migration whose migrator stopped
    /// renewing its lease; they stay refused until the migration is rerun or aborted. The
    /// message says so (it names no host or credential).
    #[error("{0}")]
    MigrationStalled(#[source] StoreError),
    /// 503: the request did not finish within the request timeout; retry shortly.
    #[error("request timed out")]
    Timeout,
    /// 503: the app is at its concurrency limit; retry shortly.
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    /// 503: the identity provider's keys are not available yet; retry shortly.
    #[error("the identity provider's keys are not available yet")]
    AuthUnavailable,
    /// 503: the analytics store (ClickHouse) cannot answer a stats query; retry shortly.
    #[error("analytics temporarily unavailable")]
    AnalyticsUnavailable(#[source] anyhow::Error),
    /// 500: anything else.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadPath(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::PathBlocked | ApiError::ClientBlocked => {
                StatusCode::FORBIDDEN
            }
            ApiError::MethodBlocked | ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_)
            | ApiError::AnalyticsUnavailable(_)
            | ApiError::Timeout
            | ApiError::Overloaded
            | ApiError::AuthUnavailable
            | ApiError::MigrationStalled(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Invalid(_) => "invalid",
            ApiError::NotFound => "not_found",
            ApiError::Conflict => "conflict",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Unauthenticated { code, .. } => code,
            ApiError::Forbidden(_) => "forbidden",
            ApiError::PathBlocked => "path_blocked",
            ApiError::BadPath(_) => "bad_path",
            ApiError::ClientBlocked => "client_blocked",
            ApiError::MethodBlocked => "method_blocked",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::MigrationStalled(_) => "migration_stalled",
            ApiError::Timeout => "timeout",
            ApiError::Overloaded => "overloaded",
            ApiError::Unavailable(_)
            | ApiError::AnalyticsUnavailable(_)
            | ApiError::AuthUnavailable => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Duplicate => ApiError::Conflict,
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Fenced | StoreError::Unavailable(_) => ApiError::Unavailable(err),
            StoreError::FenceExpired { .. } => ApiError::MigrationStalled(err),
            StoreError::Other(source) => ApiError::Internal(source),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // `{:#}` walks the source chain; sources never carry connection strings (the
            // drivers' errors name hosts and SQLSTATEs, not passwords).
            tracing::error!(error = %DisplayChain(&self), code = self.code(), "request failed");
        }
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } })),
        )
            .into_response();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            // Someone has to act (rerun the migration): no point in hammering.
            ApiError::MigrationStalled(_) => Some(30),
            e if e.status() == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        let challenge = match &self {
            ApiError::Unauthenticated { challenge, .. } => Some(*challenge),
            ApiError::Forbidden(_) => Some("Bearer error=\"insufficient_scope\""),
            _ => None,
        };
        if let Some(c) = challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        resp
    }
}

/// Renders an error and its sources for a log line.
struct DisplayChain<'a>(&'a ApiError);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
