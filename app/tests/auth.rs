//! Enterprise auth (phase 4) against a real HTTP identity provider stub on loopback: discovery,
//! JWKS, ES256 tokens signed here, key rotation.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::oidc::{SigningKey, claims, issuer};
use common::*;
use ladder_app::store::StoreSpec;
use ladder_crds::contract::{OidcConfig, OidcRoles};
use serde_json::json;

#[tokio::test]
async fn the_management_api_needs_a_token_with_a_role_and_redirects_stay_public() {
    let idp = issuer(None).await;
    let k1 = SigningKey::new("k1");
    *idp.jwks.write().expect("lock") = json!({"keys": [k1.jwk()]});
    let dir = std::env::temp_dir().join(unique("oidc"));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = OidcConfig {
        issuer_url: idp.url.clone(),
        client_id: "shop-app".into(),
        audience: "shop-app".into(),
        scopes: vec!["openid".into()],
        roles: OidcRoles {
            claim: "groups".into(),
            admin: "ladder-admins".into(),
            viewer: "ladder-viewers".into(),
        },
    };
    std::fs::write(
        dir.join("oidc.json"),
        serde_json::to_vec(&config).expect("json"),
    )
    .expect("write");
    let mut a = args(StoreSpec::Sqlite {
        path: temp_sqlite(),
    });
    a.oidc_config = Some(dir.join("oidc.json"));
    let app = start(&a).await;
    let (c, base) = (http(), app.url());
    let admin = k1.sign(&claims(&idp.url, "shop-app", &["ladder-admins"], 300), None);
    let viewer = k1.sign(
        &claims(&idp.url, "shop-app", &["ladder-viewers"], 300),
        None,
    );
    let post = |token: Option<String>, code: &'static str| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let mut r = c
                .post(format!("{base}/api/v1/links"))
                .json(&json!({"url": "https://example.com/x", "code": code}));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().await.expect("post")
        }
    };

    // No token: 401 with a challenge, nothing written.
    let r = post(None, "nope-1").await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );
    // Viewer: may read, may not write.
    assert_eq!(post(Some(viewer.clone()), "nope-2").await.status(), 403);
    let r = c
        .get(format!("{base}/api/v1/links/nope-2"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status(),
        404,
        "the viewer's read reached the store; nothing was written"
    );
    // Admin: writes.
    assert_eq!(post(Some(admin.clone()), "yes-1").await.status(), 201);
    // The redirect is public.
    let r = c
        .get(format!("{base}/yes-1"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(r.status(), 302);

    // Refused: expired, wrong audience, wrong issuer, no role, forged with another key under
    // the same kid, tampered claims.
    let bad = [
        k1.sign(
            &claims(&idp.url, "shop-app", &["ladder-admins"], -3600),
            None,
        ),
        k1.sign(
            &claims(&idp.url, "other-app", &["ladder-admins"], 300),
            None,
        ),
        k1.sign(
            &claims(
                "http://127.0.0.1:1/realms/shop",
                "shop-app",
                &["ladder-admins"],
                300,
            ),
            None,
        ),
        SigningKey::new("k1").sign(&claims(&idp.url, "shop-app", &["ladder-admins"], 300), None),
        {
            let mut parts: Vec<String> = viewer.split('.').map(str::to_owned).collect();
            parts[1] = URL_SAFE_NO_PAD
                .encode(claims(&idp.url, "shop-app", &["ladder-admins"], 300).to_string());
            parts.join(".")
        },
    ];
    for (i, t) in bad.into_iter().enumerate() {
        let r = post(Some(t), "nope-3").await;
        assert_eq!(r.status(), 401, "bad token {i}");
    }
    let none = k1.sign(&claims(&idp.url, "shop-app", &["others"], 300), None);
    assert_eq!(post(Some(none), "nope-4").await.status(), 403);
    for code in ["nope-1", "nope-2", "nope-3", "nope-4"] {
        let r = c
            .get(format!("{base}/api/v1/links/{code}"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "{code} was not written");
    }

    // Key rotation: a token under a new kid makes the app fetch the JWKS again.
    let k2 = SigningKey::new("k2");
    *idp.jwks.write().expect("lock") = json!({"keys": [k1.jwk(), k2.jwk()]});
    let rotated = k2.sign(&claims(&idp.url, "shop-app", &["ladder-admins"], 300), None);
    assert_eq!(post(Some(rotated), "yes-2").await.status(), 201);
}

/// The real binary refuses to serve an open management API on a non-loopback address, before
/// it binds anything, and says what to set.
#[tokio::test]
async fn an_unauthenticated_api_is_refused_off_loopback() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ladder-app"))
        .arg("serve")
        .env_clear()
        .env("LADDER_LISTEN", format!("0.0.0.0:{}", free_port()))
        .env("LADDER_STORE", format!("sqlite:{}", temp_sqlite()))
        .output()
        .await
        .expect("run ladder-app");
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("refusing to serve an unauthenticated management API")
            && text.contains("LADDER_API_KEY_HASH"),
        "{text}"
    );
    // A malformed hash is refused with the expected format.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ladder-app"))
        .arg("serve")
        .env_clear()
        .env("LADDER_API_KEY_HASH", "md5:abc")
        .output()
        .await
        .expect("run ladder-app");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256:<64 lowercase hex digits>"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
