//! PgBouncer (phases 1-3): a pool in front of every PostgreSQL primary,
//! authenticating clients with the PostgreSQL credentials' `userlist.txt`.

use super::app::Wiring;
use super::build::{
    Addressing, Owner, Port, StatelessWorkload, TLS_DIR, push_config_file, push_deployment,
    push_pdb_if_replicated, service,
};
use super::pod::{
    ContainerSpec, Placement, PodTemplate, config_volume, hash_of, mount, secret_volume, tcp_probe,
};
use super::postgres::Cluster;
use super::{Desired, child_name, config, tls};
use crate::validate::{PgBouncer, Size, Validated};

const TIER: &str = "pgbouncer";
/// Suffix of the Deployment's and Service's name.
pub(super) const NAME: &str = "pgbouncer";
/// Suffix of its configuration's ConfigMap.
pub(super) const CONFIG: &str = "pgbouncer-config";
pub(super) const PORT: Port = Port::new("pgbouncer", 6432);

/// Builds PgBouncer over `cluster` and lets the app reach it.
pub(super) fn build(
    v: &Validated,
    bouncer: &PgBouncer,
    cluster: &Cluster,
    service_account: &str,
    d: &mut Desired,
    wiring: &mut Wiring,
) {
    let name = child_name(v, NAME);
    let owner = Owner::tier(TIER);
    let tls = tls::server(v, d, TIER, std::slice::from_ref(&name));
    let ini = config::pgbouncer_ini(&cluster.databases, bouncer.pool_size);
    let cm = push_config_file(v, d, CONFIG, TIER, "pgbouncer.ini", &ini);
    // A small process: a fixed size, not one of the overrides.
    let size = Size {
        cpu: "100m".into(),
        memory: "64Mi".into(),
    };
    let container = ContainerSpec::new("pgbouncer", &bouncer.image, &size)
        .command(&["pgbouncer"])
        .args(vec!["/etc/pgbouncer/pgbouncer.ini".into()])
        .ports(&[PORT])
        .mounts(vec![
            mount("config", "/etc/pgbouncer", true),
            mount("auth", "/etc/pgbouncer-auth", true),
            mount("tls", TLS_DIR, true),
        ])
        .probe(tcp_probe(PORT.number))
        .build();
    let userlist = [("userlist.txt", "userlist.txt")];
    let template = PodTemplate::new(&owner, service_account, 70)
        .containers(vec![container])
        .volumes(vec![
            config_volume("config", &cm, None),
            secret_volume("auth", &cluster.credentials, Some(&userlist)),
            secret_volume("tls", &tls, None),
        ])
        .config_hash(hash_of(&[&ini]))
        .placement(Placement::SpreadSoft)
        .build(v);
    push_deployment(
        v,
        d,
        StatelessWorkload {
            name: name.clone(),
            owner: owner.clone(),
            replicas: bouncer.replicas,
            autoscaled: false,
            recreate: false,
            template,
        },
    );
    d.services
        .push(service(v, &name, &owner, &[PORT], Addressing::ClusterIp));
    push_pdb_if_replicated(v, d, &name, &owner, bouncer.replicas);
    wiring.allow("app", TIER, &[PORT.number]);
}
