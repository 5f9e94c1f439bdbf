//! Command line and environment configuration. Every flag also reads a `LADDER_*` variable, which
//! is how the operator configures the app. With no configuration at all, `ladder-app serve` runs
//! phase 0: SQLite in `./ladder.db`, an in-process cache, listening on 127.0.0.1:8080.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use ladder_crds::contract::env;

use crate::store::{StoreOptions, StoreSpec};

#[derive(Debug, Parser)]
#[command(
    name = "ladder-app",
    version,
    about = "Ladder's companion link shortener"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Copy links and clicks from one tier to another, verify, and cut over.
    Migrate(crate::migrate::MigrateArgs),
    /// Remove rows a shard holds but no longer owns (after a resharding), once their owner
    /// holds them.
    Sweep(crate::migrate::SweepArgs),
}

/// Where click events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClickSinkKind {
    /// The primary database up to phase 2, ClickHouse from phase 3 when a URL is set.
    Auto,
    Db,
    Clickhouse,
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The data tier: sqlite:PATH | postgres:URL | pgbouncer:URL | replicas:PRIMARY,REPLICA,.. |
    /// shards:MAP.json | dsql:URL.
    #[arg(long, env = env::STORE, default_value = "sqlite:ladder.db")]
    pub store: StoreSpec,

    /// Password for every PostgreSQL URL that carries none (the operator passes it from a
    /// Secret, so URLs in specs and ConfigMaps never hold it).
    #[arg(long, env = env::DB_PASSWORD, hide_env_values = true)]
    pub db_password: Option<String>,

    /// The ScalingPhase's phase this instance serves (0-4): picks defaults and is reported.
    #[arg(long, env = env::PHASE, default_value_t = 0)]
    pub phase: u8,

    /// Database connections per pool.
    #[arg(long, env = "LADDER_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// How long a request waits for a database connection before answering 503.
    #[arg(long, env = "LADDER_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,

    /// PostgreSQL `statement_timeout` of the app's sessions (0: none): the server cancels a
    /// query that runs longer. Through PgBouncer (transaction pooling) startup parameters do
    /// not reach the server: PgBouncer's own `query_timeout` takes this role there.
    #[arg(long, env = "LADDER_DB_STATEMENT_TIMEOUT_MS", default_value_t = 3000)]
    pub db_statement_timeout_ms: u64,

    /// Longest a request may take, database waits included, before it is answered 503 (the
    /// answer for a database that accepts connections but never replies).
    #[arg(long, env = "LADDER_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,

    /// Requests served at once on the link API and redirects; beyond it requests are refused
    /// at once with 503 (load shedding), so a slow database cannot pile up work.
    /// Operational endpoints (probes, metrics) are not counted.
    #[arg(long, env = "LADDER_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Replicas lagging further than this many WAL bytes leave read rotation.
    #[arg(long, env = "LADDER_MAX_REPLICA_LAG_BYTES", default_value_t = 1024 * 1024)]
    pub max_replica_lag_bytes: u64,

    /// How often replica health, shard maps, rules files and the cut-over pointer are polled.
    #[arg(long, env = "LADDER_POLL_INTERVAL_MS", default_value_t = 250)]
    pub poll_interval_ms: u64,

    /// Redis for the shared redirect cache and rate limits (phase >= 1). Without it: in-process.
    #[arg(long, env = env::REDIS_URL)]
    pub redis_url: Option<String>,

    /// Password for a Redis URL that carries none.
    #[arg(long, env = env::REDIS_PASSWORD, hide_env_values = true)]
    pub redis_password: Option<String>,

    /// Prefix of every Redis key (isolates tenants and tests).
    #[arg(long, env = "LADDER_REDIS_PREFIX", default_value = "ladder:")]
    pub redis_prefix: String,

    /// Lifetime of the per-instance near cache in front of Redis (0: off). Entries are dropped
    /// on every invalidation (Redis pub/sub), and the near cache is off while that is down.
    #[arg(long, env = "LADDER_NEAR_CACHE_TTL_MS", default_value_t = 1000)]
    pub near_cache_ttl_ms: u64,

    /// Redirect cache entry lifetime.
    #[arg(long, env = "LADDER_CACHE_TTL_SECS", default_value_t = 300)]
    pub cache_ttl_secs: u64,

    /// Where clicks go.
    #[arg(long, env = "LADDER_CLICKS", value_enum, default_value_t = ClickSinkKind::Auto)]
    pub clicks: ClickSinkKind,

    /// ClickHouse HTTP interface (phase >= 3).
    #[arg(long, env = env::CLICKHOUSE_URL)]
    pub clickhouse_url: Option<String>,

    /// Password for a ClickHouse URL that carries none.
    #[arg(long, env = env::CLICKHOUSE_PASSWORD, hide_env_values = true)]
    pub clickhouse_password: Option<String>,

    /// ClickHouse database holding the `clicks` table.
    #[arg(long, env = "LADDER_CLICKHOUSE_DATABASE", default_value = "ladder")]
    pub clickhouse_database: String,

    /// Clicks buffered in memory while the sink is slow or down; beyond this they are dropped
    /// (and counted in ladder_clicks_total{outcome="dropped"}).
    #[arg(long, env = "LADDER_CLICK_BUFFER", default_value_t = 100_000)]
    pub click_buffer: usize,

    /// How often buffered clicks are flushed.
    #[arg(long, env = "LADDER_CLICK_FLUSH_MS", default_value_t = 1000)]
    pub click_flush_ms: u64,

    /// Edge cache (Varnish) base URLs to PURGE on update/delete, comma-separated (one per
    /// edge instance: a purge must reach every cache).
    #[arg(long, env = env::VARNISH_URL)]
    pub varnish_url: Option<String>,

    /// Cache-Control max-age of redirects (what the CDN may cache).
    #[arg(long, env = "LADDER_REDIRECT_MAX_AGE_SECS", default_value_t = 60)]
    pub redirect_max_age_secs: u64,

    /// Public base URL used in `shortUrl` responses.
    #[arg(long, env = "LADDER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// JSON file with rate-limit and WAF rules, re-read when it changes (see docs/operations.md).
    #[arg(long, env = env::RULES_FILE)]
    pub rules_file: Option<PathBuf>,

    /// Subject common name of the edge's client certificate: connections that present it
    /// (signed by `--tls-ca`) may name the client in `X-Forwarded-For`. Needs HTTPS
    /// (`--tls-cert`, `--tls-key`) and `--tls-ca`. See docs/edge.md.
    #[arg(long, env = env::EDGE_CLIENT_NAME)]
    pub edge_client_name: Option<String>,

    /// Networks (CIDRs, comma-separated) of the proxies in front of the app, such as the
    /// ingress controller's pods: from a peer in one of them the last `X-Forwarded-For`
    /// address is the client. See docs/edge.md.
    #[arg(long, env = env::TRUSTED_PROXIES, value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::client::IpNet>,

    /// Length of the sliding load window.
    #[arg(long, env = "LADDER_LOAD_WINDOW_SECS", default_value_t = 60)]
    pub load_window_secs: u64,

    /// Write a LoadReport object to Kubernetes (needs a kubeconfig or in-cluster credentials).
    #[arg(long, env = env::REPORT_LOAD)]
    pub report_load: bool,

    /// Kubeconfig for LoadReports (default: KUBECONFIG's usual lookup, then in-cluster).
    #[arg(long, env = "LADDER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// How often the LoadReport is written.
    #[arg(long, env = "LADDER_REPORT_INTERVAL_SECS", default_value_t = 15)]
    pub report_interval_secs: u64,

    /// The ScalingPhase this instance serves (named in its LoadReport).
    #[arg(long, env = env::SCALING_PHASE, default_value = "ladder")]
    pub scaling_phase: String,

    /// Namespace of the LoadReport (the Pod's namespace in a cluster).
    #[arg(long, env = env::NAMESPACE, default_value = "default")]
    pub namespace: String,

    /// This instance's name (the Pod name in a cluster): names the LoadReport and finds its owner.
    #[arg(long, env = env::POD_NAME)]
    pub instance: Option<String>,

    /// OIDC settings (JSON, `ladder_crds::contract::OidcConfig`): bearer tokens of that
    /// issuer are required on the management API.
    #[arg(long, env = env::OIDC_CONFIG)]
    pub oidc_config: Option<PathBuf>,

    /// `sha256:<lowercase hex of SHA-256(key)>`: the management API then requires
    /// `Authorization: Bearer <key>` (every phase; with OIDC too, either is accepted). Without
    /// it or OIDC, the app refuses to listen on a non-loopback address.
    #[arg(long, env = env::API_KEY_HASH, hide_env_values = true)]
    pub api_key_hash: Option<crate::auth::ApiKeyHash>,

    /// CA certificate (PEM) trusted for Redis and ClickHouse TLS (PostgreSQL URLs name theirs
    /// with `sslrootcert`).
    #[arg(long, env = env::TLS_CA)]
    pub tls_ca: Option<PathBuf>,

    /// Serving certificate chain (PEM): with `--tls-key`, the app serves HTTPS.
    #[arg(long, env = env::TLS_CERT, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Serving private key (PEM).
    #[arg(long, env = env::TLS_KEY, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How often the serving certificate's files are checked for a renewal.
    #[arg(long, env = "LADDER_TLS_RELOAD_MS", default_value_t = 10_000)]
    pub tls_reload_ms: u64,
}

