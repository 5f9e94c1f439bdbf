//! Text config rendered from validated values: `postgresql.conf`,
//! `pg_hba.conf`, `pgbouncer.ini`, `redis.conf`, the Varnish VCL, the shard map
//! and the JSON policies. User-provided values are quoted here (PostgreSQL) or
//! were parsed into numbers and checked character sets by
//! [`crate::validate`] (CIDRs, paths), so no value can start a new line, a
//! new key or a new VCL statement. Every function is pure.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;

use crate::validate::{Edge, Oidc};
use ladder_crds::contract;

/// Version of the first shard allocation, the one a climb to phase 3 writes (the ConfigMap
/// holding a map is immutable and named after its version; the slot count is
/// [`ladder_crds::contract::SHARD_SLOTS`], fixed). A shard-count change in phase 3 is a
/// resharding: it writes the next version beside this one (`crate::transition`).
pub const SHARD_MAP_VERSION: u32 = 1;

/// Quotes a `postgresql.conf` value: single quotes, with `'` and `\` doubled.
/// Control characters (newlines included) are refused.
pub fn pg_quote(value: &str) -> Option<String> {
    if value.chars().any(char::is_control) {
        return None;
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Some(out)
}

/// `postgresql.conf`: the operator's settings, then the user's parameters
/// (names already checked, values quoted). The operator's TLS and replication
/// settings come last so a user parameter cannot turn them off.
pub fn postgresql_conf(parameters: &BTreeMap<String, String>, read_replicas: i32) -> String {
    let mut out =
        String::from("# Rendered by ladder-operator. Do not edit: changes are overwritten.\n");
    out.push_str(
        "listen_addresses = '*'\nport = 5432\nmax_connections = 200\nshared_buffers = '256MB'\n",
    );
    for (k, v) in parameters {
        if let Some(q) = pg_quote(v) {
            let _ = writeln!(out, "{k} = {q}");
        }
    }
    out.push_str("# Managed settings (override user parameters above).\n");
    out.push_str("ssl = on\nssl_cert_file = '/etc/ladder/tls/tls.crt'\nssl_key_file = '/etc/ladder/tls/tls.key'\n");
    out.push_str("ssl_ca_file = '/etc/ladder/tls/ca.crt'\nssl_min_protocol_version = 'TLSv1.2'\n");
    out.push_str(
        "password_encryption = 'scram-sha-256'\nwal_level = 'replica'\nhot_standby = on\n",
    );
    let _ = writeln!(out, "max_wal_senders = {}", (read_replicas + 2).max(4));
    out.push_str("wal_keep_size = '1GB'\n");
    out
}

/// `pg_hba.conf`: TLS with SCRAM only, replication for the replication user.
pub fn pg_hba_conf() -> String {
    "# Rendered by ladder-operator.\n\
     local   all          all                      scram-sha-256\n\
     hostssl replication  replicator  0.0.0.0/0    scram-sha-256\n\
     hostssl all          all         0.0.0.0/0    scram-sha-256\n\
     host    all          all         0.0.0.0/0    reject\n"
        .to_owned()
}

/// Run once by the primary's entrypoint on an empty data directory: creates
/// the replication role. The password comes from the environment (a Secret)
/// and is passed as a psql variable, quoted by psql itself.
pub fn pg_init_script() -> String {
    // psql interpolates :'pw' (quoted) only in scripts read from stdin, not in -c.
    "#!/bin/sh\n# Rendered by ladder-operator.\nset -eu\n\
     psql -v ON_ERROR_STOP=1 -v pw=\"$REPLICATION_PASSWORD\" --username \"$POSTGRES_USER\" --dbname \"$POSTGRES_DB\" <<'EOSQL'\n\
     CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';\n\
     EOSQL\n"
        .to_owned()
}

/// How long one query may run through PgBouncer before it is cancelled and
/// its server connection freed for others (seconds). Behind PgBouncer the
/// app sets no `statement_timeout` (startup parameters do not reach the
/// server in transaction pooling), so this bounds a runaway query; the app's
/// own request timeout (5 s) already bounds what a client waits. It is long
/// because `ladder-app migrate` goes through PgBouncer too, and its
/// verification checksums a whole table in one statement.
pub const PGBOUNCER_QUERY_TIMEOUT_SECS: u32 = 60;

/// `pgbouncer.ini` with one database entry per backend, `(db name, host)`.
///
/// `ignore_startup_parameters` lists what the app's driver (sqlx) sends that
/// PgBouncer does not track: `extra_float_digits` (PgBouncer refuses the
/// connection otherwise). `search_path` and `options` are not ignored: a
/// client that sets them expects them applied, and silently dropping them
/// would run its statements with other settings.
pub fn pgbouncer_ini(databases: &[(String, String)], pool_size: i32) -> String {
    let mut out = String::from("; Rendered by ladder-operator.\n[databases]\n");
    for (db, host) in databases {
        let _ = writeln!(out, "{db} = host={host} port=5432 dbname=ladder");
    }
    out.push_str("\n[pgbouncer]\nlisten_addr = 0.0.0.0\nlisten_port = 6432\n");
    out.push_str("auth_type = scram-sha-256\nauth_file = /etc/pgbouncer-auth/userlist.txt\n");
    out.push_str("pool_mode = transaction\nmax_client_conn = 2000\n");
    let _ = writeln!(out, "default_pool_size = {pool_size}");
    out.push_str("client_tls_sslmode = require\nclient_tls_cert_file = /etc/ladder/tls/tls.crt\n");
    out.push_str("client_tls_key_file = /etc/ladder/tls/tls.key\nclient_tls_ca_file = /etc/ladder/tls/ca.crt\n");
    out.push_str("server_tls_sslmode = verify-full\nserver_tls_ca_file = /etc/ladder/tls/ca.crt\n");
    out.push_str("admin_users = ladder\nstats_users = ladder\n");
    let _ = writeln!(out, "query_timeout = {PGBOUNCER_QUERY_TIMEOUT_SECS}");
    out.push_str("ignore_startup_parameters = extra_float_digits\n");
    out
}

/// Where Redis' password include is mounted (from the credentials Secret).
pub const REDIS_AUTH_DIR: &str = "/etc/redis-auth";
/// The credentials Secret's key holding that include.
pub const REDIS_AUTH_KEY: &str = "redis-auth.conf";
/// Its file name in [`REDIS_AUTH_DIR`].
pub const REDIS_AUTH_FILE: &str = "auth.conf";

/// `redis.conf` for a TLS-only Redis. The password is not in this file (a
/// ConfigMap) nor in argv: the last line includes it from the credentials
/// Secret ([`redis_auth_conf`]).
pub fn redis_conf() -> String {
    format!(
        "# Rendered by ladder-operator.\n\
         port 0\n\
         tls-port 6379\n\
         tls-cert-file /etc/ladder/tls/tls.crt\n\
         tls-key-file /etc/ladder/tls/tls.key\n\
         tls-ca-cert-file /etc/ladder/tls/ca.crt\n\
         tls-auth-clients no\n\
         appendonly yes\n\
         dir /data\n\
         maxmemory-policy allkeys-lru\n\
         include {REDIS_AUTH_DIR}/{REDIS_AUTH_FILE}\n"
    )
}

/// The Redis include that sets the default user's password: a double-quoted
/// Redis config string (`\\` and `"` escaped; control characters refused, so
/// the value cannot end the line).
pub fn redis_auth_conf(password: &str) -> Option<String> {
    if password.chars().any(char::is_control) {
        return None;
    }
    let escaped = password.replace('\\', "\\\\").replace('"', "\\\"");
    Some(format!("requirepass \"{escaped}\"\n"))
}

/// ClickHouse server overrides: TLS ports only, listen on all addresses, and
/// its built-in Prometheus endpoint (plain HTTP, metrics only; see
/// `super::exporters`).
pub fn clickhouse_config() -> String {
    "<!-- Rendered by ladder-operator. -->\n\
     <clickhouse>\n\
     \x20 <listen_host>0.0.0.0</listen_host>\n\
     \x20 <http_port remove=\"1\"/>\n\
     \x20 <tcp_port remove=\"1\"/>\n\
     \x20 <https_port>8443</https_port>\n\
     \x20 <tcp_port_secure>9440</tcp_port_secure>\n\
     \x20 <openSSL><server>\n\
     \x20   <certificateFile>/etc/ladder/tls/tls.crt</certificateFile>\n\
     \x20   <privateKeyFile>/etc/ladder/tls/tls.key</privateKeyFile>\n\
     \x20   <caConfig>/etc/ladder/tls/ca.crt</caConfig>\n\
     \x20 </server></openSSL>\n\
     \x20 <prometheus>\n\
     \x20   <endpoint>/metrics</endpoint>\n\
     \x20   <port>9363</port>\n\
     \x20   <metrics>true</metrics>\n\
     \x20   <events>true</events>\n\
     \x20   <asynchronous_metrics>true</asynchronous_metrics>\n\
     \x20 </prometheus>\n\
     </clickhouse>\n"
        .to_owned()
}

/// A VCL regular expression matching a blocked path prefix at the start of the normalised,
/// lower-cased path (see [`varnish_vcl`]). Validation allows only `[A-Za-z0-9._~/-]`, so `"`
/// and newlines cannot occur; `.` is the only regex metacharacter left to escape.
pub fn vcl_path_regex(path: &str) -> Option<String> {
    if !path
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._~/-".contains(&c))
    {
        return None;
    }
    Some(format!(
        "^{}",
        path.to_ascii_lowercase().replace('.', "\\.")
    ))
}

/// `a.b.c.d/n` re-formatted from parsed octets, as a VCL ACL entry: nothing of the user's text
/// reaches the file.
fn acl_entry(&(o, p): &([u8; 4], u8)) -> String {
    format!("  \"{}.{}.{}.{}\"/{};\n", o[0], o[1], o[2], o[3], p)
}

/// Who the client is, set before anything reads it: the peer, or behind a trusted proxy the
/// address that proxy appended last. Varnish itself appends the peer to `X-Forwarded-For`
/// before `vcl_recv` runs, so there the proxy's entry is the second to last. What the client
/// wrote (any other entry, `Forwarded`, `X-Real-IP`) never reaches the app.
const VCL_CLIENT_PLAIN: &str = r#"  unset req.http.Forwarded;
  unset req.http.X-Real-IP;
  set req.http.X-Forwarded-For = client.ip;
"#;
const VCL_CLIENT_BEHIND_PROXY: &str = r#"  unset req.http.Forwarded;
  unset req.http.X-Real-IP;
  if (client.ip ~ trusted_proxies && req.http.X-Forwarded-For ~ ",[^,]*,") {
    # `resolve = false`: a name in the header is not an address, never a DNS lookup.
    set req.http.X-Forwarded-For = std.ip(regsub(req.http.X-Forwarded-For, "^(.*,)?[ \t]*([^, \t]+)[ \t]*,[^,]*$", "\2"), client.ip, resolve = false);
  } else {
    set req.http.X-Forwarded-For = client.ip;
  }
"#;

/// The WAF's normalised path ([`contract::normalize_path`], step for step): absolute-form
/// targets read as their path; malformed or double (`%25`) escapes, control characters and
/// dot segments refused with 400; then percent-decoded once (vmod blob), `\` as `/`, runs of
/// `/` collapsed, lower-cased, and matched against the blocked prefixes.
const VCL_NORMALISE_PATH: &str = r#"  if (req.url ~ "^(?i)[a-z][a-z0-9+.-]*://") {
    set req.url = regsub(req.url, "^(?i)[a-z][a-z0-9+.-]*://[^/?#]*/?", "/");
  }
  if (req.url !~ "^/") {
    return (synth(400, "Bad Request"));
  }
  set req.http.X-Ladder-Path = regsub(req.url, "\?.*$", "");
  if (req.http.X-Ladder-Path ~ "%(?![0-9A-Fa-f]{2})" || req.http.X-Ladder-Path ~ "(?i)%(0[0-9a-f]|1[0-9a-f]|7f|25)" || req.http.X-Ladder-Path ~ "[\x00-\x1f\x7f]") {
    return (synth(400, "Bad Request"));
  }
  set req.http.X-Ladder-Path = std.tolower(blob.transcode(decoding = URL, encoded = req.http.X-Ladder-Path));
  set req.http.X-Ladder-Path = regsuball(req.http.X-Ladder-Path, "[\\/]+", "/");
  if (req.http.X-Ladder-Path ~ "/\.\.?(/|$)") {
    return (synth(400, "Bad Request"));
  }
