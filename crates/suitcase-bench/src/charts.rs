//! Charts of the benchmark scripts' results: reads their TSV files, takes the median per
//! (server or variant, N) the way the scripts' summaries do (Python's `statistics.median`:
//! the mean of the two middle values for an even count), and draws SVG with plotters.
//!
//! The SVG backend writes text as `<text>` elements that the viewer lays out, so no font
//! library is linked: plotters without its `ttf`/`ab_glyph` features only estimates text
//! widths for its own layout. The output depends on the input alone (ordered maps, no
//! timestamps), so regenerating a chart from the same TSV gives the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One TSV line: column name → cell.
pub type Row = BTreeMap<String, String>;

/// Chart size in pixels.
pub const SIZE: (u32, u32) = (720, 400);

/// Parses TSV text with a header line. Blank lines and repetitions of the header (two
/// result files concatenated) are skipped; `origin` names the input in errors.
pub fn parse_tsv(text: &str, origin: &str) -> anyhow::Result<Vec<Row>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let columns: Vec<&str> = header.split('\t').map(str::trim).collect();
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line == header {
            continue;
        }
        let cells: Vec<&str> = line.split('\t').collect();
        if cells.len() != columns.len() {
            bail!(
                "{origin}:{}: {} cells, the header has {}",
                i + 1,
                cells.len(),
                columns.len()
            );
        }
        rows.push(
            columns
                .iter()
                .zip(cells)
                .map(|(c, v)| (c.to_string(), v.trim().to_string()))
                .collect(),
        );
    }
    Ok(rows)
}

/// Reads and merges several TSV files (each with its own header line).
pub fn read_tsv_files(paths: &[PathBuf]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        rows.extend(parse_tsv(&text, &p.display().to_string())?);
    }
    Ok(rows)
}

/// The median as Python's `statistics.median` computes it; NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median, minimum and maximum of one group's trials.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Median over the trials.
    pub median: f64,
    /// Smallest trial.
    pub min: f64,
    /// Largest trial.
    pub max: f64,
    /// Number of trials.
    pub trials: usize,
}

impl Stats {
    /// Statistics of a non-empty list of values.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        Some(Stats {
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            trials: values.len(),
        })
    }

    fn scaled(self, factor: f64) -> Self {
        Stats {
            median: self.median * factor,
            min: self.min * factor,
            max: self.max * factor,
            trials: self.trials,
        }
    }
}

/// Groups rows by (`group` column, `n`) and takes the statistics of the `value` column.
pub fn summarize(rows: &[Row], group: &str, value: &str) -> anyhow::Result<BTreeMap<(String, u64), Stats>> {
    let mut by: BTreeMap<(String, u64), Vec<f64>> = BTreeMap::new();
    for r in rows {
        let cell = |c: &str| r.get(c).with_context(|| format!("no column {c:?}"));
        let n: u64 = cell("n")?.parse().with_context(|| format!("n = {:?}", r.get("n")))?;
        let v: f64 = cell(value)?
            .parse()
            .with_context(|| format!("{value} = {:?}", r.get(value)))?;
        by.entry((cell(group)?.clone(), n)).or_default().push(v);
    }
    Ok(by
        .into_iter()
        .filter_map(|(k, v)| Stats::of(&v).map(|s| (k, s)))
        .collect())
}

/// Series in the order of the scripts' tables, then any others alphabetically.
fn series_order(names: impl IntoIterator<Item = String>, known: &[&str]) -> Vec<String> {
    let names: BTreeSet<String> = names.into_iter().collect();
    let mut out: Vec<String> = known
        .iter()
        .filter(|k| names.contains(**k))
        .map(|k| k.to_string())
        .collect();
    out.extend(names.into_iter().filter(|n| !known.contains(&n.as_str())));
    out
}

