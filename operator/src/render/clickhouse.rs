//! ClickHouse (phase 3): the analytics store, TLS-only, its replicas
//! talking over the interserver port of a headless Service.

use super::app::Wiring;
use super::build::{
    Addressing, Owner, Port, StatefulWorkload, TLS_DIR, push_config_file, push_pdb_if_replicated,
    push_stateful_set, service,
};
use super::pod::{
    ContainerSpec, Placement, PodTemplate, config_volume, empty_dir, env, env_secret, hash_of,
    mount, secret_volume, tcp_probe,
};
use super::{CredentialsKind, Desired, child_name, config, tls};
use crate::validate::{DataComponent, Validated};
use ladder_crds::contract;

const TIER: &str = "clickhouse";
const HTTPS: Port = Port::new("https", 8443);
const NATIVE_TLS: Port = Port::new("native-tls", 9440);
const INTERSERVER: Port = Port::new("interserver", 9009);

/// Builds ClickHouse and wires the app to it.
pub(super) fn build(
    v: &Validated,
    ch: &DataComponent,
    service_account: &str,
    d: &mut Desired,
    wiring: &mut Wiring,
) {
    let name = child_name(v, "clickhouse");
    let owner = Owner::tier(TIER);
    let creds = tls::credentials(v, d, TIER, "ladder", CredentialsKind::Plain);
    let tls = tls::server(v, d, TIER, std::slice::from_ref(&name));
    let xml = config::clickhouse_config();
    let cm = push_config_file(v, d, "clickhouse-config", TIER, "ladder.xml", &xml);
    let container = ContainerSpec::new("clickhouse", &ch.image, &ch.size)
        .env(vec![
            env("CLICKHOUSE_USER", "ladder"),
            env_secret("CLICKHOUSE_PASSWORD", &creds, "password"),
            env("CLICKHOUSE_DB", "ladder"),
        ])
        .ports(&[HTTPS, NATIVE_TLS, INTERSERVER])
        .mounts(vec![
            mount("config", "/etc/clickhouse-server/config.d", true),
            mount("tls", TLS_DIR, true),
            mount("data", "/var/lib/clickhouse", false),
            mount("logs", "/var/log/clickhouse-server", false),
        ])
        .probe(tcp_probe(NATIVE_TLS.number))
        .build();
    let template = PodTemplate::new(&owner, service_account, 101)
        .containers(vec![container])
        .volumes(vec![
            config_volume("config", &cm, None),
            secret_volume("tls", &tls, None),
            empty_dir("logs"),
        ])
        .config_hash(hash_of(&[&xml]))
        .placement(Placement::SpreadSoft)
        .build(v);
    let headless = child_name(v, "clickhouse-hl");
    push_stateful_set(
        v,
        d,
        StatefulWorkload {
            name: name.clone(),
            owner: owner.clone(),
            replicas: ch.replicas,
            service_name: headless.clone(),
            template,
            data: Some(ch),
        },
    );
    d.services.push(service(
        v,
        &name,
        &owner,
        &[HTTPS, NATIVE_TLS],
        Addressing::ClusterIp,
    ));
    d.services.push(service(
        v,
        &headless,
        &owner,
        &[INTERSERVER],
        Addressing::Headless,
    ));
    push_pdb_if_replicated(v, d, &name, &owner, ch.replicas);
    wiring.env.push(env_secret(
        contract::env::CLICKHOUSE_PASSWORD,
        &creds,
        "password",
    ));
    wiring.env.push(env(
        contract::env::CLICKHOUSE_URL,
        format!("https://ladder@{}:{}/", tls::host(v, &name), HTTPS.number),
    ));
    wiring.allow("app", TIER, &[HTTPS.number, NATIVE_TLS.number]);
    wiring.allow(TIER, TIER, &[NATIVE_TLS.number, INTERSERVER.number]);
}
