//! Authentication of the management API (`/api/v1/links…`); redirects, health and metrics
//! stay public.
//!
//! Two kinds of bearer credentials, either or both configured:
//! - an **API key** (every phase; [`ApiKeyHash`], `LADDER_API_KEY_HASH`): the app holds only
//!   `sha256:<hex>` of the key, hashes what a client presents and compares the digests in
//!   constant time. A valid key may do everything. Keys are never logged;
//! - **OIDC** (phase 4, below).
//!
//! With neither, the API is open; `crate::server` refuses to start that way on anything but a
//! loopback address ([`check_exposure`]).
//!
//! ## OIDC
//! The operator mounts the settings (`ladder_crds::contract::OidcConfig`). The app reads
//! the issuer's discovery document and its JWKS, and checks every token itself:
//! - the signature, with the issuer's key named by `kid` (ES256 or RS256 only; `none` and
//!   shared-secret algorithms are refused, and a key is only used with the algorithm of its
//!   type);
//! - `iss` equal to the issuer, `aud` naming the audience, `exp` in the future and `nbf` in the
//!   past (60 s of leeway for clock skew);
//! - the roles claim (`groups` by default): the admin group may write, the viewer group may read.
//!
//! An unknown `kid` refreshes the JWKS (at most every 10 s), so keys can rotate. When the
//! issuer cannot be reached and no key is known, requests get 503 (retry), not 401.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ladder_crds::contract::OidcConfig;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// The SHA-256 of the management API key, parsed from `sha256:<64 lowercase hex digits>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyHash([u8; 32]);

impl std::fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyHash(sha256:…)")
    }
}

impl std::str::FromStr for ApiKeyHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORMAT: &str = "expected sha256:<64 lowercase hex digits> (the SHA-256 of the key, \
                              e.g. `printf %s \"$KEY\" | sha256sum`)";
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("API key hash: {FORMAT}"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("API key hash: {FORMAT}"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("API key hash: {FORMAT}"))?;
        }
        Ok(ApiKeyHash(out))
    }
}

impl ApiKeyHash {
    /// The hash of `key` (what the operator computes for the Secret it generates).
    pub fn of(key: &str) -> Self {
        use sha2::Digest;
        ApiKeyHash(sha2::Sha256::digest(key.as_bytes()).into())
    }