"#;

/// Statuses the same for every client and worth keeping: anything else (429, one client's
/// bucket; 5xx, an outage; 401/403, one client's credentials) is never cached.
const VCL_CACHEABLE_STATUSES: [u16; 10] = [200, 203, 204, 300, 301, 302, 307, 308, 404, 410];

/// The Varnish VCL: backend the app through the TLS sidecar, the client address taken from the
/// connection (or a trusted proxy), PURGE limited to an ACL, WAF path blocks on the normalised
/// path, and only anonymous GET/HEAD with a client-independent status cached, for the
/// configured TTL. See docs/edge.md.
pub fn varnish_vcl(edge: &Edge, backend_host: &str, backend_port: i32) -> String {
    let mut out =
        String::from("# Rendered by ladder-operator.\nvcl 4.1;\n\nimport blob;\nimport std;\n\n");
    let _ = writeln!(
        out,
        "backend app {{\n  .host = \"{backend_host}\";\n  .port = \"{backend_port}\";\n}}\n"
    );
    out.push_str("acl purge {\n  \"127.0.0.1\";\n");
    edge.purge_allowed
        .iter()
        .for_each(|c| out.push_str(&acl_entry(c)));
    out.push_str("}\n\n");
    if !edge.trusted_proxies.is_empty() {
        out.push_str("acl trusted_proxies {\n");
        edge.trusted_proxies
            .iter()
            .for_each(|c| out.push_str(&acl_entry(c)));
        out.push_str("}\n\n");
    }
    out.push_str("sub vcl_recv {\n");
    out.push_str(if edge.trusted_proxies.is_empty() {
        VCL_CLIENT_PLAIN
    } else {
        VCL_CLIENT_BEHIND_PROXY
    });
    out.push_str("  if (req.method == \"PURGE\") {\n    if (!client.ip ~ purge) {\n      return (synth(405, \"Not allowed\"));\n    }\n    return (purge);\n  }\n");
    out.push_str(VCL_NORMALISE_PATH);
    for path in &edge.blocked_paths {
        if let Some(re) = vcl_path_regex(path) {
            let _ = writeln!(
                out,
                "  if (req.http.X-Ladder-Path ~ \"{re}\") {{\n    return (synth(403, \"Forbidden\"));\n  }}"
            );
        }
    }
    out.push_str("  unset req.http.X-Ladder-Path;\n");
    out.push_str(
        "  if (req.method != \"GET\" && req.method != \"HEAD\") {\n    return (pass);\n  }\n",
    );
    out.push_str("  if (req.http.Authorization || req.http.Cookie) {\n    return (pass);\n  }\n  return (hash);\n}\n\n");
    // The app serves one site: cache by path alone, so a PURGE from the app (whatever Host it
    // names) removes what every client sees.
    out.push_str("sub vcl_hash {\n  hash_data(req.url);\n  return (lookup);\n}\n\n");
    let cacheable = VCL_CACHEABLE_STATUSES
        .iter()
        .map(|s| format!("beresp.status != {s}"))
        .collect::<Vec<_>>()
        .join(" && ");
    // A short hit-for-miss marker (uncacheable, 1 s): later requests go to the app on their own
    // instead of queueing behind one another, and nothing of the answer is kept.
    let _ = writeln!(
        out,
        "sub vcl_backend_response {{\n  if ({cacheable}) {{\n    set beresp.ttl = 1s;\n    set beresp.uncacheable = true;\n    return (deliver);\n  }}"
    );
    out.push_str(
        "  if (beresp.http.Set-Cookie || beresp.http.Cache-Control ~ \"private|no-store\") {\n",
    );
    out.push_str("    set beresp.uncacheable = true;\n    return (deliver);\n  }\n");
    let _ = writeln!(
        out,
        "  set beresp.ttl = {}s;\n  return (deliver);\n}}\n",
        edge.cache_ttl_seconds
    );
    // The app unreachable: Varnish's own 503 is not kept either.
    out.push_str("sub vcl_backend_error {\n  set beresp.ttl = 0s;\n  set beresp.grace = 0s;\n  set beresp.uncacheable = true;\n}\n");
    out
}

