//! The router, called with `oneshot` on an in-memory SQLite store: every answer a client can
//! get, refusals included, and that each comes as the one JSON error shape.

use axum::http::StatusCode;
use serde_json::json;

use crate::ratelimit::Rules;
use crate::routes::ROUTES;
use crate::testing::{call, state};

fn assert_error(a: &crate::testing::Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{:?}", a.json);
    assert_eq!(a.json["error"]["code"], code, "{:?}", a.json);
    assert!(a.json["error"]["message"].is_string(), "{:?}", a.json);
}

#[tokio::test]
async fn create_show_redirect_update_delete() {
    let s = state().await;
    let made = call(
        &s,
        "POST",
        "/api/v1/links",
        Some(json!({"url": "https://example.com/a", "code": "abc"})),
        &[],
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.json);
    assert_eq!(made.json["shortUrl"], "http://short.test/abc");
    assert_eq!(made.headers["location"], "/api/v1/links/abc");

    let shown = call(&s, "GET", "/api/v1/links/abc", None, &[]).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json["url"], "https://example.com/a");

    let first = call(&s, "GET", "/abc", None, &[]).await;
    assert_eq!(first.status, StatusCode::FOUND);
    assert_eq!(first.headers["location"], "https://example.com/a");
    assert_eq!(first.headers["x-ladder-cache"], "miss");
    let again = call(&s, "GET", "/abc", None, &[]).await;
    assert_eq!(again.headers["x-ladder-cache"], "hit");
    let etag = again.headers["etag"].to_str().expect("etag").to_owned();
    let cached = call(&s, "GET", "/abc", None, &[("if-none-match", &etag)]).await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);

    let put = call(
        &s,
        "PUT",
        "/api/v1/links/abc",
        Some(json!({"url": "https://example.com/b"})),
        &[],
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.json);
    let moved = call(&s, "GET", "/abc", None, &[]).await;
    assert_eq!(moved.headers["location"], "https://example.com/b");

    let taken = call(
        &s,
        "POST",
        "/api/v1/links",
        Some(json!({"url": "https://example.com/c", "code": "abc"})),
        &[],
    )
    .await;
    assert_error(&taken, StatusCode::CONFLICT, "conflict");

    let gone = call(&s, "DELETE", "/api/v1/links/abc", None, &[]).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert_error(
        &call(&s, "GET", "/abc", None, &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &call(&s, "DELETE", "/api/v1/links/abc", None, &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn bad_input_is_refused_as_json() {
    let s = state().await;
    let post = |body: String| {
        let s = s.clone();
        async move {
            let req = axum::http::Request::post("/api/v1/links")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .expect("request");
            crate::testing::send(&s, req).await
        }
    };
    assert_error(
        &post("{not json".into()).await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    assert_error(
        &post(r#"{"url": "https://e.com", "extra": 1}"#.into()).await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    let big = format!(r#"{{"url": "https://e.com/{}"}}"#, "a".repeat(9000));
    assert_error(&post(big).await, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    for (body, why) in [
        (json!({"url": "ftp://e.com"}), "scheme"),
        (json!({"url": "https://u:p@e.com"}), "credentials"),
        (
            json!({"url": "https://e.com", "code": "healthz"}),
            "reserved",
        ),
        (json!({"url": "https://e.com", "code": "api"}), "reserved"),
        (json!({"url": "https://e.com", "code": "a b"}), "characters"),
    ] {
        let a = call(&s, "POST", "/api/v1/links", Some(body), &[]).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        assert!(a.json["error"]["message"].is_string(), "{why}");
    }
    // Codes that could never have been created, and paths no route serves.
    for uri in [
        "/x",
        "/has%20space",
        "/%FF%FE",
        "/api/v1/links/%FF",
        "/a/b/c",
    ] {
        assert_error(
            &call(&s, "GET", uri, None, &[]).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_error(
        &call(&s, "PATCH", "/api/v1/links", None, &[]).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn waf_refusals_use_the_error_shape() {
    let s = state().await;
    s.limiter.set_rules(Rules {
        blocked_path_prefixes: vec!["/admin".into()],
        blocked_methods: vec!["DELETE".into()],
        blocked_clients: vec!["0.0.0.0".into()],
        ..Rules::default()
    });
    assert_error(
        &call(&s, "GET", "/admin", None, &[]).await,
        StatusCode::FORBIDDEN,
        "path_blocked",
    );
    assert_error(
        &call(&s, "DELETE", "/api/v1/links/abc", None, &[]).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_blocked",
    );
    assert_error(
        &call(&s, "GET", "/%2561dmin", None, &[]).await,
        StatusCode::BAD_REQUEST,
        "bad_path",
    );
    // A oneshot request has no peer address: the client is the unspecified address.
    assert_error(
        &call(&s, "GET", "/abc", None, &[]).await,
        StatusCode::FORBIDDEN,
        "client_blocked",
    );
    // Operational endpoints stay reachable whatever the rules say.
    assert_eq!(
        call(&s, "GET", "/healthz", None, &[]).await.status,
        StatusCode::OK
    );

    s.limiter.set_rules(Rules {
        rate_per_second: 0.001,
        burst: 1.0,
        ..Rules::default()
    });
    let _ = call(&s, "GET", "/abc", None, &[]).await;
    let limited = call(&s, "GET", "/abc", None, &[]).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn every_route_in_the_table_is_served_with_its_method() {
    let s = state().await;
    for r in ROUTES {
        let uri = r.path.replace("{code}", "nosuchcode");
        let body = r.request.map(|_| json!({"url": "https://example.com"}));
        let a = call(&s, &r.method.to_uppercase(), &uri, body, &[]).await;
        assert_ne!(
            a.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{} {}",
            r.method,
            r.path
        );
        let documented = r.answers.iter().any(|d| d.status == a.status.as_u16());
        assert!(
            documented,
            "{} {} answered {} which the table does not document",
            r.method, r.path, a.status
        );
    }
}

#[tokio::test]
async fn operational_endpoints() {
    let s = state().await;
    let ready = call(&s, "GET", "/readyz", None, &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["status"], "ready");
    let doc = call(&s, "GET", "/api/v1/openapi.json", None, &[]).await;
    assert_eq!(doc.json["openapi"], "3.1.0");
    let load = call(&s, "GET", "/load", None, &[]).await;
    assert_eq!(load.json["tier"], "sqlite");
}

#[tokio::test]
async fn an_api_key_guards_the_management_api_only() {
    let mut config = crate::testing::config();
    config.api_key = Some(crate::auth::ApiKeyHash::of("s3cret-key"));
    let s = crate::testing::state_with(config).await;
    let body = || Some(json!({"url": "https://example.com/k", "code": "keyed"}));

    let none = call(&s, "POST", "/api/v1/links", body(), &[]).await;
    assert_error(&none, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(none.headers["www-authenticate"], "Bearer realm=\"ladder\"");
    for bad in [
        "Bearer wrong",
        "Bearer s3cret-ke",
        "Basic czNjcmV0LWtleQ==",
        "Bearer ",
    ] {
        let a = call(
            &s,
            "POST",
            "/api/v1/links",
            body(),
            &[("authorization", bad)],
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(
            !a.json.to_string().contains("s3cret"),
            "the key is never echoed"
        );
    }
    // Reads need the key too; nothing was written by the refused requests.
    let read = call(&s, "GET", "/api/v1/links/keyed", None, &[]).await;
    assert_eq!(read.status, StatusCode::UNAUTHORIZED);
    let ok = [("authorization", "Bearer s3cret-key")];
    let shown = call(&s, "GET", "/api/v1/links/keyed", None, &ok).await;
    assert_error(&shown, StatusCode::NOT_FOUND, "not_found");

    let made = call(&s, "POST", "/api/v1/links", body(), &ok).await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.json);
    // Redirects, probes and the API document stay public.
    assert_eq!(
        call(&s, "GET", "/keyed", None, &[]).await.status,
        StatusCode::FOUND
    );
    for open in [
        "/healthz",
        "/readyz",
        "/load",
        "/metrics",
        "/api/v1/openapi.json",
    ] {
        assert_eq!(
            call(&s, "GET", open, None, &[]).await.status,
            StatusCode::OK,
            "{open}"
        );
    }
    let gone = call(&s, "DELETE", "/api/v1/links/keyed", None, &ok).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
}

/// The rate limiter keys on the client [`crate::client`] works out: the peer, whatever
/// `X-Forwarded-For` it sends, unless it is a trusted proxy or presented the edge's certificate.
#[tokio::test]
async fn rate_limit_keys_on_the_trusted_client_address() {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;

    use crate::client::{ForwardedTrust, Peer};

    let mut config = crate::testing::config();
    config.forwarded = ForwardedTrust {
        edge_client_name: Some("ladder-edge".into()),
        proxies: vec!["10.244.0.0/16".parse().expect("cidr")],
    };
    let s = crate::testing::state_with(config).await;
    s.limiter.set_rules(Rules {
        rate_per_second: 0.001,
        burst: 1.0,
        ..Rules::default()
    });
    let get = |peer: &str, cert: Option<&str>, xff: &str| {
        let peer = Peer {
            addr: SocketAddr::new(peer.parse().expect("ip"), 5555),
            certificate: cert.map(Arc::from),
        };
        let mut req = Request::get("/nosuchcode")
            .header("x-forwarded-for", xff)
            .body(Body::empty())
            .expect("request");
        req.extensions_mut().insert(ConnectInfo(peer));
        let s = s.clone();
        async move { crate::testing::send(&s, req).await.status }
    };
    // An untrusted peer: one bucket, however many addresses it claims.
    assert_eq!(
        get("203.0.113.9", None, "1.1.1.1").await,
        StatusCode::NOT_FOUND
    );
    for i in 2..10 {
        let spoof = format!("{i}.{i}.{i}.{i}");
        assert_eq!(
            get("203.0.113.9", None, &spoof).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // A certificate of another name is not the edge.
    assert_eq!(
        get("10.9.0.1", Some("ladder-redis"), "1.1.1.1").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("10.9.0.1", Some("ladder-redis"), "2.2.2.2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The edge and the trusted proxies speak for their clients: each its own bucket.
    for (peer, cert, net) in [
        ("10.9.0.2", Some("ladder-edge"), 1),
        ("10.244.0.7", None, 2),
    ] {
        for host in 1..4 {
            let client = format!("198.51.{net}.{host}");
            assert_eq!(
                get(peer, cert, &format!("6.6.6.6, {client}")).await,
                StatusCode::NOT_FOUND,
                "{client} through {peer}"
            );
        }
    }
    // A client's bucket is its own whichever trusted peer it came through.
    assert_eq!(
        get("10.244.0.8", None, "198.51.1.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
