//! `--plot`: the trace, each phase's promote and demote thresholds, and the
//! phase changes on one SVG chart (plotters' SVG backend: no fonts or
//! bitmaps are needed, text stays text in the file).
//!
//! The TPS axis is logarithmic because the roadmap's ceilings are powers of
//! ten: every phase's band gets the same height. Zero TPS is drawn on the
//! axis floor; a gap breaks the line.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Outcome;
use crate::promoter::{Policy, ceiling};

/// Most points of the drawn trace: a week at 10 s is 60,480 samples, more
/// than the chart has pixels. Each bucket keeps its lowest and highest
/// sample, so a short spike stays visible.
const MAX_BUCKETS: usize = 1500;

const PROMOTE: RGBColor = RGBColor(200, 40, 40);
const DEMOTE: RGBColor = RGBColor(30, 130, 60);
const TRACE: RGBColor = RGBColor(30, 80, 200);
const UP: RGBColor = RGBColor(230, 120, 0);
const DOWN: RGBColor = RGBColor(120, 50, 170);
const HELD: RGBColor = RGBColor(120, 120, 120);

/// A threshold line: (TPS, label, is_promote).
fn thresholds(p: &Policy) -> Vec<(f64, String, bool)> {
    let mut v = Vec::new();
    for n in p.min_phase..p.max_phase {
        let at = p.promote_at * ceiling(n);
        v.push((at, format!("promote {n}->{} at {at:.0} TPS", n + 1), true));
    }
    for n in (p.min_phase + 1)..=p.max_phase {
        let below = p.demote_below * ceiling(n - 1);
        if below > 0.0 {
            v.push((
                below,
                format!("demote {n}->{} below {below:.0} TPS", n - 1),
                false,
            ));
        }
    }
    v
}

/// Segments of (hours, TPS) between gaps, at most [`MAX_BUCKETS`] buckets.
fn segments(o: &Outcome, floor: f64) -> Vec<Vec<(f64, f64)>> {
    let per = o.samples.len().div_ceil(MAX_BUCKETS).max(1);
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for chunk in o.samples.chunks(per) {
        let mut lo: Option<(i64, f64)> = None;
        let mut hi: Option<(i64, f64)> = None;
        let mut gap = false;
        for &(t, v) in chunk {
            match v {
                Some(v) => {
                    if lo.is_none_or(|l| v < l.1) {
                        lo = Some((t, v));
                    }
                    if hi.is_none_or(|h| v > h.1) {
                        hi = Some((t, v));
                    }
                }
                None => gap = true,
            }
        }
        let mut pts: Vec<(i64, f64)> = lo.into_iter().chain(hi).collect();
        pts.sort_by_key(|p| p.0);
        pts.dedup_by_key(|p| p.0);
        let last = out.last_mut().expect("one segment at least");
        for (t, v) in pts {
            last.push((hours(t), v.max(floor)));
        }
        if gap {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn hours(secs: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let h = secs as f64 / 3600.0;
    h
}

/// Draws the chart into `path`.
pub fn plot(path: &Path, p: &Policy, o: &Outcome) -> anyhow::Result<()> {
    let s = &o.summary;
    let xmax = hours(s.duration_seconds).max(1.0 / 60.0);
    let lines = thresholds(p);
    // The phases the run visited decide the TPS range, so the thresholds
    // that mattered are on the chart (and a few neighbours).
    let visited = s
        .promotions
        .iter()
        .chain(&s.demotions)
        .map(|c| c.to)
        .chain([s.start_phase, s.final_recommended]);
    let (vlo, vhi) = visited.fold((4, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
    let min_tps = o
        .samples
        .iter()
        .filter_map(|x| x.1)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let lo_line = if vlo > 0 {
        p.demote_below * ceiling(vlo - 1)
    } else {
        p.promote_at * ceiling(0)
    };
    let ylo = (min_tps.min(lo_line) / 2.0).clamp(0.01, 1e6);
    let yhi = (s.max_tps.max(p.promote_at * ceiling(vhi)) * 2.0).max(ylo * 10.0);

    let root = SVGBackend::new(path, (1200, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "ladder-operator simulate: {:?} mode, phase {} -> {}",
                p.mode, s.start_phase, s.final_phase
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ylo..yhi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("hours since the start")
        .y_desc("TPS (log scale)")
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    let mut labelled = (false, false);
    for (v, label, promote) in &lines {
        if !(ylo..=yhi).contains(v) {
            continue;
        }
        let color = if *promote { PROMOTE } else { DEMOTE };
        let series = chart.draw_series(DashedLineSeries::new(
            [(0.0, *v), (xmax, *v)],
            8,
            5,
            color.stroke_width(1),
        ))?;
        let first = if *promote {
            &mut labelled.0
        } else {
            &mut labelled.1
        };
        if !*first {
            *first = true;
            series
                .label(if *promote {
                    "promote thresholds"
                } else {
                    "demote thresholds"
                })
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        // Just above its line, so the dashes do not strike it through.
        chart.draw_series(std::iter::once(Text::new(
            label.clone(),
            (xmax * 0.005, *v),
            ("sans-serif", 12)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Left, VPos::Bottom)),
        )))?;
    }

    let mut first_trace = true;
    for seg in segments(o, ylo) {
        let series = chart.draw_series(LineSeries::new(seg, TRACE.stroke_width(2)))?;
        if first_trace {
            first_trace = false;
            series
                .label("TPS")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TRACE.stroke_width(2)));
        }
    }

    let marks = s
        .promotions
        .iter()
        .map(|c| (c, UP, "", "promotion"))
        .chain(s.demotions.iter().map(|c| (c, DOWN, "", "demotion")))
        .chain(
            s.held
                .iter()
                .map(|c| (c, HELD, "held ", "held for approval")),
        );
    let mut seen: Vec<&str> = Vec::new();
    for (c, color, prefix, legend) in marks {
        let x = hours(c.offset_seconds);
        let series =
            chart.draw_series(LineSeries::new([(x, ylo), (x, yhi)], color.stroke_width(2)))?;
        if !seen.contains(&legend) {
            seen.push(legend);
            series
                .label(legend)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        chart.draw_series(std::iter::once(Text::new(
            format!("{prefix}{}->{}", c.from, c.to),
            (x, yhi / 1.15),
            ("sans-serif", 13).into_font().color(&color),
        )))?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
