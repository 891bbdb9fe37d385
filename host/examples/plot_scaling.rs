//! Draws the peer benchmark's scaling runs (`scripts/bench-peers.sh`):
//! events/s against partitions (1, 2, 6, 12) for plugboard and the bare
//! consumer, and against plugins (1, 3, 10) for plugboard, side by side in
//! one SVG.
//!
//!     cargo run --release -p plugboard --example plot_scaling -- \
//!         target/bench/scaling.json target/bench/scaling.svg
//!
//! The JSON is a list of `{"sweep": "partitions"|"plugins", "system",
//! "x", "events_per_s", "peak_rss_mb"}` objects.

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::Value;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: plot_scaling SCALING.json OUT.svg");
    };
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {input}"))?;
    let points: Vec<Value> =
        serde_json::from_str(&text).with_context(|| format!("{input}: not a JSON list"))?;
    let root = SVGBackend::new(output, (1100, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    chart(
        &left,
        &points,
        "partitions",
        "events/s against partitions (one plugin)",
    )?;
    chart(
        &right,
        &points,
        "plugins",
        "events/s against plugins (6 partitions)",
    )?;
    root.present()?;
    println!("written: {output}");
    Ok(())
}

/// One sweep: a line per system, x on a log scale.
fn chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    points: &[Value],
    sweep: &str,
    title: &str,
) -> Result<()> {
    let mine: Vec<&Value> = points.iter().filter(|p| p["sweep"] == sweep).collect();
    let mut systems: Vec<&str> = Vec::new();
    for system in mine.iter().filter_map(|p| p["system"].as_str()) {
        if !systems.contains(&system) {
            systems.push(system);
        }
    }
    let xs: Vec<f64> = mine.iter().filter_map(|p| p["x"].as_f64()).collect();
    let top = mine
        .iter()
        .filter_map(|p| p["events_per_s"].as_f64())
        .fold(0.0, f64::max)
        * 1.15;
    let x_max = xs.iter().copied().fold(1.0, f64::max) * 1.3;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..top.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc(sweep)
        .y_desc("events/s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()?;
    for (i, system) in systems.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut line: Vec<(f64, f64)> = mine
            .iter()
            .filter(|p| p["system"] == *system)
            .filter_map(|p| Some((p["x"].as_f64()?, p["events_per_s"].as_f64()?)))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(*system)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(line.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}
