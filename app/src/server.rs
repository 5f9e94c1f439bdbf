//! Builds the application state from [`ServeArgs`] and runs the HTTP server with its background
//! tasks: click flushing, rules reloading, the cut-over watcher and (optionally) load reporting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cache::{EdgePurger, RedirectCache};
use crate::clicks::{ClickHouse, ClickSink};
use crate::config::{ClickSinkKind, ServeArgs};
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, Rules};
use crate::store::{self, StoreHandle, StoreSpec};
use crate::{AppConfig, AppState};

/// Opens the data tier and every optional service named in `args`. `trace_context`: continue
/// incoming W3C trace context ([`ladder_telemetry::Telemetry::trace_context`]).
pub async fn build_state(args: &ServeArgs, trace_context: bool) -> anyhow::Result<AppState> {
    crate::auth::check_exposure(
        args.listen,
        args.api_key_hash.is_some(),
        args.oidc_config.is_some(),
    )?;
    let forwarded = forwarded_trust(args)?;
    let metrics = Arc::new(Metrics::new(Duration::from_secs(args.load_window_secs)));
    let opened = store::open(&args.store, &args.store_options(), metrics.clone())
        .await
        .with_context(|| format!("opening store {}", args.store.redacted()))?;
    let store = StoreHandle::new(opened);
    let ttl = Duration::from_secs(args.cache_ttl_secs);
    let ca = args
        .tls_ca
        .as_deref()
        .map(crate::tls::read_pem)
        .transpose()
        .context("--tls-ca")?;
    let cache = match &args.redis_url {
        Some(url) => RedirectCache::redis(
            url,
            args.redis_password.as_deref(),
            ca.clone(),
            &args.redis_prefix,
            ttl,
            Duration::from_millis(args.near_cache_ttl_ms),
        )
        .context("redis url")?,
        None => RedirectCache::local(ttl),
    };
    let rules = match &args.rules_file {
        Some(p) => Limiter::load_file(p).with_context(|| format!("rules file {}", p.display()))?,
        None => Rules::default(),
    };
    let limiter = Arc::new(Limiter::new(
        rules,
        cache.redis_conn().map(|c| (c, args.redis_prefix.clone())),
    ));
    if let Some(p) = &args.rules_file {
        limiter.watch(
            p.clone(),
            args.poll_interval().max(Duration::from_millis(200)),
            metrics.clone(),
        );
    }
    let flush = Duration::from_millis(args.click_flush_ms.max(10));
    let kind = match args.clicks {
        ClickSinkKind::Auto if args.phase >= 3 && args.clickhouse_url.is_some() => {
            ClickSinkKind::Clickhouse
        }
        ClickSinkKind::Auto => ClickSinkKind::Db,
        k => k,
    };
    let clicks = match kind {
        ClickSinkKind::Off => ClickSink::Off,
        ClickSinkKind::Clickhouse => {
            let url = args
                .clickhouse_url
                .as_deref()
                .context("--clicks clickhouse needs --clickhouse-url")?;
            let ch = ClickHouse::new_with(
                url,
                &args.clickhouse_database,
                args.clickhouse_password.as_deref(),
                ca.as_deref(),
            )?;
            if let Err(err) = ch.ensure_schema().await {
                // Not fatal: clicks buffer until ClickHouse is back.
                tracing::warn!(error = %format!("{err:#}"), "ClickHouse not ready at startup");
            }
            ClickSink::clickhouse(ch, metrics.clone(), flush, args.click_buffer)
        }
        _ => ClickSink::db(store.clone(), metrics.clone(), flush, args.click_buffer),
    };
    let purger = args
        .varnish_url
        .as_deref()
        .map(EdgePurger::new)
        .transpose()?;
    let instance = args
        .instance
        .clone()
        .unwrap_or_else(|| format!("ladder-app-{}", std::process::id()));
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", args.listen));
    let auth = match &args.oidc_config {
        Some(path) => {
            let auth = Arc::new(crate::auth::Auth::load(path, ca.as_deref())?);
            // Not fatal: keys are fetched again on the first token if the issuer is down now.
            let a = auth.clone();
            tokio::spawn(async move {
                if let Err(err) = a.refresh().await {
                    tracing::warn!(error = %format!("{err:#}"), "OIDC keys not available yet");
                }
            });
            Some(auth)
        }
        None => None,
    };
    let state = AppState::new(
        store,
        cache,
        clicks,
        limiter,
        purger,
        metrics,
        AppConfig {
            phase: args.phase,
            redirect_max_age_secs: args.redirect_max_age_secs,
            cache_control: axum::http::HeaderValue::from_str(&format!(
                "public, max-age={}",
                args.redirect_max_age_secs
            ))?,
            public_url,
            forwarded,
            instance,
            auth,
            api_key: args.api_key_hash.clone(),
            request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
            max_in_flight: args.max_in_flight.max(1),
            trace_context,
        },
    );
    watch_cutover(&state, args);
    watch_health(&state, args);
    Ok(state)
}