impl ServeArgs {
    /// The defaults of `ladder-app serve` with no flags (tests start from this).
    pub fn defaults() -> ServeArgs {
        match Cli::try_parse_from(["ladder-app", "serve"]) {
            Ok(Cli {
                command: Command::Serve(args),
            }) => *args,
            _ => unreachable!("`serve` with no flags always parses"),
        }
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.db_max_connections,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            statement_timeout: (self.db_statement_timeout_ms > 0)
                .then(|| Duration::from_millis(self.db_statement_timeout_ms)),
            max_replica_lag_bytes: self.max_replica_lag_bytes,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            password: self.db_password.clone(),
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_is_phase_zero_on_loopback() {
        // The environment configures the app too (`LADDER_*`); `.ladder/services.env` sets some
        // of the same names, so only check what the environment leaves at its default.
        let unset = |v: &str| std::env::var(v).is_err();
        let a = ServeArgs::defaults();
        if unset("LADDER_LISTEN") {
            assert!(a.listen.ip().is_loopback());
        }
        if unset("LADDER_STORE") {
            assert!(matches!(a.store, StoreSpec::Sqlite { .. }));
        }
        if unset("LADDER_REDIS_URL") {
            assert!(a.redis_url.is_none(), "no Redis unless configured");
        }
        if unset("LADDER_PHASE") {
            assert_eq!(a.phase, 0);
        }
    }
}
