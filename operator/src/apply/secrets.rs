//! Generated Secrets: credentials (random passwords) and certificates (the
//! phase CA and the leaves it signs), created once and never rewritten.
//!
//! The renderer only names them ([`GeneratedSecret`]); [`ensure`] creates
//! the missing ones with fresh randomness and leaves existing ones alone,
//! so a password or key never changes under a running pod. Leaf
//! certificates are signed by the CA Secret as it is in the cluster,
//! whoever wrote it (this operator, an earlier version, or cert-manager).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;

use super::{ApplyError, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::render::{GeneratedSecret, Kind, SCALINGPHASE_LABEL, SecretContent, TIER_LABEL};

/// Why a generated Secret could not be made to exist.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading or creating it failed.
    #[error("API request failed")]
    Api(#[from] kube::Error),
    /// Generating a key or certificate failed.
    #[error("certificate generation failed")]
    Certificate(#[from] rcgen::Error),
    /// A leaf certificate's CA Secret does not exist.
    #[error("the CA Secret is missing")]
    MissingCa,
    /// The CA Secret lacks a key.
    #[error("the CA Secret has no {0}")]
    CaKey(&'static str),
    /// The CA Secret's certificate or key cannot be read.
    #[error("the CA Secret cannot be used")]
    Ca(#[source] rcgen::Error),
    /// A database's credentials Secret is gone while the database's volume
    /// still exists: its password was set when the volume was initialised,
    /// so a fresh one would lock every client out.
    #[error(
        "the credentials are missing but volume {claim} already holds a database initialised with them; \
         restore the Secret from a backup (see the README, \"Restoring a credentials Secret\"), \
         the operator does not generate a new password for an existing database"
    )]
    CredentialsMissing {
        /// A claim of the database that needs the missing credentials.
        claim: String,
    },
}

impl SecretError {
    /// The condition reason that names this failure, if it has its own.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            SecretError::CredentialsMissing { .. } => Some(CREDENTIALS_MISSING),
            _ => None,
        }
    }
}

/// Condition reason: a database's credentials Secret was deleted.
pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";

fn random_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Parameters of every phase CA (subject, usages, validity).
fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ladder phase CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

/// Generates the content of a Secret. Needs the CA Secret's data for leaf
/// certificates.
fn generate(
    content: &SecretContent,
    ca: Option<&BTreeMap<String, ByteString>>,
) -> Result<BTreeMap<String, String>, SecretError> {
    let mut data = BTreeMap::new();
    match content {
        SecretContent::Credentials { username, postgres } => {
            let password = random_password();
            data.insert("username".into(), username.clone());
            data.insert("password".into(), password.clone());
            if *postgres {
                data.insert("replication-password".into(), random_password());
                data.insert(
                    "userlist.txt".into(),
                    format!("\"{username}\" \"{password}\"\n"),
                );
            }
        }
        SecretContent::Ca => {
            let params = ca_params()?;
            let key = rcgen::KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            // cert-manager's layout for a CA Certificate's Secret, so that
            // cert-manager can take this Secret over and vice versa.
            data.insert("tls.crt".into(), cert.pem());
            data.insert("tls.key".into(), key.serialize_pem());
            data.insert("ca.crt".into(), cert.pem());
        }
        SecretContent::Tls {
            common_name,
            dns_names,
            ..
        } => {
            let ca = ca.ok_or(SecretError::MissingCa)?;
            let text = |k: &'static str| {
                ca.get(k)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .ok_or(SecretError::CaKey(k))
            };
            // `tls.*` first: written by this version or by cert-manager (whose
            // CA then signed the leaves already issued); `ca.key` by earlier
            // versions, with `ca.crt` as the certificate.
            let (ca_crt, ca_key) = match (text("tls.crt"), text("tls.key")) {
                (Ok(crt), Ok(key)) => (crt, key),
                _ => (text("ca.crt")?, text("ca.key")?),
            };
            let ca_key = rcgen::KeyPair::from_pem(&ca_key).map_err(SecretError::Ca)?;
            // The issuer is rebuilt from the CA certificate itself (its
            // subject and key identifiers), so issued certificates name and
            // identify it exactly whoever made it.
            let issuer =
                rcgen::Issuer::from_ca_cert_pem(&ca_crt, ca_key).map_err(SecretError::Ca)?;
            let mut params = rcgen::CertificateParams::new(dns_names.clone())?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, common_name.clone());
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.not_after = rcgen::date_time_ymd(2030, 1, 1);
            let key = rcgen::KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            data.insert("tls.crt".into(), cert.pem());
            data.insert("tls.key".into(), key.serialize_pem());
            data.insert("ca.crt".into(), ca_crt);
        }
    }
    Ok(data)
}

/// Makes every generated Secret exist. Existing ones are left untouched
/// (their data is never regenerated); missing ones are created.
pub(super) async fn ensure(
    client: &Client,
    ns: &str,
    secrets: &[GeneratedSecret],
    metrics: &Metrics,
) -> Result<(), ApplyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let mut ca_data: Option<BTreeMap<String, ByteString>> = None;
    for s in secrets {
        let data = ensure_one(&api, &claims, s, &mut ca_data, metrics)
            .await
            .map_err(|source| ApplyError::Secret {
                name: s.name.clone(),
                source,
            })?;
        if matches!(s.content, SecretContent::Ca) {
            ca_data = Some(data);
        }
    }
    Ok(())
}

