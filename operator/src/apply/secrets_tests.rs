//! Tests of the generated Secrets: the certificates are parsed (x509-parser)
//! and verified with rustls' WebPKI verifiers, the library the app's TLS
//! clients use, so a constraint these tests pass is one a client enforces.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

use super::*;

const NS_DOMAINS: [&str; 2] = ["prod.svc", "prod.svc.cluster.local"];

fn ca_content() -> SecretContent {
    SecretContent::Ca {
        permitted_dns: NS_DOMAINS.map(String::from).to_vec(),
    }
}

fn bytes(data: &BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    data.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect()
}

fn tls(common_name: &str, dns_names: &[&str], usage: TlsUsage) -> SecretContent {
    SecretContent::Tls {
        ca: "ca".into(),
        common_name: common_name.into(),
        dns_names: dns_names.iter().map(|&n| n.to_owned()).collect(),
        usage,
    }
}

fn server_leaf(ca: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    generate(
        &tls("db", &["db.prod.svc", "*.db.prod.svc"], TlsUsage::Server),
        Some(&bytes(ca)),
    )
    .expect("server leaf")
}

fn client_leaf(ca: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    generate(&tls("ladder", &[], TlsUsage::Client), Some(&bytes(ca))).expect("client leaf")
}

fn with_cert<T>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("der");
    f(&cert)
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}

/// The leaf names the CA as issuer (subject and key identifier) and its
/// signature verifies with the CA's public key: what a TLS peer checks.
fn assert_signed_by(leaf_pem: &str, ca_pem: &str) {
    let (_, leaf) = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes()).expect("leaf pem");
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).expect("ca pem");
    let leaf = leaf.parse_x509().expect("leaf der");
    let ca = ca.parse_x509().expect("ca der");
    assert_eq!(leaf.issuer(), ca.subject());
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
            _ => None,
        });
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.clone()),
            _ => None,
        });
    if let (Some(aki), Some(ski)) = (aki, ski) {
        assert_eq!(aki.0, ski.0, "authority key id is the CA's subject key id");
    }
    leaf.verify_signature(Some(ca.public_key()))
        .expect("signed by the CA");
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).expect("the CA is a usable root");
    Arc::new(roots)
}

/// What a TLS client (the app, with rustls) checks of a server's chain.
fn verify_server(ca_pem: &str, chain: &[&str], name: &str) -> Result<(), rustls::Error> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider())
            .build()
            .expect("verifier");
    let intermediates: Vec<_> = chain[1..].iter().map(|p| der(p)).collect();
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &der(chain[0]),
        &intermediates,
        &name,
        &[],
        UnixTime::now(),
    )
    .map(|_| ())
}

/// What a TLS server that asks for client certificates checks.
fn verify_client(ca_pem: &str, leaf_pem: &str) -> Result<(), rustls::Error> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider())
            .build()
            .expect("verifier");
    verifier
        .verify_client_cert(&der(leaf_pem), &[], UnixTime::now())
        .map(|_| ())
}

/// A certificate the CA's key signs directly, whatever the renderer would
/// ask for: what an attacker holding the CA key could mint.
fn signed_by_ca(
    ca: &BTreeMap<String, String>,
    params: rcgen::CertificateParams,
) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::from_pem(&ca["tls.key"]).expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca["tls.crt"], key).expect("issuer");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&leaf_key, &issuer).expect("signed");
    (cert.pem(), leaf_key)
}

