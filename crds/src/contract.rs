//! The contract between the operator and ladder-app.
//!
//! The operator configures every app instance through environment variables and mounted
//! documents; ladder-app reads exactly these. Both crates use this module, so a renamed
//! variable or a changed document format fails to compile instead of failing in a cluster.
//!
//! Rules of the wiring:
//! - URLs never carry passwords. The password of each service travels in its own variable
//!   (filled from a Secret with `secretKeyRef`), and the app puts it into the URL it connects
//!   with. So the Deployment's spec, `kubectl describe` and the shard map ConfigMap never hold
//!   a secret.
//! - From phase 1 every connection is TLS: PostgreSQL URLs carry `sslmode=verify-full` and
//!   `sslrootcert`, Redis is `rediss://`, ClickHouse is `https://`, and [`env::TLS_CA`] names
//!   the CA every client trusts. When [`env::TLS_CERT`] and [`env::TLS_KEY`] are set the app
//!   serves HTTPS.

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Names of the environment variables the operator renders and the app reads.
pub mod env {
    /// The data tier: `sqlite:PATH | postgres:URL | pgbouncer:URL | replicas:PRIMARY,REPLICA,.. |
    /// shards:MAP.json | dsql:URL`.
    pub const STORE: &str = "LADDER_STORE";
    /// Password of the PostgreSQL user of every PostgreSQL URL that has none.
    pub const DB_PASSWORD: &str = "LADDER_DB_PASSWORD";
    /// Redis URL (`rediss://user@host:port/db`); its password is [`REDIS_PASSWORD`].
    pub const REDIS_URL: &str = "LADDER_REDIS_URL";
    pub const REDIS_PASSWORD: &str = "LADDER_REDIS_PASSWORD";
    /// ClickHouse HTTP(S) interface (`https://user@host:port/`); password [`CLICKHOUSE_PASSWORD`].
    pub const CLICKHOUSE_URL: &str = "LADDER_CLICKHOUSE_URL";
    pub const CLICKHOUSE_PASSWORD: &str = "LADDER_CLICKHOUSE_PASSWORD";
    /// Edge cache base URLs (comma-separated, one per Varnish pod) to PURGE on update/delete.
    pub const VARNISH_URL: &str = "LADDER_VARNISH_URL";
    /// The rate-limit and WAF rules file ([`super::Rules`]).
    pub const RULES_FILE: &str = "LADDER_RULES_FILE";
    /// The subject common name of the client certificate the edge tier presents (signed by
    /// [`TLS_CA`]): a connection that presented it may say who the client is in
    /// `X-Forwarded-For`. Needs the app to serve HTTPS.
    pub const EDGE_CLIENT_NAME: &str = "LADDER_EDGE_CLIENT_NAME";
    /// Networks (comma-separated CIDRs) of the proxies in front of the app (phase 2's ingress):
    /// from a peer in one of them, the last `X-Forwarded-For` address is the client.
    pub const TRUSTED_PROXIES: &str = "LADDER_TRUSTED_PROXIES";
    /// The CA certificate clients trust (Redis, ClickHouse; PostgreSQL URLs name it too).
    pub const TLS_CA: &str = "LADDER_TLS_CA";
    /// The app's serving certificate and key: when both are set it serves HTTPS.
    pub const TLS_CERT: &str = "LADDER_TLS_CERT";
    pub const TLS_KEY: &str = "LADDER_TLS_KEY";
    /// Address to listen on.
    pub const LISTEN: &str = "LADDER_LISTEN";
    /// The phase served (0-4).
    pub const PHASE: &str = "LADDER_PHASE";
    /// The ScalingPhase served (named in LoadReports).
    pub const SCALING_PHASE: &str = "LADDER_SCALING_PHASE";
    /// Write LoadReports.
    pub const REPORT_LOAD: &str = "LADDER_REPORT_LOAD";
    /// The Pod's name and namespace (downward API).
    pub const POD_NAME: &str = "LADDER_POD_NAME";
    pub const NAMESPACE: &str = "LADDER_NAMESPACE";
    /// OIDC settings for enterprise auth (phase 4).
    pub const OIDC_CONFIG: &str = "LADDER_OIDC_CONFIG";

