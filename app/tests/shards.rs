//! Phase 3: routing by the shard allocation map, and a live map change (new version picked up
//! without restart).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use ladder_app::store::StoreSpec;
use ladder_app::store::sharded::{ShardDef, ShardMap, SlotRange};

const SLOTS: u32 = 64;

pub fn write_map(path: &std::path::Path, map: &ShardMap) {
    // Write-then-rename so the app never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(map).expect("json")).expect("write map");
    std::fs::rename(&tmp, path).expect("rename map");
}

async fn codes_in(db: &str) -> HashSet<String> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&primary_url(db))
        .await
        .expect("connect shard");
    sqlx::query_scalar::<_, String>("SELECT code FROM links WHERE NOT deleted")
        .fetch_all(&mut conn)
        .await
        .expect("codes")
        .into_iter()
        .collect()
}

#[tokio::test]
async fn routes_by_map_and_follows_a_live_map_change() {
    let (s0, s1, s2) = (
        fresh_db("s0").await,
        fresh_db("s1").await,
        fresh_db("s2").await,
    );
    let dir = std::env::temp_dir().join(unique("shardmap"));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("map.json");
    let shard = |name: &str, db: &str| ShardDef {
        name: name.into(),
        url: primary_url(db),
    };
    let v1 = ShardMap {
        version: 1,
        slots: SLOTS,
        shards: vec![shard("s0", &s0), shard("s1", &s1)],
        ranges: vec![
            SlotRange {
                from: 0,
                to: 31,
                shard: "s0".into(),
            },
            SlotRange {
                from: 32,
                to: SLOTS - 1,
                shard: "s1".into(),
            },
        ],
    };
    write_map(&path, &v1);
    let app = start(&args(StoreSpec::Shards {
        map_path: path.display().to_string(),
    }))
    .await;
    let (c, base) = (http(), app.url());

    let mut codes = Vec::new();
    for i in 0..12 {
        codes.push(create(&c, &base, &format!("https://example.com/{i}"), None).await);
    }
    let (in0, in1) = (codes_in(&s0).await, codes_in(&s1).await);
    for code in &codes {
        let expect0 = v1.slot_of(code) < 32;
        assert_eq!(in0.contains(code), expect0, "{code} on the wrong shard");
        assert_eq!(in1.contains(code), !expect0, "{code} on the wrong shard");
    }
    assert!(
        !in0.is_empty() && !in1.is_empty(),
        "12 codes should spread over both shards"
    );

    // v2 hands every slot that holds no link yet to a new shard s2: no data moves.
    let used: HashSet<u32> = codes.iter().map(|c| v1.slot_of(c)).collect();
    let mut ranges = Vec::new();
    for slot in 0..SLOTS {
        let owner = if used.contains(&slot) {
            if slot < 32 { "s0" } else { "s1" }
        } else {
            "s2"
        };
        ranges.push(SlotRange {
            from: slot,
            to: slot,
            shard: owner.into(),
        });
    }
    let v2 = ShardMap {
        version: 2,
        shards: vec![shard("s0", &s0), shard("s1", &s1), shard("s2", &s2)],
        ranges,
        ..v1.clone()
    };
    write_map(&path, &v2);
    poll_json(
        &c,
        &format!("{base}/readyz"),
        "map v2 in force",
        Duration::from_secs(10),
        |_, r| r["store"]["shardMapVersion"] == 2,
    )
    .await;
    // Old links still resolve; new links in free slots land on s2.
    for code in &codes {
        assert_eq!(status(&c, &format!("{base}/{code}")).await, 302);
    }
    let mut on_s2 = Vec::new();
    for i in 0..20 {
        let code = create(&c, &base, &format!("https://example.org/{i}"), None).await;
        if !used.contains(&v2.slot_of(&code)) {
            on_s2.push(code);
        }
    }
    assert!(!on_s2.is_empty());
    let in2 = codes_in(&s2).await;
    for code in &on_s2 {
        assert!(in2.contains(code), "{code} should be on the new shard s2");
        assert_eq!(
            status(&c, &format!("{base}/api/v1/links/{code}")).await,
            200
        );
    }
    // An invalid map is refused and the current one stays.
    std::fs::write(
        &path,
        r#"{"version": 3, "slots": 64, "shards": [], "ranges": []}"#,
    )
    .expect("write");
    eventually(
        "the invalid map to be refused",
        Duration::from_secs(10),
        || async {
            let refused = metric(
                &c,
                &base,
                "ladder_config_reloads_total",
                "source=\"shard_map\",outcome=\"refused\"",
            )
            .await;
            (refused >= 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(ready(&c, &base).await["store"]["shardMapVersion"], 2);
    crud_round(&base).await;
}
