//! The one route table. The router ([`crate::api::app`]), the codes a link may not take
//! ([`reserved`]) and the OpenAPI document ([`crate::openapi::document`]) are all derived from
//! [`ROUTES`], so a route cannot be served without being documented, nor shadow a short code.
//!
//! Each row names a path, a method, who may call it ([`Access`]), the handler, and what the
//! document says about it (summary, request schema, answers).

use axum::routing::{self, MethodRouter};

use crate::AppState;

/// Who may call a route; decides the middlewares it runs behind (see `crate::api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Redirects: public, rate-limited, never authenticated.
    Public,
    /// The management API (`/api/v1/links…`): rate-limited, and authenticated whenever an API
    /// key hash or OIDC is configured (`crate::auth`).
    Management,
    /// Probes, metrics, load, the API document: never limited nor authenticated (a kubelet
    /// probe must get through an overloaded app).
    Operational,
}

/// One documented answer of a route.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub description: &'static str,
    /// A schema of `components.schemas`; error answers always carry `Error`.
    pub schema: Option<&'static str>,
}

const fn ok(status: u16, description: &'static str, schema: Option<&'static str>) -> Answer {
    Answer {
        status,
        description,
        schema,
    }
}

const fn err(status: u16, description: &'static str) -> Answer {
    Answer {
        status,
        description,
        schema: Some("Error"),
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub path: &'static str,
    pub method: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// Schema of the JSON request body, if the route takes one.
    pub request: Option<&'static str>,
    pub answers: &'static [Answer],
    pub handler: fn() -> MethodRouter<AppState>,
}

use crate::api as ops;
use crate::links;

/// Answers every rate-limited route may give besides its own.
pub const LIMITED: &[Answer] = &[
    err(403, "refused by the WAF rules (blocked path or client)"),
    err(405, "method refused by the WAF rules"),
    err(429, "rate limited (Retry-After)"),
    err(
        503,
        "overloaded, timed out, or the database is unavailable (Retry-After)",
    ),
];

/// Answers every management route may give when authentication is configured.
pub const AUTHENTICATED: &[Answer] = &[
    err(401, "missing or invalid credentials (WWW-Authenticate)"),
    err(403, "the credentials do not allow this request"),
];

/// Every route the app serves.
pub const ROUTES: &[Route] = &[
    Route {
        path: "/api/v1/links",
        method: "post",
        access: Access::Management,
        summary: "Create a link",
        request: Some("CreateLink"),
        answers: &[
            ok(201, "created", Some("Link")),
            err(400, "malformed JSON"),
            err(409, "custom code taken"),
            err(413, "body too large"),
            err(422, "invalid URL or code"),
        ],
        handler: || routing::post(links::create),
    },
    Route {
        path: "/api/v1/links/{code}",
        method: "get",
        access: Access::Management,
        summary: "Show a link",
        request: None,
        answers: &[ok(200, "the link", Some("Link")), err(404, "unknown code")],
        handler: || routing::get(links::show),
    },
    Route {
        path: "/api/v1/links/{code}",
        method: "put",
        access: Access::Management,
        summary: "Change a link's target (invalidates caches and purges the edge)",
        request: Some("UpdateLink"),
        answers: &[
            ok(200, "updated", Some("Link")),
            err(400, "malformed JSON"),
            err(404, "unknown code"),
            err(413, "body too large"),
            err(422, "invalid URL"),
        ],
        handler: || routing::put(links::update),
    },
    Route {
        path: "/api/v1/links/{code}",
        method: "delete",
        access: Access::Management,
        summary: "Delete a link (invalidates caches and purges the edge)",
        request: None,
        answers: &[ok(204, "deleted", None), err(404, "unknown code")],
        handler: || routing::delete(links::remove),
    },
    Route {
        path: "/api/v1/links/{code}/stats",
        method: "get",
        access: Access::Management,
        summary: "Clicks per UTC day",
        request: None,
        answers: &[ok(200, "stats", Some("Stats")), err(404, "unknown code")],
        handler: || routing::get(links::stats),
    },
    Route {
        path: "/api/v1/openapi.json",
        method: "get",
        access: Access::Operational,
        summary: "This document",
        request: None,
        answers: &[ok(200, "OpenAPI document", None)],
        handler: || routing::get(ops::openapi),
    },
    Route {
        path: "/healthz",
        method: "get",
        access: Access::Operational,
        summary: "Liveness",
        request: None,
        answers: &[ok(200, "alive", None)],
        handler: || routing::get(ops::healthz),
    },
    Route {
        path: "/readyz",
        method: "get",
        access: Access::Operational,
        summary: "Readiness: ready while redirects can be served, from the database or the cache \
                  (status `degraded` when only the cache answers)",
        request: None,
        answers: &[
            ok(200, "ready or degraded", Some("Ready")),
            ok(
                503,
                "neither the database nor the cache answers",
                Some("Ready"),
            ),
        ],
        handler: || routing::get(ops::readyz),
    },
    Route {
        path: "/metrics",
        method: "get",
        access: Access::Operational,
        summary: "Prometheus metrics (OpenMetrics text)",
        request: None,
        answers: &[ok(200, "metrics", None)],
        handler: || routing::get(ops::metrics),
    },
    Route {
        path: "/load",
        method: "get",
        access: Access::Operational,
        summary: "Current load over the sliding window",
        request: None,
        answers: &[ok(200, "load", Some("Load"))],
        handler: || routing::get(ops::load),
    },
    // Last in the table, first in nobody's way: a literal path always wins over `{code}` in
    // axum's matcher, and `reserved` keeps codes off every literal first segment.
    Route {
        path: "/{code}",
        method: "get",
        access: Access::Public,
        summary: "Redirect to the target (cacheable: Cache-Control, ETag)",
        request: None,
        answers: &[
            ok(302, "redirect", None),
            ok(304, "not modified (If-None-Match)", None),
            err(404, "unknown code"),
        ],
        handler: || routing::get(links::redirect),
    },
];

/// The first path segment of a route, when it is a literal (not a `{parameter}`).
fn first_literal(path: &str) -> Option<&str> {
    let first = path.trim_start_matches('/').split('/').next()?;
    (!first.is_empty() && !first.starts_with('{')).then_some(first)
}

/// The route that serves `path`, as axum's router picks it: the first row of the table whose
/// path matches segment by segment (a `{parameter}` matches one non-empty segment; literal
/// routes come before `/{code}`). None when no route serves the path.
pub fn matching(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| path_matches(r.path, path))
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut want, mut got) = (pattern.split('/'), path.split('/'));
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// True when `code` is the first segment of a route, so `/{code}` could never reach it.
pub fn reserved(code: &str) -> bool {
    ROUTES.iter().any(|r| first_literal(r.path) == Some(code))
}

