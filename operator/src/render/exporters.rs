//! Prometheus metrics of the data tiers, so the dashboards have data: the
//! standard exporters run as sidecars beside PostgreSQL (postgres_exporter),
//! PgBouncer (pgbouncer_exporter) and Redis (redis_exporter), and
//! ClickHouse's built-in endpoint is switched on (`config::clickhouse_config`).
//!
//! A final pass over what the tiers rendered ([`add`], run by
//! [`super::render`] before the integrations pass): it finds the workloads by
//! their `ladder.dev/tier` label and adds, to each, the sidecar (with the
//! tier's credentials from its Secret), a `metrics` port on the Service named
//! like the workload, and the `prometheus.io/*` pod annotations, which the
//! ServiceMonitor pass turns into ServiceMonitors when the Prometheus
//! Operator is installed ([`scrape_targets`]). The tier modules stay as they
//! are. The NetworkPolicies let the monitoring namespaces
//! (`ladder.dev/monitoring=true`) reach [`metrics_port`].
//!
//! Each exporter talks to its server over loopback inside the pod, over TLS
//! (the servers accept nothing else); the server certificates name the
//! Services, not `127.0.0.1`, so the exporters check encryption but not the
//! host name (`sslmode=require`, redis_exporter's skip-verification). Their
//! metrics are served in plain HTTP, like the app's in phase 0.
//!
//! Exporters have no readiness probe on purpose: readiness is per pod, and a
//! failing exporter must never take a database out of its Service.
//!
//! Proved by running them: `operator/tests/rendered_config_runs.rs` starts
//! the catalogue's versions of the programs (built from the image tags by
//! `hack/build-exporters.sh`) with exactly these args and env beside
//! Debian's servers running the rendered config, and scrapes them where the
//! annotations point: each reports its server up, what only a connected
//! exporter sees, and the catalogue's version; every data-tier metric of
//! the dashboard and the alert rules is among what they export. Not
//! pgbouncer_exporter: the Go module proxy serves no version of it on our
//! machines, so its queries run by psql over the connection string rendered
//! here instead. ClickHouse's endpoint is not run (Debian's ClickHouse is
//! too old for the rendered config).
//!
//! Not covered: Varnish has no Prometheus endpoint of its own, and its
//! exporter reads varnishd's shared memory through `varnishstat`, which is
//! in the Varnish image, not the exporter's; the exporter
//! (jonnenauha/prometheus_varnish_exporter) is not served by the Go module
//! proxy either, so it could not be built or run against the rendered edge.
//! The edge tier is not scraped yet.

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::build::Port;
use super::pod::{ContainerSpec, env, env_secret};
use super::{Desired, TIER_LABEL, child_name};
use crate::validate::{Size, Validated};
use ladder_crds::catalogue::images;

/// Name of the metrics port on the pods and their Services.
pub(super) const PORT_NAME: &str = "metrics";
/// Path every exporter serves.
pub(super) const PATH: &str = "/metrics";

const POSTGRES: Port = Port::new(PORT_NAME, 9187);
const PGBOUNCER: Port = Port::new(PORT_NAME, 9127);
const REDIS: Port = Port::new(PORT_NAME, 9121);
/// ClickHouse's own `<prometheus>` endpoint (see `config::clickhouse_config`).
pub(super) const CLICKHOUSE_PORT: i32 = 9363;

/// The metrics port of a tier's pods, if the tier is scraped through one of
/// the exporters here (the NetworkPolicies open it to monitoring).
pub(super) fn metrics_port(tier: &str) -> Option<i32> {
    match tier {
        "postgres" => Some(POSTGRES.number),
        "pgbouncer" => Some(PGBOUNCER.number),
        "redis" => Some(REDIS.number),
        "clickhouse" => Some(CLICKHOUSE_PORT),
        _ => None,
    }
}

/// A sidecar's size: exporters are small, one fixed size.
fn sidecar_size() -> Size {
    Size {
        cpu: "50m".into(),
        memory: "64Mi".into(),
    }
}

