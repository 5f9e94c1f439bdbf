//! CockroachDB (phase 4): one StatefulSet per region, pinned there, joined
//! into one cluster by node certificates; a one-shot Job initialises it; the
//! app authenticates with a client certificate (no password).

use k8s_openapi::api::batch::v1::{Job, JobSpec};

use super::app::Wiring;
use super::build::{
    Addressing, Owner, Port, StatefulWorkload, expect, pdb, push_stateful_set, tier_selector,
    tier_service,
};
use super::pod::{
    ContainerSpec, Placement, PodTemplate, env, env_field, http_probe, mount, secret_volume,
};
use super::{Desired, child_name, meta, short_hash, tls};
use crate::validate::{DataComponent, Size, Validated};

const TIER: &str = "cockroach";
const GRPC: Port = Port::new("grpc", 26257);
const HTTP: Port = Port::new("http", 8080);
const CERTS_DIR: &str = "/cockroach/certs";

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
    let hosts = [headless.clone(), public.clone(), format!("*.{headless}")];
    let node_tls = tls::server_with(v, d, TIER, "node", &hosts, &["localhost"]);
    // Client certificates: `root` for the init Job, `ladder` for the app.
    let root_client = tls::client(v, d, TIER, "root");
    let app_client = tls::client(v, d, TIER, "ladder");
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
        "dsql:postgresql://ladder@{public}:{}/ladder?sslmode=verify-full&sslrootcert=/etc/ladder/crdb/ca.crt\
         &sslcert=/etc/ladder/crdb/tls.crt&sslkey=/etc/ladder/crdb/tls.key",
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
    /// The node certificate's Secret.
    certificates: &'a str,
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
        let certs = [
            ("ca.crt", "ca.crt"),
            ("tls.crt", "node.crt"),
            ("tls.key", "node.key"),
        ];
        let mut template = PodTemplate::new(&owner, self.service_account, 1000)
            .containers(vec![container])
            .volumes(vec![secret_volume(
                "certs",
                self.certificates,
                Some(&certs),
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

/// One-shot cluster initialisation against the first node (`first`);
/// `cockroach init` on an initialised cluster exits with "already
/// initialized", which the script accepts.
fn init_job(
    v: &Validated,
    crdb: &DataComponent,
    service_account: &str,
    first: &str,
    root_client: &str,
    d: &mut Desired,
) {
    let name = child_name(v, "cockroach-init");
    let owner = Owner::component(TIER, "cockroach-init");
    let small = Size {
        cpu: "50m".into(),
        memory: "64Mi".into(),
    };
    let container = ContainerSpec::new("init", &crdb.image, &small)
        .command(&["sh", "-c"])
        .args(vec![format!(
            "out=$(/cockroach/cockroach init --certs-dir={CERTS_DIR} --host={first} 2>&1); echo \"$out\"; \
             case \"$out\" in *\"already been initialized\"*|*\"Cluster successfully initialized\"*) exit 0;; esac; exit 1"
        )])
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
