//! The roadmap as data: one [`PhaseProfile`] per phase with the defaults from
//! ROADMAP.md, the safe minimums the CRD's CEL rules also enforce, and a cost
//! estimate. Nothing here talks to a cluster.

use std::fmt;

/// A phase of the roadmap. Invalid phases cannot be represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// 0: the app alone with embedded SQLite.
    Mvp,
    /// 1: PostgreSQL + PgBouncer + Redis.
    Growth,
    /// 2: + read replicas, three regions, HPA, rate limiting and WAF.
    Regional,
    /// 3: sharded PostgreSQL, ClickHouse, edge CDN.
    National,
    /// 4: CockroachDB, burst scaling, enterprise auth.
    Global,
}

impl Phase {
    /// Every phase, lowest first.
    pub const ALL: [Phase; 5] = [
        Phase::Mvp,
        Phase::Growth,
        Phase::Regional,
        Phase::National,
        Phase::Global,
    ];

    /// The phase number used in `spec.phase`.
    pub fn number(self) -> i32 {
        match self {
            Phase::Mvp => 0,
            Phase::Growth => 1,
            Phase::Regional => 2,
            Phase::National => 3,
            Phase::Global => 4,
        }
    }

    /// The phase for a number, if it is one.
    pub fn from_number(n: i32) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.number() == n)
    }

    /// The short name shown in printer columns.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Mvp => "MVP",
            Phase::Growth => "Growth",
            Phase::Regional => "Regional",
            Phase::National => "National",
            Phase::Global => "Global",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

/// Pinned images of the data components. Overridable per component.
pub mod images {
    /// PostgreSQL (primary, replicas, shards).
    pub const POSTGRES: &str = "docker.io/library/postgres:17.6";
    /// PgBouncer.
    pub const PGBOUNCER: &str = "docker.io/edoburu/pgbouncer:v1.24.1-p1";
    /// Redis.
    pub const REDIS: &str = "docker.io/library/redis:8.2.1";
    /// ClickHouse.
    pub const CLICKHOUSE: &str = "docker.io/clickhouse/clickhouse-server:25.8";
    /// Varnish.
    pub const VARNISH: &str = "docker.io/library/varnish:7.7.3";
    /// ghostunnel: TLS origination beside Varnish, whose open-source edition speaks plain
    /// HTTP to its backends.
    pub const GHOSTUNNEL: &str = "docker.io/ghostunnel/ghostunnel:v1.8.4";
    /// CockroachDB.
    pub const COCKROACH: &str = "docker.io/cockroachdb/cockroach:v25.3.1";
    /// Prometheus exporter beside each PostgreSQL instance.
    pub const POSTGRES_EXPORTER: &str = "docker.io/prometheuscommunity/postgres-exporter:v0.17.1";
    /// Prometheus exporter beside each PgBouncer.
    pub const PGBOUNCER_EXPORTER: &str = "docker.io/prometheuscommunity/pgbouncer-exporter:v0.10.2";
    /// Prometheus exporter beside each Redis.
    pub const REDIS_EXPORTER: &str = "docker.io/oliver006/redis_exporter:v1.74.0";
}

/// Defaults that are the same in every phase that runs a component (the
/// phase-dependent ones, such as replica counts, are in [`PhaseProfile`]).
/// `spec.overrides` may change each of them.
pub mod defaults {
    use super::{Size, images};

    /// Image, container size and volume size of a data component.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Component {
        /// Container image.
        pub image: &'static str,
        /// Container size.
        pub size: Size,
        /// Volume size of each instance.
        pub storage: &'static str,
    }

    /// Redis: a cache, small.
    pub const REDIS: Component = Component {
        image: images::REDIS,
        size: Size {
            cpu: "100m",
            memory: "256Mi",
        },
        storage: "5Gi",
    };
    /// ClickHouse: analytics, memory-hungry.
    pub const CLICKHOUSE: Component = Component {
        image: images::CLICKHOUSE,
        size: Size {
            cpu: "1",
            memory: "4Gi",
        },
        storage: "100Gi",
    };
    /// Varnish: the edge cache (malloc storage; the volume is unused headroom).
    pub const VARNISH: Component = Component {
        image: images::VARNISH,
        size: Size {
            cpu: "250m",
            memory: "1Gi",
        },
        storage: "1Gi",
    };
    /// CockroachDB: one node.
    pub const COCKROACH: Component = Component {
        image: images::COCKROACH,
        size: Size {
            cpu: "2",
            memory: "8Gi",
        },
        storage: "100Gi",
    };
    /// PgBouncer server connections per database and user.
    pub const PGBOUNCER_POOL_SIZE: i32 = 20;
    /// Seconds the edge cache keeps a response.
    pub const EDGE_CACHE_TTL_SECONDS: i32 = 60;
}

