//! Enterprise auth (phase 4): the OIDC issuer, client and audience the app
//! verifies tokens against. They are written into the app's config, so each
//! is held to plain characters.

use super::fields::is_token;
use super::{Invalid, Oidc};
use ladder_crds::catalogue::PhaseProfile;
use ladder_crds::scalingphase::AuthSpec;

/// The OIDC settings, required when the phase has enterprise auth.
pub(super) fn oidc(
    auth: Option<&AuthSpec>,
    profile: &PhaseProfile,
) -> Result<Option<Oidc>, Invalid> {
    if !profile.enterprise_auth {
        return Ok(None);
    }
    let a = auth.ok_or_else(|| {
        Invalid::field(
            "spec.auth",
            "phase 4 (Global) needs OIDC settings for enterprise auth",
        )
    })?;
    let host_and_path = a.issuer_url.strip_prefix("https://").unwrap_or_default();
    if !is_token(host_and_path, b".-:/_~") {
        return Err(Invalid::field(
            "spec.auth.issuerUrl",
            "must be an https URL of plain characters",
        ));
    }
    if !is_token(&a.client_id, b"._:-") || a.client_id.len() > 128 {
        return Err(Invalid::field(
            "spec.auth.clientId",
            "letters, digits and ._:- only",
        ));
    }
    let audience = a.audience.clone().unwrap_or_else(|| a.client_id.clone());
    if !is_token(&audience, b"._:/-") || audience.len() > 128 {
        return Err(Invalid::field(
            "spec.auth.audience",
            "letters, digits and ._:/- only",
        ));
    }
    Ok(Some(Oidc {
        issuer_url: a.issuer_url.clone(),
        client_id: a.client_id.clone(),
        audience,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ladder_crds::catalogue::{Phase, profile};

    fn auth(yaml: &str) -> AuthSpec {
        serde_yaml::from_str(yaml).expect("auth parses")
    }

    #[test]
    fn only_phase_4_needs_it_and_the_audience_defaults_to_the_client() {
        let p4 = profile(Phase::Global);
        assert_eq!(oidc(None, &profile(Phase::National)), Ok(None));
        assert!(oidc(None, &p4).is_err());
        let a = auth("{issuerUrl: 'https://id.example.com/realms/x', clientId: app}");
        let o = oidc(Some(&a), &p4).expect("valid").expect("phase 4");
        assert_eq!(o.audience, "app");
    }

    #[test]
    fn refusals() {
        let p4 = profile(Phase::Global);
        for bad in [
            "{issuerUrl: 'http://id.example.com', clientId: app}",
            "{issuerUrl: 'https://', clientId: app}",
            "{issuerUrl: 'https://id.example.com/?a=b', clientId: app}",
            "{issuerUrl: 'https://id.example.com', clientId: 'a b'}",
            "{issuerUrl: 'https://id.example.com', clientId: app, audience: 'a\"b'}",
        ] {
            assert!(oidc(Some(&auth(bad)), &p4).is_err(), "{bad}");
        }
    }
}
