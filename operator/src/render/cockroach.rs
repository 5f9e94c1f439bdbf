//! CockroachDB (phase 4): one StatefulSet per region, pinned there, joined
//! into one cluster by node certificates (a server certificate `node.crt`
//! and, for the connections a node opens to the others, a client
//! certificate `client.node.crt`: CockroachDB's split node certificates); a
//! one-shot Job initialises the cluster and creates the app's SQL user and
//! database; the app authenticates with a client certificate (no password).

use k8s_openapi::api::batch::v1::{Job, JobSpec};

use super::app::Wiring;
use super::build::{
    Addressing, Owner, Port, StatefulWorkload, expect, pdb, push_stateful_set, tier_selector,
    tier_service,
};
use super::pod::{
    ContainerSpec, Placement, PodTemplate, env, env_field, http_probe, mount, secret_volume,
    secrets_volume,
};
use super::{Desired, child_name, meta, short_hash, tls};
use crate::validate::{DataComponent, Size, Validated};

const TIER: &str = "cockroach";
const GRPC: Port = Port::new("grpc", 26257);
const HTTP: Port = Port::new("http", 8080);
const CERTS_DIR: &str = "/cockroach/certs";
/// The app's SQL user (its client certificate's common name) and database.
const APP_USER: &str = "ladder";
const APP_DATABASE: &str = "ladder";

/// Builds the CockroachDB tier and wires the app to it (its store URL and
/// client certificate).
pub(super) fn build(
    v: &Validated,
    crdb: &DataComponent,
    service_account: &str,
    d: &mut Desired,
    wiring: &mut Wiring,
) {
    let headless = child_name(v, "cockroach");
    let public = child_name(v, "cockroach-public");
    // Pods by their stable names are covered (`*.<headless>.<ns>.svc`).
    let hosts = [headless.clone(), public.clone()];
    let node_tls = tls::server_with(v, d, TIER, "node", &hosts);
    // Client certificates: `node` for the nodes' connections to each other,
    // `root` for the init Job, `ladder` for the app.
    let node_client = tls::client(v, d, TIER, "node");
    let root_client = tls::client(v, d, TIER, "root");
    let app_client = tls::client(v, d, TIER, APP_USER);
    let region_set = |r: &str| child_name(v, &format!("crdb-{r}"));
    let mut join = Vec::new();
    for r in &v.regions {
        let sts = region_set(r);
        for i in 0..crdb.replicas.min(3) {
            join.push(format!(
                "{sts}-{i}.{headless}.{}.svc:{}",
                v.namespace, GRPC.number
            ));
        }
    }
    let nodes = Nodes {
        crdb,
        service_account,
        headless: &headless,
        join: join.join(","),
        certificates: &node_tls,
        client_certificates: &node_client,
    };
    for region in &v.regions {
        nodes.build(v, d, region, region_set(region));
    }
    let ports = [GRPC, HTTP];
    d.services.push(tier_service(
        v,
        &headless,
        TIER,
        &ports,
        Addressing::Headless,
    ));
    d.services.push(tier_service(
        v,
        &public,
        TIER,
        &ports,
        Addressing::ClusterIp,
    ));
    d.pod_disruption_budgets
        .push(pdb(v, &headless, TIER, tier_selector(v, TIER)));
    let first = v
        .regions
        .first()
        .map(|r| {
            format!(
                "{}-0.{headless}.{}.svc:{}",
                region_set(r),
                v.namespace,
                GRPC.number
            )
        })
        .unwrap_or_default();
    init_job(v, crdb, service_account, &first, &root_client, d);

    wiring.mount(
        secret_volume("crdb-client", &app_client, None),
        "/etc/ladder/crdb",
        false,
    );
    // The app authenticates with its client certificate: no password.
    wiring.store = Some(format!(
        "dsql:postgresql://{APP_USER}@{}:{}/{APP_DATABASE}?sslmode=verify-full&sslrootcert=/etc/ladder/crdb/ca.crt\
         &sslcert=/etc/ladder/crdb/tls.crt&sslkey=/etc/ladder/crdb/tls.key",
        tls::host(v, &public),
        GRPC.number
    ));
    wiring.allow("app", TIER, &[GRPC.number]);
    wiring.allow(TIER, TIER, &[GRPC.number, HTTP.number]);
}

/// What the nodes of every region share.
struct Nodes<'a> {
    crdb: &'a DataComponent,
    service_account: &'a str,
    headless: &'a str,
    /// `--join` addresses: the first three nodes of each region.
    join: String,
    /// The node (server) certificate's Secret.
    certificates: &'a str,
    /// The node's client certificate's Secret (CN `node`).
    client_certificates: &'a str,
}