// Okabe–Ito colours: told apart with the common colour-vision deficiencies.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xE6, 0x9F, 0x00), // orange
    RGBColor(0x00, 0x9E, 0x73), // green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0xD5, 0x5E, 0x00), // vermilion
    RGBColor(0x56, 0xB4, 0xE9), // sky blue
];
const GREY: RGBColor = RGBColor(0x55, 0x55, 0x55);

fn server_style(name: &str, index: usize) -> (RGBColor, Marker) {
    match name {
        "suitcase" => (PALETTE[0], Marker::Circle),
        "libcoap" => (PALETTE[1], Marker::Triangle),
        "aiocoap" => (PALETTE[2], Marker::Square),
        "suitcase-base" => (PALETTE[3], Marker::Cross),
        _ => (PALETTE[(4 + index) % PALETTE.len()], Marker::Circle),
    }
}

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Square,
    Cross,
}

fn thousands(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.abs() >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// Writes `coap-blocks-per-s.svg` and `coap-rss.svg` from `compare.sh` results into `out`.
pub fn compare_charts(rows: &[Row], out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let blocks = summarize(rows, "server", "blocks_per_s")?;
    let rss: BTreeMap<_, _> = summarize(rows, "server", "peak_rss_kb")?
        .into_iter()
        .map(|(k, s)| (k, s.scaled(1.0 / 1024.0)))
        .collect();
    let mut written = Vec::new();
    let path = out.join("coap-blocks-per-s.svg");
    write_svg(&path, |area| {
        series_chart(
            area,
            &blocks,
            "CoAP block-wise download: throughput per server",
            "blocks/s (median of trials; whiskers: min–max)",
            false,
        )
    })?;
    written.push(path);
    let path = out.join("coap-rss.svg");
    write_svg(&path, |area| {
        series_chart(
            area,
            &rss,
            "CoAP servers' peak memory (VmHWM)",
            "peak RSS, MB (median of trials)",
            true,
        )
    })?;
    written.push(path);
    Ok(written)
}

/// Writes `fleet-tracking.svg` from `fleet-tracking.sh` results into `out`.
pub fn fleet_chart(rows: &[Row], out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let blocks = summarize(rows, "variant", "blocks_per_s")?;
    let path = out.join("fleet-tracking.svg");
    write_svg(&path, |area| fleet_bars(area, &blocks))?;
    Ok(path)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws into a string first and writes the file only when the bytes differ.
fn write_svg(path: &Path, draw: impl FnOnce(&Area<'_>) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        area.fill(&WHITE)?;
        draw(&area)?;
        area.present()?;
    }
    if std::fs::read(path).ok().as_deref() != Some(svg.as_bytes()) {
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One line per server over N on a log axis: medians joined, min–max whiskers.
fn series_chart(
    area: &Area<'_>,
    data: &BTreeMap<(String, u64), Stats>,
    title: &str,
    y_desc: &str,
    log_y: bool,
) -> anyhow::Result<()> {
    if data.is_empty() {
        bail!("no results to draw for {title:?}");
    }
    let servers = series_order(
        data.keys().map(|(s, _)| s.clone()),
        &["suitcase", "suitcase-base", "libcoap", "aiocoap"],
    );
    let ns: Vec<u64> = data
        .keys()
        .map(|(_, n)| *n)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|n| *n > 0)
        .collect();
    let (n_lo, n_hi) = (
        ns.first().copied().unwrap_or(1) as f64,
        ns.last().copied().unwrap_or(1) as f64,
    );
    let x_range = (n_lo / 10f64.powf(0.25))..(n_hi * 10f64.powf(0.25));
    let y_max = data.values().map(|s| s.max).fold(0.0, f64::max);

    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 21))
        .margin(10)
        .margin_right(20)
        .x_label_area_size(42)
        .y_label_area_size(66);
    let x_spec = x_range
        .log_scale()
        .with_key_points(ns.iter().map(|n| *n as f64).collect());
    // Series side by side at each N (a few pixels apart) so equal values stay visible.
    let dodge = |i: usize| 10f64.powf((i as f64 - (servers.len() as f64 - 1.0) / 2.0) * 0.035);

    if log_y {
        let positive_min = data
            .values()
            .map(|s| s.min)
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let lo = 10f64.powf(positive_min.max(1e-3).log10().floor());
        let hi = 10f64.powf(y_max.max(lo * 10.0).log10().ceil());
        let decades: Vec<f64> = (0..=((hi / lo).log10().round() as i32))
            .map(|e| lo * 10f64.powi(e))
            .collect();
        let mut chart = builder.build_cartesian_2d(x_spec, (lo..hi).log_scale().with_key_points(decades))?;
        chart
            .configure_mesh()
            .x_desc("devices downloading at once (N, log scale)")
            .y_desc(format!("{y_desc}, log scale"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| if *v >= 1.0 { format!("{v:.0}") } else { format!("{v}") })
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 14))
            .light_line_style(WHITE)
            .draw()?;
        draw_series(&mut chart, data, &servers, &dodge, |v| v > 0.0)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .label_font(("sans-serif", 16))
            .draw()?;
    } else {
        let mut chart = builder.build_cartesian_2d(x_spec, 0.0..y_max * 1.12)?;
        chart
            .configure_mesh()
            .x_desc("devices downloading at once (N, log scale)")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| thousands(*v))
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 14))
            .light_line_style(WHITE)
            .draw()?;
        draw_series(&mut chart, data, &servers, &dodge, |_| true)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    Ok(())
}

