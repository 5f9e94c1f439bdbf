//! Click analytics. A redirect only *records* a click in memory; a background task flushes them:
//!
//! - to the primary database (phases 0-2), aggregated per (code, day) so a flush is one small
//!   transaction however many clicks it carries;
//! - to ClickHouse (phase 3+), as batched `INSERT … FORMAT JSONEachRow` over its HTTP interface.
//!   The statements ([`sql`]) are in the form every engine from Debian's 18.16 to the 25.8 the
//!   operator renders (and 26) accepts: `ENGINE = MergeTree PARTITION BY … ORDER BY …` (the old
//!   `MergeTree(date, key, 8192)` form is refused by current engines), stats with a plain
//!   `GROUP BY` (no parameterised queries: codes are validated to `[A-Za-z0-9_-]` before they
//!   reach SQL). `app/tests/clickhouse_engines.rs` runs them on both engines.
//!
//! Neither sink can fail a redirect: the buffer is bounded (`--click-buffer`); while the sink is
//! down batches are kept for retry up to that bound, then the oldest clicks are dropped and counted
//! in `ladder_clicks_total{outcome="dropped"}`. On SIGTERM the server flushes once more after
//! the last request ([`ClickSink::flush`]), so a rolling restart loses no clicks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::{ClickRow, StoreHandle};

/// The ClickHouse HTTP(S) client. Credentials travel as HTTP basic auth, never in the URL
/// the requests go to (ClickHouse would log it).
#[derive(Clone)]
pub struct ClickHouse {
    http: reqwest::Client,
    url: String,
    database: String,
    auth: Option<(String, Option<String>)>,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl ClickHouse {
    pub fn new(url: &str, database: &str) -> anyhow::Result<Self> {
        Self::new_with(url, database, None, None)
    }

    /// `url` may name a user (`https://user@host:8443/`); `password` is used when it has none.
    /// `ca_pem` is the CA an `https` server's certificate must chain to.
    pub fn new_with(
        url: &str,
        database: &str,
        password: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        if !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!("ClickHouse database name must be [A-Za-z0-9_]");
        }
        let mut parsed = url::Url::parse(url).context("ClickHouse URL")?;
        let auth = if parsed.username().is_empty() {
            password.map(|p| ("default".to_owned(), Some(p.to_owned())))
        } else {
            let user = parsed.username().to_owned();
            let pass = parsed
                .password()
                .map(str::to_owned)
                .or_else(|| password.map(str::to_owned));
            Some((user, pass))
        };
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        crate::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            // A private CA (the operator's): trust it alone.
            builder = builder.tls_certs_only(
                reqwest::Certificate::from_pem_bundle(pem).context("ClickHouse CA")?,
            );
        }
        Ok(ClickHouse {
            http: builder.build()?,
            url: parsed.as_str().trim_end_matches('/').to_owned(),
            database: database.to_owned(),
            auth,
        })
    }

    async fn exec(&self, query: &str, body: Option<String>) -> anyhow::Result<String> {
        // ClickHouse 18.16 refuses a POST without Content-Length (and hyper sends none for an
        // empty body): a statement without data travels as the body itself.
        let req = match body {
            Some(data) => {
                let mut url = url::Url::parse(&self.url).context("ClickHouse URL")?;
                url.query_pairs_mut().append_pair("query", query);
                self.http.post(url).body(data)
            }
            None => self.http.post(&self.url).body(query.to_owned()),
        };
        let req = match &self.auth {
            Some((user, pass)) => req.basic_auth(user, pass.as_ref()),
            None => req,
        };
        let resp = req.send().await.context("ClickHouse unreachable")?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "ClickHouse answered {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        Ok(text)
    }

    pub async fn ensure_schema(&self) -> anyhow::Result<()> {
        self.exec(&sql::create_database(&self.database), None)
            .await?;
        self.exec(&sql::create_table(&self.database), None).await?;
        Ok(())
    }

    pub async fn insert(&self, clicks: &[(String, DateTime<Utc>)]) -> anyhow::Result<()> {
        self.exec(&sql::insert(&self.database), Some(sql::insert_rows(clicks)))
            .await?;
        Ok(())
    }

    pub async fn stats(&self, code: &str) -> anyhow::Result<Vec<ClickRow>> {
        let text = self.exec(&sql::stats(&self.database, code)?, None).await?;
        sql::parse_stats(code, &text)
    }
}