/// The rate-limit and WAF rules the app enforces ([`contract::Rules`]); the edge's VCL blocks
/// the same paths.
pub fn edge_policy_json(edge: &Edge) -> String {
    let rate = f64::from(edge.rate_limit_per_second.max(0));
    let rules = contract::Rules {
        rate_per_second: rate,
        burst: rate * 2.0,
        blocked_path_prefixes: edge.blocked_paths.clone(),
        blocked_methods: vec!["TRACE".into(), "TRACK".into(), "CONNECT".into()],
        ..contract::Rules::default()
    };
    serde_json::to_string_pretty(&rules).unwrap_or_default()
}

/// The CDN tier's config: the origin, what it caches and for how long.
pub fn cdn_json(edge: &Edge, origin: &str) -> String {
    let doc = json!({
        "version": 1,
        "origin": origin,
        "cache": {"defaultTtlSeconds": edge.cache_ttl_seconds, "methods": ["GET", "HEAD"], "bypassOn": ["Authorization", "Cookie"]},
        "purge": {"method": "PURGE", "allowedCidrs": edge.purge_allowed.iter().map(|(o, p)| format!("{}.{}.{}.{}/{}", o[0], o[1], o[2], o[3], p)).collect::<Vec<_>>()},
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// The shard allocation map ([`contract::ShardMap`]): contiguous ranges of hash slots per
/// shard, each shard named by the URL (without password) the app connects to.
pub fn shard_map_json(version: u32, shards: &[(String, String)]) -> String {
    let defs = shards
        .iter()
        .map(|(name, url)| contract::ShardDef {
            name: name.clone(),
            url: url.clone(),
        })
        .collect();
    let map = contract::ShardMap::even(u64::from(version), contract::SHARD_SLOTS, defs);
    serde_json::to_string_pretty(&map).unwrap_or_default()
}

/// OIDC settings for the app ([`contract::OidcConfig`]).
pub fn oidc_json(oidc: &Oidc) -> String {
    let doc = contract::OidcConfig {
        issuer_url: oidc.issuer_url.clone(),
        client_id: oidc.client_id.clone(),
        audience: oidc.audience.clone(),
        scopes: vec!["openid".into(), "profile".into(), "email".into()],
        roles: contract::OidcRoles {
            claim: "groups".into(),
            admin: "ladder-admins".into(),
            viewer: "ladder-viewers".into(),
        },
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_values_cannot_break_out() {
        assert_eq!(pg_quote("on").as_deref(), Some("'on'"));
        assert_eq!(pg_quote("a'b").as_deref(), Some("'a''b'"));
        assert_eq!(pg_quote(r"a\'").as_deref(), Some(r"'a\\'''"));
        assert_eq!(pg_quote("x'\nssl = off"), None);
        let mut p = BTreeMap::new();
        p.insert("work_mem".to_owned(), "64MB' \nssl = 'off".to_owned());
        p.insert("search_path".to_owned(), "a', ssl = 'off".to_owned());
        let conf = postgresql_conf(&p, 0);
        assert!(!conf.contains("64MB"), "a value with a newline is dropped");
        assert!(conf.contains("search_path = 'a'', ssl = ''off'"));
        assert_eq!(conf.lines().filter(|l| l.starts_with("ssl =")).count(), 1);
    }

    #[test]
    fn vcl_paths_are_escaped_or_refused() {
        assert_eq!(
            vcl_path_regex("/admin.php").as_deref(),
            Some(r"^/admin\.php")
        );
        assert_eq!(vcl_path_regex("/a\"); return (pass); #"), None);
        assert_eq!(vcl_path_regex("/a\nb"), None);
    }

    /// What the VCL must say whatever the spec: the client from the connection, the normalised
    /// path matched, per-client and failed answers never cached. (app/tests/edge_hostile.rs runs
    /// it in a real varnishd.)
    #[test]
    fn vcl_sets_the_client_normalises_paths_and_caches_only_shared_answers() {
        let mut edge = Edge {
            rate_limit_per_second: 50,
            cache_ttl_seconds: 60,
            purge_allowed: vec![([10, 0, 0, 0], 8)],
            blocked_paths: vec!["/Admin.php".into()],
            trusted_proxies: vec![],
        };
        let vcl = varnish_vcl(&edge, "127.0.0.1", 8081);
        let recv = &vcl[vcl.find("sub vcl_recv").expect("vcl_recv")..];
        let first_use = recv.find("req.http.X-Forwarded-For").expect("XFF set");
        assert_eq!(
            &recv[first_use..first_use + 48],
            "req.http.X-Forwarded-For = client.ip;\n  if (req."
        );
        assert!(!vcl.contains("trusted_proxies"));
        assert!(vcl.contains("\"10.0.0.0\"/8;"));
        assert!(vcl.contains("blob.transcode(decoding = URL"));
        assert!(vcl.contains("req.http.X-Ladder-Path ~ \"^/admin\\.php\""));
        assert!(
            !vcl.contains("req.url ~ \"^/admin"),
            "blocked paths match the normalised path, not the raw URL"
        );
        let guard = vcl
            .lines()
            .find(|l| l.contains("beresp.status != 200"))
            .expect("status guard");
        for status in ["429", "500", "502", "503", "504", "401", "403"] {
            assert!(!guard.contains(status), "{status} must not be cacheable");
        }
        assert!(vcl.contains("sub vcl_backend_error {\n  set beresp.ttl = 0s;"));

        edge.trusted_proxies = vec![([10, 244, 0, 0], 16)];
        let vcl = varnish_vcl(&edge, "127.0.0.1", 8081);
        assert!(vcl.contains("acl trusted_proxies {\n  \"10.244.0.0\"/16;\n}"));
        assert!(vcl.contains("if (client.ip ~ trusted_proxies"));
        assert!(vcl.contains("resolve = false"));
        assert!(vcl.contains("} else {\n    set req.http.X-Forwarded-For = client.ip;"));
    }

    #[test]
    fn shard_map_is_the_apps_format() {
        let shards: Vec<_> = (0..3)
            .map(|i| {
                (
                    format!("shard-{i}"),
                    format!("postgres://ladder@h:6432/shard_{i}"),
                )
            })
            .collect();
        let map = contract::ShardMap::parse(&shard_map_json(SHARD_MAP_VERSION, &shards))
            .expect("valid map");
        assert_eq!(map.shards.len(), 3);
        assert_eq!(map.slots, contract::SHARD_SLOTS);
        assert_eq!(map.shards[2].url, "postgres://ladder@h:6432/shard_2");
    }

    #[test]
    fn edge_policy_is_the_apps_rules() {
        let edge = Edge {
            rate_limit_per_second: 50,
            cache_ttl_seconds: 60,
            purge_allowed: vec![],
            blocked_paths: vec!["/admin".into()],
            trusted_proxies: vec![],
        };
        let rules: contract::Rules =
            serde_json::from_str(&edge_policy_json(&edge)).expect("the app parses it");
        assert_eq!(rules.rate_per_second, 50.0);
        assert!(rules.path_blocked("/admin/users"));
        assert!(rules.method_blocked("TRACE"));
    }
}
