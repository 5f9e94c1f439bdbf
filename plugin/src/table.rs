//! Plain-text output in kubectl's style: column tables with upper-case
//! headers, aligned `Key:  value` blocks, and kubectl's short ages (`45s`,
//! `3m12s`, `5h`, `2d4h`).
//!
//! Widths count characters, not bytes, so `→` and other non-ASCII text
//! (messages, phase arrows) stay aligned. A cell is one line: newlines and
//! tabs in a message would break the columns, so they become spaces. Nothing
//! ends in trailing whitespace (diffs and `grep` of the output stay clean).

use std::fmt::Display;

use k8s_openapi::jiff::Timestamp;

/// What an empty cell shows, as kubectl prints it.
pub const NONE: &str = "<none>";

/// Columns are separated by this many spaces (kubectl uses 3).
const GAP: usize = 3;

/// A table: a header row and rows of cells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (printed upper-case).
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row. Missing cells show [`NONE`]; extra cells are an error in
    /// the caller, so they are dropped rather than shifting the columns.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|c| one_line(&c.into()))
            .take(self.headers.len())
            .collect();
        while row.len() < self.headers.len() {
            row.push(NONE.into());
        }
        for c in &mut row {
            if c.is_empty() {
                *c = NONE.into();
            }
        }
        self.rows.push(row);
    }

    /// Number of rows (the header not counted).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(c));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                line.push_str(c);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(w - width(c) + GAP));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// An aligned block of `Key:  value` lines (values start in one column).
/// An empty value shows [`NONE`].
pub fn fields(pairs: &[(&str, String)]) -> String {
    let key_width = pairs.iter().map(|(k, _)| width(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let v = one_line(v);
        let v = if v.is_empty() { NONE.to_owned() } else { v };
        let line = format!("{k}:{}{v}", " ".repeat(key_width - width(k) - 1 + 2));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A section title followed by its body, as `kubectl describe` prints them.
pub fn section(title: &str, body: &str) -> String {
    let body = if body.trim().is_empty() {
        format!("  {NONE}\n")
    } else {
        body.lines()
            .map(|l| format!("  {l}").trim_end().to_owned() + "\n")
            .collect()
    };
    format!("{title}:\n{body}")
}

/// The value, or [`NONE`].
pub fn opt<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| NONE.to_owned(), |v| v.to_string())
}

/// How long ago `since` was, like kubectl's AGE column: seconds up to two
/// minutes, then minutes (with seconds under ten minutes), hours (with
/// minutes under eight hours), days (with hours under eight days). A time
/// in the future (clock skew) shows `0s`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(since).as_secs().max(0);
    human_duration(u64::try_from(secs).unwrap_or(0))
}

/// A duration in kubectl's short form (see [`age`]).
pub fn human_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match secs {
        0..120 => format!("{secs}s"),
        120..600 if !secs.is_multiple_of(60) => format!("{m}m{}s", secs % 60),
        120..10_800 => format!("{m}m"),
        10_800..28_800 if !m.is_multiple_of(60) => format!("{h}h{}m", m % 60),
        10_800..172_800 => format!("{h}h"),
        172_800..691_200 if !h.is_multiple_of(24) => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn one_line(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_with_three_spaces() {
        let mut t = Table::new(&["name", "phase", "tps"]);
        t.row(["shop", "1", "85"]);
        t.row(["a-much-longer-name", "12", "1200.5"]);
        assert_eq!(
            t.render(),
            "NAME                 PHASE   TPS\n\
             shop                 1       85\n\
             a-much-longer-name   12      1200.5\n"
        );
    }

    #[test]
    fn missing_and_empty_cells_show_none_and_extra_cells_are_dropped() {
        let mut t = Table::new(&["a", "b", "c"]);
        t.row(["1"]);
        t.row(["1", "", "3", "4"]);
        let text = t.render();
        assert_eq!(
            text,
            "A   B        C\n1   <none>   <none>\n1   <none>   3\n"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn no_line_ends_in_whitespace_and_cells_stay_on_one_line() {
        let mut t = Table::new(&["step", "message"]);
        t.row(["Migrate", "copying\nrows\tnow "]);
        t.row(["Done", ""]);
        for line in t.render().lines() {
            assert_eq!(line, line.trim_end(), "trailing whitespace in {line:?}");
        }
        assert!(t.render().contains("copying rows now\n"));
        assert_eq!(t.render().lines().count(), 3);
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(&["step", "x"]);
        t.row(["1 → 2", "a"]);
        t.row(["10", "b"]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        // The second column starts at the same character offset on each line.
        let col = |l: &str| l.chars().position(|c| c == 'a' || c == 'b' || c == 'X');
        assert_eq!(col(lines[0]), col(lines[1]));
        assert_eq!(col(lines[1]), col(lines[2]));
    }

    #[test]
    fn an_empty_table_prints_its_header_only() {
        let t = Table::new(&["kind", "name"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "KIND   NAME\n");
    }

    #[test]
    fn fields_align_values_and_show_none() {
        let text = fields(&[
            ("Phase", "1 (Growth)".into()),
            ("Recommended", String::new()),
            ("TPS", "85".into()),
        ]);
        assert_eq!(
            text,
            "Phase:        1 (Growth)\nRecommended:  <none>\nTPS:          85\n"
        );
    }

    #[test]
    fn sections_indent_their_body_or_say_none() {
        assert_eq!(section("History", "a\nb\n"), "History:\n  a\n  b\n");
        assert_eq!(section("History", ""), "History:\n  <none>\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3_599, "59m"),
            (10_800, "3h"),
            (11_100, "3h5m"),
            (30_000, "8h"),
            (172_800, "2d"),
            (190_800, "2d5h"),
            (864_000, "10d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
        let t0 = Timestamp::from_second(1_800_000_000).expect("valid");
        let t1 = Timestamp::from_second(1_800_000_090).expect("valid");
        assert_eq!(age(t0, t1), "90s");
        assert_eq!(age(t1, t0), "0s", "a future time is not negative");
        assert_eq!(opt(None::<i32>), NONE);
        assert_eq!(opt(Some(3)), "3");
    }
}
