//! Redis (phases 1-4): a password-protected, TLS-only cache the app shares
//! between its instances. The password is a config include from the
//! credentials Secret ([`config::redis_conf`]).

use super::app::Wiring;
use super::build::{
    Addressing, Owner, Port, StatefulWorkload, TLS_DIR, push_config_file, push_stateful_set,
    service,
};
use super::pod::{
    ContainerSpec, PodTemplate, config_volume, env, env_secret, hash_of, mount, secret_volume,
    tcp_probe,
};
use super::{CredentialsKind, Desired, child_name, config, tls};
use crate::validate::{DataComponent, Validated};
use ladder_crds::contract;

const TIER: &str = "redis";
const PORT: Port = Port::new("redis", 6379);
/// Where the rendered `redis.conf` is mounted.
const CONFIG_DIR: &str = "/etc/redis";

/// Builds Redis and wires the app to it.
pub(super) fn build(
    v: &Validated,
    redis: &DataComponent,
    service_account: &str,
    d: &mut Desired,
    wiring: &mut Wiring,
) {
    let creds = tls::credentials(v, d, TIER, "default", CredentialsKind::Redis);
    let host = child_name(v, "redis");
    let owner = Owner::tier(TIER);
    let tls = tls::server(v, d, TIER, std::slice::from_ref(&host));
    let conf = config::redis_conf();
    let cm = push_config_file(v, d, "redis-config", TIER, "redis.conf", &conf);
    // The password reaches redis-server as a config include mounted from the
    // credentials Secret: never in argv (which `ps` shows every local user)
    // nor in the environment.
    let container = ContainerSpec::new("redis", &redis.image, &redis.size)
        .command(&["redis-server"])
        .args(vec![format!("{CONFIG_DIR}/redis.conf")])
        .ports(&[PORT])
        .mounts(vec![
            mount("config", CONFIG_DIR, true),
            mount("auth", config::REDIS_AUTH_DIR, true),
            mount("tls", TLS_DIR, true),
            mount("data", "/data", false),
        ])
        .probe(tcp_probe(PORT.number))
        .build();
    let auth = [(config::REDIS_AUTH_KEY, config::REDIS_AUTH_FILE)];
    let template = PodTemplate::new(&owner, service_account, 999)
        .containers(vec![container])
        .volumes(vec![
            config_volume("config", &cm, None),
            secret_volume("auth", &creds, Some(&auth)),
            secret_volume("tls", &tls, None),
        ])
        .config_hash(hash_of(&[&conf]))
        .build(v);
    push_stateful_set(
        v,
        d,
        StatefulWorkload {
            name: host.clone(),
            owner: owner.clone(),
            replicas: redis.replicas,
            service_name: host.clone(),
            template,
            data: Some(redis),
        },
    );
    d.services
        .push(service(v, &host, &owner, &[PORT], Addressing::ClusterIp));
    wiring.env.push(env_secret(
        contract::env::REDIS_PASSWORD,
        &creds,
        "password",
    ));
    wiring.env.push(env(
        contract::env::REDIS_URL,
        format!("rediss://default@{}:{}/0", tls::host(v, &host), PORT.number),
    ));
    wiring.allow("app", TIER, &[PORT.number]);
}
