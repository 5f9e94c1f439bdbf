//! The reconciler against a mocked apiserver (tower-test behind kube's
//! Client, as kube-rs's controller-rs example does): every request the
//! reconcile makes is checked in order, answered as the apiserver would,
//! and a request nobody expected fails the test (the reconcile would wait
//! forever for its answer, and the test times out). The stores are filled
//! by hand, as the watches would.
//!
//! (Over 600 lines because each scenario spells out the exact request
//! sequence it expects; the helpers above the tests are shared by all.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::{Request, Response};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::PartialObjectMeta;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher::Event as WatchEvent;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

use super::stores::{Stores, Writers};
use super::*;
use crate::status;
use crate::transition::Shape;

const NS: &str = "prod";
const UID: &str = "11111111-2222-3333-4444-555555555555";
/// Longest wait for a request the test expects.
const WAIT: Duration = Duration::from_secs(10);

/// The mocked apiserver.
struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request, as the test sees it.
struct Seen {
    method: String,
    path: String,
    body: Value,
    reply: SendResponse<Response<Body>>,
}

fn respond(reply: SendResponse<Response<Body>>, code: u16, body: &Value) {
    reply.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response"),
    );
}

impl ApiServer {
    async fn next(&mut self) -> Seen {
        let (req, reply) = tokio::time::timeout(WAIT, self.0.next_request())
            .await
            .expect("the reconcile made no further request")
            .expect("the client is gone");
        let method = req.method().to_string();
        let path = req.uri().to_string();
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        Seen {
            method,
            path,
            body,
            reply,
        }
    }

    /// Expects a `method` request whose path starts with `path`.
    async fn expect(&mut self, method: &str, path: &str) -> Seen {
        let seen = self.next().await;
        assert_eq!(
            (
                seen.method.as_str(),
                seen.path.split('?').next().unwrap_or("")
            ),
            (method, path),
            "unexpected request {} {}",
            seen.method,
            seen.path
        );
        seen
    }

    /// Expects a server-side apply of `path`; answers with the object at
    /// generation 1.
    async fn expect_apply(&mut self, path: &str) -> Value {
        let seen = self.expect("PATCH", path).await;
        assert!(
            seen.path.contains("fieldManager=ladder-operator") && seen.path.contains("force=true"),
            "{}",
            seen.path
        );
        let mut obj = seen.body.clone();
        obj["metadata"]["generation"] = json!(1);
        obj["metadata"]["resourceVersion"] = json!("1");
        obj["metadata"]["uid"] = json!(format!("uid-{}", obj["metadata"]["name"]));
        respond(seen.reply, 200, &obj);
        obj
    }

    /// Expects a status merge patch; answers with `sp` carrying that status.
    async fn expect_status(
        &mut self,
        sp: &ScalingPhase,
    ) -> ladder_crds::scalingphase::ScalingPhaseStatus {
        let seen = self
            .expect(
                "PATCH",
                &format!("/apis/ladder.dev/v1alpha1/namespaces/{NS}/scalingphases/shop/status"),
            )
            .await;
        let mut after = serde_json::to_value(sp).expect("json");
        after["status"] = seen.body["status"].clone();
        respond(seen.reply, 200, &after);
        let status: ScalingPhase = serde_json::from_value(after).expect("a ScalingPhase");
        status.status.expect("a status")
    }

    /// Expects an Event; answers with it. Returns it.
    async fn expect_event(&mut self) -> Value {
        let seen = self
            .expect(
                "POST",
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            )
            .await;
        let body = seen.body.clone();
        respond(seen.reply, 201, &body);
        body
    }

    /// No request is waiting (the client may be gone: then none can come).
    fn assert_idle(&mut self) {
        if let std::task::Poll::Ready(Some((req, _))) = self.0.poll_request() {
            panic!("a request nobody expected: {} {}", req.method(), req.uri());
        }
    }
}

/// A context on the mocked apiserver, with empty stores and their writers.
fn context() -> (Arc<Context>, ApiServer, Writers) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ladder-operator".into(),
            instance: None,
        },
    );
    let (nodes, _) = reflector::store();
    let (_, integrations) = watch::channel(Integrations::default());
    let (stores, writers) = Stores::new(1);
    let ctx = Context::new(
        client,
        Arc::new(Metrics::default()),
        recorder,
        nodes,
        integrations,
        stores,
    );
    (Arc::new(ctx), ApiServer(handle), writers)
}

