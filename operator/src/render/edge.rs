//! The edge (phases 2-4): the policy the app enforces itself (rate limits,
//! blocked paths, purge networks) and, from phase 3, a Varnish cache in
//! front of the app with a TLS-originating sidecar, and the CDN config.
//!
//! Who the client is (docs/edge.md): the app believes `X-Forwarded-For` only
//! from a connection that presented the edge's client certificate (phase 3
//! up: open-source Varnish speaks no TLS to backends, so its ghostunnel
//! sidecar originates TLS and presents the certificate) or from a peer inside
//! `spec.edge.trustedProxyCidrs` (the ingress, phase 2). The VCL sets that
//! header itself from the connection; a client's own is never passed on.

use super::app::{AppFile, Wiring};
use super::build::{
    Addressing, Owner, Port, StatelessWorkload, TLS_DIR, push_config_file, push_deployment,
    push_pdb_if_replicated, service,
};
use super::pod::{
    ContainerSpec, Placement, PodTemplate, config_volume, env, hash_of, mount, secret_volume,
    tcp_probe,
};
use super::{Desired, child_name, config, tls};
use crate::validate::{DataComponent, Edge, Validated};
use ladder_crds::contract;

const TIER: &str = "varnish";
const HTTP: Port = Port::new("http", 8080);
/// Loopback port of the edge pod's TLS origination sidecar (Varnish's backend).
const EDGE_TLS_ORIGIN_PORT: i32 = 8081;
/// Subject common name of the edge's client certificate: the one identity whose
/// connections may name the client in `X-Forwarded-For`. No other certificate of the
/// phase CA has it (servers are named after their Services, CockroachDB's users are
/// `root` and `ladder`).
const EDGE_CLIENT_NAME: &str = "ladder-edge";
/// How often the sidecar re-reads its certificate (cert-manager renews it in place).
const EDGE_CERT_RELOAD: &str = "300s";

/// Builds the edge policy (and the Varnish tier when the phase has one) and
/// wires the app to them.
pub(super) fn build(
    v: &Validated,
    edge: &Edge,
    service_account: &str,
    d: &mut Desired,
    wiring: &mut Wiring,
) {
    let file = AppFile {
        volume: "edge-policy".into(),
        config_map: child_name(v, "edge-policy"),
        dir: "/etc/ladder/edge".into(),
        file: "policy.json",
        text: config::edge_policy_json(edge),
        immutable: false,
    };
    let path = wiring.config_file(v, d, file);
    wiring.env.push(env(contract::env::RULES_FILE, path));
    if let Some(varnish) = &v.varnish {
        cache(v, varnish, edge, service_account, d);
        wiring.allow(TIER, "app", &[v.app_port]);
        wiring.allow("app", TIER, &[HTTP.number]);
        let pods = child_name(v, "varnish-pods");
        wiring.env.push(env(
            contract::env::VARNISH_URL,
            format!("http://{pods}.{}.svc:{}", v.namespace, HTTP.number),
        ));
        wiring
            .env
            .push(env(contract::env::EDGE_CLIENT_NAME, EDGE_CLIENT_NAME));
    }
    if !edge.trusted_proxies.is_empty() {
        let cidrs = edge
            .trusted_proxies
            .iter()
            .map(|(o, p)| format!("{}.{}.{}.{}/{p}", o[0], o[1], o[2], o[3]))
            .collect::<Vec<_>>()
            .join(",");
        wiring.env.push(env(contract::env::TRUSTED_PROXIES, cidrs));
    }
}

/// Varnish → ghostunnel (same pod, loopback) → the app over TLS, verified
/// against the CA, presenting the edge's client certificate.
fn cache(
    v: &Validated,
    varnish: &DataComponent,
    edge: &Edge,
    service_account: &str,
    d: &mut Desired,
) {
    let name = child_name(v, "edge");
    let owner = Owner::component(TIER, "edge");
    let app_host = format!("{}.{}.svc", child_name(v, "app"), v.namespace);
    let vcl = config::varnish_vcl(edge, "127.0.0.1", EDGE_TLS_ORIGIN_PORT);
    // A client certificate: nothing connects to the edge over TLS, the edge
    // connects to the app.
    let tls = tls::client(v, d, "edge", EDGE_CLIENT_NAME);
    let cm = push_config_file(v, d, "edge-vcl", TIER, "default.vcl", &vcl);
    let origin = format!("http://{name}.{}.svc:{}", v.namespace, HTTP.number);
    let cdn = config::cdn_json(edge, &origin);
    push_config_file(v, d, "cdn-config", TIER, "cdn.json", &cdn);
    let tls_origin = ContainerSpec::new(
        "tls-origin",
        ladder_crds::catalogue::images::GHOSTUNNEL,
        &varnish.size,
    )
    .args(vec![
        "client".into(),
        format!("--listen=127.0.0.1:{EDGE_TLS_ORIGIN_PORT}"),
        format!("--target={app_host}:{}", v.app_port),
        format!("--cacert={TLS_DIR}/ca.crt"),
        format!("--cert={TLS_DIR}/tls.crt"),
        format!("--key={TLS_DIR}/tls.key"),
        format!("--timed-reload={EDGE_CERT_RELOAD}"),
    ])
    .mounts(vec![mount("tls", TLS_DIR, true)])
    .probe(tcp_probe(EDGE_TLS_ORIGIN_PORT))
    .build();
    let cache = ContainerSpec::new("varnish", &varnish.image, &varnish.size)
        .command(&["varnishd"])
        .args(
            [
                "-F",
                "-f",
                "/etc/varnish/default.vcl",
                "-a",
                ":8080",
                "-n",
                "/tmp/varnish",
                "-s",
                "malloc,256m",
            ]
            .map(String::from)
            .to_vec(),
        )
        .ports(&[HTTP])
        .mounts(vec![mount("vcl", "/etc/varnish", true)])
        .probe(tcp_probe(HTTP.number))
        .build();
    let template = PodTemplate::new(&owner, service_account, 1000)
        .containers(vec![cache, tls_origin])
        .volumes(vec![
            config_volume("vcl", &cm, None),
            secret_volume("tls", &tls, None),
        ])
        .config_hash(hash_of(&[&vcl]))
        .placement(Placement::Spread(v.regions.clone()))
        .build(v);
    push_deployment(
        v,
        d,
        StatelessWorkload {
            name: name.clone(),
            owner: owner.clone(),
            replicas: varnish.replicas,
            autoscaled: false,
            recreate: false,
            template,
        },
    );
    d.services
        .push(service(v, &name, &owner, &[HTTP], Addressing::ClusterIp));
    // Every edge instance caches on its own: the app resolves this headless name to all of
    // them and purges each one.
    let pods = child_name(v, "varnish-pods");
    d.services
        .push(service(v, &pods, &owner, &[HTTP], Addressing::Headless));
    push_pdb_if_replicated(v, d, &name, &owner, varnish.replicas);
}