/// Which peers may name the client (see `crate::client`). The edge is recognised by its client
/// certificate, so naming it without HTTPS and a CA to verify it against is refused.
fn forwarded_trust(args: &ServeArgs) -> anyhow::Result<crate::client::ForwardedTrust> {
    if std::env::var_os("LADDER_TRUST_FORWARDED_FOR").is_some() {
        tracing::warn!(
            "LADDER_TRUST_FORWARDED_FOR is no longer read: X-Forwarded-For is believed only from \
             the edge's certificate (--edge-client-name) or --trusted-proxies"
        );
    }
    if let Some(name) = &args.edge_client_name {
        anyhow::ensure!(
            !name.is_empty(),
            "--edge-client-name (LADDER_EDGE_CLIENT_NAME) is empty"
        );
        anyhow::ensure!(
            args.tls_cert.is_some() && args.tls_ca.is_some(),
            "--edge-client-name (LADDER_EDGE_CLIENT_NAME) needs --tls-cert/--tls-key and \
             --tls-ca: the edge is recognised by a client certificate that CA signed"
        );
    }
    if !args.trusted_proxies.is_empty() {
        let list: Vec<String> = args
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        tracing::info!(proxies = %list.join(","), "X-Forwarded-For is believed from these networks");
    }
    Ok(crate::client::ForwardedTrust {
        edge_client_name: args.edge_client_name.clone(),
        proxies: args.trusted_proxies.clone(),
    })
}

/// Probes the data tier and the cache in the background, so `ladder_store_up`,
/// `ladder_degraded` and `/load` follow an outage even when nobody calls `/readyz`.
fn watch_health(state: &AppState, args: &ServeArgs) {
    let weak = Arc::downgrade(&state.0);
    let every = args.poll_interval().max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let was_up = inner.metrics.store_up.get() == 1;
            let health = crate::api::probe(&AppState(inner)).await;
            if was_up != health.store {
                tracing::warn!(
                    status = health.status(),
                    "data tier {}",
                    if health.store {
                        "back"
                    } else {
                        "not answering"
                    }
                );
            }
        }
    });
}

/// How long one read of the cut-over pointer may take.
const CONTROL_DEADLINE: Duration = Duration::from_secs(5);
/// How long the clicks of the last flush interval may take to flush on SIGTERM (the kubelet's
/// default grace period is 30 s).
const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(15);

/// Follows the cut-over pointer of the current tier (see `crate::migrate`): when a migration has
/// fenced this tier and named its successor, open the successor and switch to it. Until the
/// switch, writes answer 503 + Retry-After (fenced), reads keep working.
fn watch_cutover(state: &AppState, args: &ServeArgs) {
    let weak = Arc::downgrade(&state.0);
    let (opts, every) = (args.store_options(), args.poll_interval());
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let current = inner.store.get();
            // Bounded: a database that never answers must not stall the watcher for good.
            let Ok(Ok(control)) = tokio::time::timeout(CONTROL_DEADLINE, current.control()).await
            else {
                continue;
            };
            let Some(next) = control.moved_to else {
                continue;
            };
            let spec: StoreSpec = match next.parse() {
                Ok(s) => s,
                Err(err) => {
                    tracing::error!(error = %err, "cut-over pointer is not a valid store spec");
                    continue;
                }
            };
            match store::open(&spec, &opts, metrics.clone()).await {
                Ok(new) => {
                    // Skip a pointer back to ourselves (e.g. a reverse migration that is done).
                    if new.tier_id() == current.tier_id() && new.tier() == current.tier() {
                        continue;
                    }
                    tracing::info!(to = %spec.redacted(), "cut over to the new tier");
                    inner.store.set(new);
                }
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), to = %spec.redacted(), "cannot open the new tier yet")
                }
            }
        }
    });
}

/// A running server (tests start several in one process).
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    tls: bool,
    task: JoinHandle<()>,
}

impl Running {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting and aborts the server task.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `args.listen` (port 0 picks a free one) and serves in the background.
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    // No telemetry is installed here (the binary's `serve` has it): no trace context to read.
    let state = build_state(args, false).await?;
    if args.report_load {
        crate::report::spawn(state.clone(), args);
    }
    let listener = Listener::bind(args, state.metrics.clone()).await?;
    let (addr, tls) = (listener.local_addr()?, listener.is_tls());
    let router = crate::app(state.clone());
    let task = tokio::spawn(async move {
        if let Err(err) = listener.serve(router, std::future::pending()).await {
            tracing::error!(error = %err, "server stopped");
        }
    });
    Ok(Running {
        addr,
        state,
        tls,
        task,
    })
}

