//! Load traces for the simulator: a CSV of `timestamp,tps` rows, or a
//! built-in synthetic shape.
//!
//! A trace is a step function: each row's TPS is in force from its
//! timestamp until the next row's, which is how the operator sees
//! LoadReports (the newest one counts until another arrives). An empty TPS
//! cell means "no data" (a gap: the operator had no fresh, believable
//! report), which is not the same as 0 TPS. Bad rows are refused with their
//! line number rather than skipped, so a typo never silently changes what
//! the simulation says.

use std::fmt;

use k8s_openapi::jiff::Timestamp;

/// Where the offsets of a trace count from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Origin {
    /// The first row's RFC 3339 timestamp: events can show wall-clock time.
    At(Timestamp),
    /// Seconds from the start (a CSV of offsets, or a synthetic shape).
    Relative,
}

/// One row: seconds since the trace's first row, and the TPS (`None` = gap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Seconds since the first row.
    pub offset: i64,
    /// The TPS, or `None` when there was no data.
    pub tps: Option<f64>,
}

/// A load trace: at least one row, offsets strictly increasing from 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// What offset 0 is.
    pub origin: Origin,
    /// The rows, by offset.
    pub points: Vec<Point>,
}

impl Trace {
    /// The TPS in force at `offset` (the last row at or before it).
    pub fn at(&self, offset: i64) -> Option<f64> {
        let i = self.points.partition_point(|p| p.offset <= offset);
        i.checked_sub(1).and_then(|i| self.points[i].tps)
    }

    /// The offset of the last row: the simulation runs up to it.
    pub fn end(&self) -> i64 {
        self.points.last().map_or(0, |p| p.offset)
    }
}

/// A CSV row the parser refused.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceError {
    /// 1-based line number in the file (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for TraceError {}

/// Most rows a trace may have: a week at one row per second is 604,800.
pub const MAX_ROWS: usize = 2_000_000;

/// Parses `timestamp,tps` rows. Blank lines and lines starting with `#` are
/// skipped; a first line `timestamp,tps` (any case) is a header. The
/// timestamp is RFC 3339 (`2026-03-02T09:00:00Z`) or seconds from the start
/// (`0`, `90`, `3600.5`), the same form on every row; timestamps must
/// increase strictly (after truncation to whole seconds). The TPS is a finite
/// number ≥ 0, or empty for "no data".
pub fn parse_csv(text: &str) -> Result<Trace, TraceError> {
    let err = |line: usize, message: String| TraceError { line, message };
    let mut rows: Vec<(usize, Stamp, Option<f64>)> = Vec::new();
    let mut absolute: Option<bool> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let row = raw.trim();
        if row.is_empty() || row.starts_with('#') {
            continue;
        }
        if rows.is_empty() && absolute.is_none() && row.eq_ignore_ascii_case("timestamp,tps") {
            continue;
        }
        let mut cells = row.split(',');
        let (Some(when), Some(tps), None) = (cells.next(), cells.next(), cells.next()) else {
            return Err(err(
                line,
                format!("expected two cells `timestamp,tps`, got {row:?}"),
            ));
        };
        let stamp = parse_stamp(when.trim()).map_err(|m| err(line, m))?;
        let is_abs = matches!(stamp, Stamp::At(_));
        match absolute {
            None => absolute = Some(is_abs),
            Some(a) if a != is_abs => {
                return Err(err(
                    line,
                    "mixes RFC 3339 timestamps and seconds from the start: use one form".into(),
                ));
            }
            Some(_) => {}
        }
        let tps = parse_tps(tps.trim()).map_err(|m| err(line, m))?;
        if rows.len() >= MAX_ROWS {
            return Err(err(line, format!("more than {MAX_ROWS} rows")));
        }
        rows.push((line, stamp, tps));
    }
    let Some(first) = rows.first().map(|r| r.1) else {
        return Err(err(0, "the trace has no rows".into()));
    };
    let origin = match first {
        Stamp::At(t) => Origin::At(t),
        Stamp::Secs(_) => Origin::Relative,
    };
    let mut points: Vec<Point> = Vec::with_capacity(rows.len());
    for (line, stamp, tps) in rows {
        let offset = match (stamp, first) {
            (Stamp::At(t), Stamp::At(t0)) => t.duration_since(t0).as_secs(),
            (Stamp::Secs(s), Stamp::Secs(s0)) => s - s0,
            _ => unreachable!("mixed forms are refused above"),
        };
        if let Some(prev) = points.last()
            && offset <= prev.offset
        {
            return Err(err(
                line,
                format!(
                    "timestamp is not after the previous row's ({}s from the start, previous {}s)",
                    offset, prev.offset
                ),
            ));
        }
        points.push(Point { offset, tps });
    }
    Ok(Trace { origin, points })
}

