//! An OpenID Connect identity provider for tests: discovery and a JWKS on loopback, and ES256
//! tokens signed by keys made here.

use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;

/// A signing key and its JWK.
pub struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl SigningKey {
    pub fn new(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key pair");
        SigningKey {
            kid: kid.into(),
            pair,
        }
    }

    pub fn jwk(&self) -> serde_json::Value {
        let point = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
    }

    /// A compact JWS of `claims`, with this key's `kid` (or `kid` when given).
    pub fn sign(&self, claims: &serde_json::Value, kid: Option<&str>) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid.unwrap_or(&self.kid)});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// An identity provider: discovery and a JWKS that the test can change.
pub struct Issuer {
    pub url: String,
    pub jwks: Arc<RwLock<serde_json::Value>>,
    _task: tokio::task::JoinHandle<()>,
}

/// `tls`: serve HTTPS with this certificate and key (PEM paths); plain HTTP otherwise.
pub async fn issuer(tls: Option<(&std::path::Path, &std::path::Path)>) -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}/realms/shop"),
        None => format!("http://127.0.0.1:{port}/realms/shop"),
    };
    let jwks = Arc::new(RwLock::new(json!({"keys": []})));
    let (u, j) = (url.clone(), jwks.clone());
    let app = axum::Router::new()
        .route(
            "/realms/shop/.well-known/openid-configuration",
            axum::routing::get(move || {
                let u = u.clone();
                async move { axum::Json(json!({"issuer": u, "jwks_uri": format!("{u}/certs")})) }
            }),
        )
        .route(
            "/realms/shop/certs",
            axum::routing::get(move || {
                let j = j.clone();
                async move { axum::Json(j.read().expect("lock").clone()) }
            }),
        );
    let tls = tls.map(|(cert, key)| ladder_app::tls::server_config(cert, key).expect("TLS config"));
    let task = tokio::spawn(async move {
        match tls {
            Some(config) => {
                let l = ladder_app::tls::TlsListener::new(listener, config).expect("listener");
                let _ = axum::serve(l, app).await;
            }
            None => {
                let _ = axum::serve(listener, app).await;
            }
        }
    });
    Issuer {
        url,
        jwks,
        _task: task,
    }
}

/// Claims of a token of `issuer` for `aud`, with `groups`, expiring in `exp_in` seconds.
pub fn claims(issuer: &str, aud: &str, groups: &[&str], exp_in: i64) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    json!({"iss": issuer, "aud": aud, "sub": "someone", "iat": now, "exp": now + exp_in,
        "groups": groups})
}