/// The app's ClickHouse statements and their results, as text: pure, so the tests can run the
/// very same statements on other engines (`app/tests/clickhouse_engines.rs`).
pub mod sql {
    use anyhow::bail;
    use chrono::{DateTime, Utc};

    use crate::store::ClickRow;

    pub fn create_database(database: &str) -> String {
        format!("CREATE DATABASE IF NOT EXISTS {database}")
    }

    /// One row per click, partitioned by month and sorted by code then time (what the stats
    /// query reads). A table made by an earlier version with the old `MergeTree(day, (code,
    /// ts), 8192)` form has the same columns and stays as it is.
    pub fn create_table(database: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.clicks (day Date, ts DateTime, code String) \
             ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (code, ts)"
        )
    }

    /// The statement of an insert; its rows ([`insert_rows`]) follow it as data.
    pub fn insert(database: &str) -> String {
        format!("INSERT INTO {database}.clicks FORMAT JSONEachRow")
    }

    /// One JSON object per line.
    pub fn insert_rows(clicks: &[(String, DateTime<Utc>)]) -> String {
        let mut body = String::with_capacity(clicks.len() * 64);
        for (code, at) in clicks {
            let line = serde_json::json!({
                "day": at.format("%Y-%m-%d").to_string(),
                "ts": at.format("%Y-%m-%d %H:%M:%S").to_string(),
                "code": code,
            });
            body.push_str(&line.to_string());
            body.push('\n');
        }
        body
    }

    /// Clicks of `code` per day; refuses a code outside `[A-Za-z0-9_-]`.
    pub fn stats(database: &str, code: &str) -> anyhow::Result<String> {
        if !crate::links::valid_code_chars(code) {
            bail!("invalid code");
        }
        Ok(format!(
            "SELECT toString(day) AS day, count() AS clicks FROM {database}.clicks WHERE code = '{code}' \
             GROUP BY day ORDER BY day FORMAT JSONEachRow"
        ))
    }

    /// The rows of a [`stats`] answer.
    pub fn parse_stats(code: &str, text: &str) -> anyhow::Result<Vec<ClickRow>> {
        let mut rows = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            // UInt64 comes back quoted by older engines (output_format_json_quote_64bit_integers
            // was on by default), as a number by current ones.
            let clicks = match &v["clicks"] {
                serde_json::Value::String(s) => s.parse()?,
                other => other.as_i64().unwrap_or(0),
            };
            rows.push(ClickRow {
                code: code.to_owned(),
                day: v["day"].as_str().unwrap_or_default().to_owned(),
                clicks,
            });
        }
        Ok(rows)
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01, UTC).
fn day_string(day: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Where clicks go.
#[derive(Debug)]
pub enum ClickSink {
    Off,
    Db(Arc<DbClicks>),
    ClickHouse(Arc<ChClicks>),
}

/// How long one flush may wait for its sink (a database that never answers must not hold
/// the flusher, or shutdown, forever); the batch is kept for the next flush.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// Clicks not flushed yet: code → (day number, count) pairs. Keyed by code alone so that
/// counting a click of a code already pending allocates nothing (a `(String, day)` key would
/// need an owned `String` for every lookup).
#[derive(Debug, Default)]
struct Pending {
    counts: HashMap<String, Vec<(i32, i64)>>,
    /// (code, day) pairs held: what `cap` bounds.
    keys: usize,
}

impl Pending {
    /// Adds `n` clicks of `code` on `day`; false (nothing added) when that would be a new
    /// (code, day) pair beyond `cap`.
    fn add(&mut self, code: &str, day: i32, n: i64, cap: usize) -> bool {
        if let Some(days) = self.counts.get_mut(code) {
            if let Some(c) = days.iter_mut().find(|(d, _)| *d == day) {
                c.1 += n;
                return true;
            }
            if self.keys >= cap {
                return false;
            }
            days.push((day, n));
        } else {
            if self.keys >= cap {
                return false;
            }
            self.counts.insert(code.to_owned(), vec![(day, n)]);
        }
        self.keys += 1;
        true
    }

    /// Everything pending, as ((code, day), count); leaves it empty.
    fn take(&mut self) -> Vec<((String, i32), i64)> {
        self.keys = 0;
        std::mem::take(&mut self.counts)
            .into_iter()
            .flat_map(|(code, days)| {
                days.into_iter()
                    .map(move |(day, n)| ((code.clone(), day), n))
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct DbClicks {
    pending: Arc<Mutex<Pending>>,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    cap: usize,
    /// One flush at a time: the shutdown flush waits for a periodic one in progress, so the
    /// process does not exit while that one still holds clicks.
    flushing: tokio::sync::Mutex<()>,
}

impl DbClicks {
    /// Writes what is pending in one transaction; on failure puts it back (up to `cap` keys).
    async fn flush(&self) -> anyhow::Result<()> {
        let _one = self.flushing.lock().await;
        let batch = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if batch.is_empty() {
            return Ok(());
        }
        let rows: Vec<ClickRow> = batch
            .iter()
            .map(|((code, day), n)| ClickRow {
                code: code.clone(),
                day: day_string(*day),
                clicks: *n,
            })
            .collect();
        let total: i64 = rows.iter().map(|r| r.clicks).sum();
        let store = self.store.get();
        let outcome = match tokio::time::timeout(FLUSH_DEADLINE, store.add_clicks(&rows)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(anyhow::Error::new(err)),
            Err(_) => Err(anyhow::anyhow!("no answer within {FLUSH_DEADLINE:?}")),
        };
        match outcome {
            Ok(()) => {
                Metrics::inc(&self.metrics.clicks, "stored", total as u64);
                Ok(())
            }
            Err(err) => {
                // A timed-out transaction may still commit: counts could be stored twice. A
                // click count is not worth a two-phase protocol; losing them all is worse.
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                for ((code, day), n) in batch {
                    if !p.add(&code, day, n, self.cap) {
                        Metrics::inc(&self.metrics.clicks, "dropped", n as u64);
                    }
                }
                Err(err.context(format!("{total} clicks kept for retry")))
            }
        }
    }
}

#[derive(Debug)]
pub struct ChClicks {
    tx: mpsc::Sender<(String, DateTime<Utc>)>,
    pub client: ClickHouse,
    buffer: Arc<tokio::sync::Mutex<ChBuffer>>,
    metrics: Arc<Metrics>,
    cap: usize,
}

/// What the ClickHouse flusher holds between flushes.
#[derive(Debug)]
struct ChBuffer {
    rx: mpsc::Receiver<(String, DateTime<Utc>)>,
    /// Clicks not inserted yet, oldest first; bounded by `cap`.
    retry: VecDeque<(String, DateTime<Utc>)>,
    schema_ready: bool,
}

impl ChClicks {
    /// Inserts everything received so far, in batches; stops at the first failure (the rest
    /// stays for the next flush).
    async fn flush(&self) -> anyhow::Result<()> {
        let mut b = self.buffer.lock().await;
        let b = &mut *b;
        while let Ok(c) = b.rx.try_recv() {
            b.retry.push_back(c);
        }
        if b.retry.len() > self.cap {
            let drop = b.retry.len() - self.cap;
            b.retry.drain(..drop);
            Metrics::inc(&self.metrics.clicks, "dropped", drop as u64);
        }
        if b.retry.is_empty() {
            return Ok(());
        }
        if !b.schema_ready {
            self.client
                .ensure_schema()
                .await
                .context("ClickHouse schema not ready")?;
            b.schema_ready = true;
        }
        while !b.retry.is_empty() {
            let n = b.retry.len().min(50_000);
            let batch: Vec<_> = b.retry.iter().take(n).cloned().collect();
            if let Err(err) = self.client.insert(&batch).await {
                Metrics::inc(&self.metrics.clicks, "retried", n as u64);
                return Err(err.context(format!("{} clicks kept for retry", b.retry.len())));
            }
            b.retry.drain(..n);
            Metrics::inc(&self.metrics.clicks, "stored", n as u64);
        }
        Ok(())
    }
}

impl ClickSink {
    /// Starts the database sink and its flusher.
    pub fn db(store: StoreHandle, metrics: Arc<Metrics>, every: Duration, cap: usize) -> Self {
        let sink = Arc::new(DbClicks {
            pending: Arc::default(),
            store,
            metrics,
            cap,
            flushing: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&sink);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(sink) = weak.upgrade() else { return };
                if let Err(err) = sink.flush().await {
                    tracing::warn!(error = %format!("{err:#}"), "click flush failed");
                }
            }
        });
        ClickSink::Db(sink)
    }

    /// Starts the ClickHouse sink and its flusher.
    pub fn clickhouse(
        client: ClickHouse,
        metrics: Arc<Metrics>,
        every: Duration,
        cap: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<(String, DateTime<Utc>)>(cap.max(1));
        let sink = Arc::new(ChClicks {
            tx,
            client,
            buffer: Arc::new(tokio::sync::Mutex::new(ChBuffer {
                rx,
                retry: VecDeque::new(),
                schema_ready: false,
            })),
            metrics,
            cap,
        });
        let weak = Arc::downgrade(&sink);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(sink) = weak.upgrade() else { return };
                if let Err(err) = sink.flush().await {
                    tracing::warn!(error = %format!("{err:#}"), "ClickHouse flush failed; will retry");
                }
            }
        });
        ClickSink::ClickHouse(sink)
    }

    /// Flushes what is buffered now (at shutdown: SIGTERM must not lose the clicks of the last
    /// flush interval). Bounded by the sink's own timeouts.
    pub async fn flush(&self) -> anyhow::Result<()> {
        match self {
            ClickSink::Off => Ok(()),
            ClickSink::Db(d) => d.flush().await,
            ClickSink::ClickHouse(c) => c.flush().await,
        }
    }

    /// Records one click; never blocks, never fails the redirect.
    pub fn record(&self, code: &str, metrics: &Metrics) {
        let now = Utc::now();
        match self {
            ClickSink::Off => {}
            ClickSink::Db(d) => {
                // Days since the epoch: formatting a date per click is measurable on the hot path.
                let day = now.timestamp().div_euclid(86_400) as i32;
                let added = d
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .add(code, day, 1, 1_000_000);
                if !added {
                    metrics.clicks_dropped.inc();
                }
            }
            ClickSink::ClickHouse(c) => {
                if c.tx.try_send((code.to_owned(), now)).is_err() {
                    metrics.clicks_dropped.inc();
                }
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ClickSink::Off => "off",
            ClickSink::Db(_) => "db",
            ClickSink::ClickHouse(_) => "clickhouse",
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pending_counts_per_code_and_day_within_the_cap() {
        let mut p = super::Pending::default();
        assert!(p.add("abc", 1, 1, 2));
        assert!(p.add("abc", 1, 2, 2), "an existing pair always adds up");
        assert!(p.add("abc", 2, 1, 2));
        assert!(!p.add("xyz", 1, 1, 2), "a third pair is beyond the cap");
        assert!(
            p.add("abc", 2, 4, 2),
            "existing pairs still count at the cap"
        );
        let mut rows = p.take();
        rows.sort();
        assert_eq!(
            rows,
            vec![(("abc".to_owned(), 1), 3), (("abc".to_owned(), 2), 5)]
        );
        assert!(p.take().is_empty());
        assert!(p.add("xyz", 1, 1, 2), "the cap counts what is pending now");
    }

    #[test]
    fn day_numbers_format_as_utc_dates() {
        assert_eq!(super::day_string(0), "1970-01-01");
        assert_eq!(super::day_string(20_418), "2025-11-26");
    }
}