/// ScalingPhase `shop` in `prod`, with the finalizer already on.
fn shop(spec: &str) -> ScalingPhase {
    let mut sp: ScalingPhase = serde_yaml::from_str(&format!(
        "apiVersion: ladder.dev/v1alpha1\nkind: ScalingPhase\nmetadata: {{name: shop, namespace: {NS}, uid: {UID}, generation: 1}}\nspec: {spec}\n"
    ))
    .expect("a ScalingPhase");
    sp.metadata.finalizers = Some(vec![FINALIZER.into()]);
    sp
}

/// What phase 0 renders for `sp`.
fn rendered(sp: &ScalingPhase) -> Desired {
    shapes::render_shape(sp, &World::default(), Shape::Steady(0), None).expect("renders")
}

use crate::render::Desired;

/// The paths phase 0's children are applied at, in apply order.
const PHASE_0: [&str; 6] = [
    "/api/v1/namespaces/prod/serviceaccounts/shop-app",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/prod/roles/shop-app-loadreports",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/prod/rolebindings/shop-app-loadreports",
    "/api/v1/namespaces/prod/persistentvolumeclaims/shop-app-data",
    "/api/v1/namespaces/prod/services/shop-app",
    "/apis/apps/v1/namespaces/prod/deployments/shop-app",
];

fn meta_event<K>(obj: &Value) -> WatchEvent<PartialObjectMeta<K>>
where
    PartialObjectMeta<K>: serde::de::DeserializeOwned,
{
    WatchEvent::Apply(serde_json::from_value(obj.clone()).expect("metadata"))
}

/// Puts a child (as applied) into its store, as its watch would; a
/// Deployment rolled out and ready.
fn observe_child(w: &mut Writers, obj: &Value) {
    match obj["kind"].as_str().unwrap_or_default() {
        "ServiceAccount" => w
            .service_accounts
            .apply_watcher_event(&meta_event::<ServiceAccount>(obj)),
        "Role" => w.roles.apply_watcher_event(&meta_event::<Role>(obj)),
        "RoleBinding" => w
            .role_bindings
            .apply_watcher_event(&meta_event::<RoleBinding>(obj)),
        "ConfigMap" => w
            .config_maps
            .apply_watcher_event(&meta_event::<ConfigMap>(obj)),
        "PersistentVolumeClaim" => w
            .claims
            .apply_watcher_event(&meta_event::<PersistentVolumeClaim>(obj)),
        "Service" => w.services.apply_watcher_event(&meta_event::<Service>(obj)),
        "Secret" => w.secrets[0].apply_watcher_event(&meta_event::<Secret>(obj)),
        "Deployment" => {
            let mut d: Deployment = serde_json::from_value(obj.clone()).expect("a Deployment");
            let replicas = d.spec.replicas.unwrap_or(1);
            d.status = Some(DeploymentStatus {
                observed_generation: d.metadata.generation,
                replicas: Some(replicas),
                ready_replicas: Some(replicas),
                updated_replicas: Some(replicas),
                ..DeploymentStatus::default()
            });
            w.deployments.apply_watcher_event(&WatchEvent::Apply(d));
        }
        other => panic!("no store for {other}"),
    }
}

/// Every rendered child of `sp`, as the stores would show it once applied.
fn observe_all(w: &mut Writers, sp: &ScalingPhase) {
    for mut obj in rendered(sp).objects() {
        obj["metadata"]["generation"] = json!(1);
        observe_child(w, &obj);
    }
}

/// The last whole-set apply of `sp` happened `ago`, with `hash`.
fn applied_before(ctx: &Context, hash: &str, ago: Duration) {
    let at = Instant::now().checked_sub(ago).expect("a past instant");
    ctx.applied().insert(
        UID.into(),
        Applied {
            hash: hash.into(),
            active: 0,
            full_at: at,
            write_at: at,
            repairs: 0,
            written: BTreeMap::new(),
        },
    );
}

/// When `action` requeues (kube's Action has no getter: read its Debug).
fn requeue_of(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    let split = inner.find(|c: char| c.is_alphabetic() || c == 'µ')?;
    let (n, unit) = inner.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn hash_of(sp: &ScalingPhase) -> String {
    crate::render::short_hash(rendered(sp).to_yaml().as_bytes())
}

fn condition<'a>(
    s: &'a ladder_crds::scalingphase::ScalingPhaseStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", s.conditions))
}