fn draw_series<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<WithKeyPoints<LogCoord<f64>>, Y>>,
    data: &BTreeMap<(String, u64), Stats>,
    servers: &[String],
    dodge: &dyn Fn(usize) -> f64,
    drawable: impl Fn(f64) -> bool,
) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    for (i, server) in servers.iter().enumerate() {
        let (color, marker) = server_style(server, i);
        let points: Vec<(f64, Stats)> = data
            .iter()
            .filter(|((s, n), st)| s == server && *n > 0 && drawable(st.median))
            .map(|((_, n), st)| (*n as f64 * dodge(i), *st))
            .collect();
        let line = color.stroke_width(2);
        let anno = chart.draw_series(LineSeries::new(points.iter().map(|(x, s)| (*x, s.median)), line))?;
        anno.label(server.as_str());
        match marker {
            Marker::Circle => anno.legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(-10, 0), (10, 0)], line)
                    + Circle::new((0, 0), 4, color.filled())
            }),
            Marker::Triangle => anno.legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(-10, 0), (10, 0)], line)
                    + TriangleMarker::new((0, 0), 5, color.filled())
            }),
            Marker::Square => anno.legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(-10, 0), (10, 0)], line)
                    + Rectangle::new([(-4, -4), (4, 4)], color.filled())
            }),
            Marker::Cross => anno.legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(-10, 0), (10, 0)], line)
                    + Cross::new((0, 0), 4, color.stroke_width(2))
            }),
        };
        // Whiskers: min to max with short caps, where there was more than one trial.
        let whiskers = points
            .iter()
            .filter(|(_, s)| s.trials > 1 && s.max > s.min && drawable(s.min));
        chart.draw_series(
            whiskers
                .clone()
                .map(|(x, s)| PathElement::new(vec![(*x, s.min), (*x, s.max)], color.stroke_width(1))),
        )?;
        chart.draw_series(whiskers.flat_map(|(x, s)| {
            [s.min, s.max]
                .map(|y| EmptyElement::at((*x, y)) + PathElement::new(vec![(-4, 0), (4, 0)], color.stroke_width(1)))
        }))?;
        let at = points.iter().map(|(x, s)| (*x, s.median));
        match marker {
            Marker::Circle => chart.draw_series(at.map(|p| Circle::new(p, 4, color.filled())))?,
            Marker::Triangle => chart.draw_series(at.map(|p| TriangleMarker::new(p, 5, color.filled())))?,
            Marker::Square => chart
                .draw_series(at.map(|p| EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], color.filled())))?,
            Marker::Cross => chart.draw_series(at.map(|p| Cross::new(p, 4, color.stroke_width(2))))?,
        };
    }
    Ok(())
}

