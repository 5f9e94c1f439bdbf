//! A tower layer on the kube [`Client`](kube::Client) that counts every
//! request to the API server, twice:
//!
//! - `ladder_api_requests_total{method,verb,group,resource}` when the request
//!   leaves, labelled the way the kube-apiserver's own
//!   `apiserver_request_total` labels it (verb `LIST`/`WATCH`/`APPLY` told
//!   apart from `GET`/`PATCH`), so the operator's count can be set next to the
//!   apiserver's row by row (bench/operator.md does);
//! - `rest_client_requests_total{code,host,method}` when the answer comes
//!   back, as client-go names it, so the PromQL written for Go operators works.
//!
//! Watches are counted once, when they open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower::{Layer, Service};

use super::Metrics;

/// How one request is labelled (`apiserver_request_total`'s vocabulary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY` or `DELETE`.
    pub verb: &'static str,
    /// API group, empty for the core group.
    pub group: String,
    /// Resource, with `/subresource` when there is one (`scalingphases/status`);
    /// empty for non-resource paths (discovery, `/version`).
    pub resource: String,
}

/// Labels a request like the apiserver does: the verb from the method, the
/// path (a named object or a collection) and, for a PATCH, whether it is a
/// server-side apply.
pub fn classify(method: &Method, uri: &http::Uri, content_type: Option<&str>) -> Classified {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... (core) or /apis/<group>/<version>/...
    let (group, rest): (&str, &[&str]) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (group, rest),
        _ => ("", &[]),
    };
    // namespaces/<ns>/<resource>[/<name>[/<sub>]] or <resource>[/<name>[/<sub>]]
    let (resource, name, sub) = match rest {
        ["namespaces", _ns, resource, tail @ ..] => (Some(*resource), tail.first(), tail.get(1)),
        [resource, tail @ ..] => (Some(*resource), tail.first(), tail.get(1)),
        [] => (None, None, None),
    };
    let watch = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match *method {
        Method::GET if resource.is_none() || name.is_some() => "GET",
        Method::GET if watch => "WATCH",
        Method::GET => "LIST",
        Method::PATCH if content_type.is_some_and(|c| c.starts_with("application/apply-patch")) => {
            "APPLY"
        }
        Method::PATCH => "PATCH",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    let resource = match (resource, sub) {
        (Some(r), Some(s)) => format!("{r}/{s}"),
        (Some(r), None) => r.to_owned(),
        (None, _) => String::new(),
    };
    Classified {
        verb,
        group: group.to_owned(),
        resource,
    }
}

/// The layer: `ClientBuilder::with_layer(&ApiRequestLayer::new(metrics, host))`.
#[derive(Clone, Debug)]
pub struct ApiRequestLayer {
    metrics: Arc<Metrics>,
    host: Arc<str>,
}

impl ApiRequestLayer {
    /// Counts into `metrics`; `host` is the API server's `host:port`
    /// (the `host` label of `rest_client_requests_total`).
    pub fn new(metrics: Arc<Metrics>, host: &str) -> Self {
        Self {
            metrics,
            host: host.into(),
        }
    }
}

impl<S> Layer<S> for ApiRequestLayer {
    type Service = ApiRequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiRequestService {
            inner,
            metrics: self.metrics.clone(),
            host: self.host.clone(),
        }
    }
}

/// The service [`ApiRequestLayer`] wraps around the client's stack.
#[derive(Clone, Debug)]
pub struct ApiRequestService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    host: Arc<str>,
}

impl<S, B, RB> Service<Request<B>> for ApiRequestService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let c = classify(req.method(), req.uri(), content_type);
        let method = req.method().as_str().to_owned();
        self.metrics.api_request(&method, &c);
        let metrics = self.metrics.clone();
        let host = self.host.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // client-go's label for a request that got no HTTP answer.
            let code = match &res {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "<error>".to_owned(),
            };
            metrics.runtime.rest_request(&code, &host, &method);
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: Method, uri: &str, ct: Option<&str>) -> (String, String, String) {
        let uri: http::Uri = uri.parse().expect("uri");
        let c = classify(&method, &uri, ct);
        (c.verb.to_owned(), c.group, c.resource)
    }

    fn t(verb: &str, group: &str, resource: &str) -> (String, String, String) {
        (verb.into(), group.into(), resource.into())
    }

    #[test]
    fn reads_are_get_list_or_watch_like_the_apiserver_says() {
        assert_eq!(
            c(
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments/web",
                None
            ),
            t("GET", "apps", "deployments")
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments?labelSelector=x%3Dy",
                None
            ),
            t("LIST", "apps", "deployments")
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/ladder.dev/v1alpha1/namespaces/a/scalingphases?&watch=true&timeoutSeconds=290",
                None
            ),
            t("WATCH", "ladder.dev", "scalingphases")
        );
        assert_eq!(
            c(Method::GET, "/api/v1/nodes?limit=500", None),
            t("LIST", "", "nodes")
        );
        // A namespace itself (cluster-scoped), not something inside it.
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/a", None),
            t("GET", "", "namespaces")
        );
        assert_eq!(c(Method::GET, "/version", None), t("GET", "", ""));
    }

    #[test]
    fn writes_tell_apply_from_patch_and_name_subresources() {
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/web?fieldManager=ladder-operator&force=true",
                Some("application/apply-patch+yaml")
            ),
            t("APPLY", "apps", "deployments")
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/ladder.dev/v1alpha1/namespaces/a/scalingphases/x/status",
                Some("application/merge-patch+json")
            ),
            t("PATCH", "ladder.dev", "scalingphases/status")
        );
        assert_eq!(
            c(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/a/events",
                Some("application/json")
            ),
            t("POST", "events.k8s.io", "events")
        );
        assert_eq!(
            c(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
                None
            ),
            t("PUT", "coordination.k8s.io", "leases")
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/namespaces/a/secrets/s", None),
            t("DELETE", "", "secrets")
        );
    }
}