#[tokio::test]
async fn an_invalid_spec_gets_a_condition_and_an_event_and_nothing_else() {
    let (ctx, mut api, _w) = context();
    let sp = shop("{phase: 0, regions: ['not a region!']}");
    let run = tokio::spawn(reconcile(Arc::new(sp.clone()), ctx));
    let status = api.expect_status(&sp).await;
    let degraded = condition(&status, status::types::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", status::reasons::INVALID_SPEC)
    );
    assert!(
        degraded.message.contains("spec.regions"),
        "{}",
        degraded.message
    );
    let event = api.expect_event().await;
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["type"], "Warning");
    let action = run.await.expect("joined").expect("not an error");
    assert_eq!(action, Action::await_change());
    api.assert_idle();
}

#[tokio::test]
async fn a_new_scaling_phase_is_applied_then_reported_once_then_left_alone() {
    let (ctx, mut api, mut w) = context();
    let sp = shop("{phase: 0}");

    // 1. Everything is applied, in order; no status yet: the stores do
    //    not show the new children, so "not created yet" would be stale.
    let run = tokio::spawn(reconcile(Arc::new(sp.clone()), ctx.clone()));
    let mut applied = Vec::new();
    for path in PHASE_0 {
        applied.push(api.expect_apply(path).await);
    }
    let action = run.await.expect("joined").expect("applied");
    assert!(
        requeue_of(&action).is_some_and(|d| d <= QUIET_ROLLOUT),
        "{action:?}"
    );
    api.assert_idle();

    // 2. The watches deliver the children, rolled out: one status write.
    for obj in &applied {
        observe_child(&mut w, obj);
    }
    let run = tokio::spawn(reconcile(Arc::new(sp.clone()), ctx.clone()));
    let status = api.expect_status(&sp).await;
    let action = run.await.expect("joined").expect("reported");
    assert_eq!(status.active_phase, Some(0));
    assert_eq!(status.ready_components.as_deref(), Some("1/1"));
    assert_eq!(condition(&status, status::types::READY).status, "True");
    assert_eq!(action, Action::requeue(DRIFT_CHECK));
    api.assert_idle();

    // 3. Nothing changed: no request at all.
    let mut reported = sp.clone();
    reported.status = Some(status);
    let run = tokio::spawn(reconcile(Arc::new(reported), ctx.clone()));
    let action = tokio::time::timeout(WAIT, run)
        .await
        .expect("no request was answered, so none was made")
        .expect("joined")
        .expect("nothing to do");
    assert_eq!(action, Action::requeue(DRIFT_CHECK));
    api.assert_idle();
}

#[tokio::test]
async fn a_refused_apply_is_reported_and_retried_with_the_error() {
    let (ctx, mut api, _w) = context();
    let sp = shop("{phase: 0}");
    let run = tokio::spawn(reconcile(Arc::new(sp.clone()), ctx));
    let seen = api.expect("PATCH", PHASE_0[0]).await;
    respond(
        seen.reply,
        403,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                "message": "serviceaccounts is forbidden", "code": 403}),
    );
    let status = api.expect_status(&sp).await;
    let ready = condition(&status, status::types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", status::reasons::APPLY_FAILED)
    );
    assert!(ready.message.contains("forbidden"), "{}", ready.message);
    let error = run.await.expect("joined").expect_err("an apply error");
    assert_eq!(error.category(), "apply");
    api.assert_idle();
}

#[tokio::test]
async fn a_changed_set_is_applied_and_what_it_no_longer_names_is_pruned_from_the_stores() {
    let (ctx, mut api, mut w) = context();
    let sp = shop("{phase: 0}");
    observe_all(&mut w, &sp);
    // Left over from an earlier render: ours, and someone else's.
    let leftover = |name: &str, uid: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": name, "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "ladder", "ladder.dev/scalingphase": "shop"},
            "ownerReferences": [{"apiVersion": "ladder.dev/v1alpha1", "kind": "ScalingPhase",
                "name": "shop", "uid": uid, "controller": true}]}})
    };
    observe_child(&mut w, &leftover("shop-old", UID));
    observe_child(&mut w, &leftover("shop-other", "another-uid"));
    applied_before(&ctx, "an older set", Duration::from_secs(60));

    let run = tokio::spawn(reconcile(Arc::new(sp.clone()), ctx));
    for path in PHASE_0 {
        api.expect_apply(path).await;
    }
    // No LIST: the stale child comes from the store.
    let seen = api
        .expect("DELETE", "/api/v1/namespaces/prod/services/shop-old")
        .await;
    respond(
        seen.reply,
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    );
    // Everything is in the stores, at the written generation: reported now.
    let status = api.expect_status(&sp).await;
    assert_eq!(condition(&status, status::types::READY).status, "True");
    run.await.expect("joined").expect("applied and pruned");
    api.assert_idle();
}

