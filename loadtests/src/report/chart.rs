//! The SVG chart: latency percentiles (log scale) against offered load, one colour per run.
//! Kept apart because it is the only user of the plotting library.

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;

use super::model::{Percentiles, RunResult, StepResult};

/// Latency percentiles (log scale) against offered deliveries/s: one colour per run.
pub fn chart(results: &[RunResult], path: &str, title: &str) -> Result<()> {
    // A step that delivered nothing of its window has no latency to show (see the table).
    let pts: Vec<&StepResult> = results
        .iter()
        .flat_map(|r| r.steps.iter())
        .filter(|s| s.latency.count > 0)
        .collect();
    if pts.is_empty() {
        bail!("nothing to chart");
    }
    let xmax = pts
        .iter()
        .map(|s| s.offered_deliveries_per_s)
        .fold(1.0, f64::max)
        * 1.08;
    let ymin = pts
        .iter()
        .map(|s| s.latency.p50_ms)
        .fold(f64::MAX, f64::min)
        .max(0.01)
        / 2.0;
    let ymax = pts.iter().map(|s| s.latency.p999_ms).fold(1.0, f64::max) * 2.0;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries / s")
        .y_desc("latency from scheduled send (ms, log)")
        .y_labels(14)
        .x_label_formatter(&|x| {
            if *x >= 10_000.0 {
                format!("{:.0}k", x / 1000.0)
            } else if *x >= 1000.0 {
                format!("{:.1}k", x / 1000.0)
            } else {
                format!("{x:.0}")
            }
        })
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    type Pick = fn(&Percentiles) -> f64;
    let percentiles: Vec<(&str, Pick, u32)> = if results.len() == 1 {
        vec![
            ("p50", |p| p.p50_ms, 1),
            ("p99", |p| p.p99_ms, 3),
            ("p99.9", |p| p.p999_ms, 1),
        ]
    } else {
        vec![("p50", |p| p.p50_ms, 1), ("p99", |p| p.p99_ms, 3)]
    };
    for (ri, r) in results.iter().enumerate() {
        for (pi, (name, pick, width)) in percentiles.iter().enumerate() {
            let color = if results.len() == 1 {
                Palette99::pick(pi).to_rgba()
            } else {
                Palette99::pick(ri).to_rgba()
            };
            let shown: Vec<&StepResult> = r.steps.iter().filter(|s| s.latency.count > 0).collect();
            let data: Vec<(f64, f64)> = shown
                .iter()
                .map(|s| (s.offered_deliveries_per_s, pick(&s.latency).max(ymin)))
                .collect();
            let style = color.stroke_width(*width);
            chart
                .draw_series(LineSeries::new(data.clone(), style))
                .map_err(|e| anyhow!("{e:?}"))?
                .label(format!("{} {name}", r.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            let valid: Vec<bool> = shown.iter().map(|s| s.valid).collect();
            chart
                .draw_series(data.iter().zip(valid).map(|(p, ok)| {
                    if ok {
                        Circle::new(*p, 3, color.filled()).into_dyn()
                    } else {
                        Cross::new(*p, 5, color.stroke_width(2)).into_dyn()
                    }
                }))
                .map_err(|e| anyhow!("{e:?}"))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}
