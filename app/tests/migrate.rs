//! `ladder-app migrate` under load: a bounded load generator creates, updates and deletes links
//! through a running app while the migrations run (one of them killed with SIGKILL halfway and
//! restarted); a ledger of *acknowledged* writes is then checked against the new tier: every
//! acknowledged link exists exactly once, with its last acknowledged content.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ladder_app::metrics::Metrics;
use ladder_app::store::sharded::{ShardDef, ShardMap, SlotRange};
use ladder_app::store::{self, StoreOptions, StoreSpec};
use rand::Rng;

/// code → last acknowledged target (None: acknowledged delete). Codes whose last operation
/// was not acknowledged either way (transport error) are `uncertain`: they must still exist
/// exactly once, but their content is not checked.
#[derive(Debug, Default)]
struct Ledger {
    links: HashMap<String, Option<String>>,
    uncertain: std::collections::HashSet<String>,
    acked: u64,
    refused: u64,
}

struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the load generator: one client, ~100 operations/s, at most 120 s. `seeded` links
/// (acknowledged before the load started) are in the ledger from the start.
fn load(base: String, seeded: Vec<(String, String)>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let mut initial = Ledger::default();
    for (code, target) in seeded {
        initial.links.insert(code, Some(target));
    }
    let ledger = Arc::new(Mutex::new(initial));
    let task = tokio::spawn({
        let (stop, ledger) = (stop.clone(), ledger.clone());
        async move {
            let c = http();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                i += 1;
                let roll: u8 = rand::rng().random_range(0..10);
                let existing: Option<String> = {
                    let l = ledger.lock().expect("ledger");
                    let live: Vec<&String> = l
                        .links
                        .iter()
                        // An uncertain code (its last operation may or may not have happened)
                        // is not operated on again: a 404 or 409 there would prove nothing.
                        .filter(|(c, t)| t.is_some() && !l.uncertain.contains(*c))
                        .map(|(c, _)| c)
                        .collect();
                    (!live.is_empty() && roll < 2)
                        .then(|| live[rand::rng().random_range(0..live.len())].clone())
                };
                // Retry each operation until it is acknowledged (503 = fenced or cutting over).
                loop {
                    let result = match &existing {
                        Some(code) if roll == 0 => {
                            c.delete(format!("{base}/api/v1/links/{code}")).send().await
                        }
                        Some(code) => c
                            .put(format!("{base}/api/v1/links/{code}"))
                            .json(
                                &serde_json::json!({ "url": format!("https://example.com/u/{i}") }),
                            )
                            .send()
                            .await,
                        None => c
                            .post(format!("{base}/api/v1/links"))
                            .json(
                                &serde_json::json!({ "url": format!("https://example.com/c/{i}") }),
                            )
                            .send()
                            .await,
                    };
                    match result {
                        Ok(r) if r.status() == 503 => {
                            ledger.lock().expect("ledger").refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Ok(r) if r.status().is_success() => {
                            let created = match existing {
                                None => {
                                    let v: serde_json::Value = r.json().await.expect("json");
                                    Some(v["code"].as_str().expect("code").to_owned())
                                }
                                Some(_) => None,
                            };
                            let mut l = ledger.lock().expect("ledger");
                            l.acked += 1;
                            match (&existing, roll, created) {
                                (Some(code), 0, _) => {
                                    l.links.insert(code.clone(), None);
                                }
                                (Some(code), _, _) => {
                                    l.links.insert(
                                        code.clone(),
                                        Some(format!("https://example.com/u/{i}")),
                                    );
                                }
                                (None, _, Some(code)) => {
                                    l.links
                                        .insert(code, Some(format!("https://example.com/c/{i}")));
                                }
                                (None, _, None) => unreachable!("a create returns its code"),
                            }
                        }
                        Ok(r) => panic!(
                            "load generator got {} for {existing:?} (roll {roll}): {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ),
                        Err(_) => {
                            if let Some(code) = &existing {
                                ledger
                                    .lock()
                                    .expect("ledger")
                                    .uncertain
                                    .insert(code.clone());
                            }
                        }
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    Load { stop, ledger, task }
}

impl Load {
    async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load generator");
        Arc::try_unwrap(self.ledger)
            .expect("sole owner")
            .into_inner()
            .expect("ledger")
    }

    fn acked(&self) -> u64 {
        self.ledger.lock().expect("ledger").acked
    }
}

/// Every acknowledged link exists exactly once in `spec`, with its acknowledged content.
async fn check_ledger(spec: &StoreSpec, ledger: &Ledger) {
    let s = store::open_for_migration(
        spec,
        &StoreOptions::default(),
        Arc::new(Metrics::new(Duration::from_secs(60))),
    )
    .await
    .expect("open");
    let mut seen: HashMap<String, Vec<store::LinkRow>> = HashMap::new();
    for part in 0..s.partitions() {
        let mut after = 0;
        loop {
            let rows = s.scan_links(part, after, 5000).await.expect("scan");
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for r in rows {
                seen.entry(r.code.clone()).or_default().push(r);
            }
        }
    }
    assert!(!ledger.links.is_empty());
    for (code, expected) in &ledger.links {
        let rows = seen.get(code).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            rows.len(),
            1,
            "acknowledged {code} must exist exactly once, found {}",
            rows.len()
        );
        if ledger.uncertain.contains(code) {
            continue;
        }
        match expected {
            Some(target) => {
                assert!(
                    !rows[0].deleted,
                    "{code} was deleted but its last acknowledged write was an update"
                );
                assert_eq!(
                    &rows[0].target, target,
                    "{code} lost an acknowledged update"
                );
            }
            None => assert!(rows[0].deleted, "{code}: acknowledged delete lost"),
        }
    }
}

fn migrate_cmd(from: &StoreSpec, to: &StoreSpec, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ladder-app"));
    cmd.arg("migrate")
        .arg("--from")
        .arg(from.to_string())
        .arg("--to")
        .arg(to.to_string())
        .args(extra);
    cmd.env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn migrate_ok(from: &StoreSpec, to: &StoreSpec) {
    let status = tokio::time::timeout(
        Duration::from_secs(120),
        migrate_cmd(from, to, &[]).status(),
    )
    .await
    .expect("migrate finishes in time")
    .expect("migrate runs");
    assert!(
        status.success(),
        "migrate {} -> {} failed: {status}",
        from.redacted(),
        to.redacted()
    );
}

async fn wait_tier(c: &reqwest::Client, base: &str, tier: &str, map_version: Option<u64>) {
    eventually(
        &format!("the app to cut over to {tier}"),
        Duration::from_secs(20),
        || async {
            let r: serde_json::Value = c
                .get(format!("{base}/readyz"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let ok = r["store"]["tier"] == tier
                && map_version.is_none_or(|v| r["store"]["shardMapVersion"] == v);
            ok.then_some(())
        },
    )
    .await;
}

/// Creates `n` links (8 concurrent clients); returns (code, target) of each.
async fn seed(base: &str, n: usize) -> Vec<(String, String)> {
    let c = http();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (c, base) = (c.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..n / 8 {
                let target = format!("https://example.com/seed/{t}/{i}");
                // 503 means "retry" (a pool wait timed out on a busy machine); anything else
                // but 201 fails the test.
                let code = eventually("a seed write", Duration::from_secs(30), || async {
                    let r = c
                        .post(format!("{base}/api/v1/links"))
                        .json(&serde_json::json!({ "url": target }))
                        .send()
                        .await
                        .ok()?;
                    if r.status() == 503 {
                        return None;
                    }
                    assert_eq!(r.status(), 201, "seed write");
                    let v: serde_json::Value = r.json().await.ok()?;
                    v["code"].as_str().map(str::to_owned)
                })
                .await;
                out.push((code, target));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("seed"));
    }
    all
}

#[tokio::test]
async fn sqlite_to_postgres_under_load_killed_and_resumed() {
    assert_durable_primary().await;
    let from = StoreSpec::Sqlite {
        path: temp_sqlite(),
    };
    let db = fresh_db("mig_pg").await;
    let to = StoreSpec::Postgres {
        url: primary_url(&db),
    };
    let app = start(&args(from.clone())).await;
    let (c, base) = (http(), app.url());
    let seeded = seed(&base, 1200).await;
    let load_gen = load(base.clone(), seeded);

    // First run: slow batches, killed with SIGKILL once a few batches are checkpointed.
    let mut child = migrate_cmd(
        &from,
        &to,
        &["--batch-size", "50", "--batch-delay-ms", "25"],
    )
    .spawn()
    .expect("spawn migrate");
    let target = sqlx::PgPool::connect_lazy(&primary_url(&db)).expect("pool");
    let copied = eventually("a checkpoint mid-copy", Duration::from_secs(30), || {
        let target = target.clone();
        async move {
            let state: String = sqlx::query_scalar("SELECT state FROM ladder_migrate_checkpoint")
                .fetch_optional(&target)
                .await
                .ok()??;
            let v: serde_json::Value = serde_json::from_str(&state).ok()?;
            let copied = v["copied"].as_u64()?;
            (copied >= 300).then_some(copied)
        }
    })
    .await;
    child.start_kill().expect("kill migrate");
    child.wait().await.expect("reap");
    assert!(copied < 1200, "killed halfway (copied {copied})");
    let acked_before = load_gen.acked();

    // Restart: resumes from the checkpoint, fences, verifies, cuts over.
    migrate_ok(&from, &to).await;
    wait_tier(&c, &base, "postgres", None).await;
    // Keep writing on the new tier for a moment.
    let after = load_gen.acked();
    eventually(
        "writes after the cut-over",
        Duration::from_secs(10),
        || async { (load_gen.acked() > after + 20).then_some(()) },
    )
    .await;
    let ledger = load_gen.finish().await;
    eprintln!(
        "ledger: {} links, {} acknowledged writes, {} refused (fenced)",
        ledger.links.len(),
        ledger.acked,
        ledger.refused
    );
    assert!(
        ledger.acked > acked_before,
        "the load kept running through the migration"
    );
    check_ledger(&to, &ledger).await;
    // Rerunning a finished migration is a no-op that succeeds.
    migrate_ok(&from, &to).await;
    let load: serde_json::Value = c
        .get(format!("{base}/load"))
        .send()
        .await
        .expect("load")
        .json()
        .await
        .expect("json");
    assert_eq!(load["tier"], "postgres");
}

fn map(version: u64, dbs: &[String]) -> ShardMap {
    let slots = 64u32;
    let n = dbs.len() as u32;
    let per = slots / n;
    ShardMap {
        version,
        slots,
        shards: dbs
            .iter()
            .enumerate()
            .map(|(i, db)| ShardDef {
                name: format!("s{i}"),
                url: primary_url(db),
            })
            .collect(),
        ranges: (0..n)
            .map(|i| SlotRange {
                from: i * per,
                to: if i + 1 == n {
                    slots - 1
                } else {
                    (i + 1) * per - 1
                },
                shard: format!("s{i}"),
            })
            .collect(),
    }
}

fn write_map(dir: &std::path::Path, name: &str, m: &ShardMap) -> StoreSpec {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(m).expect("json")).expect("write map");
    StoreSpec::Shards {
        map_path: path.display().to_string(),
    }
}

/// PostgreSQL → 2 shards → 3 shards (resharding) → distributed SQL → back to PostgreSQL →
/// SQLite, all under load, one app following every cut-over.
#[tokio::test]
async fn postgres_shards_reshard_dsql_and_back_to_sqlite_under_load() {
    let pg_db = fresh_db("chain_pg").await;
    let postgres = StoreSpec::Postgres {
        url: primary_url(&pg_db),
    };
    let dir = std::env::temp_dir().join(unique("maps"));
    std::fs::create_dir_all(&dir).expect("dir");
    let a = [fresh_db("chain_a0").await, fresh_db("chain_a1").await];
    let b = [
        fresh_db("chain_b0").await,
        fresh_db("chain_b1").await,
        fresh_db("chain_b2").await,
    ];
    let shards2 = write_map(&dir, "v1.json", &map(1, &a));
    let shards3 = write_map(&dir, "v2.json", &map(2, &b));
    let dsql = StoreSpec::Dsql {
        url: primary_url(&fresh_db("chain_dsql").await),
    };

    let app = start(&args(postgres.clone())).await;
    let (c, base) = (http(), app.url());
    let seeded = seed(&base, 400).await;
    let load_gen = load(base.clone(), seeded);

    migrate_ok(&postgres, &shards2).await;
    wait_tier(&c, &base, "shards", Some(1)).await;
    migrate_ok(&shards2, &shards3).await;
    wait_tier(&c, &base, "shards", Some(2)).await;
    migrate_ok(&shards3, &dsql).await;
    wait_tier(&c, &base, "dsql", None).await;
    // Reverse: back into the original (fenced, stale) PostgreSQL database.
    migrate_ok(&dsql, &postgres).await;
    wait_tier(&c, &base, "postgres", None).await;
    // And all the way down to phase 0.
    let sqlite = StoreSpec::Sqlite {
        path: temp_sqlite(),
    };
    migrate_ok(&postgres, &sqlite).await;
    wait_tier(&c, &base, "sqlite", None).await;
    let after = load_gen.acked();
    eventually(
        "writes after the last cut-over",
        Duration::from_secs(10),
        || async { (load_gen.acked() > after + 20).then_some(()) },
    )
    .await;
    let ledger = load_gen.finish().await;
    eprintln!(
        "ledger: {} links, {} acknowledged writes, {} refused (fenced)",
        ledger.links.len(),
        ledger.acked,
        ledger.refused
    );
    assert!(ledger.refused > 0, "the fences were hit by the load");
    check_ledger(&sqlite, &ledger).await;
    // The intermediate tiers are read-only now but held every write up to their cut-over:
    // each shard holds only its own slots (exactly once across the 3 shards is checked above
    // for the final tier; here for the resharded one, as of its cut-over).
    let s3 = store::open_for_migration(
        &shards3,
        &StoreOptions::default(),
        Arc::new(Metrics::new(Duration::from_secs(60))),
    )
    .await
    .expect("open");
    for part in 0..s3.partitions() {
        for r in s3.scan_links(part, 0, 100_000).await.expect("scan") {
            assert_eq!(
                s3.partition_of(&r.code),
                part,
                "{} on the wrong shard",
                r.code
            );
        }
    }
}

#[tokio::test]
async fn verification_failure_exits_non_zero_and_keeps_the_source() {
    let from = StoreSpec::Sqlite {
        path: temp_sqlite(),
    };
    let db = fresh_db("mig_bad").await;
    let to = StoreSpec::Postgres {
        url: primary_url(&db),
    };
    let app = start(&args(from.clone())).await;
    let (c, base) = (http(), app.url());
    seed(&base, 40).await;
    // A row only the target has: the copy cannot explain it, so verification must fail.
    drop(
        store::open_for_migration(
            &to,
            &StoreOptions::default(),
            Arc::new(Metrics::new(Duration::from_secs(60))),
        )
        .await
        .expect("schema"),
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&primary_url(&db))
        .await
        .expect("target");
    sqlx::query("INSERT INTO links (code, target, created_ms, seq, deleted) VALUES ('stray-row', 'https://x.example/', 0, 1, FALSE)")
        .execute(&mut conn)
        .await
        .expect("stray row");
    // Killed right after the failed verification reset the checkpoint: the source is still
    // fenced; the rerun fails the same way and gives the source back.
    let (code, _) = migrate_run(&from, &to, &[], Some("verification-failed")).await;
    assert_eq!(code, None);
    let r = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({ "url": "https://example.com/x" }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503, "still fenced");
    let (code, result) = migrate_run(&from, &to, &[], None).await;
    assert_eq!(code, Some(2), "verification failure exits with status 2");
    let result = result.expect("result");
    assert_eq!(result["outcome"], "VerificationFailed", "{result}");
    assert_eq!(result["verified"], false);
    assert!(
        result["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .any(|t| t["table"] == "links" && t["sourceRows"] != t["targetRows"]),
        "{result}"
    );
    // The source was unfenced again: the app keeps taking writes on it.
    create(&c, &base, "https://example.com/still-writable", None).await;
    let r: serde_json::Value = c
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(r["store"]["tier"], "sqlite");
}

/// Resharding onto the same databases leaves each shard holding the rows whose slots moved
/// away. `sweep` removes exactly those whose new owner holds them, keeps any it does not, and
/// the cut-over pointer left in the source carries no password.
/// Three fresh databases named after `prefix`, and two shard maps over them: v1 on the first
/// two, v2 on all three (an in-place resharding: v2 reuses v1's databases, partition i is
/// database i in both).
async fn in_place_reshard_maps(prefix: &str) -> ([String; 3], StoreSpec, StoreSpec) {
    let dbs = [
        fresh_db(&format!("{prefix}_0")).await,
        fresh_db(&format!("{prefix}_1")).await,
        fresh_db(&format!("{prefix}_2")).await,
    ];
    let dir = std::env::temp_dir().join(unique("maps"));
    std::fs::create_dir_all(&dir).expect("dir");
    let two = write_map(&dir, "v1.json", &map(1, &dbs[..2]));
    let three = write_map(&dir, "v2.json", &map(2, &dbs));
    (dbs, two, three)
}

/// An in-place resharding (2 shards -> 3, the first two reused) writes only the rows that
/// change database. A row whose old and new shard are one database is already in place: the
/// copy used to write the scanned row back, and an app update committed between the scan and
/// that write was overwritten by the older copy, which then carried a fresh seq (so the later
/// passes and the verification agreed with it): an acknowledged write lost. CI's resharding
/// e2e caught one such update. The race itself is too narrow to provoke here; what closes it is
/// that such rows are never written, which the migrator's own count shows.
#[tokio::test]
async fn an_in_place_reshard_writes_only_the_rows_that_change_database() {
    let (_dbs, two, three) = in_place_reshard_maps("inplace").await;
    let app = start(&args(two.clone())).await;
    let seeded = seed(&app.url(), 200).await;
    drop(app);

    // Partition i is database i in both maps: a row stays in its database when its partition
    // index does not change.
    let (old, new) = (open_m(&two).await, open_m(&three).await);
    let moving = seeded
        .iter()
        .filter(|(code, _)| old.partition_of(code) != new.partition_of(code))
        .count();
    assert!(
        moving > 0 && moving < seeded.len(),
        "the maps must move some rows and keep others: {moving} of {}",
        seeded.len()
    );

    let mut cmd = migrate_cmd(&two, &three, &[]);
    cmd.env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("migrate finishes in time")
        .expect("migrate runs");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate failed: {}\n{log}",
        out.status
    );
    // The last live pass's running total of rows written to the target.
    let written = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "live copy pass done")
        .filter_map(|v| v["fields"]["total"].as_u64())
        .next_back()
        .unwrap_or_else(|| panic!("no live copy pass in the log:\n{log}"));
    assert_eq!(
        written, moving as u64,
        "rows written by the copy, against rows that change database"
    );

    // And every link reads back from its new shard, with its target.
    let live = open_m(&three).await;
    for (code, target) in &seeded {
        let (link, _) = live
            .get_link(code, store::ReadCtx::default())
            .await
            .expect("read");
        assert_eq!(
            link.map(|l| l.target).as_deref(),
            Some(target.as_str()),
            "{code}"
        );
    }
}

#[tokio::test]
async fn sweep_removes_strays_left_by_an_in_place_reshard_only_once_copied() {
    let (dbs, two, three) = in_place_reshard_maps("sweep").await;

    let app = start(&args(two.clone())).await;
    let (c, base) = (http(), app.url());
    let seeded = seed(&base, 300).await;
    for (code, _) in seeded.iter().take(30) {
        let r = c.get(format!("{base}/{code}")).send().await.expect("click");
        assert_eq!(r.status(), 302);
    }
    // Wait until the clicks reached the database (the app buffers them) before the copy.
    let before = store::open_for_migration(
        &two,
        &StoreOptions {
            password: local_pg_password(),
            ..StoreOptions::default()
        },
        Arc::new(Metrics::new(Duration::from_secs(60))),
    )
    .await
    .expect("open");
    eventually(
        "the clicks in the database",
        Duration::from_secs(20),
        || {
            let before = before.clone();
            async move {
                let mut total = 0;
                for part in 0..before.partitions() {
                    total += before
                        .scan_clicks(part)
                        .await
                        .ok()?
                        .iter()
                        .map(|c| c.clicks)
                        .sum::<i64>();
                }
                (total >= 30).then_some(())
            }
        },
    )
    .await;
    drop(before);
    migrate_ok(&two, &three).await;
    wait_tier(&c, &base, "shards", Some(2)).await;

    let opts = StoreOptions {
        password: local_pg_password(),
        ..StoreOptions::default()
    };
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let old = store::open_for_migration(&two, &opts, metrics.clone())
        .await
        .expect("open");
    let pointer = old
        .control()
        .await
        .expect("control")
        .moved_to
        .expect("pointer");
    assert!(
        !pointer.contains(":ladder@"),
        "pointer holds a password: {pointer}"
    );

    let live = store::open_for_migration(&three, &opts, metrics)
        .await
        .expect("open");
    let count_strays = || async {
        let mut n = 0;
        for part in 0..live.partitions() {
            n += live
                .scan_links(part, 0, 100_000)
                .await
                .expect("scan")
                .iter()
                .filter(|r| live.partition_of(&r.code) != part)
                .count();
        }
        n
    };
    let strays = count_strays().await;
    assert!(strays > 0, "the in-place reshard left rows behind");

    // A stray its owner never received: must survive the sweep.
    let orphan = (0..10_000)
        .map(|i| format!("orphan{i}"))
        .find(|code| live.partition_of(code) == 2)
        .expect("a code owned by the new shard");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&primary_url(&dbs[0]))
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO links (code, target, created_ms, seq, deleted)
         VALUES ($1, 'https://example.com/orphan', 1, nextval('ladder_links_seq'), false)",
    )
    .bind(&orphan)
    .execute(&mut conn)
    .await
    .expect("insert an uncopied stray");

    let dry = ladder_app::migrate::sweep(&*live, true)
        .await
        .expect("dry run");
    assert_eq!(dry.strays as usize, strays + 1);
    assert_eq!(
        count_strays().await,
        strays + 1,
        "a dry run removes nothing"
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ladder-app"))
        .arg("sweep")
        .arg("--store")
        .arg(three.to_string())
        .env(
            "LADDER_DB_PASSWORD",
            local_pg_password().unwrap_or_default(),
        )
        .output()
        .await
        .expect("sweep runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count_strays().await, 1, "only the uncopied stray is left");
    let left = ladder_app::migrate::sweep(&*live, true)
        .await
        .expect("report");
    assert_eq!(left.kept, vec![orphan]);

    // Every seeded link still answers, with its clicks.
    for (code, target) in &seeded {
        let v: serde_json::Value = c
            .get(format!("{base}/api/v1/links/{code}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(v["url"], target.as_str(), "{code}");
    }
    let (code, _) = &seeded[0];
    let stats: serde_json::Value = c
        .get(format!("{base}/api/v1/links/{code}/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert!(stats["total"].as_i64().unwrap_or(0) >= 1, "{stats}");

    // The retired map is refused.
    assert!(ladder_app::migrate::sweep(&*old, false).await.is_err());
}

/// A write that took its `seq` before another but commits after it must not be skipped by the
/// copy cursor: the watermark a pass copies up to waits for writes in flight.
#[tokio::test]
async fn the_copy_watermark_waits_for_writes_in_flight() {
    let db = fresh_db("watermark").await;
    let opts = StoreOptions {
        password: local_pg_password(),
        ..StoreOptions::default()
    };
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let s = store::open_for_migration(
        &StoreSpec::Postgres {
            url: primary_url(&db),
        },
        &opts,
        metrics,
    )
    .await
    .expect("open");
    // A writer in flight, as the app writes: fence row FOR SHARE, then a seq, not committed.
    let mut writer = <sqlx::PgConnection as sqlx::Connection>::connect(&primary_url(&db))
        .await
        .expect("connect");
    sqlx::raw_sql("BEGIN")
        .execute(&mut writer)
        .await
        .expect("begin");
    sqlx::query("SELECT fenced FROM ladder_control WHERE tier_id = $1 FOR SHARE")
        .bind(s.tier_id())
        .fetch_optional(&mut writer)
        .await
        .expect("lock");
    sqlx::query(
        "INSERT INTO links (code, target, created_ms, seq, deleted)
         VALUES ('in-flight', 'https://example.com/a', 1, nextval('ladder_links_seq'), false)",
    )
    .execute(&mut writer)
    .await
    .expect("insert");
    // A later write commits first, with a higher seq.
    s.create_link(&ladder_app::store::Link {
        code: "later".into(),
        target: "https://example.com/b".into(),
        created_ms: 2,
    })
    .await
    .expect("create");

    let wm = tokio::spawn({
        let s = s.clone();
        async move { s.watermark(0).await }
    });
    // Wait until the watermark's transaction is blocked on the fence row's lock, then check
    // that it did not finish past the write in flight.
    let probe = sqlx::PgPool::connect_lazy(&primary_url(&db)).expect("pool");
    eventually(
        "the watermark waiting for the lock",
        Duration::from_secs(10),
        || {
            let probe = probe.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'ladder-app'
                       AND wait_event_type = 'Lock'",
                )
                .fetch_one(&probe)
                .await
                .ok()?;
                (waiting > 0).then_some(())
            }
        },
    )
    .await;
    assert!(
        !wm.is_finished(),
        "the watermark must wait for the write in flight"
    );
    sqlx::raw_sql("COMMIT")
        .execute(&mut writer)
        .await
        .expect("commit");
    let w = wm.await.expect("join").expect("watermark");
    let below: Vec<String> = s
        .scan_links(0, 0, 100)
        .await
        .expect("scan")
        .into_iter()
        .filter(|r| r.seq <= w)
        .map(|r| r.code)
        .collect();
    assert!(
        below.contains(&"in-flight".to_owned()) && below.contains(&"later".to_owned()),
        "every row up to the watermark is visible: {below:?} (w = {w})"
    );
}

// ---- crash safety, the fence's identity and lease, the result file, reversal ---------------

/// Runs `migrate` to its end with a result file; returns the exit code (None: killed by a
/// signal) and the parsed result (None when the process wrote none).
async fn migrate_run(
    from: &StoreSpec,
    to: &StoreSpec,
    extra: &[&str],
    crash_at: Option<&str>,
) -> (Option<i32>, Option<serde_json::Value>) {
    let result = std::env::temp_dir().join(unique("migrate-result"));
    let mut cmd = migrate_cmd(from, to, extra);
    cmd.arg("--result-file")
        .arg(&result)
        .stderr(std::process::Stdio::null());
    if let Some(point) = crash_at {
        cmd.env(ladder_app::migrate::CRASH_AT_ENV, point);
    }
    let status = tokio::time::timeout(Duration::from_secs(120), cmd.status())
        .await
        .expect("migrate finishes in time")
        .expect("migrate runs");
    let parsed = std::fs::read_to_string(&result).ok().map(|text| {
        assert!(
            text.len() < 4096,
            "the result fits a termination message: {text}"
        );
        serde_json::from_str(&text).expect("the result file is JSON")
    });
    let _ = std::fs::remove_file(&result);
    (status.code(), parsed)
}

fn mopts() -> StoreOptions {
    StoreOptions {
        password: local_pg_password(),
        ..StoreOptions::default()
    }
}

async fn open_m(spec: &StoreSpec) -> Arc<dyn store::MigrationStore> {
    store::open_for_migration(
        spec,
        &mopts(),
        Arc::new(Metrics::new(Duration::from_secs(60))),
    )
    .await
    .expect("open")
}

/// After a cut-over from `old` to `new`: every partition of `old` is fenced and points away,
/// a write to it is refused, and `new` takes writes: one writable tier.
async fn assert_one_writable_tier(old: &StoreSpec, new: &StoreSpec) {
    let o = open_m(old).await;
    for (part, c) in o.controls().await.expect("controls").iter().enumerate() {
        assert!(
            c.fenced && c.moved_to.is_some(),
            "old tier partition {part} must stay fenced and point away: {c:?}"
        );
    }
    let probe = store::Link {
        code: unique("probe").replace('_', "-"),
        target: "https://example.com/probe".into(),
        created_ms: 1,
    };
    assert!(
        matches!(o.create_link(&probe).await, Err(store::StoreError::Fenced)),
        "the old tier refuses writes"
    );
    let n = open_m(new).await;
    for (part, c) in n.controls().await.expect("controls").iter().enumerate() {
        assert!(
            !c.fenced && c.moved_to.is_none(),
            "new tier partition {part} takes writes: {c:?}"
        );
    }
}

fn check_result(v: &serde_json::Value, outcome: &str) {
    assert_eq!(v["outcome"], outcome, "{v}");
    if outcome == "CutOver" {
        assert_eq!(v["verified"], true, "{v}");
        let tables = v["tables"].as_array().expect("tables");
        assert!(!tables.is_empty(), "{v}");
        for t in tables {
            assert_eq!(t["sourceRows"], t["targetRows"], "{t}");
            assert_eq!(t["sourceChecksum"], t["targetChecksum"], "{t}");
        }
        assert!(v["fenceMillis"].is_u64(), "{v}");
    }
}

/// Killed at every crash point (a loop over all of them, a sharded source so that a cut-over
/// can stop half-way), under load: the rerun exits 0 and finishes the same migration, every
/// acknowledged write is in the new tier, and exactly one tier is writable.
#[tokio::test]
async fn killed_at_every_point_the_rerun_finishes_the_same_migration() {
    assert_durable_primary().await;
    let points: Vec<&str> = ladder_app::migrate::CRASH_POINTS
        .iter()
        .copied()
        .filter(|p| *p != "verification-failed")
        .collect();
    assert!(points.len() >= 10, "{points:?}");
    let dir = std::env::temp_dir().join(unique("maps"));
    std::fs::create_dir_all(&dir).expect("dir");
    for point in points {
        let a = [fresh_db("kill_s0").await, fresh_db("kill_s1").await];
        let from = write_map(&dir, &format!("{point}.json"), &map(1, &a));
        let to = StoreSpec::Postgres {
            url: primary_url(&fresh_db("kill_pg").await),
        };
        let app = start(&args(from.clone())).await;
        let (c, base) = (http(), app.url());
        let seeded = seed(&base, 80).await;
        let load_gen = load(base.clone(), seeded);
        let (code, result) = migrate_run(&from, &to, &["--batch-size", "20"], Some(point)).await;
        assert_eq!(
            code, None,
            "{point}: the run is killed there (exit {code:?})"
        );
        assert!(result.is_none(), "{point}: a killed run writes no result");

        let (code, result) = migrate_run(&from, &to, &[], None).await;
        assert_eq!(code, Some(0), "{point}: the rerun succeeds: {result:?}");
        check_result(&result.expect("result"), "CutOver");
        wait_tier(&c, &base, "postgres", None).await;
        let after = load_gen.acked();
        eventually(
            &format!("{point}: writes after the cut-over"),
            Duration::from_secs(10),
            || async { (load_gen.acked() > after + 10).then_some(()) },
        )
        .await;
        let ledger = load_gen.finish().await;
        check_ledger(&to, &ledger).await;
        assert_one_writable_tier(&from, &to).await;
        // And once more: a finished migration reruns as a no-op.
        let (code, result) = migrate_run(&from, &to, &[], None).await;
        assert_eq!(code, Some(0), "{point}: {result:?}");
        check_ledger(&to, &ledger).await;
        eprintln!("{point}: ok ({} acknowledged writes)", ledger.acked);
        app.stop();
    }
}

/// The app writes through PgBouncer while the migrator reaches the same database directly:
/// one fence. Without it, writes made through PgBouncer during the fence would be lost.
#[tokio::test]
async fn one_fence_per_database_whatever_the_access_path() {
    let db = fresh_db("path").await;
    let served = StoreSpec::PgBouncer {
        url: bouncer_url(&db),
    };
    let direct = StoreSpec::Postgres {
        url: primary_url(&db),
    };
    // The same database under two names is refused as a migration onto itself.
    drop(open_m(&direct).await);
    let (code, result) = migrate_run(&served, &direct, &[], None).await;
    assert_eq!(code, Some(1));
    let result = result.expect("result");
    assert_eq!(result["outcome"], "Error");
    assert!(
        result["message"]
            .as_str()
            .is_some_and(|m| m.contains("same database")),
        "{result}"
    );

    let app = start(&args(served.clone())).await;
    let (c, base) = (http(), app.url());
    let seeded = seed(&base, 200).await;
    let load_gen = load(base.clone(), seeded);
    let sqlite = StoreSpec::Sqlite {
        path: temp_sqlite(),
    };
    let (code, result) = migrate_run(&direct, &sqlite, &["--batch-size", "50"], None).await;
    assert_eq!(code, Some(0), "{result:?}");
    check_result(&result.expect("result"), "CutOver");
    wait_tier(&c, &base, "sqlite", None).await;
    let after = load_gen.acked();
    eventually(
        "writes after the cut-over",
        Duration::from_secs(10),
        || async { (load_gen.acked() > after + 10).then_some(()) },
    )
    .await;
    let ledger = load_gen.finish().await;
    assert!(ledger.refused > 0, "the fence was hit through PgBouncer");
    check_ledger(&sqlite, &ledger).await;
    assert_one_writable_tier(&served, &sqlite).await;
}

/// A dead migrator's lease runs out into a clear error for writers; another migration is
/// refused while the lease lives and takes the fence over once it has expired.
#[tokio::test]
async fn a_dead_migrators_lease_expires_into_a_clear_error_and_is_taken_over() {
    let source = StoreSpec::Postgres {
        url: primary_url(&fresh_db("lease_a").await),
    };
    let first = StoreSpec::Sqlite {
        path: temp_sqlite(),
    };
    let second = StoreSpec::Sqlite {
        path: temp_sqlite(),
    };
    let app = start(&args(source.clone())).await;
    let (c, base) = (http(), app.url());
    let seeded = seed(&base, 40).await;
    let ttl = ["--lease-ttl-ms", "3000"];
    let (code, _) = migrate_run(&source, &first, &ttl, Some("fenced-checkpoint")).await;
    assert_eq!(code, None, "killed behind the fence");
    // While the lease lives: writes get the plain 503, another migration is refused.
    let r = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({ "url": "https://example.com/x" }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503);
    let (code, result) = migrate_run(&source, &second, &ttl, None).await;
    assert_eq!(code, Some(1), "{result:?}");
    assert!(
        result.expect("result")["message"]
            .as_str()
            .is_some_and(|m| m.contains("holds the fence")),
    );
    // Once it has expired: a clear, different error.
    let body: serde_json::Value = eventually(
        "the lease to expire into migration_stalled",
        Duration::from_secs(20),
        || {
            let (c, base) = (c.clone(), base.clone());
            async move {
                let r = c
                    .post(format!("{base}/api/v1/links"))
                    .json(&serde_json::json!({ "url": "https://example.com/y" }))
                    .send()
                    .await
                    .ok()?;
                assert_eq!(r.status(), 503, "writes stay refused");
                let v: serde_json::Value = r.json().await.ok()?;
                (v["error"]["code"] == "migration_stalled").then_some(v)
            }
        },
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rerun the migration")),
        "{body}"
    );
    // Another migration takes the expired fence over and cuts over.
    let (code, result) = migrate_run(&source, &second, &ttl, None).await;
    assert_eq!(code, Some(0), "{result:?}");
    wait_tier(&c, &base, "sqlite", None).await;
    let s = open_m(&second).await;
    for (code, target) in &seeded {
        let (link, _) = s
            .get_link(code, store::ReadCtx::default())
            .await
            .expect("get");
        assert_eq!(link.map(|l| l.target).as_deref(), Some(target.as_str()));
    }
    // The dead run's migration cannot resume onto its own target any more.
    let (code, result) = migrate_run(&source, &first, &ttl, None).await;
    assert_eq!(code, Some(1), "{result:?}");
    assert_one_writable_tier(&source, &second).await;
}

/// `--abort` gives a migration up before its cut-over: the source takes writes again.
#[tokio::test]
async fn abort_drops_the_fence_of_a_migration_not_cut_over() {
    let source = StoreSpec::Sqlite {
        path: temp_sqlite(),
    };
    let target = StoreSpec::Postgres {
        url: primary_url(&fresh_db("abort").await),
    };
    let app = start(&args(source.clone())).await;
    let (c, base) = (http(), app.url());
    seed(&base, 16).await;
    let (code, _) = migrate_run(&source, &target, &[], Some("verified")).await;
    assert_eq!(code, None);
    let r = c
        .post(format!("{base}/api/v1/links"))
        .json(&serde_json::json!({ "url": "https://example.com/x" }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503, "fenced");
    let (code, result) = migrate_run(&source, &target, &["--abort"], None).await;
    assert_eq!(code, Some(0), "{result:?}");
    assert_eq!(result.expect("result")["outcome"], "Aborted");
    create(&c, &base, "https://example.com/after-abort", None).await;
    // Cut over, it cannot be aborted any more.
    let (code, _) = migrate_run(&source, &target, &[], None).await;
    assert_eq!(code, Some(0));
    let (code, result) = migrate_run(&source, &target, &["--abort"], None).await;
    assert_eq!(code, Some(1), "{result:?}");
}

/// Rollback: A → B, more writes on B, B → A moves them back and the app follows; then A → B
/// again (an old `Done` checkpoint in B must not stop it). The ledger holds throughout.
#[tokio::test]
async fn reverse_migration_moves_the_writes_back_and_the_app_follows() {
    let a = StoreSpec::Postgres {
        url: primary_url(&fresh_db("rev_a").await),
    };
    let dir = std::env::temp_dir().join(unique("maps"));
    std::fs::create_dir_all(&dir).expect("dir");
    let b = write_map(
        &dir,
        "v1.json",
        &map(1, &[fresh_db("rev_b0").await, fresh_db("rev_b1").await]),
    );
    let app = start(&args(a.clone())).await;
    let (c, base) = (http(), app.url());
    let seeded = seed(&base, 200).await;
    let load_gen = load(base.clone(), seeded);

    let (code, result) = migrate_run(&a, &b, &[], None).await;
    assert_eq!(code, Some(0), "{result:?}");
    wait_tier(&c, &base, "shards", Some(1)).await;
    let on_b = load_gen.acked();
    eventually("writes on B", Duration::from_secs(10), || async {
        (load_gen.acked() > on_b + 30).then_some(())
    })
    .await;

    let (code, result) = migrate_run(&b, &a, &[], None).await;
    assert_eq!(code, Some(0), "{result:?}");
    check_result(&result.expect("result"), "CutOver");
    wait_tier(&c, &base, "postgres", None).await;
    let on_a = load_gen.acked();
    eventually("writes back on A", Duration::from_secs(10), || async {
        (load_gen.acked() > on_a + 30).then_some(())
    })
    .await;
    assert_one_writable_tier(&b, &a).await;

    // Forward again, killed right after deciding the cut-over.
    let (code, _) = migrate_run(&a, &b, &[], Some("cut-over")).await;
    assert_eq!(code, None);
    let (code, result) = migrate_run(&a, &b, &[], None).await;
    assert_eq!(code, Some(0), "{result:?}");
    wait_tier(&c, &base, "shards", Some(1)).await;
    let ledger = load_gen.finish().await;
    eprintln!(
        "ledger: {} links, {} acknowledged, {} refused",
        ledger.links.len(),
        ledger.acked,
        ledger.refused
    );
    check_ledger(&b, &ledger).await;
    assert_one_writable_tier(&a, &b).await;
}