#[tokio::test]
async fn a_deleted_child_is_re_created_alone() {
    let (ctx, mut api, mut w) = context();
    let sp = shop("{phase: 0}");
    observe_all(&mut w, &sp);
    applied_before(&ctx, &hash_of(&sp), Duration::from_secs(60));
    // The Service went away (its watch reported the deletion).
    let svc: PartialObjectMeta<Service> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "shop-app", "namespace": NS}
    }))
    .expect("metadata");
    w.services.apply_watcher_event(&WatchEvent::Delete(svc));

    let run = tokio::spawn(reconcile(Arc::new(sp.clone()), ctx.clone()));
    api.expect_apply("/api/v1/namespaces/prod/services/shop-app")
        .await;
    let action = run.await.expect("joined").expect("repaired");
    // The status waits for the watch to show the Service again.
    assert!(
        requeue_of(&action).is_some_and(|d| d <= QUIET_ROLLOUT),
        "{action:?}"
    );
    api.assert_idle();
    assert_eq!(ctx.last(UID).map(|l| l.repairs), Some(1));
}

#[tokio::test]
async fn a_child_just_written_is_not_re_created_before_the_watch_shows_it() {
    let (ctx, mut api, mut w) = context();
    let sp = shop("{phase: 0}");
    observe_all(&mut w, &sp);
    applied_before(&ctx, &hash_of(&sp), Duration::ZERO);
    let svc: PartialObjectMeta<Service> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "shop-app", "namespace": NS}
    }))
    .expect("metadata");
    w.services.apply_watcher_event(&WatchEvent::Delete(svc));
    let action = tokio::time::timeout(WAIT, reconcile(Arc::new(sp), ctx))
        .await
        .expect("no request was made")
        .expect("settling");
    assert!(
        requeue_of(&action).is_some_and(|d| d <= SETTLE),
        "{action:?}"
    );
    api.assert_idle();
}

#[tokio::test]
async fn a_rollout_in_progress_is_reported_only_once_it_is_no_longer_fresh() {
    let (ctx, mut api, mut w) = context();
    let sp = shop("{phase: 0}");
    observe_all(&mut w, &sp);
    // The Deployment is there, not ready yet.
    let mut d: Deployment = serde_json::from_value(
        rendered(&sp)
            .objects()
            .into_iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("a Deployment"),
    )
    .expect("a Deployment");
    d.metadata.generation = Some(1);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(1),
        ready_replicas: Some(0),
        ..DeploymentStatus::default()
    });
    w.deployments.apply_watcher_event(&WatchEvent::Apply(d));

    // Applied a moment ago: a rollout about to finish, not worth a write.
    applied_before(&ctx, &hash_of(&sp), Duration::from_secs(1));
    let action = tokio::time::timeout(WAIT, reconcile(Arc::new(sp.clone()), ctx.clone()))
        .await
        .expect("no request was made")
        .expect("waiting for the rollout");
    assert!(
        requeue_of(&action).is_some_and(|d| d < QUIET_ROLLOUT),
        "{action:?}"
    );
    api.assert_idle();

    // Still rolling out after QUIET_ROLLOUT: reported as such.
    applied_before(&ctx, &hash_of(&sp), QUIET_ROLLOUT + Duration::from_secs(1));
    let run = tokio::spawn(reconcile(Arc::new(sp.clone()), ctx));
    let status = api.expect_status(&sp).await;
    let ready = condition(&status, status::types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", status::reasons::NOT_READY)
    );
    assert_eq!(
        condition(&status, status::types::PROGRESSING).reason,
        status::reasons::ROLLING_OUT
    );
    run.await.expect("joined").expect("reported");
    api.assert_idle();
}

/// A PVC and a credential Secret of `shop`, as a metadata list answer.
fn owned_list(kind: &str, name: &str) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
        "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {
            "name": name, "namespace": NS, "resourceVersion": "7",
            "annotations": {"kind": kind},
            "ownerReferences": [{"apiVersion": "ladder.dev/v1alpha1", "kind": "ScalingPhase",
                "name": "shop", "uid": UID, "controller": true}]}}]})
}

