//! PostgreSQL (phases 1-3): per shard a primary StatefulSet and, from phase
//! 2, a StatefulSet of streaming read replicas; their config, credentials
//! and certificate; and the app's store URL (through PgBouncer when there is
//! one, sharded through a versioned shard map in phase 3).

use k8s_openapi::api::core::v1::Container;

use super::app::{AppFile, Wiring};
use super::build::{
    Addressing, Owner, Port, StatefulWorkload, TLS_DIR, config_map, pdb, push_stateful_set, service,
};
use super::pod::{
    ContainerSpec, Placement, PodTemplate, config_volume, empty_dir, env, env_secret, exec_probe,
    hash_of, mount, secret_volume,
};
use super::{CredentialsKind, Desired, child_name, config, selector, short_hash, tls};
use crate::validate::{Postgres, Validated};
use ladder_crds::contract;

const TIER: &str = "postgres";
pub(super) const PORT: Port = Port::new("postgres", 5432);

/// What PgBouncer needs from the PostgreSQL tier.
pub(super) struct Cluster {
    /// `(database, primary host)` of each shard.
    pub databases: Vec<(String, String)>,
    /// The credentials Secret (its `userlist.txt` is PgBouncer's auth file).
    pub credentials: String,
}

/// A PostgreSQL URL without password (see [`ladder_crds::contract`]), verifying the server against
/// the CA mounted at `TLS_DIR`.
fn pg_url(scheme: &str, host: &str, port: i32, db: &str) -> String {
    format!("{scheme}://ladder@{host}:{port}/{db}?sslmode=verify-full&sslrootcert={TLS_DIR}/ca.crt")
}

/// One shard's instances.
struct Shard {
    /// Its database.
    database: String,
    /// The primary's StatefulSet and Service.
    primary: String,
    /// The read replicas' StatefulSet, if any.
    replicas: Option<String>,
}

/// Builds the PostgreSQL tier and wires the app to it.
pub(super) fn build(
    v: &Validated,
    pg: &Postgres,
    service_account: &str,
    d: &mut Desired,
    wiring: &mut Wiring,
) -> Cluster {
    let creds = tls::credentials(v, d, TIER, "ladder", CredentialsKind::Postgres);
    wiring
        .env
        .push(env_secret(contract::env::DB_PASSWORD, &creds, "password"));
    let conf = config::postgresql_conf(&pg.parameters, pg.component.replicas);
    let hba = config::pg_hba_conf();
    let cm = child_name(v, "postgres-config");
    d.config_maps.push(config_map(
        v,
        &cm,
        TIER,
        vec![
            ("postgresql.conf", conf.clone()),
            ("pg_hba.conf", hba.clone()),
            ("10-replication.sh", config::pg_init_script()),
        ],
        false,
    ));
    let instance = Instance {
        config_map: &cm,
        credentials: &creds,
        config_hash: hash_of(&[&conf, &hba]),
        service_account,
        pg,
    };
    let mut hosts = Vec::new();
    let mut shards = Vec::new();
    for shard in 0..pg.shards {
        let (base, database) = if pg.shards == 1 {
            ("postgres".to_owned(), "ladder".to_owned())
        } else {
            (format!("pg-shard-{shard}"), format!("shard_{shard}"))
        };
        let primary = child_name(v, &base);
        hosts.push(primary.clone());
        instance.build(v, d, &primary, &base, None);
        let mut replicas = None;
        if pg.component.replicas > 0 {
            let component = format!("{base}-replica");
            let replica = child_name(v, &component);
            hosts.push(replica.clone());
            instance.build(v, d, &replica, &component, Some(&primary));
            if pg.shards == 1 {
                let read = child_name(v, "postgres-read");
                hosts.push(read.clone());
                let owner = Owner::component(TIER, component);
                d.services
                    .push(service(v, &read, &owner, &[PORT], Addressing::ClusterIp));
                wiring.allow("app", TIER, &[PORT.number]);
            }
            replicas = Some(replica);
        }
        shards.push(Shard {
            database,
            primary,
            replicas,
        });
    }
    tls::server(v, d, TIER, &hosts);
    wiring.allow(TIER, TIER, &[PORT.number]);
    wiring.allow("pgbouncer", TIER, &[PORT.number]);
    store(v, pg, &shards, d, wiring);
    Cluster {
        databases: shards
            .into_iter()
            .map(|s| (s.database, tls::host(v, &s.primary)))
            .collect(),
        credentials: creds,
    }
}