    /// Whether `presented` is the key. The digests are compared without an early exit, so the
    /// time taken says nothing about how much of them matched.
    pub fn matches(&self, presented: &str) -> bool {
        let other = ApiKeyHash::of(presented);
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Refuses an open management API on a non-loopback address: without a key hash or OIDC,
/// anyone who can reach the port could rewrite every link. Loopback stays open so the
/// README's `curl` examples work on a laptop.
pub fn check_exposure(
    listen: std::net::SocketAddr,
    api_key: bool,
    oidc: bool,
) -> anyhow::Result<()> {
    if listen.ip().is_loopback() || api_key || oidc {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve an unauthenticated management API on {listen}: set {} \
         (sha256:<hex of the key's SHA-256>) or {}, or listen on a loopback address",
        ladder_crds::contract::env::API_KEY_HASH,
        ladder_crds::contract::env::OIDC_CONFIG
    )
}

const LEEWAY_SECS: i64 = 60;
const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What a valid token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Viewer,
}

/// Why a request is not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("the token grants no role here")]
    Forbidden,
    #[error("the identity provider's keys are not available")]
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Es256,
    Rs256,
}

#[derive(Debug, Clone)]
enum Key {
    /// Uncompressed P-256 point.
    Ec(Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

impl Key {
    fn alg(&self) -> Alg {
        match self {
            Key::Ec(_) => Alg::Es256,
            Key::Rsa { .. } => Alg::Rs256,
        }
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            Key::Ec(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, sig)
                .is_ok(),
            Key::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
        }
    }
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// A JWK as a verification key; None for keys we do not use (encryption keys, other curves).
fn key_of(jwk: &Jwk) -> Option<Key> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    match (jwk.kty.as_str(), jwk.alg.as_deref()) {
        ("EC", None | Some("ES256")) if jwk.crv.as_deref() == Some("P-256") => {
            let (x, y) = (b64(jwk.x.as_deref()?)?, b64(jwk.y.as_deref()?)?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = vec![4u8];
            point.extend(x);
            point.extend(y);
            Some(Key::Ec(point))
        }
        ("RSA", None | Some("RS256")) => Some(Key::Rsa {
            n: b64(jwk.n.as_deref()?)?,
            e: b64(jwk.e.as_deref()?)?,
        }),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The OIDC verifier.
pub struct Auth {
    config: OidcConfig,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Key>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.config.issuer_url)
            .field("audience", &self.config.audience)
            .finish()
    }
}

impl Auth {
    /// Reads the settings file; `ca_pem` is trusted for the issuer besides the system roots.
    pub fn load(path: &std::path::Path, ca_pem: Option<&[u8]>) -> anyhow::Result<Auth> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading OIDC settings {}", path.display()))?;
        let config: OidcConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing OIDC settings {}", path.display()))?;
        Auth::new(config, ca_pem)
    }

    pub fn new(config: OidcConfig, ca_pem: Option<&[u8]>) -> anyhow::Result<Auth> {
        url::Url::parse(&config.issuer_url).context("OIDC issuer URL")?;
        crate::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            builder = builder
                .tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem).context("OIDC CA")?);
        }
        Ok(Auth {
            config,
            http: builder.build()?,
            keys: RwLock::new(HashMap::new()),
            last_refresh: tokio::sync::Mutex::new(None),
        })
    }

    /// Fetches the discovery document and the JWKS; replaces the known keys.
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        let base = self.config.issuer_url.trim_end_matches('/');
        let d: Discovery = self
            .http
            .get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
            .context("discovery document")?;
        anyhow::ensure!(
            d.issuer.trim_end_matches('/') == base,
            "the discovery document names another issuer ({})",
            d.issuer
        );
        let jwks: Jwks = self
            .http
            .get(&d.jwks_uri)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
            .context("JWKS")?;
        let keys: HashMap<String, Key> = jwks
            .keys
            .iter()
            .filter_map(|j| Some((j.kid.clone().unwrap_or_default(), key_of(j)?)))
            .collect();
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(n)
    }

    /// Refreshes unless that was tried less than [`MIN_REFRESH`] ago.
    async fn refresh_rate_limited(&self) {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(err) = self.refresh().await {
            tracing::warn!(error = %format!("{err:#}"), issuer = %self.config.issuer_url, "fetching the OIDC keys failed");
        }
    }

    fn key(&self, kid: Option<&str>) -> Option<Key> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        match kid {
            Some(k) => keys.get(k).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    fn has_keys(&self) -> bool {
        !self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Checks a token; the role it grants.
    pub async fn role(&self, token: &str) -> Result<Role, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid("not a JWS compact token"));
        };
        let header: Header = b64(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Invalid("bad header"))?;
        let alg = match header.alg.as_str() {
            "ES256" => Alg::Es256,
            "RS256" => Alg::Rs256,
            _ => return Err(AuthError::Invalid("algorithm not allowed")),
        };
        let sig = b64(s).ok_or(AuthError::Invalid("bad signature encoding"))?;
        let key = match self.key(header.kid.as_deref()) {
            Some(k) => k,
            None => {
                self.refresh_rate_limited().await;
                match self.key(header.kid.as_deref()) {
                    Some(k) => k,
                    None if self.has_keys() => return Err(AuthError::Invalid("unknown key")),
                    None => return Err(AuthError::Unavailable),
                }
            }
        };
        if key.alg() != alg {
            return Err(AuthError::Invalid("algorithm does not match the key"));
        }
        let signed = &token[..h.len() + 1 + p.len()];
        if !key.verify(signed.as_bytes(), &sig) {
            return Err(AuthError::Invalid("bad signature"));
        }
        let claims: serde_json::Value = b64(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Invalid("bad claims"))?;
        self.check_claims(&claims, now())
    }

    fn check_claims(&self, c: &serde_json::Value, now: i64) -> Result<Role, AuthError> {
        let issuer = self.config.issuer_url.trim_end_matches('/');
        if c["iss"].as_str().map(|s| s.trim_end_matches('/')) != Some(issuer) {
            return Err(AuthError::Invalid("wrong issuer"));
        }
        let aud = &self.config.audience;
        let aud_ok = match &c["aud"] {
            serde_json::Value::String(s) => s == aud,
            serde_json::Value::Array(a) => a.iter().any(|v| v.as_str() == Some(aud)),
            _ => false,
        };
        if !aud_ok {
            return Err(AuthError::Invalid("wrong audience"));
        }
        let exp = c["exp"].as_i64().ok_or(AuthError::Invalid("no expiry"))?;
        if exp + LEEWAY_SECS <= now {
            return Err(AuthError::Invalid("expired"));
        }
        if c["nbf"].as_i64().is_some_and(|nbf| nbf - LEEWAY_SECS > now) {
            return Err(AuthError::Invalid("not yet valid"));
        }
        let groups: Vec<&str> = match &c[self.config.roles.claim.as_str()] {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => vec![],
        };
        if groups.contains(&self.config.roles.admin.as_str()) {
            Ok(Role::Admin)
        } else if groups.contains(&self.config.roles.viewer.as_str()) {
            Ok(Role::Viewer)
        } else {
            Err(AuthError::Forbidden)
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ladder_crds::contract::OidcRoles;
    use serde_json::json;

    fn auth() -> Auth {
        Auth::new(
            OidcConfig {
                issuer_url: "https://login.example.com/realms/shop".into(),
                client_id: "shop-app".into(),
                audience: "shop-app".into(),
                scopes: vec![],
                roles: OidcRoles {
                    claim: "groups".into(),
                    admin: "ladder-admins".into(),
                    viewer: "ladder-viewers".into(),
                },
            },
            None,
        )
        .expect("auth")
    }

    #[test]
    fn api_key_hashes() {
        let h: ApiKeyHash = format!("sha256:{}", "ab".repeat(32))
            .parse()
            .expect("parses");
        assert_eq!(h.0, [0xab; 32]);
        for bad in [
            "",
            "ab".repeat(32).as_str(),
            &format!("sha256:{}", "AB".repeat(32)),
            &format!("sha256:{}", "ab".repeat(31)),
            &format!("sha512:{}", "ab".repeat(32)),
            &format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert!(bad.parse::<ApiKeyHash>().is_err(), "{bad}");
        }
        // The documented recipe: sha256sum of the key (no newline).
        let known: ApiKeyHash =
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
                .parse()
                .expect("parses");
        assert!(known.matches("foo"));
        assert!(!known.matches("fop"));
        assert!(!known.matches(""));
        assert!(
            !format!("{known:?}").contains("2c26"),
            "Debug hides the hash"
        );
    }

    #[test]
    fn an_open_api_only_on_loopback() {
        let at = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        assert!(check_exposure(at("127.0.0.1:8080"), false, false).is_ok());
        assert!(check_exposure(at("[::1]:8080"), false, false).is_ok());
        let err = check_exposure(at("0.0.0.0:8080"), false, false).expect_err("refused");
        assert!(err.to_string().contains("LADDER_API_KEY_HASH"), "{err}");
        assert!(check_exposure(at("0.0.0.0:8080"), true, false).is_ok());
        assert!(check_exposure(at("10.0.0.5:8080"), false, true).is_ok());
    }

    #[test]
    fn claims() {
        let a = auth();
        let ok = json!({"iss": "https://login.example.com/realms/shop", "aud": ["x", "shop-app"],
            "exp": 2000, "groups": ["ladder-admins"]});
        assert_eq!(a.check_claims(&ok, 1000), Ok(Role::Admin));
        let mut viewer = ok.clone();
        viewer["groups"] = json!("ladder-viewers");
        assert_eq!(a.check_claims(&viewer, 1000), Ok(Role::Viewer));
        let mut none = ok.clone();
        none["groups"] = json!(["other"]);
        assert_eq!(a.check_claims(&none, 1000), Err(AuthError::Forbidden));
        assert!(matches!(
            a.check_claims(&ok, 2061),
            Err(AuthError::Invalid("expired"))
        ));
        let mut aud = ok.clone();
        aud["aud"] = json!("other");
        assert!(a.check_claims(&aud, 1000).is_err());
        let mut iss = ok.clone();
        iss["iss"] = json!("https://evil.example.com/realms/shop");
        assert!(a.check_claims(&iss, 1000).is_err());
        let mut nbf = ok;
        nbf["nbf"] = json!(1100);
        assert!(a.check_claims(&nbf, 1000).is_err());
    }

    #[tokio::test]
    async fn malformed_and_unsigned_tokens_are_refused() {
        let a = auth();
        for t in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(matches!(a.role(t).await, Err(AuthError::Invalid(_))), "{t}");
        }
        // `none` and shared-secret algorithms, whatever the signature says.
        for (header, sig) in [(r#"{"alg":"none"}"#, ""), (r#"{"alg":"HS256"}"#, "c2ln")] {
            let token = format!(
                "{}.{}.{sig}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(br#"{"iss":"x"}"#)
            );
            assert_eq!(
                a.role(&token).await,
                Err(AuthError::Invalid("algorithm not allowed")),
                "{header}"
            );
        }
    }
}