#[derive(Clone, Copy, Debug)]
enum Stamp {
    At(Timestamp),
    Secs(i64),
}

fn parse_stamp(s: &str) -> Result<Stamp, String> {
    if s.is_empty() {
        return Err("empty timestamp".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = s
            .parse()
            .map_err(|_| format!("{s:?} is neither RFC 3339 nor a number of seconds"))?;
        if !secs.is_finite() || secs > 1e12 {
            return Err(format!("{s:?} is out of range"));
        }
        // Truncation on purpose: the simulation ticks in whole seconds.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(Stamp::Secs(secs.trunc() as i64));
    }
    s.parse::<Timestamp>()
        .map(Stamp::At)
        .map_err(|e| format!("{s:?} is neither RFC 3339 nor a number of seconds ({e})"))
}

fn parse_tps(s: &str) -> Result<Option<f64>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let v: f64 = s
        .parse()
        .map_err(|_| format!("TPS {s:?} is not a number (leave the cell empty for no data)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("TPS {s:?} must be a finite number ≥ 0"));
    }
    Ok(Some(v))
}

/// The built-in synthetic shapes (see `ladder-operator simulate --help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// 12 h (or `--duration`) growing exponentially from 1 to 1,000 TPS
    /// (×10 every third of it): crosses phase 0's, 1's and 2's promotion
    /// thresholds in turn.
    Ramp,
    /// 6 h at 5 TPS with two bursts to 40 TPS: 2 min at 1 h (shorter than
    /// the default promoteAfter, must not promote) and 15 min at 3 h.
    Spike,
    /// 7 days of a daily cycle between 15 TPS (midnight) and 120 TPS (noon):
    /// 15 + 105·(1 − cos(2π·t/24h))/2.
    Diurnal,
    /// 6 h of uniform noise of ±25% around 8 TPS (phase 0's default
    /// promotion threshold), from a seeded generator (`--seed`): must not
    /// promote or flap.
    Noise,
}

impl Shape {
    /// How long the shape runs unless `--duration` says otherwise, seconds.
    pub fn default_duration(self) -> i64 {
        match self {
            Shape::Ramp => 12 * 3600,
            Shape::Spike | Shape::Noise => 6 * 3600,
            Shape::Diurnal => 7 * 86_400,
        }
    }

