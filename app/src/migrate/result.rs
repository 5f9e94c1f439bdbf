//! The machine-readable result of `ladder-app migrate` (`--result-file`): one JSON object
//! written at exit, small enough for a Kubernetes termination message (the operator points the
//! file at `/dev/termination-log`, which the kubelet truncates at 4096 bytes).

use std::time::Duration;

use serde::Serialize;

use super::verify::TableResult;

/// The kubelet keeps at most 4096 bytes of a termination message; stay below it.
pub const MAX_BYTES: usize = 4000;

/// How a run ended (the exit status says the same: 0, 2, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Exit 0: the target is the tier in force (this run cut over, or an earlier one did).
    CutOver,
    /// Exit 0, `--no-cutover` only: copied and verified, nothing fenced or cut over.
    Verified,
    /// Exit 0, `--abort` only: the source's fence was dropped; nothing was cut over.
    Aborted,
    /// Exit 2: the copy does not match; the source was unfenced and stays authoritative.
    VerificationFailed,
    /// Exit 1: anything else; rerun to resume.
    Error,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::CutOver | Outcome::Verified | Outcome::Aborted => 0,
            Outcome::VerificationFailed => 2,
            Outcome::Error => 1,
        }
    }
}

/// The result file's content.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrateResult {
    pub outcome: Outcome,
    /// True when the copy was verified (by this run, or, for a rerun that only finished an
    /// interrupted cut-over, by the run that decided it: `tables` are that run's).
    pub verified: bool,
    pub tables: Vec<TableResult>,
    /// Checks left out to stay under the size limit (passing ones first).
    #[serde(skip_serializing_if = "is_zero")]
    pub tables_omitted: usize,
    /// How long this run kept the source fenced (writes refused), in ms.
    pub fence_millis: u64,
    pub message: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What the run has found so far (filled in as it goes, so that an error still reports it).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub verified: bool,
    pub tables: Vec<TableResult>,
    pub fence: Duration,
    pub message: String,
}

impl Report {
    /// The JSON text, at most [`MAX_BYTES`]: passing checks are dropped first, then failing
    /// ones, then the message is cut.
    pub fn render(&self, outcome: Outcome) -> String {
        let mut result = MigrateResult {
            outcome,
            verified: self.verified,
            tables: self.tables.clone(),
            tables_omitted: 0,
            fence_millis: self.fence.as_millis() as u64,
            message: self.message.clone(),
        };
        // Failing checks first, so that the passing ones go first.
        result.tables.sort_by_key(|t| t.ok());
        loop {
            let text = serde_json::to_string(&result).unwrap_or_default();
            if text.len() <= MAX_BYTES {
                return text;
            }
            if result.tables.pop().is_some() {
                result.tables_omitted += 1;
                continue;
            }
            let mut cut = result
                .message
                .len()
                .saturating_sub(text.len() - MAX_BYTES + 3);
            while !result.message.is_char_boundary(cut) {
                cut -= 1;
            }
            result.message.truncate(cut);
            result.message.push_str("...");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(partition: usize, ok: bool) -> TableResult {
        TableResult {
            table: "links".into(),
            partition,
            source_rows: 10,
            target_rows: if ok { 10 } else { 9 },
            source_checksum: "00000000000000aa".into(),
            target_checksum: "00000000000000aa".into(),
        }
    }

    #[test]
    fn renders_camel_case_and_stays_under_the_limit() {
        let report = Report {
            verified: true,
            tables: vec![table(0, true)],
            fence: Duration::from_millis(42),
            message: "cut over".into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&report.render(Outcome::CutOver)).expect("json");
        assert_eq!(v["outcome"], "CutOver");
        assert_eq!(v["fenceMillis"], 42);
        assert_eq!(v["tables"][0]["sourceRows"], 10);
        assert_eq!(v["tables"][0]["targetChecksum"], "00000000000000aa");
        assert!(v.get("tablesOmitted").is_none());

        // 200 partitions and a long message: summarised, failing checks kept.
        let big = Report {
            verified: false,
            tables: (0..200).map(|p| table(p, p != 137)).collect(),
            fence: Duration::ZERO,
            message: "é".repeat(5000),
        };
        let text = big.render(Outcome::VerificationFailed);
        assert!(text.len() <= MAX_BYTES, "{}", text.len());
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["tables"].as_array().map(Vec::len), Some(0));
        assert_eq!(v["tablesOmitted"], 200);
        let mid = Report {
            message: "x".into(),
            ..big
        };
        let v: serde_json::Value =
            serde_json::from_str(&mid.render(Outcome::VerificationFailed)).expect("json");
        assert_eq!(
            v["tables"][0]["partition"], 137,
            "the failing check is kept"
        );
        assert!(v["tablesOmitted"].as_u64().unwrap_or(0) > 0);
    }
}
