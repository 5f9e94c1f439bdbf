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

/// Pixels right of the plot for the legend.
const LEGEND_WIDTH: i32 = 180;

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
        // Room for the legend right of the plot, where it hides nothing.
        .margin_right(LEGEND_WIDTH + 10)
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

    // The legend: what is drawn, in the right margin.
    let mut legend: Vec<(&str, RGBColor)> = vec![("TPS", TRACE)];
    for (v, label, promote) in &lines {
        if !(ylo..=yhi).contains(v) {
            continue;
        }
        let color = if *promote { PROMOTE } else { DEMOTE };
        let name = if *promote {
            "promote thresholds"
        } else {
            "demote thresholds"
        };
        if !legend.iter().any(|l| l.0 == name) {
            legend.push((name, color));
        }
        chart.draw_series(DashedLineSeries::new(
            [(0.0, *v), (xmax, *v)],
            8,
            5,
            color.stroke_width(1),
        ))?;
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

    for seg in segments(o, ylo) {
        chart.draw_series(LineSeries::new(seg, TRACE.stroke_width(2)))?;
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
    let mut marks: Vec<_> = marks.collect();
    marks.sort_by_key(|m| m.0.offset_seconds);
    for (i, (c, color, prefix, name)) in marks.into_iter().enumerate() {
        if !legend.iter().any(|l| l.0 == name) {
            legend.push((name, color));
        }
        let x = hours(c.offset_seconds);
        chart.draw_series(LineSeries::new([(x, ylo), (x, yhi)], color.stroke_width(2)))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{prefix}{}->{}", c.from, c.to),
            // Staggered on three rows, so close changes stay readable.
            (x, yhi / [1.15, 1.6, 2.2][i % 3]),
            ("sans-serif", 13).into_font().color(&color),
        )))?;
    }

    let (x0, _) = root.dim_in_pixel();
    let x0 = i32::try_from(x0).unwrap_or(1200) - LEGEND_WIDTH;
    for ((name, color), row) in legend.into_iter().zip(0i32..) {
        let y = 60 + row * 20;
        root.draw(&PathElement::new(
            [(x0, y), (x0 + 24, y)],
            color.stroke_width(2),
        ))?;
        root.draw(&Text::new(
            name,
            (x0 + 32, y),
            ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    root.present()?;
    Ok(())
}
