//! The link resource: `/api/v1/links…` and the redirect `GET /{code}` (routed by
//! [`crate::routes::ROUTES`]), and the extractors that turn bad input into [`ApiError`]s.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::api::ClientKey;
use crate::clicks::ClickSink;
use crate::error::ApiError;
use crate::store::{Link, ReadCtx, StoreError};

const GENERATED_LEN: usize = 7;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The `{code}` of a path. Anything that could not have been created (too long, other
/// characters, not UTF-8) is simply unknown: 404, never axum's plain-text rejection.
#[derive(Debug)]
pub struct CodePath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CodePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(code) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        if code.len() > 32 || !valid_code_chars(&code) {
            return Err(ApiError::NotFound);
        }
        Ok(CodePath(code))
    }
}

/// A JSON request body, within the (reloadable) rules' size limit. Every failure is an
/// [`ApiError`]: 413 over the limit, 400 for anything that is not the expected JSON.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.limiter.rules().max_body_bytes;
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge {
                    limit: limit.min(crate::api::HARD_BODY_LIMIT),
                }
            } else {
                ApiError::MalformedJson(e.body_text())
            }
        })?;
        if body.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        serde_json::from_slice(&body)
            .map(JsonBody)
            .map_err(|e| ApiError::MalformedJson(e.to_string()))
    }
}

/// `POST /api/v1/links` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// The target URL (http or https).
    pub url: String,
    /// Optional custom code, `[A-Za-z0-9_-]{3,32}`.
    pub code: Option<String>,
}

/// `PUT /api/v1/links/{code}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateLink {
    pub url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    pub code: String,
    pub url: String,
    pub created_at: String,
    pub short_url: String,
}

#[derive(Debug, Serialize)]
pub struct DayView {
    pub day: String,
    pub clicks: i64,
}

#[derive(Debug, Serialize)]
pub struct StatsView {
    pub code: String,
    pub total: i64,
    pub days: Vec<DayView>,
}

