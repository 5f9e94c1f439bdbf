//! Generated Secrets: credentials (random passwords) and certificates (the
//! phase CA and the leaves it signs).
//!
//! The renderer only names them ([`GeneratedSecret`]); [`ensure`] creates
//! the missing ones with fresh randomness. A password or the CA never
//! changes once written. Two writes touch an existing Secret: a file derived
//! from its password that an earlier version did not write (Redis' password
//! include) is added, replacing nothing; and a leaf certificate is
//! re-issued ([`reissue_reason`]) when it no longer names every host the
//! phase serves under (a climb added replicas or shards), or when it is past
//! two thirds of its lifetime ([`LEAF_LIFETIME`]), as cert-manager renews.
//! The old leaf stays valid until it expires, so a server that has not
//! reloaded yet keeps serving.
//!
//! The CA is constrained (`pathlen:0`, DNS names of the phase's namespace
//! only, no IP address); a leaf is a server or a client certificate, never
//! both. Secrets issued by earlier versions keep what they were issued with. Leaf
//! certificates are signed by the CA Secret as it is in the cluster,
//! whoever wrote it (this operator, an earlier version, or cert-manager).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;
use time::{Duration, OffsetDateTime};
use tracing::info;

use super::{ApplyError, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::render::config;
use crate::render::{
    CredentialsKind, GeneratedSecret, Kind, SCALINGPHASE_LABEL, SecretContent, TIER_LABEL, TlsUsage,
};

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
    /// An existing Secret's value cannot be used to derive a file from.
    #[error("the Secret's {0} is missing or cannot be used")]
    Unusable(&'static str),
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

/// Parameters of every phase CA: it signs leaves only (`pathlen:0`, no
/// intermediate CA below it) and only for DNS names under `permitted_dns`
/// (the phase's namespace), never for an IP address.
fn ca_params(permitted_dns: &[String]) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ladder phase CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: permitted_dns
            .iter()
            .map(|d| rcgen::GeneralSubtree::DnsName(d.clone()))
            .collect(),
        excluded_subtrees: vec![
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4([0; 4], [0; 4])),
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

/// Parameters of a leaf certificate: a server certificate for `dns_names`
/// or a client certificate for the user `common_name`, never both.
fn leaf_params(
    common_name: &str,
    dns_names: &[String],
    usage: TlsUsage,
) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(dns_names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    // ECDSA keys: signing only (no key encipherment).
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match usage {
        TlsUsage::Server => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        TlsUsage::Client => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    // A little before now: clocks of the peers may lag the operator's.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + LEAF_LIFETIME;
    Ok(params)
}

/// How long a leaf certificate is valid. It is re-issued after two thirds.
pub const LEAF_LIFETIME: Duration = Duration::days(365);

/// Why the leaf certificate `pem` must be re-issued for `dns_names` at
/// `now`, or `None` while it is good: it must name every one of the hosts
/// (a climb adds replica and shard names to a phase's certificates), and
/// it is renewed once two thirds of its validity have passed. A
/// certificate that cannot be read is re-issued too.
pub fn reissue_reason(pem: &str, dns_names: &[String], now: OffsetDateTime) -> Option<String> {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Some("its certificate is not PEM".into());
    };
    let Ok(cert) = pem.parse_x509() else {
        return Some("its certificate cannot be parsed".into());
    };
    let named: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(missing) = dns_names.iter().find(|d| !named.contains(d)) {
        return Some(format!("it does not name {missing}"));
    }
    let (renew_at, until) = renewal(&cert);
    (now >= renew_at)
        .then(|| format!("it is past two thirds of its lifetime (valid until {until})"))
}

/// When `cert` is due for renewal (two thirds into its validity), and when
/// it expires.
fn renewal(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> (OffsetDateTime, OffsetDateTime) {
    let v = cert.validity();
    let (from, until) = (v.not_before.to_datetime(), v.not_after.to_datetime());
    (from + (until - from) * 2 / 3, until)
}

/// On a leaf's Secret: a digest of the hosts it was checked against.
pub const TLS_HOSTS_ANNOTATION: &str = "ladder.dev/tls-hosts";
/// On a leaf's Secret: when it is due for renewal (RFC 3339).
pub const TLS_RENEW_ANNOTATION: &str = "ladder.dev/tls-renew-after";

/// A digest of a host list, whatever its order.
pub fn hosts_digest(dns_names: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&str> = dns_names.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let digest = Sha256::digest(sorted.join("\n").as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Whether a leaf's Secret, by the annotations the operator leaves on it
/// (what its metadata watch sees), was checked for these hosts and is not
/// yet due for renewal. When not, [`ensure`] reads the certificate itself.
pub fn leaf_checked(
    annotations: &BTreeMap<String, String>,
    dns_names: &[String],
    now: OffsetDateTime,
) -> bool {
    annotations.get(TLS_HOSTS_ANNOTATION) == Some(&hosts_digest(dns_names))
        && annotations
            .get(TLS_RENEW_ANNOTATION)
            .and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .is_some_and(|due| now < due)
}

/// The annotations recording that `pem` was checked for `dns_names`.
fn leaf_annotations(pem: &str, dns_names: &[String]) -> BTreeMap<String, String> {
    let due = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .and_then(|(_, p)| {
            let (due, _) = renewal(&p.parse_x509().ok()?);
            due.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    BTreeMap::from([
        (TLS_HOSTS_ANNOTATION.to_owned(), hosts_digest(dns_names)),
        (TLS_RENEW_ANNOTATION.to_owned(), due),
    ])
}

/// Files a credentials Secret of `kind` holds besides `username` and
/// `password`, derived from them.
fn derived_files(
    kind: CredentialsKind,
    username: &str,
    password: &str,
) -> Result<BTreeMap<String, String>, SecretError> {
    let mut data = BTreeMap::new();
    match kind {
        CredentialsKind::Plain => {}
        CredentialsKind::Postgres => {
            data.insert(
                "userlist.txt".into(),
                format!("\"{username}\" \"{password}\"\n"),
            );
        }
        CredentialsKind::Redis => {
            let include =
                config::redis_auth_conf(password).ok_or(SecretError::Unusable("password"))?;
            data.insert(config::REDIS_AUTH_KEY.into(), include);
        }
    }
    Ok(data)
}

/// Generates the content of a Secret. Needs the CA Secret's data for leaf
/// certificates. Public for the tests that run the rendered configuration
/// with the certificates and passwords a cluster would hold.
pub fn generate(
    content: &SecretContent,
    ca: Option<&BTreeMap<String, ByteString>>,
) -> Result<BTreeMap<String, String>, SecretError> {
    let mut data = BTreeMap::new();
    match content {
        SecretContent::Credentials { username, kind } => {
            let password = random_password();
            data.insert("username".into(), username.clone());
            data.insert("password".into(), password.clone());
            if *kind == CredentialsKind::Postgres {
                data.insert("replication-password".into(), random_password());
            }
            data.extend(derived_files(*kind, username, &password)?);
        }
        SecretContent::Ca { permitted_dns } => {
            let params = ca_params(permitted_dns)?;
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
            usage,
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
            let params = leaf_params(common_name, dns_names, *usage)?;
            let key = rcgen::KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            data.insert("tls.crt".into(), cert.pem());
            data.insert("tls.key".into(), key.serialize_pem());
            data.insert("ca.crt".into(), ca_crt);
        }
    }
    Ok(data)
}

/// The derived files an existing credentials Secret lacks (it was written by
/// an earlier version that did not derive them), computed from the password
/// it holds: nothing it holds is ever replaced. Empty when nothing is
/// missing or the Secret is not a credentials Secret.
fn missing_derived_files(
    content: &SecretContent,
    existing: &BTreeMap<String, ByteString>,
) -> Result<BTreeMap<String, String>, SecretError> {
    let SecretContent::Credentials { username, kind } = content else {
        return Ok(BTreeMap::new());
    };
    let text = |k: &'static str| {
        existing
            .get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let wanted = derived_files(*kind, username, "")?;
    if wanted.keys().all(|k| existing.contains_key(k)) {
        return Ok(BTreeMap::new());
    }
    let password = text("password").ok_or(SecretError::Unusable("password"))?;
    let username = text("username").unwrap_or_else(|| username.clone());
    Ok(derived_files(*kind, &username, &password)?
        .into_iter()
        .filter(|(k, _)| !existing.contains_key(k))
        .collect())
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
        if matches!(s.content, SecretContent::Ca { .. }) {
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
        let data = found.data.unwrap_or_default();
        if let SecretContent::Tls { ca, dns_names, .. } = &s.content {
            let pem = data
                .get("tls.crt")
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            if let Some(why) = reissue_reason(&pem, dns_names, OffsetDateTime::now_utc()) {
                if ca_data.is_none() {
                    *ca_data = api.get_opt(ca).await?.and_then(|c| c.data);
                }
                let fresh = generate(&s.content, ca_data.as_ref())?;
                let notes = leaf_annotations(&fresh["tls.crt"], dns_names);
                // Key and certificate are replaced together (one patch).
                let patch = serde_json::json!({
                    "metadata": { "annotations": notes },
                    "stringData": fresh,
                });
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                let patched = api.patch(&s.name, &pp, &Patch::Merge(&patch)).await?;
                metrics.applied(Kind::Secret.name());
                info!(secret = %s.name, reason = %why, "re-issued a leaf certificate");
                return Ok(patched.data.unwrap_or_default());
            }
            let notes = leaf_annotations(&pem, dns_names);
            let current = found.metadata.annotations.clone().unwrap_or_default();
            if notes.iter().any(|(k, v)| current.get(k) != Some(v)) {
                // Checked and good: recorded, so the next applies need no GET.
                let patch = serde_json::json!({ "metadata": { "annotations": notes } });
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                api.patch(&s.name, &pp, &Patch::Merge(&patch)).await?;
            }
        }
        let missing = missing_derived_files(&s.content, &data)?;
        if missing.is_empty() {
            return Ok(data);
        }
        // A merge patch adds the keys; the ones it holds stay as they are.
        let patch = serde_json::json!({ "stringData": missing });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patched = api.patch(&s.name, &pp, &Patch::Merge(&patch)).await?;
        metrics.applied(Kind::Secret.name());
        return Ok(patched.data.unwrap_or_default());
    }
    if let SecretContent::Credentials {
        kind: CredentialsKind::Postgres,
        ..
    } = &s.content
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
    let data = generate(&s.content, ca)?;
    let mut metadata = s.meta.clone();
    if let SecretContent::Tls { dns_names, .. } = &s.content {
        metadata
            .annotations
            .get_or_insert_default()
            .extend(leaf_annotations(&data["tls.crt"], dns_names));
    }
    let secret = Secret {
        metadata,
        string_data: Some(data),
        type_: Some(
            if matches!(
                s.content,
                SecretContent::Tls { .. } | SecretContent::Ca { .. }
            ) {
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

// The tests parse the certificates and verify them with rustls' WebPKI, as
// the app's clients do: a file of their own.
#[cfg(test)]
#[path = "secrets_tests.rs"]
mod tests;
