//! The app on loopback for transition tests: `ladder-app serve` on phase 0
//! (SQLite in a directory the migration runner maps the app's data claim
//! to) or on any tier's `LADDER_STORE`, a bounded load generator keeping a
//! ledger of *acknowledged* writes (and the windows in which writes were
//! refused, as the app's clients saw them), and the check that every
//! acknowledged write is in a PostgreSQL database or spread over shards.
//!
//! The app follows the migration's cut-over pointer by itself (it polls its
//! tier's control row), so the same process ends up serving from the new
//! tier: the test watches that through `/readyz`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Who a loopback app reports its load as: a Pod of a ScalingPhase's app
/// (the operator believes a LoadReport only when its owner Pod is one).
#[derive(Clone, Debug)]
pub struct ReportAs {
    /// The namespace of the ScalingPhase.
    pub namespace: String,
    /// The ScalingPhase.
    pub scaling_phase: String,
    /// The Pod the reports are owned by.
    pub pod: String,
    /// `LADDER_LOAD_WINDOW_SECS`.
    pub window_secs: u64,
    /// `LADDER_REPORT_INTERVAL_SECS`.
    pub interval_secs: u64,
}

/// `ladder-app serve` on a loopback port; killed on drop.
#[derive(Debug)]
pub struct LoopbackApp {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Drop for LoopbackApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The local PostgreSQL password (from `LADDER_PG_PRIMARY_URL`).
pub fn local_pg_password() -> anyhow::Result<String> {
    let url = crate::service_env("LADDER_PG_PRIMARY_URL")
        .context("LADDER_PG_PRIMARY_URL is not set: run hack/services.sh up")?;
    let userinfo = url
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .map(|(u, _)| u)
        .context("no credentials in LADDER_PG_PRIMARY_URL")?;
    Ok(userinfo
        .split_once(':')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default())
}

impl LoopbackApp {
    /// Starts the app on phase 0 with its SQLite file in `data_dir`, and
    /// waits until it is ready. It gets the local PostgreSQL password, as the
    /// phase-1 wiring would give it, so it can follow a cut-over to a
    /// PostgreSQL tier whose URL carries none.
    pub async fn start_phase0(data_dir: &Path) -> anyhow::Result<Self> {
        let store = format!("sqlite:{}", data_dir.join("ladder.db").display());
        Self::start(data_dir, &store).await
    }

    /// Starts the app on `store` (a `LADDER_STORE` value whose hosts and
    /// files are already local), logging into `dir`, and waits until it is
    /// ready.
    pub async fn start(dir: &Path, store: &str) -> anyhow::Result<Self> {
        Self::start_with(dir, store, None).await
    }