/// The app's `LADDER_STORE`: it reaches each primary through PgBouncer when
/// there is one, and each read replica directly by its pod's stable name
/// (the app checks every replica's lag).
fn store(v: &Validated, pg: &Postgres, shards: &[Shard], d: &mut Desired, wiring: &mut Wiring) {
    let bouncer = v
        .pgbouncer
        .as_ref()
        .map(|_| tls::host(v, &child_name(v, super::pgbouncer::NAME)));
    let bouncer_port = super::pgbouncer::PORT.number;
    let primary_url = |db: &str, primary: &str| match &bouncer {
        Some(b) => pg_url(contract::PGBOUNCER_SCHEME, b, bouncer_port, db),
        None => pg_url("postgres", &tls::host(v, primary), PORT.number, db),
    };
    if pg.shards > 1 {
        let map: Vec<(String, String)> = shards
            .iter()
            .map(|s| {
                (
                    s.database.replace('_', "-"),
                    primary_url(&s.database, &s.primary),
                )
            })
            .collect();
        let version = pg.map_version;
        let text = config::shard_map_json(version, &map);
        // Immutable, so named after its content too: a map that differs
        // (the URLs' host names, for instance) is a new ConfigMap the app's
        // pods roll onto, not a refused update of the old one.
        let name = format!("shard-map-v{version}-{}", short_hash(text.as_bytes()));
        // Version 1 keeps the volume and path it always had; a resharding's
        // map gets its own, so that the migration Job (which mounts the
        // volumes of both sides) reads the old map and the new one.
        let (volume, dir) = if version == config::SHARD_MAP_VERSION {
            ("shard-map".to_owned(), "/etc/ladder/shard-map".to_owned())
        } else {
            (
                format!("shard-map-v{version}"),
                format!("/etc/ladder/shard-map-v{version}"),
            )
        };
        let file = AppFile {
            volume,
            config_map: child_name(v, &name),
            dir,
            file: "shard-map.json",
            text,
            immutable: true,
        };
        let path = wiring.config_file(v, d, file);
        wiring.store = Some(format!("shards:{path}"));
    } else if let Some(shard) = shards.first() {
        let write = primary_url("ladder", &shard.primary);
        wiring.store = Some(match (&shard.replicas, &bouncer) {
            (Some(set), _) => {
                let mut spec = format!("replicas:{write}");
                for i in 0..pg.component.replicas {
                    let host = format!("{set}-{i}.{set}.{}.svc", v.namespace);
                    spec.push(',');
                    spec.push_str(&pg_url("postgres", &host, PORT.number, "ladder"));
                }
                spec
            }
            (None, Some(bouncer)) => {
                format!(
                    "pgbouncer:{}",
                    pg_url("postgres", bouncer, bouncer_port, "ladder")
                )
            }
            (None, None) => format!("postgres:{write}"),
        });
    }
}

/// What every PostgreSQL StatefulSet of the phase shares.
struct Instance<'a> {
    config_map: &'a str,
    credentials: &'a str,
    config_hash: String,
    service_account: &'a str,
    pg: &'a Postgres,
}