/// The exporter container of a tier, if it needs one (ClickHouse does not).
fn sidecar(v: &Validated, tier: &str) -> Option<Container> {
    let size = sidecar_size();
    let listen = |port: i32| format!("--web.listen-address=:{port}");
    let pg_credentials = child_name(v, "postgres-credentials");
    Some(match tier {
        "postgres" => ContainerSpec::new("postgres-exporter", images::POSTGRES_EXPORTER, &size)
            .args(vec![listen(POSTGRES.number)])
            .env(vec![
                env(
                    "DATA_SOURCE_URI",
                    "127.0.0.1:5432/ladder?sslmode=require",
                ),
                env("DATA_SOURCE_USER", "ladder"),
                env_secret("DATA_SOURCE_PASS", &pg_credentials, "password"),
            ])
            .ports(&[POSTGRES])
            .build(),
        // The admin console (database `pgbouncer`); `ladder` is in stats_users.
        // Kubernetes expands $(PGBOUNCER_PASSWORD) from the variable above it.
        "pgbouncer" => {
            ContainerSpec::new("pgbouncer-exporter", images::PGBOUNCER_EXPORTER, &size)
                .args(vec![
                    listen(PGBOUNCER.number),
                    "--pgBouncer.connectionString=postgres://ladder:$(PGBOUNCER_PASSWORD)@127.0.0.1:6432/pgbouncer?sslmode=require".into(),
                ])
                .env(vec![env_secret(
                    "PGBOUNCER_PASSWORD",
                    &pg_credentials,
                    "password",
                )])
                .ports(&[PGBOUNCER])
                .build()
        }
        "redis" => ContainerSpec::new("redis-exporter", images::REDIS_EXPORTER, &size)
            .env(vec![
                env("REDIS_ADDR", "rediss://127.0.0.1:6379"),
                env_secret(
                    "REDIS_PASSWORD",
                    &child_name(v, "redis-credentials"),
                    "password",
                ),
                env("REDIS_EXPORTER_SKIP_TLS_VERIFICATION", "true"),
                env(
                    "REDIS_EXPORTER_WEB_LISTEN_ADDRESS",
                    format!(":{}", REDIS.number),
                ),
            ])
            .ports(&[REDIS])
            .build(),
        _ => return None,
    })
}

fn tier_of(labels: Option<&std::collections::BTreeMap<String, String>>) -> Option<String> {
    labels?.get(TIER_LABEL).cloned()
}

/// Adds the sidecar (if any), the scrape annotations and the Service port of
/// one workload of `tier`.
fn instrument(
    v: &Validated,
    tier: &str,
    name: &str,
    template: &mut PodTemplateSpec,
    services: &mut [Service],
) {
    let Some(port) = metrics_port(tier) else {
        return;
    };
    if let Some(c) = sidecar(v, tier)
        && let Some(spec) = template.spec.as_mut()
    {
        spec.containers.push(c);
    }
    let annotations = template
        .metadata
        .get_or_insert_default()
        .annotations
        .get_or_insert_default();
    annotations.insert("prometheus.io/scrape".into(), "true".into());
    annotations.insert("prometheus.io/port".into(), port.to_string());
    annotations.insert("prometheus.io/path".into(), PATH.into());
    if let Some(spec) = services
        .iter_mut()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.spec.as_mut())
    {
        spec.ports.get_or_insert_default().push(ServicePort {
            name: Some(PORT_NAME.into()),
            port,
            target_port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        });
    }
}

/// Instruments every data-tier workload `d` holds (see the module docs).
pub(super) fn add(v: &Validated, d: &mut Desired) {
    let Desired {
        stateful_sets,
        deployments,
        services,
        ..
    } = d;
    for sts in stateful_sets.iter_mut() {
        let (Some(tier), Some(name)) = (
            tier_of(sts.metadata.labels.as_ref()),
            sts.metadata.name.clone(),
        ) else {
            continue;
        };
        instrument(v, &tier, &name, &mut sts.spec.template, services);
    }
    for dep in deployments.iter_mut() {
        let (Some(tier), Some(name)) = (
            tier_of(dep.metadata.labels.as_ref()),
            dep.metadata.name.clone(),
        ) else {
            continue;
        };
        instrument(v, &tier, &name, &mut dep.spec.template, services);
    }
}

/// The Services whose `metrics` port a ServiceMonitor scrapes: the ones
/// [`add`] gave one.
pub(super) fn scrape_targets(d: &Desired) -> Vec<String> {
    d.services
        .iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|p| p.iter().any(|p| p.name.as_deref() == Some(PORT_NAME)))
        })
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}