#[test]
fn generated_certificates_chain_to_the_ca() {
    let ca = generate(&ca_content(), None).expect("ca");
    // cert-manager's layout for a CA Secret.
    assert_eq!(ca["ca.crt"], ca["tls.crt"]);
    assert!(ca["tls.key"].contains("PRIVATE KEY"));
    let leaf = server_leaf(&ca);
    assert!(leaf["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(leaf["ca.crt"], ca["ca.crt"]);
    assert_signed_by(&leaf["tls.crt"], &ca["ca.crt"]);
    assert_signed_by(&client_leaf(&ca)["tls.crt"], &ca["ca.crt"]);
    assert!(generate(&tls("x", &[], TlsUsage::Server), None).is_err());
}

/// A CA Secret written by an earlier version (`ca.crt`, `ca.key`) still signs.
#[test]
fn earlier_ca_layout_still_signs() {
    let ca = generate(&ca_content(), None).expect("ca");
    let earlier = BTreeMap::from([
        ("ca.crt".to_owned(), ca["tls.crt"].clone()),
        ("ca.key".to_owned(), ca["tls.key"].clone()),
    ]);
    assert_signed_by(&server_leaf(&earlier)["tls.crt"], &ca["tls.crt"]);
}

/// After cert-manager is uninstalled, its CA (another subject, key and
/// key identifiers than ours, no constraints) keeps signing the leaves the
/// operator adds.
#[test]
fn a_foreign_ca_secret_signs_consistent_leaves() {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "someone else");
    params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![7; 20]);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    let foreign = BTreeMap::from([
        ("tls.crt".to_owned(), cert.pem()),
        ("tls.key".to_owned(), key.serialize_pem()),
        ("ca.crt".to_owned(), cert.pem()),
    ]);
    let issued = server_leaf(&foreign);
    assert_eq!(issued["ca.crt"], cert.pem());
    assert_signed_by(&issued["tls.crt"], &cert.pem());
    verify_server(&cert.pem(), &[&issued["tls.crt"]], "db.prod.svc").expect("a valid chain");
}

/// The CA: `CA:TRUE, pathlen:0` (critical), certificate and CRL signing
/// only, and critical name constraints: DNS names of the namespace, no IP.
#[test]
fn the_ca_signs_only_leaves_of_its_namespace() {
    let ca = generate(&ca_content(), None).expect("ca");
    with_cert(&ca["tls.crt"], |c| {
        let bc = c
            .basic_constraints()
            .expect("parses")
            .expect("basic constraints");
        assert!(bc.critical);
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = c.key_usage().expect("parses").expect("key usage").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let nc = c
            .name_constraints()
            .expect("parses")
            .expect("name constraints");
        assert!(nc.critical, "RFC 5280: name constraints are critical");
        let permitted: Vec<String> = nc
            .value
            .permitted_subtrees
            .as_ref()
            .expect("permitted subtrees")
            .iter()
            .map(|t| match &t.base {
                GeneralName::DNSName(d) => (*d).to_owned(),
                other => panic!("only DNS names are permitted, found {other:?}"),
            })
            .collect();
        assert_eq!(permitted, NS_DOMAINS);
        let excluded: Vec<&[u8]> = nc
            .value
            .excluded_subtrees
            .as_ref()
            .expect("excluded subtrees")
            .iter()
            .map(|t| match &t.base {
                GeneralName::IPAddress(ip) => *ip,
                other => panic!("only IP ranges are excluded, found {other:?}"),
            })
            .collect();
        assert_eq!(
            excluded,
            [&[0u8; 8][..], &[0u8; 32][..]],
            "every IPv4 and IPv6 address"
        );
    });
}

/// What the name constraints mean to a client: a name of the namespace
/// verifies; a name outside it or an IP address does not, even with a
/// valid signature.
#[test]
fn clients_refuse_what_the_ca_may_not_sign() {
    let ca = generate(&ca_content(), None).expect("ca");
    let ca_pem = &ca["tls.crt"];
    let leaf = server_leaf(&ca);
    verify_server(ca_pem, &[&leaf["tls.crt"]], "db.prod.svc").expect("its own name");
    verify_server(ca_pem, &[&leaf["tls.crt"]], "db-0.db.prod.svc").expect("a pod's name");
    assert!(verify_server(ca_pem, &[&leaf["tls.crt"]], "db.staging.svc").is_err());

    let outside = leaf_params("db", &["db.staging.svc".into()], TlsUsage::Server).expect("params");
    let (outside, _) = signed_by_ca(&ca, outside);
    let err = verify_server(ca_pem, &[&outside], "db.staging.svc").expect_err("outside");
    assert!(format!("{err:?}").contains("NameConstraint"), "{err:?}");

    let mut ip = leaf_params("db", &[], TlsUsage::Server).expect("params");
    ip.subject_alt_names = vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())];
    let (ip, _) = signed_by_ca(&ca, ip);
    assert!(
        verify_server(ca_pem, &[&ip], "127.0.0.1").is_err(),
        "no IP address"
    );

    // pathlen:0 is checked above on the certificate: WebPKI does not read a
    // trust anchor's basic constraints, OpenSSL and Go do (the servers and
    // libpq; CockroachDB, ghostunnel). tests/rendered_config_runs.rs has
    // OpenSSL refuse a leaf under an intermediate CA.
}