    /// The TPS at `t` seconds from the start. Deterministic: a function of
    /// `t` and `seed` only, so the step does not change the shape's values.
    pub fn tps(self, t: i64, duration: i64, seed: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let (tf, df) = (t as f64, duration.max(1) as f64);
        match self {
            Shape::Ramp => 10f64.powf(3.0 * tf / df),
            Shape::Spike => {
                let short = (3600..3600 + 120).contains(&t);
                let long = (3 * 3600..3 * 3600 + 900).contains(&t);
                if short || long { 40.0 } else { 5.0 }
            }
            Shape::Diurnal => {
                let day = 2.0 * std::f64::consts::PI * tf / 86_400.0;
                15.0 + 105.0 * (1.0 - day.cos()) / 2.0
            }
            Shape::Noise => {
                // SplitMix64 of (seed, t): uniform in [-1, 1).
                let mut z = seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                #[allow(clippy::cast_precision_loss)]
                let u = (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                8.0 * (1.0 + 0.25 * u)
            }
        }
    }
}

/// A synthetic trace: one row every `step` seconds from 0 to `duration`.
pub fn synthetic(shape: Shape, duration: i64, step: i64, seed: u64) -> Trace {
    let step = step.max(1);
    let points = (0..=duration / step)
        .map(|i| i * step)
        .map(|offset| Point {
            offset,
            tps: Some(shape.tps(offset, duration, seed)),
        })
        .collect();
    Trace {
        origin: Origin::Relative,
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_timestamp_forms_and_gaps() {
        let t = parse_csv("timestamp,tps\n# comment\n\n0,1.5\n60,\n120,3\n").expect("parses");
        assert_eq!(t.origin, Origin::Relative);
        assert_eq!(
            t.points,
            vec![
                Point {
                    offset: 0,
                    tps: Some(1.5)
                },
                Point {
                    offset: 60,
                    tps: None
                },
                Point {
                    offset: 120,
                    tps: Some(3.0)
                },
            ]
        );
        assert_eq!(t.at(59), Some(1.5));
        assert_eq!(t.at(60), None, "an empty cell is a gap, not 0");
        assert_eq!(t.at(500), Some(3.0));
        let t = parse_csv("2026-03-02T09:00:00Z,4\n2026-03-02T09:01:30+00:00,5\n").expect("parses");
        assert_eq!(
            t.origin,
            Origin::At("2026-03-02T09:00:00Z".parse().expect("valid"))
        );
        assert_eq!(t.points[1].offset, 90);
        assert_eq!(t.end(), 90);
    }

    #[test]
    fn bad_rows_are_refused_with_their_line_number() {
        let cases = [
            ("0,1\n60,abc\n", 2, "not a number"),
            ("0,1\n\n60,-3\n", 3, "≥ 0"),
            ("0,1\n60,NaN\n", 2, "finite"),
            ("0,1\n60\n", 2, "two cells"),
            ("0,1\n60,1,2\n", 2, "two cells"),
            ("0,1\n60,1\n60,2\n", 3, "not after"),
            ("0,1\n60,1\n30,2\n", 3, "not after"),
            ("0,1\n2026-03-02T09:00:00Z,1\n", 2, "mixes"),
            ("# x\nyesterday,1\n", 2, "neither RFC 3339"),
            ("timestamp,tps\n,4\n", 2, "empty timestamp"),
            (
                "2026-03-02T09:00:00Z,1\n2026-03-02T08:00:00Z,1\n",
                2,
                "not after",
            ),
        ];
        for (text, line, what) in cases {
            let e = parse_csv(text).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(what), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}:")), "{e}");
        }
        let e = parse_csv("timestamp,tps\n# nothing\n").expect_err("empty");
        assert!(e.to_string().contains("no rows"), "{e}");
    }

    #[test]
    fn synthetic_shapes_are_deterministic_and_shaped_as_documented() {
        let d = Shape::Ramp.default_duration();
        assert!((Shape::Ramp.tps(0, d, 1) - 1.0).abs() < 1e-9);
        assert!((Shape::Ramp.tps(d, d, 1) - 1000.0).abs() < 1e-6);
        assert!((Shape::Ramp.tps(4 * 3600, d, 1) - 10.0).abs() < 1e-9);
        assert_eq!(Shape::Spike.tps(3600 + 60, 0, 1), 40.0);
        assert_eq!(Shape::Spike.tps(3600 + 130, 0, 1), 5.0);
        assert!((Shape::Diurnal.tps(0, 0, 1) - 15.0).abs() < 1e-9);
        assert!((Shape::Diurnal.tps(43_200, 0, 1) - 120.0).abs() < 1e-9);
        let a = synthetic(Shape::Noise, 3600, 10, 7);
        assert_eq!(
            a,
            synthetic(Shape::Noise, 3600, 10, 7),
            "same seed, same trace"
        );
        assert_ne!(a, synthetic(Shape::Noise, 3600, 10, 8), "the seed matters");
        let values: Vec<f64> = a.points.iter().filter_map(|p| p.tps).collect();
        assert!(values.iter().all(|v| (6.0..=10.0).contains(v)));
        assert!(values.iter().any(|v| *v >= 8.0) && values.iter().any(|v| *v < 8.0));
        // The step samples the same function: coarser steps see the same values.
        let b = synthetic(Shape::Noise, 3600, 20, 7);
        assert_eq!(b.at(40), a.at(40));
    }
}