    /// Prefix of every variable of this contract: `spec.app.env` may not use it.
    pub const RESERVED_PREFIX: &str = "LADDER_";
    /// The app's name in traces.
    pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    /// The ScalingPhase and phase, as trace resource attributes.
    pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    /// The trace sampler and its argument.
    pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
    pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    /// The OpenTelemetry variables the operator sets on the app. Only these
    /// are reserved: `spec.app.env` may set any other `OTEL_` variable (the
    /// collector's endpoint, headers, the batch processor's tuning).
    pub const OTEL_SET_BY_OPERATOR: [&str; 4] = [
        OTEL_SERVICE_NAME,
        OTEL_RESOURCE_ATTRIBUTES,
        OTEL_TRACES_SAMPLER,
        OTEL_TRACES_SAMPLER_ARG,
    ];

    /// Whether `spec.app.env` may not set `name`: the operator sets it (two
    /// entries of one name would also be refused by server-side apply).
    /// The CRD's CEL rule on `spec.app.env[*].name` says the same.
    pub fn is_reserved(name: &str) -> bool {
        name.starts_with(RESERVED_PREFIX) || OTEL_SET_BY_OPERATOR.contains(&name)
    }
    /// `sha256:<lowercase hex of SHA-256(key)>`: the management API then requires
    /// `Authorization: Bearer <key>`. The app holds only the hash; the key itself lives in a
    /// Secret for the API's clients.
    pub const API_KEY_HASH: &str = "LADDER_API_KEY_HASH";
}

/// URL scheme naming a PostgreSQL database behind PgBouncer in transaction mode
/// (`postgres+pgbouncer://user@host:6432/db?...`) where a list of URLs can't say so otherwise
/// (the replica list, shard maps): the app then never reuses prepared statements on it.
pub const PGBOUNCER_SCHEME: &str = "postgres+pgbouncer";

/// Number of hash slots of every shard map the operator renders.
pub const SHARD_SLOTS: u32 = 16_384;

/// FNV-1a, 64 bit: the hash of the shard map's slots (and of checksums in the app).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One shard: a name and the PostgreSQL URL of its primary (without password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDef {
    pub name: String,
    pub url: String,
}

impl std::fmt::Debug for ShardDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hand-written map may carry a password: never print it.
        let url = match url::Url::parse(&self.url) {
            Ok(_) => redact_url(&self.url),
            Err(_) => "<unparsable url>".to_owned(),
        };
        write!(f, "{}={url}", self.name)
    }
}

/// Replaces the password of a URL with `***` (for logs and errors).
pub fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => s.to_owned(),
    }
}

/// Slots `from..=to` live on `shard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRange {
    pub from: u32,
    pub to: u32,
    pub shard: String,
}

/// The versioned shard allocation map: a code's slot is `fnv1a64(code) % slots`, and `ranges`
/// assign every slot to exactly one shard. The app re-reads the file when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub version: u64,
    pub slots: u32,
    pub shards: Vec<ShardDef>,
    pub ranges: Vec<SlotRange>,
}

impl ShardMap {
    /// `shards.len()` shards splitting the slots into contiguous, near-equal ranges.
    pub fn even(version: u64, slots: u32, shards: Vec<ShardDef>) -> ShardMap {
        let n = (shards.len() as u32).clamp(1, slots.max(1));
        let per = slots / n;
        let ranges = shards
            .iter()
            .take(n as usize)
            .enumerate()
            .map(|(i, s)| {
                let from = i as u32 * per;
                let to = if i as u32 + 1 == n {
                    slots - 1
                } else {
                    from + per - 1
                };
                SlotRange {
                    from,
                    to,
                    shard: s.name.clone(),
                }
            })
            .collect();
        ShardMap {
            version,
            slots,
            shards,
            ranges,
        }
    }