/// CPU and memory of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Size {
    /// CPU request.
    pub cpu: &'static str,
    /// Memory request and limit.
    pub memory: &'static str,
}

/// Horizontal autoscaling of the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoscaleProfile {
    /// Lowest replica count.
    pub min: i32,
    /// Highest replica count.
    pub max: i32,
    /// Target average CPU utilisation in percent.
    pub cpu_percent: i32,
    /// Burst behaviour: scale up without a stabilisation window.
    pub burst: bool,
}

/// The defaults of one phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseProfile {
    /// Which phase.
    pub phase: Phase,
    /// Throughput ceiling from the roadmap, in transactions per second.
    pub tps_ceiling: u32,
    /// Roadmap cost of the phase per month, in USD.
    pub base_monthly_cost_usd: i64,
    /// Regions to spread over when `spec.regions` is empty.
    pub default_regions: usize,
    /// App replicas (the floor when autoscaled).
    pub app_replicas: i32,
    /// Lowest app replica count an override may ask for.
    pub app_min_replicas: i32,
    /// App container size.
    pub app_size: Size,
    /// PostgreSQL: `Some` in phases 1-3.
    pub postgres: Option<PostgresProfile>,
    /// PgBouncer replicas, when it runs.
    pub pgbouncer_replicas: Option<i32>,
    /// Redis replicas, when it runs.
    pub redis_replicas: Option<i32>,
    /// ClickHouse replicas, when it runs.
    pub clickhouse_replicas: Option<i32>,
    /// Varnish replicas, when the edge tier runs.
    pub varnish_replicas: Option<i32>,
    /// CockroachDB nodes per region, when it runs.
    pub cockroach_nodes_per_region: Option<i32>,
    /// App autoscaling, from phase 2.
    pub autoscale: Option<AutoscaleProfile>,
    /// Default requests per second per client IP, from phase 2.
    pub rate_limit_per_second: Option<i32>,
    /// TLS, NetworkPolicies and credentials: from phase 1.
    pub hardened: bool,
    /// OIDC settings and RBAC roles: phase 4.
    pub enterprise_auth: bool,
}

/// PostgreSQL defaults of a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresProfile {
    /// Streaming read replicas per primary.
    pub read_replicas: i32,
    /// Shards (1 = not sharded).
    pub shards: i32,
    /// Volume size of each instance.
    pub storage: &'static str,
    /// Container size.
    pub size: Size,
}

/// Default app container size per phase.
const APP_SMALL: Size = Size {
    cpu: "100m",
    memory: "128Mi",
};
const APP_MEDIUM: Size = Size {
    cpu: "250m",
    memory: "256Mi",
};
const APP_LARGE: Size = Size {
    cpu: "500m",
    memory: "512Mi",
};

/// The profile of a phase.
pub fn profile(phase: Phase) -> PhaseProfile {
    let base = PhaseProfile {
        phase,
        tps_ceiling: 10,
        base_monthly_cost_usd: 0,
        default_regions: 1,
        app_replicas: 1,
        app_min_replicas: 1,
        app_size: APP_SMALL,
        postgres: None,
        pgbouncer_replicas: None,
        redis_replicas: None,
        clickhouse_replicas: None,
        varnish_replicas: None,
        cockroach_nodes_per_region: None,
        autoscale: None,
        rate_limit_per_second: None,
        hardened: false,
        enterprise_auth: false,
    };
    match phase {
        Phase::Mvp => base,
        Phase::Growth => PhaseProfile {
            tps_ceiling: 100,
            base_monthly_cost_usd: 25,
            app_replicas: 2,
            app_min_replicas: 2,
            postgres: Some(PostgresProfile {
                read_replicas: 0,
                shards: 1,
                storage: "10Gi",
                size: Size {
                    cpu: "250m",
                    memory: "512Mi",
                },
            }),
            pgbouncer_replicas: Some(1),
            redis_replicas: Some(1),
            hardened: true,
            ..base
        },
        Phase::Regional => PhaseProfile {
            tps_ceiling: 1_000,
            base_monthly_cost_usd: 800,
            default_regions: 3,
            app_replicas: 3,
            app_min_replicas: 2,
            app_size: APP_MEDIUM,
            postgres: Some(PostgresProfile {
                read_replicas: 3,
                shards: 1,
                storage: "50Gi",
                size: Size {
                    cpu: "1",
                    memory: "2Gi",
                },
            }),
            pgbouncer_replicas: Some(2),
            redis_replicas: Some(1),
            autoscale: Some(AutoscaleProfile {
                min: 3,
                max: 12,
                cpu_percent: 70,
                burst: false,
            }),
            rate_limit_per_second: Some(50),
            hardened: true,
            ..base
        },
        Phase::National => PhaseProfile {
            tps_ceiling: 10_000,
            base_monthly_cost_usd: 8_000,
            default_regions: 3,
            app_replicas: 6,
            app_min_replicas: 2,
            app_size: APP_LARGE,
            postgres: Some(PostgresProfile {
                read_replicas: 1,
                shards: 4,
                storage: "100Gi",
                size: Size {
                    cpu: "2",
                    memory: "4Gi",
                },
            }),
            pgbouncer_replicas: Some(3),
            redis_replicas: Some(1),
            clickhouse_replicas: Some(2),
            varnish_replicas: Some(3),
            autoscale: Some(AutoscaleProfile {
                min: 6,
                max: 60,
                cpu_percent: 70,
                burst: false,
            }),
            rate_limit_per_second: Some(100),
            hardened: true,
            ..base
        },
        Phase::Global => PhaseProfile {
            tps_ceiling: 100_000,
            base_monthly_cost_usd: 50_000,
            default_regions: 3,
            app_replicas: 9,
            app_min_replicas: 2,
            app_size: APP_LARGE,
            redis_replicas: Some(1),
            clickhouse_replicas: Some(2),
            varnish_replicas: Some(3),
            cockroach_nodes_per_region: Some(3),
            autoscale: Some(AutoscaleProfile {
                min: 9,
                max: 300,
                cpu_percent: 60,
                burst: true,
            }),
            rate_limit_per_second: Some(200),
            hardened: true,
            enterprise_auth: true,
            ..base
        },
    }
}