    /// [`LoopbackApp::start`], the app writing LoadReports as `report`'s Pod
    /// (into the cluster `KUBECONFIG` names) when set.
    pub async fn start_with(
        dir: &Path,
        store: &str,
        report: Option<&ReportAs>,
    ) -> anyhow::Result<Self> {
        let bin = crate::app_bin()?;
        let port = free_port();
        let log = dir.join("app.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env_clear()
            .env("LADDER_STORE", store)
            .env("LADDER_LISTEN", format!("127.0.0.1:{port}"))
            .env("LADDER_DB_PASSWORD", local_pg_password()?)
            .env("LADDER_POLL_INTERVAL_MS", "100")
            .env("RUST_LOG", "info,sqlx=warn");
        if let Some(r) = report {
            let kubeconfig = std::env::var("KUBECONFIG").context("KUBECONFIG is not set")?;
            cmd.env("LADDER_REPORT_LOAD", "true")
                .env("LADDER_KUBECONFIG", kubeconfig)
                .env("LADDER_SCALING_PHASE", &r.scaling_phase)
                .env("LADDER_NAMESPACE", &r.namespace)
                .env("LADDER_POD_NAME", &r.pod)
                .env("LADDER_LOAD_WINDOW_SECS", r.window_secs.to_string())
                .env("LADDER_REPORT_INTERVAL_SECS", r.interval_secs.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start ladder-app serve")?;
        let mut app = LoopbackApp {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let c = http();
        let start = Instant::now();
        loop {
            if let Some(status) = app.child.try_wait()? {
                bail!("ladder-app exited ({status}):\n{}", app.log_text());
            }
            if app.tier(&c).await.is_some() {
                return Ok(app);
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("ladder-app never became ready:\n{}", app.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The tier it serves from (`/readyz`'s `store.tier`), when ready.
    pub async fn tier(&self, c: &reqwest::Client) -> Option<String> {
        let r = c.get(format!("{}/readyz", self.base)).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        v["store"]["tier"].as_str().map(str::to_owned)
    }
}

/// A plain HTTP client with a short timeout and no redirects.
pub fn http() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// code → last acknowledged target (`None`: an acknowledged delete). A code
/// whose last operation got no answer (transport error) is `uncertain`: it
/// must still exist, but its content is not checked.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// The acknowledged state of each code.
    pub links: HashMap<String, Option<String>>,
    /// Codes whose last write has an unknown outcome.
    pub uncertain: HashSet<String>,
    /// Acknowledged writes.
    pub acked: u64,
    /// Writes refused with 503 (fenced), then retried.
    pub refused: u64,
    /// Each time writes stopped being acknowledged: from the first attempt
    /// that was refused (503) or got no answer, to the next acknowledged
    /// write, as the client measured it.
    pub unavailable: Vec<Duration>,
}

impl Ledger {
    /// The longest window without an acknowledged write, if there was one.
    pub fn longest_unavailable(&self) -> Option<Duration> {
        self.unavailable.iter().max().copied()
    }
}

/// A bounded load: one client, at most ~100 writes/s, stopped by
/// [`Load::finish`] or after `limit`.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Held by the generator around each write (with its retries), and by
    /// [`Load::pause`] while paused (tokio's mutex is fair: the pause waits
    /// for the write in flight only).
    gate: Arc<tokio::sync::Mutex<()>>,
    paused: Mutex<Option<tokio::sync::OwnedMutexGuard<()>>>,
    ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Load {
    /// Starts creating, updating and deleting links through `base`.
    pub fn start(base: String, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let task = tokio::spawn(run_load(
            base,
            limit,
            stop.clone(),
            gate.clone(),
            ledger.clone(),
        ));
        Load {
            stop,
            gate,
            paused: Mutex::new(None),
            ledger,
            task,
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.ledger.lock().expect("ledger").acked
    }

    /// Stops sending after the request in flight and returns the ledger as
    /// it stands then (every write it holds is answered), so a test can
    /// compare it with a database; [`Load::resume`] goes on.
    pub async fn pause(&self) -> anyhow::Result<Ledger> {
        if self.task.is_finished() {
            bail!("the load generator stopped");
        }
        let guard = tokio::time::timeout(Duration::from_secs(60), self.gate.clone().lock_owned())
            .await
            .context("the load generator did not pause within 60 s (a write kept being refused)")?;
        *self.paused.lock().expect("pause") = Some(guard);
        Ok(self.ledger.lock().expect("ledger").clone())
    }

    /// Resumes after [`Load::pause`].
    pub fn resume(&self) {
        self.paused.lock().expect("pause").take();
    }

    /// Stops the load and returns the ledger.
    pub async fn finish(self) -> anyhow::Result<Ledger> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.context("load generator panicked")??;
        let ledger = std::mem::take(&mut *self.ledger.lock().expect("ledger"));
        Ok(ledger)
    }
}

async fn run_load(
    base: String,
    limit: Duration,
    stop: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Mutex<()>>,
    ledger: Arc<Mutex<Ledger>>,
) -> anyhow::Result<()> {
    let c = http();
    let deadline = Instant::now() + limit;
    let mut i = 0u64;
    // Since when no write has been acknowledged (the first refused attempt).
    let mut down_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let gate = gate.lock().await;
        i += 1;
        let roll = rand::random::<u8>() % 10;
        let existing: Option<String> = {
            let l = ledger.lock().expect("ledger");
            let live: Vec<&String> = l
                .links
                .iter()
                .filter(|(_, t)| t.is_some())
                .map(|(c, _)| c)
                .collect();
            (!live.is_empty() && roll < 3)
                .then(|| live[rand::random::<u32>() as usize % live.len()].clone())
        };
        // Retry until acknowledged: 503 is the fence (or the cut-over) refusing writes.
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let target = format!("https://example.com/{i}");
            let sent = Instant::now();
            let result = match &existing {
                Some(code) if roll == 0 => {
                    c.delete(format!("{base}/api/v1/links/{code}")).send().await
                }
                Some(code) => {
                    c.put(format!("{base}/api/v1/links/{code}"))
                        .json(&serde_json::json!({ "url": target }))
                        .send()
                        .await
                }
                None => {
                    c.post(format!("{base}/api/v1/links"))
                        .json(&serde_json::json!({ "url": target }))
                        .send()
                        .await
                }
            };
            match result {
                Ok(r) if r.status() == 503 => {
                    down_since.get_or_insert(sent);
                    ledger.lock().expect("ledger").refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(r) if r.status().is_success() => {
                    let created = match existing {
                        None => {
                            let v: serde_json::Value = r.json().await?;
                            Some(v["code"].as_str().context("a created code")?.to_owned())
                        }
                        Some(_) => None,
                    };
                    let mut l = ledger.lock().expect("ledger");
                    l.acked += 1;
                    if let Some(since) = down_since.take() {
                        l.unavailable.push(since.elapsed());
                    }
                    match (&existing, created) {
                        (Some(code), _) if roll == 0 => {
                            l.links.insert(code.clone(), None);
                        }
                        (Some(code), _) => {
                            l.links.insert(code.clone(), Some(target));
                        }
                        (None, Some(code)) => {
                            l.links.insert(code, Some(target));
                        }
                        (None, None) => bail!("a create returned no code"),
                    }
                    l.uncertain.remove(existing.as_deref().unwrap_or_default());
                }
                Ok(r) => bail!("the load generator got {}", r.status()),
                Err(_) => {
                    down_since.get_or_insert(sent);
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
        drop(gate);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Creates a fresh database on the local PostgreSQL primary; returns its name.
pub async fn fresh_db(prefix: &str) -> anyhow::Result<String> {
    let admin = crate::service_env("LADDER_PG_PRIMARY_URL").context("LADDER_PG_PRIMARY_URL")?;
    let name = format!("{prefix}_{:08x}", rand::random::<u32>());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await?;
    Ok(name)
}

/// The URL of database `db` on the local primary.
pub fn primary_db_url(db: &str) -> anyhow::Result<String> {
    let admin = crate::service_env("LADDER_PG_PRIMARY_URL").context("LADDER_PG_PRIMARY_URL")?;
    let (base, _) = admin.rsplit_once('/').context("a database in the URL")?;
    Ok(format!("{base}/{db}"))
}

/// Checks that every acknowledged write of `ledger` is in the `links` table
/// of the PostgreSQL database at `url`, with its acknowledged content.
/// Returns how many live links were checked.
pub async fn check_ledger_pg(url: &str, ledger: &Ledger) -> anyhow::Result<usize> {
    check_ledger_in(&[url.to_owned()], ledger).await
}

/// Every `links` row of the PostgreSQL databases at `urls`: code →
/// (database index, target, deleted).
pub async fn links_in(urls: &[String]) -> anyhow::Result<Links> {
    links_of(urls, None).await
}

/// Rows of `links` by code: (database index, target, deleted) per copy.
pub type Links = HashMap<String, Vec<(usize, String, bool)>>;

/// Like [`links_in`], for the rows of `codes` only (when given).
pub async fn links_of(urls: &[String], codes: Option<Vec<String>>) -> anyhow::Result<Links> {
    let mut seen = Links::new();
    for (i, url) in urls.iter().enumerate() {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .with_context(|| format!("connect to database {i}"))?;
        let rows: Vec<(String, String, bool)> = match &codes {
            None => {
                sqlx::query_as("SELECT code, target, deleted FROM links")
                    .fetch_all(&mut conn)
                    .await
            }
            Some(codes) => {
                sqlx::query_as("SELECT code, target, deleted FROM links WHERE code = ANY($1)")
                    .bind(codes)
                    .fetch_all(&mut conn)
                    .await
            }
        }
        .with_context(|| format!("read links of database {i}"))?;
        for (code, target, deleted) in rows {
            seen.entry(code).or_default().push((i, target, deleted));
        }
    }
    Ok(seen)
}

/// Like [`check_ledger_pg`] over the union of several databases (the shards
/// of a tier): every acknowledged link in exactly one of them, with its
/// acknowledged content. Returns how many live links were checked.
pub async fn check_ledger_in(urls: &[String], ledger: &Ledger) -> anyhow::Result<usize> {
    let seen = links_of(urls, Some(ledger.links.keys().cloned().collect())).await?;
    check_ledger_seen(seen, ledger)
}

/// Like [`check_ledger_in`], looking at each link only in the database
/// `owner` names for its code (a shard map's owner of its slot): the rows
/// an in-place resharding left on shards that no longer own them (and that
/// `ladder-app sweep` kept, because the owner changed them since) are
/// invisible to the app and are not counted. Returns how many live links
/// were checked and how many such rows were left out.
pub async fn check_ledger_owned(
    urls: &[String],
    ledger: &Ledger,
    owner: impl Fn(&str) -> usize,
) -> anyhow::Result<(usize, usize)> {
    let mut seen = links_of(urls, Some(ledger.links.keys().cloned().collect())).await?;
    let mut strays = 0;
    for (code, places) in seen.iter_mut() {
        let own = owner(code);
        let before = places.len();
        places.retain(|(i, _, _)| *i == own);
        strays += before - places.len();
    }
    Ok((check_ledger_seen(seen, ledger)?, strays))
}

fn check_ledger_seen(seen: Links, ledger: &Ledger) -> anyhow::Result<usize> {
    if ledger.links.is_empty() {
        bail!("the ledger is empty: the load acknowledged nothing");
    }
    let mut live = 0;
    let mut problems = Vec::new();
    for (code, expected) in &ledger.links {
        let (target, deleted) = match seen.get(code).map(Vec::as_slice) {
            None | Some([]) => {
                problems.push(format!("{code}: acknowledged, missing"));
                continue;
            }
            Some([(_, target, deleted)]) => (target, *deleted),
            Some(many) => {
                let dbs: Vec<usize> = many.iter().map(|(i, _, _)| *i).collect();
                problems.push(format!("{code}: in several databases {dbs:?}"));
                continue;
            }
        };
        if ledger.uncertain.contains(code) {
            continue;
        }
        match expected {
            Some(t) if deleted => problems.push(format!("{code}: deleted, expected {t}")),
            Some(t) if t != target => problems.push(format!("{code}: {target}, expected {t}")),
            Some(_) => live += 1,
            None if !deleted => problems.push(format!("{code}: acknowledged delete lost")),
            None => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} of {} acknowledged links wrong in PostgreSQL: {:?}",
            problems.len(),
            ledger.links.len(),
            &problems[..problems.len().min(10)]
        );
    }
    Ok(live)
}