    /// Validates and returns the slot → shard index table.
    pub fn slot_table(&self) -> anyhow::Result<Vec<usize>> {
        if self.slots == 0 || self.slots > 65_536 {
            bail!("slots must be 1..=65536");
        }
        if self.shards.is_empty() {
            bail!("a shard map needs at least one shard");
        }
        let index: HashMap<&str, usize> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        if index.len() != self.shards.len() {
            bail!("shard names must be unique");
        }
        let mut table = vec![usize::MAX; self.slots as usize];
        for r in &self.ranges {
            let shard = *index
                .get(r.shard.as_str())
                .with_context(|| format!("range names unknown shard {}", r.shard))?;
            if r.from > r.to || r.to >= self.slots {
                bail!("bad range {}..={}", r.from, r.to);
            }
            for slot in r.from..=r.to {
                let cell = &mut table[slot as usize];
                if *cell != usize::MAX {
                    bail!("slot {slot} is assigned twice");
                }
                *cell = shard;
            }
        }
        if let Some(slot) = table.iter().position(|s| *s == usize::MAX) {
            bail!("slot {slot} is not assigned");
        }
        Ok(table)
    }

    pub fn slot_of(&self, code: &str) -> u32 {
        (fnv1a64(code.as_bytes()) % u64::from(self.slots.max(1))) as u32
    }

    /// Parses and validates a map document.
    pub fn parse(text: &str) -> anyhow::Result<ShardMap> {
        let map: ShardMap = serde_json::from_str(text).context("parsing shard map")?;
        map.slot_table()?;
        Ok(map)
    }

    /// Reads and validates a map file.
    pub fn load(path: &str) -> anyhow::Result<ShardMap> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading shard map {path}"))?;
        ShardMap::parse(&text).with_context(|| format!("shard map {path}"))
    }
}

/// The rate-limit and WAF rules the app enforces (a JSON file, [`env::RULES_FILE`]). Every
/// field is optional; missing fields keep their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rules {
    /// Token refill rate per client; 0 disables rate limiting.
    pub rate_per_second: f64,
    /// Bucket size (the largest burst a client may send at once).
    pub burst: f64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest accepted target URL.
    pub max_url_length: usize,
    /// Target hosts refused (exact match or any subdomain).
    pub blocked_hosts: Vec<String>,
    /// Clients (IP addresses) refused outright with 403.
    pub blocked_clients: Vec<String>,
    /// Request paths refused with 403 (prefix match).
    pub blocked_path_prefixes: Vec<String>,
    /// HTTP methods refused with 405.
    pub blocked_methods: Vec<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            rate_per_second: 0.0,
            burst: 0.0,
            max_body_bytes: 8 * 1024,
            max_url_length: 2048,
            blocked_hosts: Vec::new(),
            blocked_clients: Vec::new(),
            blocked_path_prefixes: Vec::new(),
            blocked_methods: Vec::new(),
        }
    }
}

impl Rules {
    pub fn host_blocked(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.blocked_hosts.iter().any(|b| {
            let b = b.to_ascii_lowercase();
            host == b || host.ends_with(&format!(".{b}"))
        })
    }

    /// Whether a request path (raw, as sent: `Uri::path`) may pass the WAF. With no blocked
    /// prefix every path passes. Otherwise the path is normalised ([`normalize_path`]) and
    /// refused when that fails or when it starts with a blocked prefix (compared without
    /// regard to ASCII case, as the edge's VCL does).
    pub fn check_path(&self, raw: &str) -> Result<(), PathRefusal> {
        if self.blocked_path_prefixes.iter().all(String::is_empty) {
            return Ok(());
        }
        let path = normalize_path(raw)?;
        let blocked = self.blocked_path_prefixes.iter().any(|p| {
            !p.is_empty()
                && path
                    .as_bytes()
                    .get(..p.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
        });
        if blocked {
            Err(PathRefusal::Blocked)
        } else {
            Ok(())
        }
    }

    /// [`Rules::check_path`] refuses `path`.
    pub fn path_blocked(&self, path: &str) -> bool {
        self.check_path(path).is_err()
    }

    pub fn method_blocked(&self, method: &str) -> bool {
        self.blocked_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
    }

    /// Whether any per-request check is on (the app skips the middleware otherwise).
    pub fn any_request_checks(&self) -> bool {
        self.rate_per_second > 0.0
            || !self.blocked_clients.is_empty()
            || !self.blocked_path_prefixes.is_empty()
            || !self.blocked_methods.is_empty()
    }
}

/// Why the WAF refuses a request path ([`Rules::check_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// It starts with a blocked prefix (403).
    Blocked,
    /// A `%` not followed by two hex digits (400).
    MalformedEscape,
    /// An encoded `%` (`%25`): a second decoding downstream would read another path (400).
    DoubleEncoded,
    /// A control character (NUL, CR, LF, ...), raw or encoded (400).
    ControlCharacter,
    /// A `.` or `..` segment once decoded: clients resolve them before sending (400).
    DotSegment,
}