/// The routes of one kind of access, as a router (methods of one path merged).
pub fn router(access: Access) -> axum::Router<AppState> {
    ROUTES
        .iter()
        .filter(|r| r.access == access)
        .fold(axum::Router::new(), |router, r| {
            router.route(r.path, (r.handler)())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_literal_first_segment_is_reserved() {
        for code in ["api", "healthz", "readyz", "metrics", "load"] {
            assert!(reserved(code), "{code}");
        }
        assert!(!reserved("code"), "a parameter name is not a literal");
        assert!(!reserved("abc"));
    }

    #[test]
    fn paths_match_the_route_axum_serves_them_by() {
        let route = |p: &str| matching(p).map(|r| r.path);
        assert_eq!(route("/abc123"), Some("/{code}"));
        assert_eq!(
            route("/healthz"),
            Some("/healthz"),
            "a literal wins over {{code}}"
        );
        assert_eq!(route("/api/v1/links"), Some("/api/v1/links"));
        assert_eq!(route("/api/v1/links/abc"), Some("/api/v1/links/{code}"));
        assert_eq!(
            route("/api/v1/links/abc/stats"),
            Some("/api/v1/links/{code}/stats")
        );
        assert_eq!(route("/"), None, "a parameter is never empty");
        assert_eq!(route("/abc/"), None);
        assert_eq!(route("/a/b"), None);
        assert_eq!(route("/api/v1/links/abc/other"), None);
    }

    #[test]
    fn one_row_per_path_and_method() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[..i]
                    .iter()
                    .all(|b| (b.path, b.method) != (a.path, a.method)),
                "{} {} twice",
                a.method,
                a.path
            );
            assert!(
                matches!(a.method, "get" | "post" | "put" | "delete"),
                "{}",
                a.method
            );
        }
    }
}