impl Instance<'_> {
    /// One PostgreSQL StatefulSet `name`: a primary, or (with `primary`) its
    /// streaming read replicas, with its Service (headless for replicas,
    /// which the app reaches pod by pod).
    fn build(
        &self,
        v: &Validated,
        d: &mut Desired,
        name: &str,
        component: &str,
        primary: Option<&str>,
    ) {
        let c = &self.pg.component;
        let owner = Owner::component(TIER, component);
        let tls = child_name(v, "postgres-tls");
        let mut mounts = vec![
            mount("config", "/etc/postgresql", true),
            mount("tls", TLS_DIR, true),
            mount("data", "/var/lib/postgresql/data", false),
            mount("run", "/var/run/postgresql", false),
        ];
        let mut envs = vec![
            env("PGDATA", "/var/lib/postgresql/data/pgdata"),
            env("POSTGRES_USER", "ladder"),
            env("POSTGRES_DB", "ladder"),
            env_secret("POSTGRES_PASSWORD", self.credentials, "password"),
            env_secret(
                "REPLICATION_PASSWORD",
                self.credentials,
                "replication-password",
            ),
        ];
        let mut volumes = vec![
            config_volume("config", self.config_map, None),
            secret_volume("tls", &tls, None),
            empty_dir("run"),
        ];
        let mut init: Vec<Container> = Vec::new();
        if let Some(primary) = primary {
            envs.push(env("PRIMARY_HOST", tls::host(v, primary)));
            init.push(base_backup(c, envs.clone(), mounts.clone()));
        } else {
            mounts.push(mount("init", "/docker-entrypoint-initdb.d", true));
            let script = [("10-replication.sh", "10-replication.sh")];
            volumes.push(config_volume("init", self.config_map, Some(&script)));
        }
        let main = ContainerSpec::new("postgres", &c.image, &c.size)
            .args(
                [
                    "-c",
                    "config_file=/etc/postgresql/postgresql.conf",
                    "-c",
                    "hba_file=/etc/postgresql/pg_hba.conf",
                ]
                .map(String::from)
                .to_vec(),
            )
            .env(envs)
            .ports(&[PORT])
            .mounts(mounts)
            .probe(exec_probe(&[
                "pg_isready",
                "-U",
                "ladder",
                "-h",
                "127.0.0.1",
            ]))
            .build();
        let placement = if primary.is_some() {
            Placement::SpreadSoft
        } else {
            Placement::Anywhere
        };
        let template = PodTemplate::new(&owner, self.service_account, 999)
            .containers(vec![main])
            .init_containers(init)
            .volumes(volumes)
            .config_hash(self.config_hash.clone())
            .placement(placement)
            .build(v);
        let replicas = if primary.is_some() { c.replicas } else { 1 };
        push_stateful_set(
            v,
            d,
            StatefulWorkload {
                name: name.into(),
                owner: owner.clone(),
                replicas,
                service_name: name.into(),
                template,
                data: Some(c),
            },
        );
        let addressing = if primary.is_some() {
            Addressing::Headless
        } else {
            Addressing::ClusterIp
        };
        d.services
            .push(service(v, name, &owner, &[PORT], addressing));
        if primary.is_some() && replicas > 1 {
            d.pod_disruption_budgets
                .push(pdb(v, name, TIER, selector(v, component)));
        }
    }
}

/// A replica starts from a base backup of its primary, streamed over TLS.
fn base_backup(
    c: &crate::validate::DataComponent,
    env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    mounts: Vec<k8s_openapi::api::core::v1::VolumeMount>,
) -> Container {
    ContainerSpec::new("basebackup", &c.image, &c.size)
        .command(&["sh", "-c"])
        .args(vec![
            "test -s \"$PGDATA/PG_VERSION\" || PGPASSWORD=\"$REPLICATION_PASSWORD\" pg_basebackup \
             -h \"$PRIMARY_HOST\" -U replicator -D \"$PGDATA\" -R -X stream -c fast \
             -d \"sslmode=verify-full sslrootcert=/etc/ladder/tls/ca.crt\""
                .into(),
        ])
        .env(env)
        .mounts(mounts)
        .build()
}