/// `ladder-app serve`: runs until SIGINT/SIGTERM. `trace_context` as in [`build_state`].
pub async fn serve(args: ServeArgs, trace_context: bool) -> anyhow::Result<()> {
    let state = build_state(&args, trace_context).await?;
    if args.report_load {
        crate::report::spawn(state.clone(), &args);
    }
    let listener = Listener::bind(&args, state.metrics.clone()).await?;
    tracing::info!(addr = %listener.local_addr()?, tls = listener.is_tls(), store = %args.store.redacted(), phase = args.phase, "serving");
    listener
        .serve(crate::app(state.clone()), shutdown_signal())
        .await?;
    // Every request has been answered: what they recorded is all there is to flush.
    match tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, state.clicks.flush()).await {
        Ok(Ok(())) => tracing::info!("clicks flushed"),
        Ok(Err(err)) => tracing::error!(error = %format!("{err:#}"), "clicks lost at shutdown"),
        Err(_) => tracing::error!("clicks lost at shutdown: the flush did not finish in time"),
    }
    Ok(())
}

/// Plain TCP, or TLS when `--tls-cert` and `--tls-key` are given.
enum Listener {
    Plain(TcpListener),
    Tls(crate::tls::TlsListener),
}

impl Listener {
    async fn bind(args: &ServeArgs, metrics: Arc<Metrics>) -> anyhow::Result<Listener> {
        // Read the certificate before binding: a bad one fails the start, not the first client.
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config_reloading(
                cert,
                key,
                Duration::from_millis(args.tls_reload_ms.max(100)),
                Some(metrics),
                // Client certificates matter only to recognise the edge.
                args.tls_ca
                    .as_deref()
                    .filter(|_| args.edge_client_name.is_some()),
            )?),
            _ => None,
        };
        let tcp = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        Ok(match tls {
            Some(config) => Listener::Tls(crate::tls::TlsListener::new(tcp, config)?),
            None => Listener::Plain(tcp),
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listener::Plain(l) => l.local_addr(),
            Listener::Tls(l) => axum::serve::Listener::local_addr(l),
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Listener::Tls(_))
    }

    async fn serve(
        self,
        router: axum::Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // `ConnectInfo<Peer>`: the peer address and, over TLS, its client certificate's name.
        let svc = router.into_make_service_with_connect_info::<crate::client::Peer>();
        match self {
            Listener::Plain(l) => axum::serve(l, svc).with_graceful_shutdown(shutdown).await,
            Listener::Tls(l) => axum::serve(l, svc).with_graceful_shutdown(shutdown).await,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

/// Entry point of the binary: parses the command line and dispatches.
pub async fn main_entry() -> anyhow::Result<std::process::ExitCode> {
    use clap::Parser;
    let cli = crate::config::Cli::parse();
    // Before any reqwest client: the OTLP exporter's included.
    crate::tls::install_crypto_provider();
    // Trace export is configured like any OpenTelemetry SDK's, from the standard variables the
    // operator renders (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG))
    // and the user adds in `spec.app.env` (OTEL_EXPORTER_OTLP_ENDPOINT): see `ladder_telemetry`.
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV).ok();
    let telemetry = ladder_telemetry::init(ladder_telemetry::Options {
        service_name: "ladder-app",
        service_version: env!("CARGO_PKG_VERSION"),
        log_format: ladder_telemetry::LogFormat::JsonNested,
        log_target: ladder_telemetry::LogTarget::Stdout,
        default_filter: "info,sqlx=warn",
        otlp_endpoint: endpoint.as_deref(),
    })?;
    if telemetry.exporting() {
        tracing::info!(
            endpoint,
            continue_incoming_trace_context = telemetry.trace_context(),
            "exporting traces over OTLP/HTTP"
        );
    }
    let result = match cli.command {
        crate::config::Command::Serve(args) => serve(*args, telemetry.trace_context())
            .await
            .map(|()| std::process::ExitCode::SUCCESS),
        crate::config::Command::Migrate(args) => crate::migrate::run(args).await,
        crate::config::Command::Sweep(args) => crate::migrate::run_sweep(args).await,
    };
    // The spans still buffered; the exporter blocks while it sends them.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}

/// The base URL traces are exported to (OTLP/HTTP, `<URL>/v1/traces`); no export when unset.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