pub fn valid_code_chars(code: &str) -> bool {
    !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn validate_code(code: &str) -> Result<(), ApiError> {
    if !(3..=32).contains(&code.len()) || !valid_code_chars(code) {
        return Err(ApiError::Invalid(
            "code must be 3-32 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    if crate::routes::reserved(code) {
        return Err(ApiError::Invalid(format!("code {code:?} is reserved")));
    }
    Ok(())
}

fn validate_target(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let rules = state.limiter.rules();
    if raw.len() > rules.max_url_length {
        return Err(ApiError::Invalid(format!(
            "url longer than {} characters",
            rules.max_url_length
        )));
    }
    let url = url::Url::parse(raw.trim())
        .map_err(|e| ApiError::Invalid(format!("url is not valid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::Invalid(
            "only http and https targets are allowed".into(),
        ));
    }
    let Some(host) = url.host_str() else {
        return Err(ApiError::Invalid("url needs a host".into()));
    };
    if rules.host_blocked(host) {
        return Err(ApiError::Invalid("target host is blocked".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::Invalid(
            "urls with credentials are not allowed".into(),
        ));
    }
    Ok(url.to_string())
}

fn view(state: &AppState, link: &Link) -> LinkView {
    let created = chrono::DateTime::from_timestamp_millis(link.created_ms).unwrap_or_default();
    LinkView {
        code: link.code.clone(),
        url: link.target.clone(),
        created_at: created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        short_url: format!(
            "{}/{}",
            state.config.public_url.trim_end_matches('/'),
            link.code
        ),
    }
}

fn generate_code() -> String {
    let mut rng = rand::rng();
    (0..GENERATED_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(crate) async fn create(
    State(state): State<AppState>,
    client: ClientKey,
    JsonBody(req): JsonBody<CreateLink>,
) -> Result<Response, ApiError> {
    let target = validate_target(&state, &req.url)?;
    if let Some(code) = &req.code {
        validate_code(code)?;
    }
    let store = state.store.get();
    let created_ms = chrono::Utc::now().timestamp_millis();
    // Generated codes: 62^7 ≈ 3.5e12, so a collision is rare; retry a few times anyway.
    let mut attempts = 0;
    let (link, ack) = loop {
        attempts += 1;
        let link = Link {
            code: req.code.clone().unwrap_or_else(generate_code),
            target: target.clone(),
            created_ms,
        };
        match store.create_link(&link).await {
            Ok(ack) => break (link, ack),
            Err(StoreError::Duplicate) if req.code.is_none() && attempts < 5 => continue,
            Err(err) => return Err(err.into()),
        }
    };
    // A custom code may reuse a tombstone: drop whatever the cache could still hold for it.
    // (A generated code is fresh; its cache entry, if it ever had one, died with its delete.)
    if req.code.is_some() {
        state.cache.invalidate(&link.code).await;
    }
    let mut resp = (StatusCode::CREATED, axum::Json(view(&state, &link))).into_response();
    state.note_write(&client, ack, resp.headers_mut());
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/links/{}", link.code)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub(crate) async fn show(
    State(state): State<AppState>,
    client: ClientKey,
    headers: HeaderMap,
    CodePath(code): CodePath,
) -> Result<Response, ApiError> {
    let ctx = state.read_ctx(&client, &headers);
    let (link, from) = state.store.get().get_link(&code, ctx).await?;
    let mut resp = match link {
        Some(link) => axum::Json(view(&state, &link)).into_response(),
        None => ApiError::NotFound.into_response(),
    };
    resp.headers_mut().insert(
        "x-ladder-read-from",
        HeaderValue::from_static(from.as_str()),
    );
    Ok(resp)
}

pub(crate) async fn update(
    State(state): State<AppState>,
    client: ClientKey,
    CodePath(code): CodePath,
    JsonBody(req): JsonBody<UpdateLink>,
) -> Result<Response, ApiError> {
    let target = validate_target(&state, &req.url)?;
    let store = state.store.get();
    let ack = store.update_link(&code, &target).await?;
    state.invalidate_everywhere(&code).await;
    let (link, _) = store.get_link(&code, ReadCtx { min_lsn: ack.lsn }).await?;
    let link = link.ok_or(ApiError::NotFound)?;
    let mut resp = axum::Json(view(&state, &link)).into_response();
    state.note_write(&client, ack, resp.headers_mut());
    Ok(resp)
}

pub(crate) async fn remove(
    State(state): State<AppState>,
    client: ClientKey,
    CodePath(code): CodePath,
) -> Result<Response, ApiError> {
    let ack = state.store.get().delete_link(&code).await?;
    state.invalidate_everywhere(&code).await;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    state.note_write(&client, ack, resp.headers_mut());
    Ok(resp)
}

pub(crate) async fn stats(
    State(state): State<AppState>,
    client: ClientKey,
    headers: HeaderMap,
    CodePath(code): CodePath,
) -> Result<Response, ApiError> {
    let ctx = state.read_ctx(&client, &headers);
    let store = state.store.get();
    let (link, _) = store.get_link(&code, ctx).await?;
    if link.is_none() {
        return Err(ApiError::NotFound);
    }
    let rows = match &state.clicks {
        ClickSink::ClickHouse(c) => c
            .client
            .stats(&code)
            .await
            .map_err(ApiError::AnalyticsUnavailable)?,
        _ => store.click_stats(&code).await?,
    };
    let total = rows.iter().map(|r| r.clicks).sum();
    let days = rows
        .into_iter()
        .map(|r| DayView {
            day: r.day,
            clicks: r.clicks,
        })
        .collect();
    Ok(axum::Json(StatsView { code, total, days }).into_response())
}

/// The redirect's ETag, `"<16 hex digits>"`: FNV-1a 64 of `code`, 0x1f, `target` (the
/// checksum of `crate::store::fnv1a64` over the joined string), computed without building
/// that string: the redirect path allocates as little as it can.
fn etag(code: &str, target: &str) -> [u8; 18] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in code.bytes().chain([0x1f]).chain(target.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = [b'"'; 18];
    for (i, slot) in out[1..17].iter_mut().enumerate() {
        *slot = b"0123456789abcdef"[((h >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// `GET /{code}`: 302 to the target, cacheable by the edge (Cache-Control + ETag).
///
/// This is the hot path: it borrows the request's headers instead of extracting a copy, and
/// works out the client (for read-your-writes) only on a cache miss.
pub(crate) async fn redirect(
    State(state): State<AppState>,
    CodePath(code): CodePath,
    req: Request,
) -> Result<Response, ApiError> {
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
    let (target, hit) = match state.cache.get(&code, &state.metrics).await {
        Some(t) => (t, true),
        None => {
            let (parts, _) = req.into_parts();
            let client = crate::api::client_key(&parts, &state);
            let ctx = state.read_ctx(&client, &parts.headers);
            let (link, _) = state.store.get().get_link(&code, ctx).await?;
            let link = link.ok_or(ApiError::NotFound)?;
            state.cache.put(&code, &link.target).await;
            (link.target, false)
        }
    };
    state.clicks.record(&code, &state.metrics);
    let etag_bytes = etag(&code, &target);
    // Always ASCII (quotes and hex digits).
    let etag = std::str::from_utf8(&etag_bytes).unwrap_or_default();
    let not_modified = if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = StatusCode::FOUND.into_response();
        let location = HeaderValue::from_str(&target).map_err(|e| ApiError::Internal(e.into()))?;
        r.headers_mut().insert(header::LOCATION, location);
        r
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, state.config.cache_control.clone());
    if let Ok(v) = HeaderValue::from_bytes(&etag_bytes) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        "x-ladder-cache",
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert!(validate_code("abc").is_ok());
        assert!(validate_code("a-b_C9").is_ok());
        assert!(validate_code("ab").is_err());
        assert!(validate_code("has space").is_err());
        assert!(validate_code("healthz").is_err());
        assert!(validate_code(&"x".repeat(33)).is_err());
        let g = generate_code();
        assert_eq!(g.len(), GENERATED_LEN);
        assert!(valid_code_chars(&g));
    }

    #[test]
    fn etag_is_the_checksum_of_code_and_target() {
        let (code, target) = ("abc", "https://example.com/x");
        let want = format!(
            "\"{:016x}\"",
            crate::store::fnv1a64(format!("{code}\u{1f}{target}").as_bytes())
        );
        assert_eq!(
            std::str::from_utf8(&etag(code, target)).ok(),
            Some(want.as_str())
        );
        assert_ne!(etag(code, target), etag(code, "https://example.com/y"));
    }
}