impl std::fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathRefusal::Blocked => "path refused by the WAF rules",
            PathRefusal::MalformedEscape => "the path has a malformed percent escape",
            PathRefusal::DoubleEncoded => "the path has an encoded percent sign (double encoding)",
            PathRefusal::ControlCharacter => "the path has a control character",
            PathRefusal::DotSegment => "the path has a `.` or `..` segment",
        })
    }
}

/// The path the WAF matches, the one definition shared by the app and the edge's VCL
/// (`ladder-operator`'s `varnish_vcl` renders the same steps): percent-decoded once, `\` read
/// as `/`, runs of `/` collapsed to one, ASCII lower-cased. Forms no well-behaved client sends
/// and that a decoder behind the WAF could read differently are refused instead: malformed or
/// double (`%25`) encoding, control characters, and `.`/`..` segments (browsers and HTTP
/// libraries resolve those before sending). So `/%61dmin`, `/ADMIN`, `//admin`, `\admin` and
/// `/x/%2e%2e/admin` either normalise to `/admin` or are refused; none walks past a rule for
/// `/admin`.
pub fn normalize_path(raw: &str) -> Result<String, PathRefusal> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let mut b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathRefusal::MalformedEscape);
            };
            b = hi << 4 | lo;
            if b == b'%' {
                return Err(PathRefusal::DoubleEncoded);
            }
            i += 3;
        } else {
            i += 1;
        }
        if b.is_ascii_control() {
            return Err(PathRefusal::ControlCharacter);
        }
        let b = if b == b'\\' { b'/' } else { b };
        if b == b'/' && decoded.last() == Some(&b'/') {
            continue;
        }
        decoded.push(b.to_ascii_lowercase());
    }
    if decoded
        .split(|&b| b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
    {
        return Err(PathRefusal::DotSegment);
    }
    Ok(String::from_utf8_lossy(&decoded).into_owned())
}

/// The app's enterprise auth settings (phase 4, [`env::OIDC_CONFIG`]): bearer tokens of this
/// OIDC issuer guard the management API; redirects stay public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OidcConfig {
    /// The issuer; its discovery document is `<issuerUrl>/.well-known/openid-configuration`.
    pub issuer_url: String,
    pub client_id: String,
    /// Tokens must name this audience.
    pub audience: String,
    pub scopes: Vec<String>,
    pub roles: OidcRoles,
}