/// A server certificate authenticates servers only and a client
/// certificate clients only; neither is a CA.
#[test]
fn server_and_client_certificates_are_separate() {
    let ca = generate(&ca_content(), None).expect("ca");
    let ca_pem = &ca["tls.crt"];
    let (server, client) = (server_leaf(&ca), client_leaf(&ca));
    for (pem, server_auth) in [(&server["tls.crt"], true), (&client["tls.crt"], false)] {
        with_cert(pem, |c| {
            let eku = c
                .extended_key_usage()
                .expect("parses")
                .expect("extended key usage")
                .value;
            assert_eq!(
                (eku.server_auth, eku.client_auth),
                (server_auth, !server_auth)
            );
            assert!(!eku.any && eku.other.is_empty());
            let bc = c.basic_constraints().expect("parses").expect("present");
            assert!(!bc.value.ca);
            let ku = c.key_usage().expect("parses").expect("key usage").value;
            assert!(ku.digital_signature() && !ku.key_cert_sign());
        });
    }
    with_cert(&client["tls.crt"], |c| {
        assert!(c.subject_alternative_name().expect("parses").is_none());
        let cn = c.subject().iter_common_name().next().expect("a CN");
        assert_eq!(cn.as_str().expect("text"), "ladder");
    });
    verify_server(ca_pem, &[&server["tls.crt"]], "db.prod.svc").expect("server as server");
    verify_client(ca_pem, &client["tls.crt"]).expect("client as client");
    assert!(
        verify_client(ca_pem, &server["tls.crt"]).is_err(),
        "server as client"
    );
    // A client certificate names no host; with one it would still be refused for its usage.
    let named = leaf_params("ladder", &["db.prod.svc".into()], TlsUsage::Client).expect("p");
    let (named, _) = signed_by_ca(&ca, named);
    assert!(
        verify_server(ca_pem, &[&named], "db.prod.svc").is_err(),
        "client as server"
    );
}

#[test]
fn passwords_are_random_and_long() {
    let creds = |kind| {
        generate(
            &SecretContent::Credentials {
                username: "u".into(),
                kind,
            },
            None,
        )
        .expect("creds")
    };
    let (a, b) = (
        creds(CredentialsKind::Postgres),
        creds(CredentialsKind::Postgres),
    );
    assert_eq!(a["password"].len(), 32);
    assert_ne!(a["password"], b["password"]);
    assert_ne!(a["password"], a["replication-password"]);
    assert!(a["userlist.txt"].contains(&a["password"]));
    let redis = creds(CredentialsKind::Redis);
    assert_eq!(
        redis[config::REDIS_AUTH_KEY],
        format!("requirepass \"{}\"\n", redis["password"])
    );
    assert_eq!(
        creds(CredentialsKind::Plain).keys().collect::<Vec<_>>(),
        ["password", "username"]
    );
}

/// A credentials Secret from an earlier version gets the files derived from
/// the password it holds; nothing it holds changes, and a complete one gets
/// nothing.
#[test]
fn missing_derived_files_come_from_the_existing_password() {
    let content = SecretContent::Credentials {
        username: "default".into(),
        kind: CredentialsKind::Redis,
    };
    let old = bytes(&BTreeMap::from([
        ("username".to_owned(), "default".to_owned()),
        ("password".to_owned(), "s3cret".to_owned()),
    ]));
    let missing = missing_derived_files(&content, &old).expect("derivable");
    assert_eq!(
        missing,
        BTreeMap::from([(
            config::REDIS_AUTH_KEY.to_owned(),
            "requirepass \"s3cret\"\n".to_owned()
        )])
    );
    let mut complete = old.clone();
    complete.extend(bytes(&missing));
    assert!(
        missing_derived_files(&content, &complete)
            .expect("ok")
            .is_empty()
    );
    // Without a password there is nothing to derive from: an error, not a new password.
    let broken = bytes(&BTreeMap::from([(
        "username".to_owned(),
        "default".to_owned(),
    )]));
    assert!(missing_derived_files(&content, &broken).is_err());
    // Other kinds of Secret are left alone.
    assert!(
        missing_derived_files(&ca_content(), &old)
            .expect("ok")
            .is_empty()
    );
}