/// A volume claim of the same ScalingPhase and tier as a credentials
/// Secret: PostgreSQL sets its passwords when `initdb` runs on an empty
/// volume, so while such a claim exists the database knows the old
/// password and only the old Secret can open it. (Redis and ClickHouse read
/// their password at every start, so theirs may be generated afresh.)
pub(super) fn claim_selector(meta: &kube::api::ObjectMeta) -> Option<String> {
    let labels = meta.labels.as_ref()?;
    let sp = labels.get(SCALINGPHASE_LABEL)?;
    let tier = labels.get(TIER_LABEL)?;
    Some(format!("{SCALINGPHASE_LABEL}={sp},{TIER_LABEL}={tier}"))
}

async fn initialised_claim(
    claims: &Api<PersistentVolumeClaim>,
    meta: &kube::api::ObjectMeta,
) -> Result<Option<String>, SecretError> {
    let Some(selector) = claim_selector(meta) else {
        return Ok(None);
    };
    let found = claims
        .list_metadata(&ListParams::default().labels(&selector).limit(1))
        .await?;
    Ok(found.items.first().map(ResourceExt::name_any))
}

/// Makes one Secret exist and returns its data. `ca_data` caches the CA
/// Secret's data (read once, when the first leaf needs it).
async fn ensure_one(
    api: &Api<Secret>,
    claims: &Api<PersistentVolumeClaim>,
    s: &GeneratedSecret,
    ca_data: &mut Option<BTreeMap<String, ByteString>>,
    metrics: &Metrics,
) -> Result<BTreeMap<String, ByteString>, SecretError> {
    if let Some(found) = api.get_opt(&s.name).await? {
        return Ok(found.data.unwrap_or_default());
    }
    if let SecretContent::Credentials { postgres: true, .. } = &s.content
        && let Some(claim) = initialised_claim(claims, &s.meta).await?
    {
        return Err(SecretError::CredentialsMissing { claim });
    }
    let ca = match &s.content {
        SecretContent::Tls { ca, .. } => {
            if ca_data.is_none() {
                *ca_data = api.get_opt(ca).await?.and_then(|c| c.data);
            }
            ca_data.as_ref()
        }
        _ => None,
    };
    let secret = Secret {
        metadata: s.meta.clone(),
        string_data: Some(generate(&s.content, ca)?),
        type_: Some(
            if matches!(s.content, SecretContent::Tls { .. } | SecretContent::Ca) {
                "kubernetes.io/tls"
            } else {
                "Opaque"
            }
            .into(),
        ),
        ..Secret::default()
    };
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let created = match api.create(&pp, &secret).await {
        Ok(c) => c,
        // Lost a race with another reconcile: keep the winner's data.
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(&s.name).await?,
        Err(e) => return Err(e.into()),
    };
    metrics.applied(Kind::Secret.name());
    Ok(created.data.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(data: &BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
        data.iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect()
    }

    fn leaf(ca: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        generate(
            &SecretContent::Tls {
                ca: "ca".into(),
                common_name: "db".into(),
                dns_names: vec!["db.ns.svc".into()],
            },
            Some(&bytes(ca)),
        )
        .expect("leaf")
    }

    /// The leaf names the CA as issuer (subject and key identifier) and its
    /// signature verifies with the CA's public key: what a TLS peer checks.
    fn assert_signed_by(leaf_pem: &str, ca_pem: &str) {
        use x509_parser::extensions::ParsedExtension;
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

    #[test]
    fn generated_certificates_chain_to_the_ca() {
        let ca = generate(&SecretContent::Ca, None).expect("ca");
        // cert-manager's layout for a CA Secret.
        assert_eq!(ca["ca.crt"], ca["tls.crt"]);
        assert!(ca["tls.key"].contains("PRIVATE KEY"));
        let leaf = leaf(&ca);
        assert!(leaf["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(leaf["ca.crt"], ca["ca.crt"]);
        assert_signed_by(&leaf["tls.crt"], &ca["ca.crt"]);
        assert!(
            generate(
                &SecretContent::Tls {
                    ca: "ca".into(),
                    common_name: "x".into(),
                    dns_names: vec![]
                },
                None
            )
            .is_err()
        );
    }

    /// A CA Secret written by an earlier version (`ca.crt`, `ca.key`) still signs.
    #[test]
    fn earlier_ca_layout_still_signs() {
        let ca = generate(&SecretContent::Ca, None).expect("ca");
        let earlier = BTreeMap::from([
            ("ca.crt".to_owned(), ca["tls.crt"].clone()),
            ("ca.key".to_owned(), ca["tls.key"].clone()),
        ]);
        assert_signed_by(&leaf(&earlier)["tls.crt"], &ca["tls.crt"]);
    }

    /// After cert-manager is uninstalled, its CA (another subject, key and
    /// key identifiers than ours) keeps signing the leaves the operator adds.
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
        let issued = leaf(&foreign);
        assert_eq!(issued["ca.crt"], cert.pem());
        assert_signed_by(&issued["tls.crt"], &cert.pem());
    }

    #[test]
    fn passwords_are_random_and_long() {
        let a = generate(
            &SecretContent::Credentials {
                username: "u".into(),
                postgres: true,
            },
            None,
        )
        .expect("creds");
        let b = generate(
            &SecretContent::Credentials {
                username: "u".into(),
                postgres: true,
            },
            None,
        )
        .expect("creds");
        assert_eq!(a["password"].len(), 32);
        assert_ne!(a["password"], b["password"]);
        assert!(a["userlist.txt"].contains(&a["password"]));
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
}