/// Which token claim carries the groups, and the groups of each role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OidcRoles {
    pub claim: String,
    /// Members may read and write links.
    pub admin: String,
    /// Members may read links.
    pub viewer: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: usize) -> Vec<ShardDef> {
        (0..n)
            .map(|i| ShardDef {
                name: format!("shard-{i}"),
                url: format!("postgres://ladder@pgbouncer:6432/shard_{i}"),
            })
            .collect()
    }

    #[test]
    fn even_maps_cover_every_slot_once() {
        for n in 1..=9 {
            let m = ShardMap::even(1, SHARD_SLOTS, shards(n));
            let table = m.slot_table().expect("valid");
            assert_eq!(table.len(), SHARD_SLOTS as usize);
            for i in 0..n {
                assert!(table.contains(&i), "shard {i} of {n} owns slots");
            }
            let text = serde_json::to_string(&m).expect("serialises");
            assert_eq!(ShardMap::parse(&text).expect("round trip"), m);
        }
    }

    #[test]
    fn invalid_maps_are_refused() {
        let mut m = ShardMap::even(1, 16, shards(2));
        m.ranges.pop();
        assert!(m.slot_table().is_err(), "uncovered slots");
        let mut m = ShardMap::even(1, 16, shards(2));
        m.ranges[1].from = 0;
        assert!(m.slot_table().is_err(), "slot assigned twice");
        let mut m = ShardMap::even(1, 16, shards(2));
        m.ranges[0].shard = "nope".into();
        assert!(m.slot_table().is_err(), "unknown shard");
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn debug_never_prints_a_password() {
        let s = ShardDef {
            name: "a".into(),
            url: "postgres://u:secret@h/db".into(),
        };
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn rules_checks() {
        let r: Rules = serde_json::from_str(
            r#"{"blockedPathPrefixes": ["/admin"], "blockedMethods": ["TRACE"]}"#,
        )
        .expect("parses");
        assert!(r.path_blocked("/admin/x"));
        assert!(!r.path_blocked("/api/v1/links"));
        assert_eq!(r.check_path("/api/v1/links"), Ok(()));
        assert_eq!(r.check_path("/Admin"), Err(PathRefusal::Blocked));
        assert!(r.method_blocked("trace"));
        assert!(!r.method_blocked("GET"));
        assert!(r.any_request_checks());
        assert!(!Rules::default().any_request_checks());
    }

    /// Every encoded, doubled or re-cased spelling of a blocked path is blocked or refused;
    /// ordinary paths pass unchanged.
    #[test]
    fn encoded_paths_do_not_walk_past_the_waf() {
        let r = Rules {
            blocked_path_prefixes: vec!["/admin".into(), "/api/v1/internal".into()],
            ..Rules::default()
        };
        use PathRefusal::*;
        for (path, want) in [
            ("/admin", Blocked),
            ("/ADMIN/users", Blocked),
            ("/%61dmin", Blocked),
            ("/%41DMIN", Blocked),
            ("/adm%69n/x", Blocked),
            ("//admin", Blocked),
            ("/%2fadmin", Blocked),
            ("/%2Fadmin", Blocked),
            ("\\admin", Blocked),
            ("/%5cadmin", Blocked),
            ("/api/v1//internal/x", Blocked),
            ("/api/v1/%69nternal", Blocked),
            ("/api%2fv1%2finternal", Blocked),
            ("/x/../admin", DotSegment),
            ("/x/%2e%2e/admin", DotSegment),
            ("/x/.%2E/admin", DotSegment),
            ("/./admin", DotSegment),
            ("/x%2f..%2fadmin", DotSegment),
            ("/%2561dmin", DoubleEncoded),
            ("/%25", DoubleEncoded),
            ("/admin%", MalformedEscape),
            ("/%6", MalformedEscape),
            ("/%zzadmin", MalformedEscape),
            ("/%00/admin", ControlCharacter),
            ("/adm%0ain", ControlCharacter),
            ("/x%7f", ControlCharacter),
        ] {
            assert_eq!(r.check_path(path), Err(want), "{path}");
        }
        for ok in [
            "/",
            "/abc123",
            "/api/v1/links",
            "/api/v1/links/x/stats",
            "/administrator-of-nothing-but-prefixed",
            "/x..y",
            "/.well-known",
            "/caf%C3%A9",
        ] {
            let expected = if ok.starts_with("/admin") {
                Err(Blocked)
            } else {
                Ok(())
            };
            assert_eq!(r.check_path(ok), expected, "{ok}");
        }
        assert_eq!(normalize_path("/A//B%2Fc\\d").as_deref(), Ok("/a/b/c/d"));
        // Without a blocked prefix nothing is normalised or refused.
        assert_eq!(Rules::default().check_path("/%zz/../x"), Ok(()));
    }
}