#[test]
fn credentials_are_guarded_by_the_claims_of_their_own_tier() {
    let meta = kube::api::ObjectMeta {
        labels: Some(BTreeMap::from([
            (SCALINGPHASE_LABEL.to_owned(), "shop".to_owned()),
            (TIER_LABEL.to_owned(), "postgres".to_owned()),
        ])),
        ..Default::default()
    };
    assert_eq!(
        claim_selector(&meta).as_deref(),
        Some("ladder.dev/scalingphase=shop,ladder.dev/tier=postgres")
    );
    // Without both labels nothing is guarded (never a namespace-wide match).
    assert_eq!(claim_selector(&kube::api::ObjectMeta::default()), None);
    let err = SecretError::CredentialsMissing {
        claim: "data-shop-postgres-0".into(),
    };
    assert_eq!(err.reason(), Some(CREDENTIALS_MISSING));
    assert!(err.to_string().contains("data-shop-postgres-0"));
    assert_eq!(SecretError::MissingCa.reason(), None);
}

/// A leaf is re-issued when it lacks a host the phase now serves under, or
/// once two thirds of its lifetime have passed; not before, and not for a
/// host list it already covers (in any order, or a subset).
#[test]
fn a_leaf_is_reissued_for_new_hosts_and_at_two_thirds_of_its_life() {
    let ca = generate(&ca_content(), None).expect("ca");
    let leaf = server_leaf(&ca);
    let pem = &leaf["tls.crt"];
    let now = time::OffsetDateTime::now_utc();
    let hosts = |h: &[&str]| h.iter().map(|&s| s.to_owned()).collect::<Vec<_>>();
    assert_eq!(
        reissue_reason(pem, &hosts(&["*.db.prod.svc", "db.prod.svc"]), now),
        None
    );
    assert_eq!(reissue_reason(pem, &hosts(&["db.prod.svc"]), now), None);
    let why = reissue_reason(pem, &hosts(&["db.prod.svc", "db-replica.prod.svc"]), now)
        .expect("a new host needs a new certificate");
    assert!(why.contains("db-replica.prod.svc"), "{why}");
    // Half way: still good; past two thirds: renewed.
    let half = now + LEAF_LIFETIME / 2;
    assert_eq!(reissue_reason(pem, &hosts(&["db.prod.svc"]), half), None);
    let late = now + LEAF_LIFETIME * 7 / 10;
    let why = reissue_reason(pem, &hosts(&["db.prod.svc"]), late).expect("renewal due");
    assert!(why.contains("two thirds"), "{why}");
    // Unreadable: re-issued rather than served.
    assert!(reissue_reason("not a certificate", &[], now).is_some());
    // The fresh leaf it is replaced with names the new hosts and verifies
    // against the same CA.
    let wider = generate(
        &tls(
            "db",
            &["db.prod.svc", "db-replica.prod.svc"],
            TlsUsage::Server,
        ),
        Some(&bytes(&ca)),
    )
    .expect("re-issued leaf");
    assert_eq!(
        reissue_reason(
            &wider["tls.crt"],
            &hosts(&["db.prod.svc", "db-replica.prod.svc"]),
            now
        ),
        None
    );
    assert_eq!(wider["ca.crt"], ca["tls.crt"]);
}

/// The metadata watch sees whether a leaf was checked for today's hosts and
/// is not due: a host added, a renewal time passed, or no annotations (an
/// earlier version's Secret) each send it back to `ensure`.
#[test]
fn a_leaf_is_rechecked_when_its_hosts_change_or_renewal_is_due() {
    let ca = generate(&ca_content(), None).expect("ca");
    let leaf = server_leaf(&ca);
    let hosts = vec!["db.prod.svc".to_owned(), "*.db.prod.svc".to_owned()];
    let notes = leaf_annotations(&leaf["tls.crt"], &hosts);
    let now = time::OffsetDateTime::now_utc();
    assert!(leaf_checked(&notes, &hosts, now));
    let reordered = vec!["*.db.prod.svc".to_owned(), "db.prod.svc".to_owned()];
    assert!(
        leaf_checked(&notes, &reordered, now),
        "order does not matter"
    );
    let more = [hosts.clone(), vec!["db-replica.prod.svc".to_owned()]].concat();
    assert!(!leaf_checked(&notes, &more, now));
    assert!(!leaf_checked(&notes, &hosts, now + LEAF_LIFETIME * 7 / 10));
    assert!(!leaf_checked(&BTreeMap::new(), &hosts, now));
}
