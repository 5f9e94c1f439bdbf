//! Redis (phases 1-4): a password-protected, TLS-only cache the app shares
//! between its instances.

use super::app::Wiring;
use super::build::{
    Addressing, Owner, Port, StatefulWorkload, TLS_DIR, push_config_file, push_stateful_set,
    service,
};
use super::pod::{
    ContainerSpec, PodTemplate, config_volume, env, env_secret, hash_of, mount, secret_volume,
    tcp_probe,
};
use super::{Desired, child_name, config, tls};
use crate::validate::{DataComponent, Validated};
use ladder_crds::contract;

const TIER: &str = "redis";
const PORT: Port = Port::new("redis", 6379);

/// Builds Redis and wires the app to it.
pub(super) fn build(
    v: &Validated,
    redis: &DataComponent,
    service_account: &str,
    d: &mut Desired,
    wiring: &mut Wiring,
) {
    let creds = tls::credentials(v, d, TIER, "default", false);
    let host = child_name(v, "redis");
    let owner = Owner::tier(TIER);
    let tls = tls::server(v, d, TIER, std::slice::from_ref(&host));
    let conf = config::redis_conf();
    let cm = push_config_file(v, d, "redis-config", TIER, "redis.conf", &conf);
    let container = ContainerSpec::new("redis", &redis.image, &redis.size)
        .command(&["redis-server"])
        .args(
            [
                "/etc/redis/redis.conf",
                "--requirepass",
                "$(REDIS_PASSWORD)",
            ]
            .map(String::from)
            .to_vec(),
        )
        .env(vec![env_secret("REDIS_PASSWORD", &creds, "password")])
        .ports(&[PORT])
        .mounts(vec![
            mount("config", "/etc/redis", true),
            mount("tls", TLS_DIR, true),
            mount("data", "/data", false),
        ])
        .probe(tcp_probe(PORT.number))
        .build();
    let template = PodTemplate::new(&owner, service_account, 999)
        .containers(vec![container])
        .volumes(vec![
            config_volume("config", &cm, None),
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
        format!("rediss://default@{host}:{}/0", PORT.number),
    ));
    wiring.allow("app", TIER, &[PORT.number]);
}
