//! `ladder-operator run`: the long-running operator process.
//!
//! Sets up logs and optional OTLP tracing ([`crate::telemetry`]), starts the
//! HTTP endpoints (`/metrics`, `/healthz`, `/readyz`), waits to become leader
//! (unless disabled), starts watching the CRDs of the optional integrations
//! ([`crate::integrations`]), then runs the Controller until SIGTERM or
//! Ctrl-C, finishing in-flight reconciles, releasing the Lease and flushing
//! traces on the way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PartialObjectMeta;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use ladder_crds::load_report::LoadReport;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::integrations;
use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::telemetry;
use ladder_crds::scalingphase::ScalingPhase;

/// Options of `ladder-operator run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Address of the metrics and health endpoints.
    #[arg(long, env = "LADDER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Take part in leader election (disable only for a single local process).
    #[arg(long, env = "LADDER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "LADDER_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "LADDER_LEASE_NAME", default_value = "ladder-operator")]
    pub lease_name: String,
    /// This candidate's identity (the pod name in a cluster); hostname-pid when unset.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// ScalingPhases reconciled at once (bounds the load on the apiserver).
    #[arg(long, env = "LADDER_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Log format: json or text.
    #[arg(long, env = "LADDER_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Only reconcile ScalingPhases in this namespace (all when unset).
    #[arg(long, env = "LADDER_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Export traces (a span per reconcile) over OTLP/HTTP to this base URL,
    /// e.g. http://otel-collector:4318 (spans go to `<URL>/v1/traces`).
    /// Off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Clone)]