impl Nodes<'_> {
    /// The StatefulSet `sts` of one region's nodes.
    fn build(&self, v: &Validated, d: &mut Desired, region: &str, sts: String) {
        // Label values stop at 63 characters; region names may be that long.
        let component = format!("crdb-{region}");
        let component = if component.len() <= 63 {
            component
        } else {
            format!("crdb-{}", short_hash(region.as_bytes()))
        };
        let owner = Owner::component(TIER, component);
        let crdb = self.crdb;
        let container = ContainerSpec::new("cockroach", &crdb.image, &crdb.size)
            .command(&["/cockroach/cockroach"])
            .args(vec![
                "start".into(),
                format!("--certs-dir={CERTS_DIR}"),
                format!("--join={}", self.join),
                format!("--locality=region={region}"),
                format!(
                    "--advertise-host=$(POD_NAME).{}.{}.svc",
                    self.headless, v.namespace
                ),
                format!("--listen-addr=:{}", GRPC.number),
                format!("--http-addr=:{}", HTTP.number),
                "--cache=.25".into(),
                "--max-sql-memory=.25".into(),
                "--store=/cockroach/cockroach-data".into(),
            ])
            .env(vec![
                env_field("POD_NAME", "metadata.name"),
                env("COCKROACH_SKIP_KEY_PERMISSION_CHECK", "true"),
            ])
            .ports(&[GRPC, HTTP])
            .mounts(vec![
                mount("certs", CERTS_DIR, true),
                mount("data", "/cockroach/cockroach-data", false),
            ])
            .probe(http_probe("/health?ready=1", HTTP.number, true))
            .build();
        let server: &[(&str, &str)] = &[
            ("ca.crt", "ca.crt"),
            ("tls.crt", "node.crt"),
            ("tls.key", "node.key"),
        ];
        let client: &[(&str, &str)] = &[
            ("tls.crt", "client.node.crt"),
            ("tls.key", "client.node.key"),
        ];
        let mut template = PodTemplate::new(&owner, self.service_account, 1000)
            .containers(vec![container])
            .volumes(vec![secrets_volume(
                "certs",
                &[
                    (self.certificates, server),
                    (self.client_certificates, client),
                ],
            )])
            .metrics(HTTP.number, "/_status/vars")
            .placement(Placement::Region(region.into()))
            .build(v);
        if let Some(m) = template.metadata.as_mut() {
            m.labels
                .get_or_insert_default()
                .insert("ladder.dev/region".into(), region.into());
        }
        push_stateful_set(
            v,
            d,
            StatefulWorkload {
                name: sts,
                owner,
                replicas: crdb.replicas,
                service_name: self.headless.into(),
                template,
                data: Some(crdb),
            },
        );
    }
}

/// One-shot cluster initialisation against the first node (`first`), then
/// the app's SQL user and database ([`init_sql`]). `cockroach init` on an
/// initialised cluster exits with "already initialized", which the script
/// accepts, so a retried Job creates what is missing and changes nothing else.
fn init_job(
    v: &Validated,
    crdb: &DataComponent,
    service_account: &str,
    first: &str,
    root_client: &str,
    d: &mut Desired,
) {
    let script = format!(
        "out=$(/cockroach/cockroach init --certs-dir={CERTS_DIR} --host={first} 2>&1); echo \"$out\"; \
         case \"$out\" in *\"already been initialized\"*|*\"Cluster successfully initialized\"*) ;; *) exit 1;; esac; \
         exec /cockroach/cockroach sql --certs-dir={CERTS_DIR} --host={first} -e \"{}\"",
        init_sql()
    );
    // A Job is immutable: named after its script, a changed script (this
    // version's SQL, for a cluster initialised by an earlier one) is a new
    // Job that runs, and the old one is pruned.
    let name = child_name(
        v,
        &format!("cockroach-init-{}", short_hash(script.as_bytes())),
    );
    let owner = Owner::component(TIER, "cockroach-init");
    let small = Size {
        cpu: "50m".into(),
        memory: "64Mi".into(),
    };
    let container = ContainerSpec::new("init", &crdb.image, &small)
        .command(&["sh", "-c"])
        .args(vec![script])
        .mounts(vec![mount("certs", CERTS_DIR, true)])
        .build();
    let certs = [
        ("ca.crt", "ca.crt"),
        ("tls.crt", "client.root.crt"),
        ("tls.key", "client.root.key"),
    ];
    let template = PodTemplate::new(&owner, service_account, 1000)
        .containers(vec![container])
        .volumes(vec![secret_volume("certs", root_client, Some(&certs))])
        .restart_never()
        .build(v);
    d.jobs.push(Job {
        metadata: meta(v, &name, owner.tier, &owner.component),
        spec: Some(JobSpec {
            backoff_limit: Some(20),
            template,
            ttl_seconds_after_finished: None,
            ..JobSpec::default()
        }),
        ..Job::default()
    });
    expect(d, "Job", &name, 1);
}

/// What the init Job runs as `root` once the cluster is up: the app's user
/// (it logs in with its client certificate, so it has no password) and its
/// database, owned by it so its migrations can create and alter tables.
/// Every statement is idempotent. No `"`, `$` or `` ` ``: it is embedded in
/// a double-quoted shell word.
fn init_sql() -> String {
    format!(
        "CREATE USER IF NOT EXISTS {APP_USER}; \
         CREATE DATABASE IF NOT EXISTS {APP_DATABASE}; \
         ALTER DATABASE {APP_DATABASE} OWNER TO {APP_USER};"
    )
}

#[cfg(test)]
mod tests {
    use super::init_sql;

    #[test]
    fn the_init_sql_creates_the_apps_user_and_database_and_fits_a_shell_word() {
        let sql = init_sql();
        assert!(sql.contains("CREATE USER IF NOT EXISTS ladder;"));
        assert!(sql.contains("CREATE DATABASE IF NOT EXISTS ladder;"));
        assert!(sql.contains("ALTER DATABASE ladder OWNER TO ladder;"));
        assert!(!sql.contains(['"', '$', '`', '\\']), "{sql}");
    }
}
