//! `ladder-operator run`: the long-running operator process.
//!
//! Sets up logs and optional OTLP tracing ([`ladder_telemetry`]), starts the
//! HTTP endpoints (`/metrics`, `/healthz`, `/readyz`), waits to become leader
//! (unless disabled), starts watching the CRDs of the optional integrations
//! ([`crate::integrations`]), then runs the Controller until SIGTERM or
//! Ctrl-C, finishing in-flight reconciles, releasing the Lease and flushing
//! traces on the way out.
//!
//! Leadership ([`crate::leader`]) is enforced in the client, not only in the
//! control flow: every write goes through a gate that refuses it once the
//! renew deadline has passed. A leader that loses its term stays up as a
//! standby (reconciles are skipped, reads continue) and reconciles everything
//! again when it leads again, so an apiserver outage longer than the deadline
//! costs no process restart.

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
use crate::leader::{Elector, Fence, KubeLeases, Timing, WriteGateLayer};
use crate::metrics::Metrics;
use crate::reconcile::stores::{Scope, Stores};
use crate::reconcile::watches::slim_metadata;
use crate::reconcile::{self, Context};
use ladder_crds::scalingphase::ScalingPhase;

/// How long any request may wait for the apiserver's answer (its own
/// request timeout is 60 s; ours is shorter so a reconcile retries sooner).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Seconds a Lease stays valid without renewal (3 to 3600). The leader
    /// stops writing after two thirds of it without a successful renewal.
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
    /// Without `--namespace`: watch Secrets only in these namespaces
    /// (comma-separated; the chart's `rbac.secretNamespaces`, where the
    /// operator may read Secrets). Everywhere when unset.
    #[arg(long, env = "LADDER_SECRET_NAMESPACES", value_delimiter = ',')]
    pub secret_namespaces: Vec<String>,
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
    let telemetry = ladder_telemetry::init(ladder_telemetry::Options {
        service_name: "ladder-operator",
        service_version: env!("CARGO_PKG_VERSION"),
        log_format: ladder_telemetry::LogFormat::parse(&args.log_format),
        log_target: ladder_telemetry::LogTarget::Stderr,
        default_filter: "info,kube=warn",
        otlp_endpoint: args.otlp_endpoint.as_deref(),
    })?;
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
    let timing = Timing::from_lease_seconds(args.lease_seconds).map_err(anyhow::Error::msg)?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (KUBECONFIG or in-cluster)")?;
    // Each replica names itself, so the apiserver's audit log tells them apart.
    let agent = format!("ladder-operator/{} ({identity})", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent).context("identity is not a valid header value")?,
    ));
    // Count every request to the API server (ladder_api_requests_total,
    // rest_client_requests_total).
    let host = config
        .cluster_url
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default();
    let count = crate::metrics::client::ApiRequestLayer::new(metrics.clone(), &host);
    // Every write of the operator passes the leader fence; the Lease's own
    // client cannot (a candidate writes the Lease before it leads).
    let fence = if args.leader_election {
        Fence::closed()
    } else {
        Fence::open()
    };
    // kube sets no response timeout: a request the apiserver never answers
    // (seen when etcd restarts under it) would hang its reconcile, and so
    // that ScalingPhase, for good. This bounds the wait for the response
    // head only, so watches (whose head comes at once) are unaffected.
    let timeout = tower::timeout::TimeoutLayer::new(REQUEST_TIMEOUT);
    let client = kube::client::ClientBuilder::try_from(config.clone())?
        .with_layer(&count)
        .with_layer(&timeout)
        .with_layer(&WriteGateLayer::new(fence.clone()))
        .build();
    let lease_client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .with_layer(&timeout)
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

    let elector = args.leader_election.then(|| {
        Arc::new(Elector::new(
            KubeLeases::new(lease_client, &args.lease_namespace, &args.lease_name),
            &args.lease_name,
            &identity,
            timing,
            fence.clone(),
        ))
    });
    let (leading_tx, leading) = watch::channel(true);
    let mut keeper = None;
    if let Some(e) = &elector {
        info!(%identity, lease = %args.lease_name, "waiting to become leader");
        ready.store(true, Ordering::Relaxed); // a standby is healthy and ready
        let mut stop = stop_rx.clone();
        let lease = tokio::select! {
            lease = e.acquire() => lease,
            _ = stop.wait_for(|s| *s) => { let _ = http.await; return Ok(()); }
        };
        metrics.leader.set(1);
        info!(%identity, "became leader");
        keeper = Some(tokio::spawn({
            let e = e.clone();
            async move { e.keep(lease, leading_tx).await }
        }));
        let metrics = metrics.clone();
        let mut leading = leading.clone();
        tokio::spawn(async move {
            while leading.changed().await.is_ok() {
                metrics.leader.set(i64::from(*leading.borrow_and_update()));
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
            watcher(reports_api.clone(), watcher::Config::default())
                .modify(slim_metadata::<LoadReport>),
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
            )
            .modify(slim_metadata::<PartialObjectMeta<Pod>>),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(())),
    );
    // The children, cached by label-selected watches: the reconciler reads
    // readiness and presence there, and their deletions wake it.
    let scope = Scope {
        namespace: args.namespace.clone(),
        secret_namespaces: args.secret_namespaces.clone(),
    };
    let (stores, child_triggers) = Stores::watch(&client, &scope);
    if let Err(late) = stores.wait_until_ready(Duration::from_secs(60)).await {
        error!(
            kinds = ?late,
            "cannot list the operator's children of these kinds (see the watch errors above: RBAC?)"
        );
        anyhow::bail!("children of kinds {late:?} could not be listed");
    }
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            metrics.clone(),
            recorder,
            nodes,
            integrations.clone(),
            stores,
        )
        .with_load(reconcile::LoadSources {
            reports,
            pods: app_pods,
        }),
    );

    // ScalingPhases, minus the operator's own status writes (a predicate on
    // what can change a reconcile's outcome). Each trigger passes through
    // `queue`, which models the Controller's queue for workqueue_depth (see
    // crate::metrics::runtime).
    let queue = metrics.runtime.clone();
    queue.set_max_concurrency(args.concurrency);
    let (sp_store, sp_writer) = reflector::store();
    queue.watch_store(sp_store.clone());
    let sp_stream = reflector(
        sp_writer,
        watcher(sps, watcher::Config::default().any_semantic())
            .modify(slim_metadata::<ScalingPhase>),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(reconcile::trigger, Default::default());
    let counted = queue.clone();
    let child_triggers = child_triggers.inspect(move |o: &ObjectRef<ScalingPhase>| {
        counted.triggered(crate::metrics::runtime::Key {
            namespace: o.namespace.clone(),
            name: o.name.clone(),
        });
    });
    ready.store(true, Ordering::Relaxed);
    info!("controller starting");
    Controller::for_stream(queue.triggers(sp_stream), sp_store)
        .reconcile_on(child_triggers)
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
        // Leading again after a lost term: what happened meanwhile was skipped.
        .reconcile_all_on(queue.all_triggers(regained(leading.clone())))
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(args.concurrency)
                .debounce(reconcile::DEBOUNCE),
        )
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            queue.reconciler(move |sp, ctx| {
                // A standby skips; its writes would be refused anyway (the gate).
                let leads = *leading.borrow();
                async move {
                    if leads {
                        reconcile::reconcile(sp, ctx).await
                    } else {
                        Ok(kube::runtime::controller::Action::await_change())
                    }
                }
            }),
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
    if let Some(keeper) = keeper {
        keeper.abort();
    }
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

/// A tick each time `leading` turns true.
fn regained(leading: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(leading, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    })
}