struct Http {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// The HTTP endpoints.
fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Http>| async move { s.metrics.encode() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<Http>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(Http { metrics, ready })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(%e, "cannot listen for SIGTERM");
                futures::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

/// The ScalingPhase a LoadReport is a load sample for.
fn report_target(r: &LoadReport) -> Option<ObjectRef<ScalingPhase>> {
    let ns = r.metadata.namespace.as_deref()?;
    Some(ObjectRef::new(&r.spec.scaling_phase).within(ns))
}

/// Runs the operator until a shutdown signal, then flushes its traces.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&args.log_format, args.otlp_endpoint.as_deref())?;
    if telemetry.exporting() {
        info!(
            endpoint = args.otlp_endpoint.as_deref(),
            "exporting traces over OTLP/HTTP"
        );
    }
    let result = operate(args).await;
    // The exporter blocks while it sends the last batch.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}

async fn operate(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (KUBECONFIG or in-cluster)")?;
    // Count every request to the API server (ladder_api_requests_total,
    // rest_client_requests_total).
    let host = config
        .cluster_url
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default();
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&crate::metrics::client::ApiRequestLayer::new(
            metrics.clone(),
            &host,
        ))
        .build();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            info!("shutdown requested");
            let _ = stop_tx.send(true);
        }
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.http_addr))?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let app = router(metrics.clone(), ready.clone());
    let http_stop = stopped(stop_rx.clone());
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_stop)
            .await
    });

    // Refuse to start without the CRD: say so clearly instead of crash-looping on watch errors.
    let sps: Api<ScalingPhase> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = sps.list(&ListParams::default().limit(1)).await {
        error!(%e, "cannot list ScalingPhases: is the CRD installed? (`ladder-operator crd | kubectl apply -f -`)");
        anyhow::bail!("ScalingPhase CRD not available: {e}");
    }

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let elector = args.leader_election.then(|| {
        Elector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds),
        )
    });
    if let Some(e) = &elector {
        info!(%identity, lease = %args.lease_name, "waiting to become leader");
        let mut stop = stop_rx.clone();
        loop {
            match e.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => warn!(%err, "leader election failed; retrying"),
            }
            ready.store(true, Ordering::Relaxed); // a standby is healthy and ready
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {},
                _ = stop.wait_for(|s| *s) => { let _ = http.await; return Ok(()); }
            }
        }
        metrics.leader.set(1);
        info!(%identity, "became leader");
        let e = e.clone();
        let stop_tx = stop_tx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let period = e.duration() / 3;
            loop {
                tokio::time::sleep(period).await;
                match e.try_acquire_or_renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        error!("lost the leader Lease; stopping so no two leaders act");
                        metrics.leader.set(0);
                        let _ = stop_tx.send(true);
                        return;
                    }
                    Err(err) => warn!(%err, "renewing the Lease failed; retrying"),
                }
            }
        });
    }

    // Optional CRDs are watched for the life of the process; wait for the
    // first lists so the first reconciles already use what is installed.
    let (mut integrations, detector) = integrations::detect(client.clone());
    integrations::wait_initial(&mut integrations, Duration::from_secs(30)).await;

    let (nodes, writer) = reflector::store();
    let node_stream = reflector(
        writer,
        watcher(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(node_stream);

    let reporter = Reporter {
        controller: "ladder-operator".into(),
        instance: Some(identity.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    // The promoter reads LoadReports and the app pods that own them from
    // reflector stores: no request per reconcile.
    let (reports_api, pods_api): (Api<LoadReport>, Api<PartialObjectMeta<Pod>>) =
        match &args.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let (reports, reports_writer) = reflector::store();
    tokio::spawn(
        reflector(
            reports_writer,
            watcher(reports_api.clone(), watcher::Config::default()),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(())),
    );
    let (app_pods, pods_writer) = reflector::store();
    tokio::spawn(
        reflector(
            pods_writer,
            watcher(
                pods_api,
                watcher::Config::default().labels("app.kubernetes.io/component=app"),
            ),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(())),
    );
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            metrics.clone(),
            recorder,
            nodes,
            integrations.clone(),
        )
        .with_load(reconcile::LoadSources {
            reports,
            pods: app_pods,
        }),
    );

    // Only what affects readiness is watched: workload status changes wake
    // the reconciler. Other children are repaired on the drift interval.
    let children = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::render::MANAGED_BY_LABEL,
        crate::render::MANAGED_BY
    ));
    #[allow(clippy::type_complexity)]
    let (deploys, stss, jobs): (
        Api<PartialObjectMeta<Deployment>>,
        Api<PartialObjectMeta<StatefulSet>>,
        Api<PartialObjectMeta<Job>>,
    ) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    ready.store(true, Ordering::Relaxed);
    info!("controller starting");
    // The watches are what Controller::new/owns/watches would open (owned
    // children metadata-only, as `owns` does); they are built as streams only
    // so that each trigger passes through `queue`, which models the
    // Controller's queue for workqueue_depth (see crate::metrics::runtime).
    let queue = metrics.runtime.clone();
    queue.set_max_concurrency(args.concurrency);
    let (sp_store, sp_writer) = reflector::store();
    queue.watch_store(sp_store.clone());
    let sp_events = reflector(
        sp_writer,
        watcher(sps, watcher::Config::default().any_semantic()),
    )
    .applied_objects();
    Controller::for_stream(queue.triggers(sp_events), sp_store)
        .owns_stream(queue.owner_triggers::<ScalingPhase, _, _, _>(
            watcher(deploys, children.clone()).touched_objects(),
        ))
        .owns_stream(queue.owner_triggers::<ScalingPhase, _, _, _>(
            watcher(stss, children.clone()).touched_objects(),
        ))
        .owns_stream(
            queue
                .owner_triggers::<ScalingPhase, _, _, _>(watcher(jobs, children).touched_objects()),
        )
        // A new LoadReport is a new load sample for the ScalingPhase it names.
        .watches_stream(
            queue.mapped_triggers(
                watcher(reports_api, watcher::Config::default()).touched_objects(),
                report_target,
            ),
            |r: LoadReport| report_target(&r),
        )
        // A CRD of an optional integration appeared or went away: every
        // ScalingPhase renders differently now.
        .reconcile_all_on(queue.all_triggers(integrations::changes(integrations)))
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            queue.reconciler(reconcile::reconcile),
            queue.error_policy(reconcile::error_policy),
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "controller event");
            }
        })
        .await;
    info!("controller stopped");
    detector.abort();
    if let Some(e) = &elector {
        metrics.leader.set(0);
        if let Err(err) = e.release().await {
            warn!(%err, "could not release the Lease");
        }
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    Ok(())
}
