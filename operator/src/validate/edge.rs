//! The edge policy (phases 2-4): rate limit, cache TTL, who may PURGE, which
//! paths the WAF blocks and which proxies may name the client. These values end up in the VCL and the app's
//! rules file, so each is parsed into a form that cannot carry anything else.

use super::fields;
use super::{Edge, Invalid};
use ladder_crds::catalogue::{PhaseProfile, defaults};
use ladder_crds::scalingphase::{Cidr, EdgeSpec};

/// Parses `a.b.c.d/n` into octets and prefix length.
pub fn parse_cidr(s: &str) -> Option<([u8; 4], u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for o in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *o = part.parse().ok()?;
    }
    parts.next().is_none().then_some((octets, prefix))
}

fn is_url_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 128
        && p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._~/-".contains(&c))
}

/// The edge policy, when the phase has one.
pub(super) fn edge(e: &EdgeSpec, profile: &PhaseProfile) -> Result<Option<Edge>, Invalid> {
    let Some(default_rate) = profile.rate_limit_per_second else {
        return Ok(None);
    };
    let rate = fields::count(
        "spec.edge.rateLimitPerSecond",
        e.rate_limit_per_second,
        default_rate,
        1,
        1_000_000,
    )?;
    let ttl = fields::count(
        "spec.edge.cacheTtlSeconds",
        e.cache_ttl_seconds,
        defaults::EDGE_CACHE_TTL_SECONDS,
        0,
        86_400,
    )?;
    if e.purge_allowed_cidrs.len() > 16
        || e.trusted_proxy_cidrs.len() > 16
        || e.blocked_paths.len() > 32
    {
        return Err(Invalid::field(
            "spec.edge",
            "at most 16 purge networks, 16 trusted proxy networks and 32 blocked paths",
        ));
    }
    let cidrs = |field: &str, list: &[Cidr]| {
        list.iter()
            .map(|c| {
                parse_cidr(&c.0)
                    .ok_or_else(|| Invalid::field(field, format!("{:?} is not an IPv4 CIDR", c.0)))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let purge_allowed = cidrs("spec.edge.purgeAllowedCidrs", &e.purge_allowed_cidrs)?;
    let trusted_proxies = cidrs("spec.edge.trustedProxyCidrs", &e.trusted_proxy_cidrs)?;
    let mut blocked_paths = Vec::new();
    for p in &e.blocked_paths {
        if !is_url_path(&p.0) {
            return Err(Invalid::field(
                "spec.edge.blockedPaths",
                format!("{:?} is not a plain URL path", p.0),
            ));
        }
        blocked_paths.push(p.0.clone());
    }
    Ok(Some(Edge {
        rate_limit_per_second: rate,
        cache_ttl_seconds: ttl,
        purge_allowed,
        blocked_paths,
        trusted_proxies,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ladder_crds::catalogue::{Phase, profile};

    fn spec(yaml: &str) -> EdgeSpec {
        serde_yaml::from_str(yaml).expect("edge parses")
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Some(([10, 0, 0, 0], 8)));
        for bad in [
            "300.0.0.0/8",
            "1.2.3/8",
            "1.2.3.4/33",
            "1.2.3.4",
            "1.2.3.4.5/8",
            "a.b.c.d/8",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn defaults_by_phase_and_refusals() {
        assert_eq!(edge(&spec("{}"), &profile(Phase::Growth)), Ok(None));
        let p2 = profile(Phase::Regional);
        let e = edge(&spec("{}"), &p2)
            .expect("valid")
            .expect("phase 2 has an edge");
        assert_eq!(e.rate_limit_per_second, 50);
        assert_eq!(e.cache_ttl_seconds, defaults::EDGE_CACHE_TTL_SECONDS);
        assert!(e.trusted_proxies.is_empty());
        let e = edge(&spec("{trustedProxyCidrs: [10.244.0.0/16]}"), &p2)
            .expect("valid")
            .expect("phase 2 has an edge");
        assert_eq!(e.trusted_proxies, vec![([10, 244, 0, 0], 16)]);
        for bad in [
            "{purgeAllowedCidrs: [300.1.1.1/8]}",
            "{trustedProxyCidrs: [10.0.0.0/33]}",
            "{blockedPaths: ['/a\" ; return (pass)']}",
            "{blockedPaths: [no-slash]}",
            "{rateLimitPerSecond: 0}",
        ] {
            assert!(edge(&spec(bad), &p2).is_err(), "{bad}");
        }
    }
}