/// Rough monthly price of the extra capacity an override asks for, in USD
/// per app replica / data instance above the phase's default. The roadmap's
/// figure is the floor; overrides move the estimate from there.
const USD_PER_EXTRA_APP_REPLICA: i64 = 15;
const USD_PER_EXTRA_DATA_INSTANCE: i64 = 60;

/// Estimated monthly cost: the roadmap figure of the phase, adjusted for
/// replica counts that differ from the profile's defaults.
pub fn estimate_monthly_cost(
    profile: &PhaseProfile,
    app_replicas: i32,
    data_instances: i32,
) -> i64 {
    let default_data = default_data_instances(profile);
    let app_delta = i64::from(app_replicas - profile.app_replicas) * USD_PER_EXTRA_APP_REPLICA;
    let data_delta = i64::from(data_instances - default_data) * USD_PER_EXTRA_DATA_INSTANCE;
    (profile.base_monthly_cost_usd + app_delta + data_delta).max(0)
}

/// Data-tier pods the profile runs with no overrides (three regions assumed
/// for CockroachDB).
pub fn default_data_instances(profile: &PhaseProfile) -> i32 {
    let pg = profile
        .postgres
        .as_ref()
        .map_or(0, |p| p.shards * (1 + p.read_replicas));
    let crdb = profile
        .cockroach_nodes_per_region
        .map_or(0, |n| n * profile.default_regions as i32);
    pg + crdb + profile.redis_replicas.unwrap_or(0) + profile.clickhouse_replicas.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_climb() {
        let mut last = None;
        for phase in Phase::ALL {
            assert_eq!(Phase::from_number(phase.number()), Some(phase));
            let p = profile(phase);
            if let Some(prev) = last {
                let prev: PhaseProfile = prev;
                assert!(
                    p.tps_ceiling == prev.tps_ceiling * 10,
                    "each phase is 10x the last"
                );
                assert!(p.base_monthly_cost_usd > prev.base_monthly_cost_usd);
            }
            last = Some(p);
        }
        assert_eq!(Phase::from_number(5), None);
        assert_eq!(Phase::from_number(-1), None);
    }

    #[test]
    fn roadmap_defaults() {
        assert_eq!(profile(Phase::Mvp).base_monthly_cost_usd, 0);
        assert_eq!(profile(Phase::Growth).base_monthly_cost_usd, 25);
        assert!(profile(Phase::Growth).app_replicas >= 2);
        assert_eq!(
            profile(Phase::Regional).postgres.map(|p| p.read_replicas),
            Some(3)
        );
        assert_eq!(profile(Phase::Regional).default_regions, 3);
        assert_eq!(profile(Phase::National).postgres.map(|p| p.shards), Some(4));
        assert!(profile(Phase::Global).cockroach_nodes_per_region >= Some(3));
        assert_eq!(profile(Phase::Global).postgres, None);
    }

    #[test]
    fn cost_follows_overrides() {
        let p = profile(Phase::Growth);
        assert_eq!(
            estimate_monthly_cost(&p, p.app_replicas, default_data_instances(&p)),
            25
        );
        assert_eq!(
            estimate_monthly_cost(&p, p.app_replicas + 2, default_data_instances(&p)),
            55
        );
        assert_eq!(estimate_monthly_cost(&profile(Phase::Mvp), 1, 0), 0);
    }
}