async fn deleted(policy: &str) -> Vec<(String, String, Value)> {
    let (ctx, mut api, _w) = context();
    let mut sp = shop(&format!("{{phase: 0, deletionPolicy: {policy}}}"));
    sp.metadata.deletion_timestamp = Some(report::now());
    let run = tokio::spawn(reconcile(Arc::new(sp.clone()), ctx));
    let mut writes = Vec::new();
    let pvcs = api
        .expect("GET", "/api/v1/namespaces/prod/persistentvolumeclaims")
        .await;
    assert!(pvcs.path.contains("labelSelector="), "{}", pvcs.path);
    respond(pvcs.reply, 200, &owned_list("pvc", "shop-app-data"));
    let secrets = api.expect("GET", "/api/v1/namespaces/prod/secrets").await;
    assert!(
        secrets.path.contains("ladder.dev%2Fcredential%3Dtrue"),
        "{}",
        secrets.path
    );
    respond(secrets.reply, 200, &owned_list("secret", "shop-db"));
    for _ in 0..2 {
        let seen = api.next().await;
        writes.push((seen.method.clone(), seen.path.clone(), seen.body.clone()));
        let answer = if seen.method == "DELETE" {
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        } else {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": "x", "namespace": NS}})
        };
        respond(seen.reply, 200, &answer);
    }
    // Then the finalizer goes.
    let seen = api
        .expect(
            "PATCH",
            "/apis/ladder.dev/v1alpha1/namespaces/prod/scalingphases/shop",
        )
        .await;
    assert!(
        seen.body.to_string().contains("remove") || seen.body.to_string().contains("finalizers"),
        "{}",
        seen.body
    );
    let mut gone = serde_json::to_value(&sp).expect("json");
    gone["metadata"]["finalizers"] = json!([]);
    respond(seen.reply, 200, &gone);
    run.await.expect("joined").expect("cleaned up");
    api.assert_idle();
    writes
}

#[tokio::test]
async fn retain_detaches_volumes_and_credentials_before_the_finalizer_goes() {
    let writes = deleted("Retain").await;
    let paths: Vec<(&str, &str)> = writes
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.split('?').next().unwrap_or("")))
        .collect();
    assert_eq!(
        paths,
        vec![
            (
                "PATCH",
                "/api/v1/namespaces/prod/persistentvolumeclaims/shop-app-data"
            ),
            ("PATCH", "/api/v1/namespaces/prod/secrets/shop-db"),
        ]
    );
    for (_, _, body) in &writes {
        assert_eq!(body["metadata"]["ownerReferences"], json!([]), "{body}");
        assert_eq!(body["metadata"]["resourceVersion"], "7", "{body}");
    }
}

#[tokio::test]
async fn delete_deletes_volumes_and_credentials_before_the_finalizer_goes() {
    let writes = deleted("Delete").await;
    let paths: Vec<(&str, &str)> = writes
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.split('?').next().unwrap_or("")))
        .collect();
    assert_eq!(
        paths,
        vec![
            (
                "DELETE",
                "/api/v1/namespaces/prod/persistentvolumeclaims/shop-app-data"
            ),
            ("DELETE", "/api/v1/namespaces/prod/secrets/shop-db"),
        ]
    );
}

#[test]
fn only_keeps_the_named_children() {
    let sp = shop("{phase: 0}");
    let d = rendered(&sp);
    let keys = [(crate::render::Kind::Service, "shop-app".to_owned())]
        .into_iter()
        .collect();
    let part = plan::only(&d, &keys);
    assert_eq!(part.len(), 1);
    assert_eq!(part.services.len(), 1);
    assert!(part.deployments.is_empty());
}

#[test]
fn stale_children_are_ours_and_no_longer_rendered_and_never_data() {
    let (stores, mut w) = Stores::new(1);
    let sp = shop("{phase: 0}");
    observe_all(&mut w, &sp);
    let owned = |kind: &str, api: &str, name: &str| {
        json!({"apiVersion": api, "kind": kind, "metadata": {
            "name": name, "namespace": NS, "generation": 1,
            "labels": {"ladder.dev/scalingphase": "shop"},
            "ownerReferences": [{"apiVersion": "ladder.dev/v1alpha1", "kind": "ScalingPhase",
                "name": "shop", "uid": UID, "controller": true}]}})
    };
    observe_child(&mut w, &owned("ConfigMap", "v1", "shop-old-config"));
    observe_child(
        &mut w,
        &owned("PersistentVolumeClaim", "v1", "shop-old-data"),
    );
    observe_child(&mut w, &owned("Secret", "v1", "shop-old-credentials"));
    let stale = plan::stale(&stores, NS, "shop", UID, &rendered(&sp));
    assert_eq!(
        stale,
        vec![(crate::render::Kind::ConfigMap, "shop-old-config".to_owned())]
    );
}