fn variant_label(v: &str) -> String {
    match v {
        "tracking" => "tracking on".to_string(),
        "off" => "tracking off (--no-tracking)".to_string(),
        other => other.to_string(),
    }
}

/// Grouped bars: per N, one bar per variant (tracking, off), median with min–max whiskers.
fn fleet_bars(area: &Area<'_>, data: &BTreeMap<(String, u64), Stats>) -> anyhow::Result<()> {
    if data.is_empty() {
        bail!("no fleet-tracking results to draw");
    }
    let variants = series_order(data.keys().map(|(v, _)| v.clone()), &["tracking", "off"]);
    let ns: Vec<u64> = data
        .keys()
        .map(|(_, n)| *n)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let y_max = data.values().map(|s| s.max).fold(0.0, f64::max);
    let k = ns.len() as f64;

    let mut chart = ChartBuilder::on(area)
        .caption("Fleet tracking on vs off: CoAP throughput", ("sans-serif", 21))
        .margin(10)
        .margin_right(20)
        .x_label_area_size(42)
        .y_label_area_size(66)
        .build_cartesian_2d(-0.5..k - 0.5, 0.0..y_max * 1.3)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_desc("devices downloading at once")
        .y_desc("blocks/s (median of trials; whiskers: min–max)")
        .y_label_formatter(&|v| thousands(*v))
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE)
        .draw()?;
    // One label per group under the axis (an f64 axis would put its ticks at round numbers).
    let group_label = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, n) in ns.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64, 0.0));
        area.draw(&Text::new(format!("N = {n}"), (x, y + 6), group_label.clone()))?;
    }

    let width = 0.7 / variants.len() as f64;
    for (j, variant) in variants.iter().enumerate() {
        let color = match variant.as_str() {
            "tracking" => PALETTE[0],
            "off" => PALETTE[1],
            _ => PALETTE[(2 + j) % PALETTE.len()],
        };
        let bars: Vec<(f64, Stats)> = ns
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                data.get(&(variant.clone(), *n))
                    .map(|s| (i as f64 - 0.35 + width * j as f64 + width / 2.0, *s))
            })
            .collect();
        let half = width / 2.0 * 0.9;
        chart
            .draw_series(
                bars.iter()
                    .map(|(x, s)| Rectangle::new([(x - half, 0.0), (x + half, s.median)], color.filled())),
            )?
            .label(variant_label(variant))
            .legend(move |(x, y)| Rectangle::new([(x - 6, y - 6), (x + 6, y + 6)], color.filled()));
        let whiskers = bars.iter().filter(|(_, s)| s.trials > 1 && s.max > s.min);
        chart.draw_series(
            whiskers
                .clone()
                .map(|(x, s)| PathElement::new(vec![(*x, s.min), (*x, s.max)], BLACK.stroke_width(1))),
        )?;
        chart.draw_series(whiskers.flat_map(|(x, s)| {
            [s.min, s.max]
                .map(|y| EmptyElement::at((*x, y)) + PathElement::new(vec![(-5, 0), (5, 0)], BLACK.stroke_width(1)))
        }))?;
        let label_style = TextStyle::from(("sans-serif", 13).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(bars.iter().map(|(x, s)| {
            EmptyElement::at((*x, s.max.max(s.median))) + Text::new(short(s.median), (0, -4), label_style.clone())
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font(("sans-serif", 16))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPARE: &str = "round\tserver\tn\tblocks_per_s\timages_per_s\tp50_ms\tp95_ms\tretransmissions\terrors\tserver_cpu_s\tpeak_rss_kb\trcvbuf_drops
1\tsuitcase\t1\t100\t1\t1\t1\t0\t0\t0.1\t10240\t0
1\tlibcoap\t1\t90\t1\t1\t1\t0\t0\t0.1\t3072\t0
2\tsuitcase\t1\t300\t1\t1\t1\t0\t0\t0.1\t9216\t0

2\tlibcoap\t1\t80\t1\t1\t1\t0\t0\t0.1\t3072\t0
3\tsuitcase\t1\t200\t1\t1\t1\t0\t0\t0.1\t11264\t0
";
    const COMPARE_10K: &str = "round\tserver\tn\tblocks_per_s\timages_per_s\tp50_ms\tp95_ms\tretransmissions\terrors\tserver_cpu_s\tpeak_rss_kb\trcvbuf_drops
1\tsuitcase\t10000\t135405\t132\t75508\t75523\t0\t0\t70.2\t16676\t0
";
    const FLEET: &str = "round\tvariant\tn\tblocks_per_s\tp95_ms\terrors\tserver_cpu_s\tpeak_rss_kb\twall_s\trows_written\ttransactions\tblocks_dropped\tdownloaded
1\ttracking\t100\t238537\t857.9\t0\t0.84\t17688\t0.859\t200\t2\t0\t100
1\toff\t100\t187559\t1091.2\t0\t0.93\t15712\t1.092\t0\t0\t0\t0
2\ttracking\t100\t192580\t1062.8\t0\t0.95\t18424\t1.063\t200\t2\t0\t100
2\toff\t100\t188718\t1084.5\t0\t1.05\t15460\t1.085\t0\t0\t0\t0
";

    fn merged() -> Vec<Row> {
        let mut rows = parse_tsv(COMPARE, "a").unwrap();
        // A second file, and the same text concatenated under its own header: headers skipped.
        rows.extend(parse_tsv(&format!("{COMPARE_10K}{COMPARE_10K}"), "b").unwrap());
        rows
    }

    #[test]
    fn parses_and_merges() {
        let rows = merged();
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0]["server"], "suitcase");
        assert_eq!(rows[6]["n"], "10000");
        assert!(parse_tsv("a\tb\n1\n", "x").is_err());
        assert!(parse_tsv("", "x").unwrap().is_empty());
    }

    #[test]
    fn median_like_python() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn summarizes_per_server_and_n() {
        let s = summarize(&merged(), "server", "blocks_per_s").unwrap();
        assert_eq!(
            s[&("suitcase".into(), 1)],
            Stats {
                median: 200.0,
                min: 100.0,
                max: 300.0,
                trials: 3
            }
        );
        assert_eq!(s[&("libcoap".into(), 1)].median, 85.0);
        assert_eq!(s[&("suitcase".into(), 10000)].trials, 2);
        assert!(summarize(&merged(), "variant", "blocks_per_s").is_err());
        let order = series_order(s.keys().map(|k| k.0.clone()), &["suitcase", "libcoap"]);
        assert_eq!(order, ["suitcase", "libcoap"]);
    }

    #[test]
    fn draws_svgs_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let written = compare_charts(&merged(), dir.path()).unwrap();
        assert_eq!(written.len(), 2);
        let svg = std::fs::read_to_string(dir.path().join("coap-blocks-per-s.svg")).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("CoAP block-wise download: throughput per server"));
        assert!(
            svg.contains(">\nsuitcase\n<") || svg.contains(">suitcase<"),
            "legend names the series"
        );
        assert!(svg.contains("libcoap"));
        let rss = std::fs::read_to_string(dir.path().join("coap-rss.svg")).unwrap();
        assert!(rss.contains("peak memory"));

        let again = tempfile::tempdir().unwrap();
        compare_charts(&merged(), again.path()).unwrap();
        assert_eq!(
            std::fs::read(again.path().join("coap-blocks-per-s.svg")).unwrap(),
            svg.as_bytes()
        );

        let fleet = fleet_chart(&parse_tsv(FLEET, "f").unwrap(), dir.path()).unwrap();
        let svg = std::fs::read_to_string(fleet).unwrap();
        assert!(svg.contains("Fleet tracking on vs off"));
        assert!(svg.contains("N = 100"));
        assert!(svg.contains("tracking off (--no-tracking)"));
    }
}
