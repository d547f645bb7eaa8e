//! The plots in `results/`, drawn from the CSV files the harness writes, so `make plots`
//! redraws every picture from measured data and nothing else.
//!
//! | PNG | drawn from |
//! | --- | --- |
//! | `load_distribution.png` | `load_distribution/slaves.csv` (requests and keys per slave) |
//! | `plots_by_slave_count/{throughput_rps,read_latency_us,write_latency_us}_vs_slave_count.png` | `by_slave_count.csv` |
//! | `plots_by_client_count/{...}_vs_client_count.png` | `by_client_count.csv` |
//! | `read_from_slaves/plots_by_client_count/{...}_vs_client_count.png` | `read_from_slaves/by_client_count.csv` (the client sweep with `--read-from slaves`) |
//! | `plots_read_from/{...}_vs_client_count.png` | both client sweeps, one line per read mode |
//! | `failover_timeline.png` | `failover/metrics.csv` and `failover/events.csv` |
//!
//! A sweep's titles name its read mode when its CSV records one (`read_from`). The comparison
//! of the read modes labels each line with the mode its CSV records, and is drawn only when
//! both CSVs record one and the modes differ: a sweep measured before `--read-from` existed
//! is never presented as either mode.
//!
//! Text is rendered by plotters' `ab_glyph` backend with DejaVu Sans, bundled in
//! `assets/fonts/` (its licence beside it), so no system font is needed. A missing cell (a
//! latency in a second without a success) leaves a gap: it is never drawn as zero.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::chart::MeshStyle;
use plotters::coord::combinators::{BindKeyPoints, LogCoord};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::harness::SweepAxis;
use dsm::{Error, Result};

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// The font family name every plot uses; registered from [`FONT`].
const FAMILY: &str = "sans-serif";

/// Size of every PNG, in pixels.
pub const PLOT_SIZE: (u32, u32) = (1200, 700);

/// Title font size, in pixels.
const TITLE_SIZE: u32 = 30;

/// Axis description and legend font size, in pixels.
const LABEL_SIZE: u32 = 20;

/// Tick label font size, in pixels.
const TICK_SIZE: u32 = 16;

/// Headroom above the highest value on a y axis, as a factor, so the top point is not cut.
const Y_HEADROOM: f64 = 1.12;

/// Space above a title drawn across the whole picture, in pixels.
const TITLE_MARGIN: u32 = 12;

/// Headroom of the y axes of the failover timeline and the load distribution, as a factor:
/// room for the legend above the highest point.
const LEGEND_HEADROOM: f64 = 1.45;

static REGISTER: Once = Once::new();

fn register_font() -> Result<()> {
    let mut ok = true;
    REGISTER.call_once(|| {
        ok = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok();
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Config("the bundled font does not load".into()))
    }
}

fn draw_err<E: std::fmt::Debug>(path: &Path) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Io(std::io::Error::other(format!("drawing {}: {e:?}", path.display())))
}

/// A CSV file read into memory, with its columns found by name.
#[derive(Debug, Clone)]
pub struct Table {
    path: PathBuf,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Reads a CSV file with a header line.
    pub fn read(path: &Path) -> Result<Table> {
        let mut r = csv::Reader::from_path(path).map_err(|e| csv_err(path, e))?;
        let headers = r.headers().map_err(|e| csv_err(path, e))?.iter().map(str::to_string).collect();
        let mut rows = Vec::new();
        for rec in r.records() {
            let rec = rec.map_err(|e| csv_err(path, e))?;
            rows.push(rec.iter().map(str::to_string).collect());
        }
        Ok(Table { path: path.to_path_buf(), headers, rows })
    }

    /// Rows of data.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True without rows of data.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::Config(format!("{} has no column {name}", self.path.display())))
    }

    /// The text of a column.
    pub fn text(&self, name: &str) -> Result<Vec<String>> {
        let i = self.index(name)?;
        Ok(self.rows.iter().map(|r| r.get(i).cloned().unwrap_or_default()).collect())
    }

    /// A numeric column; empty or unparsable cells are `None`.
    pub fn numbers(&self, name: &str) -> Result<Vec<Option<f64>>> {
        Ok(self.text(name)?.iter().map(|t| t.trim().parse::<f64>().ok().filter(|v| v.is_finite())).collect())
    }

    /// The column names starting with `prefix`, in file order.
    pub fn columns_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.headers.iter().filter(|h| h.starts_with(prefix)).cloned().collect()
    }
}

fn csv_err(path: &Path, e: csv::Error) -> Error {
    Error::Config(format!("cannot read {}: {e}", path.display()))
}

/// One line on a chart.
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, Option<f64>)>,
    dashed: bool,
}

const C_MEAN: RGBColor = RGBColor(31, 119, 180);
const C_P50: RGBColor = RGBColor(44, 160, 44);
const C_P99: RGBColor = RGBColor(214, 39, 40);
const C_ERR: RGBColor = RGBColor(214, 39, 40);
const C_KEYS: RGBColor = RGBColor(255, 127, 14);
const C_READS: RGBColor = RGBColor(44, 160, 44);
const C_WRITES: RGBColor = RGBColor(148, 103, 189);
const C_GRID: RGBColor = RGBColor(225, 225, 225);

/// The colour of each sweep in a comparison of read modes, in the order given.
const MODE_COLORS: [RGBColor; 2] = [C_MEAN, C_KEYS];

/// The directory under a results directory holding the client sweep run with
/// `--read-from slaves` (`make results` writes it; the master-mode sweep is the top level's).
pub const READ_FROM_SLAVES_DIR: &str = "read_from_slaves";

/// The directory of the plots comparing the read modes by client count.
pub const READ_FROM_PLOTS_DIR: &str = "plots_read_from";

/// The read mode a sweep's CSV records (`read_from`), when every row records the same one.
pub fn read_mode(t: &Table) -> Option<String> {
    let modes = t.text("read_from").ok()?;
    let first = modes.first()?.trim().to_string();
    (!first.is_empty() && modes.iter().all(|m| m.trim() == first)).then_some(first)
}

fn max_of<'a>(values: impl Iterator<Item = &'a Option<f64>>) -> f64 {
    values.flatten().fold(0.0_f64, |m, v| m.max(*v))
}

/// Splits a series at its missing points, so a gap stays a gap.
fn segments(points: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for (x, y) in points {
        match y {
            Some(y) => out.last_mut().map_or((), |s| s.push((*x, *y))),
            None => out.push(Vec::new()),
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// A whole PNG, to draw on.
type Page<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A chart on a PNG whose y axis is a count or a latency.
type Chart<'a, X> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, RangedCoordf64>>;

/// The outcome of drawing on a PNG.
type Drawn = DrawResult<(), BitMapBackend<'static>>;

/// Draws a PNG of [`PLOT_SIZE`] at `path`: `draw` fills in a white page, which is then saved.
fn draw_png(path: &Path, draw: impl FnOnce(&Page) -> Drawn) -> Result<()> {
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    let result = (|| {
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()
    })();
    result.map_err(draw_err(path))
}

/// The axes every chart shares, with `y_desc` on the y axis: a light grid, the plot fonts and
/// short y tick labels. The caller adds its x axis and draws the mesh.
fn axes<'a, 'b, X>(
    chart: &'b mut Chart<'a, X>,
    y_desc: &str,
) -> MeshStyle<'a, 'b, X, RangedCoordf64, BitMapBackend<'a>>
where
    X: Ranged + ValueFormatter<X::ValueType>,
{
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(C_GRID)
        .y_desc(y_desc)
        .axis_desc_style((FAMILY, LABEL_SIZE))
        .label_style((FAMILY, TICK_SIZE))
        .y_label_formatter(&format_tick);
    mesh
}

/// Draws `s` as lines through dots of `radius` pixels, split at its gaps, with one entry in the
/// legend.
fn draw_line<X: Ranged<ValueType = f64>>(chart: &mut Chart<X>, s: &Series, radius: i32) -> Drawn {
    let style = s.color.stroke_width(3);
    let mut first = true;
    for seg in segments(&s.points) {
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(seg.clone(), 10, 6, style))?
        } else {
            chart.draw_series(LineSeries::new(seg.clone(), style))?
        };
        if first {
            let (color, dashed) = (s.color, s.dashed);
            // A dashed line's legend entry is dashed too, so it can be told from a solid one
            // of the same colour.
            drawn.label(s.label.as_str()).legend(move |at| {
                let (a, b) = if dashed { ((0, 8), (16, 24)) } else { ((0, 12), (12, 24)) };
                let segment = |(from, to): (i32, i32)| {
                    PathElement::new(vec![(from, 0), (to, 0)], color.stroke_width(3))
                };
                EmptyElement::at(at) + segment(a) + segment(b)
            });
            first = false;
        }
        chart.draw_series(seg.iter().map(|&(x, y)| Circle::new((x, y), radius, s.color.filled())))?;
    }
    Ok(())
}

/// Draws the legend of a chart at `position`, in `font_size` pixels on a white box.
fn draw_legend<X: Ranged>(chart: &mut Chart<X>, position: SeriesLabelPosition, font_size: u32) -> Drawn {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FAMILY, font_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// Draws a line chart with points and a legend.
#[allow(clippy::too_many_arguments)]
fn line_chart<XR>(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_range: XR,
    series: &[Series],
    x_ticks: usize,
) -> Result<()>
where
    XR: AsRangedCoord<Value = f64>,
    XR::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let y_max = (max_of(series.iter().flat_map(|s| s.points.iter().map(|p| &p.1))) * Y_HEADROOM).max(1.0);
    draw_png(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, TITLE_SIZE))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(100)
            .build_cartesian_2d(x_range, 0f64..y_max)?;
        axes(&mut chart, y_desc)
            .x_desc(x_desc)
            .x_labels(x_ticks)
            .y_labels(10)
            .x_label_formatter(&format_tick)
            .draw()?;
        for s in series {
            draw_line(&mut chart, s, 4)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, LABEL_SIZE)
    })
}

/// `12345.6` as `12346`, `2.5` as `2.5`: tick labels without noise.
fn format_number(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// [`format_number`] as a tick label formatter.
fn format_tick(v: &f64) -> String {
    format_number(*v)
}

/// Draws the three plots of a sweep from its summary CSV (`by_slave_count.csv` or
/// `by_client_count.csv`) into `dir`, and returns their paths.
pub fn plot_sweep(csv: &Path, axis: SweepAxis, dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let t = Table::read(csv)?;
    if t.is_empty() {
        return Err(Error::Config(format!("{} has no rows", csv.display())));
    }
    std::fs::create_dir_all(dir)?;
    let (x_col, x_desc, x_name) = match axis {
        SweepAxis::Slaves => ("slave_count", "slaves (count)", "slave count"),
        SweepAxis::Clients => ("client_count", "client threads (count, log scale)", "client count"),
    };
    let xs: Vec<f64> = t.numbers(x_col)?.into_iter().map(|x| x.unwrap_or(0.0)).collect();
    let col = |name: &str| -> Result<Vec<(f64, Option<f64>)>> {
        Ok(xs.iter().copied().zip(t.numbers(name)?).collect())
    };
    let suffix = axis_suffix(axis);
    let reads_from = read_mode(&t).map_or(String::new(), |m| format!("; reads from {m}"));
    let mut charts: Vec<ChartSpec> = vec![(
        format!("throughput_rps_vs_{suffix}.png"),
        format!("Throughput vs {x_name} (successful requests, mean over the run{reads_from})"),
        "requests per second".to_string(),
        vec![
            Series {
                label: "successes/s".into(),
                color: C_MEAN,
                points: col("throughput_rps")?,
                dashed: false,
            },
            Series {
                label: "reads/s".into(),
                color: C_READS,
                points: successes_per_row(&t, &xs, "read", Some("duration_s"))?,
                dashed: false,
            },
            Series {
                label: "writes/s".into(),
                color: C_WRITES,
                points: successes_per_row(&t, &xs, "write", Some("duration_s"))?,
                dashed: false,
            },
            Series { label: "errors/s".into(), color: C_ERR, points: col("error_rps")?, dashed: true },
        ],
    )];
    for (op, title) in [("read", "Read"), ("write", "Write")] {
        charts.push((
            format!("{op}_latency_us_vs_{suffix}.png"),
            format!("{title} latency vs {x_name} (successful requests{reads_from})"),
            "latency (µs)".to_string(),
            vec![
                Series {
                    label: "mean".into(),
                    color: C_MEAN,
                    points: col(&format!("{op}_latency_us"))?,
                    dashed: false,
                },
                Series {
                    label: "p50".into(),
                    color: C_P50,
                    points: col(&format!("{op}_p50_us"))?,
                    dashed: false,
                },
                Series {
                    label: "p99".into(),
                    color: C_P99,
                    points: col(&format!("{op}_p99_us"))?,
                    dashed: false,
                },
            ],
        ));
    }
    draw_charts(axis, x_desc, &xs, dir, charts)
}

/// A chart to draw: its file name, title, y axis description and lines.
type ChartSpec = (String, String, String, Vec<Series>);

/// The end of a sweep plot's file name: `slave_count` or `client_count`.
fn axis_suffix(axis: SweepAxis) -> &'static str {
    match axis {
        SweepAxis::Slaves => "slave_count",
        SweepAxis::Clients => "client_count",
    }
}

/// Draws `charts` into `dir` over the sweep axis, with `x_desc` under it and a tick at each of
/// `xs` (the measured points); returns the paths.
fn draw_charts(
    axis: SweepAxis,
    x_desc: &str,
    xs: &[f64],
    dir: &Path,
    charts: Vec<ChartSpec>,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_max = xs.iter().copied().fold(0.0_f64, f64::max);
    for (file, title, y_desc, series) in charts {
        let path = dir.join(file);
        match axis {
            SweepAxis::Slaves => {
                let lo = (x_min - 0.5).max(0.0);
                let hi = x_max + 0.5;
                // Whole numbers only: one tick per slave count in the range.
                let ticks = (hi - lo).round().clamp(2.0, 20.0) as usize;
                line_chart(&path, &title, x_desc, &y_desc, lo..hi, &series, ticks)?;
            }
            SweepAxis::Clients => {
                let lo = (x_min / 1.3).max(0.5);
                let hi = x_max * 1.3;
                // Ticks exactly at the measured client counts, without a minor grid.
                let coord: LogCoord<f64> = (lo..hi).log_scale().into();
                let x = coord.with_key_points(xs.to_vec());
                line_chart(&path, &title, x_desc, &y_desc, x, &series, xs.len())?;
            }
        }
        written.push(path);
    }
    Ok(written)
}

/// Draws the comparison of read modes by client count from client sweeps' CSVs (the top
/// level's `by_client_count.csv` and [`READ_FROM_SLAVES_DIR`]`/by_client_count.csv`) into
/// `dir`: throughput, read latency and write latency, one colour per sweep, each line labelled
/// with the read mode its CSV records. Returns the paths. Fails if a CSV does not record one
/// read mode in every row, or two CSVs record the same one.
pub fn plot_read_from(csvs: &[&Path], dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let mut sweeps = Vec::new();
    for csv in csvs {
        let t = Table::read(csv)?;
        if t.is_empty() {
            return Err(Error::Config(format!("{} has no rows", csv.display())));
        }
        let mode = read_mode(&t).ok_or_else(|| {
            Error::Config(format!("{} does not record one read mode (read_from) in every row", csv.display()))
        })?;
        if sweeps.iter().any(|(m, _, _): &(String, _, _)| *m == mode) {
            return Err(Error::Config(format!("two sweeps record the same read mode, {mode}")));
        }
        let xs: Vec<f64> = t.numbers("client_count")?.into_iter().map(|x| x.unwrap_or(0.0)).collect();
        sweeps.push((mode, xs, t));
    }
    std::fs::create_dir_all(dir)?;
    let col = |xs: &[f64], t: &Table, name: &str| -> Result<Vec<(f64, Option<f64>)>> {
        Ok(xs.iter().copied().zip(t.numbers(name)?).collect())
    };
    let mut throughput = Vec::new();
    let mut latency: [Vec<Series>; 2] = [Vec::new(), Vec::new()];
    for (i, (mode, xs, t)) in sweeps.iter().enumerate() {
        let color = MODE_COLORS[i % MODE_COLORS.len()];
        let line = |label: String, points, dashed| Series { label, color, points, dashed };
        throughput.push(line(
            format!("successes/s, reads from {mode}"),
            col(xs, t, "throughput_rps")?,
            false,
        ));
        throughput.push(line(
            format!("reads/s, reads from {mode}"),
            successes_per_row(t, xs, "read", Some("duration_s"))?,
            true,
        ));
        for (k, op) in ["read", "write"].into_iter().enumerate() {
            for (p, dashed) in [("p50", false), ("p99", true)] {
                let points = col(xs, t, &format!("{op}_{p}_us"))?;
                latency[k].push(line(format!("{p}, reads from {mode}"), points, dashed));
            }
        }
    }
    let [read_latency, write_latency] = latency;
    let charts: Vec<ChartSpec> = vec![
        (
            "throughput_rps_vs_client_count.png".into(),
            "Throughput vs client count by read mode (successful requests, mean over the run)".into(),
            "requests per second".into(),
            throughput,
        ),
        (
            "read_latency_us_vs_client_count.png".into(),
            "Read latency vs client count by read mode (successful requests)".into(),
            "latency (µs)".into(),
            read_latency,
        ),
        (
            "write_latency_us_vs_client_count.png".into(),
            "Write latency vs client count by read mode (successful requests)".into(),
            "latency (µs)".into(),
            write_latency,
        ),
    ];
    let mut xs: Vec<f64> = sweeps.iter().flat_map(|(_, xs, _)| xs.iter().copied()).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    draw_charts(SweepAxis::Clients, "client threads (count, log scale)", &xs, dir, charts)
}

/// Draws `load_distribution.png` from a run's `slaves.csv`: requests served per slave in the
/// measured window (left) and keys held at the end (right).
pub fn plot_load_distribution(slaves_csv: &Path, png: &Path) -> Result<()> {
    register_font()?;
    let t = Table::read(slaves_csv)?;
    if t.is_empty() {
        return Err(Error::Config(format!(
            "{} has no slaves (the master did not report per-slave counts)",
            slaves_csv.display()
        )));
    }
    let ids = t.text("slave_id")?;
    let requests = t.numbers("requests")?;
    let keys = t.numbers("keys")?;
    let total: f64 = requests.iter().flatten().sum();
    draw_png(png, |root| {
        let root = root
            .margin(TITLE_MARGIN, 0, 0, 0)
            .titled("Load distribution across slaves (measured by the master)", (FAMILY, TITLE_SIZE))?;
        let panels = root.split_evenly((1, 2));
        let specs = [
            (&panels[0], "Requests served (measured window)", "requests", &requests, C_MEAN),
            (&panels[1], "Keys held at the end", "keys", &keys, C_KEYS),
        ];
        for (area, caption, y_desc, values, color) in specs {
            let n = ids.len();
            // Room above the bars for their share and the legend.
            let y_max = (max_of(values.iter()) * LEGEND_HEADROOM).max(1.0);
            let mut chart = ChartBuilder::on(area)
                .caption(caption, (FAMILY, LABEL_SIZE + 2))
                .margin(20)
                .x_label_area_size(50)
                .y_label_area_size(90)
                .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0f64..y_max)?;
            let ids_for_labels = ids.clone();
            axes(&mut chart, y_desc)
                .disable_x_mesh()
                .x_desc("slave id")
                .x_labels(n.max(1))
                .x_label_formatter(&move |v| match v {
                    SegmentValue::CenterOf(i) => ids_for_labels.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .draw()?;
            chart
                .draw_series(values.iter().enumerate().map(|(i, v)| {
                    let v = v.unwrap_or(0.0);
                    let mut bar = Rectangle::new(
                        [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v)],
                        color.filled(),
                    );
                    bar.set_margin(0, 0, 12, 12);
                    bar
                }))?
                .label(if y_desc == "requests" {
                    format!("requests ({} in all)", format_number(total))
                } else {
                    "keys".to_string()
                })
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled()));
            // The share of each slave, written above its bar.
            if y_desc == "requests" && total > 0.0 {
                chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
                    v.map(|v| {
                        Text::new(
                            format!("{:.1}%", 100.0 * v / total),
                            (SegmentValue::CenterOf(i), v + y_max * 0.02),
                            (FAMILY, TICK_SIZE).into_font().color(&BLACK),
                        )
                    })
                }))?;
            }
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, LABEL_SIZE)?;
        }
        Ok(())
    })
}

/// The colours of the event markers of the failover plot, in the order the events happened.
const EVENT_COLORS: [RGBColor; 4] =
    [BLACK, RGBColor(0, 114, 178), RGBColor(150, 150, 150), RGBColor(0, 158, 115)];

/// Successful `op`s (`read` or `write`) of each row, per second: its `<op>_count` less its
/// `<op>_error_count`, over `seconds` (the row's `duration_s` when given, else one second).
fn successes_per_row(
    t: &Table,
    xs: &[f64],
    op: &str,
    seconds: Option<&str>,
) -> Result<Vec<(f64, Option<f64>)>> {
    let count = t.numbers(&format!("{op}_count"))?;
    let errors = t.numbers(&format!("{op}_error_count"))?;
    let secs = match seconds {
        Some(col) => t.numbers(col)?,
        None => vec![Some(1.0); count.len()],
    };
    Ok(xs
        .iter()
        .zip(count.into_iter().zip(errors).zip(secs))
        .map(|(&x, ((c, e), d))| {
            (x, c.zip(d).filter(|&(_, d)| d > 0.0).map(|(c, d)| (c - e.unwrap_or(0.0)) / d))
        })
        .collect())
}

/// Draws `failover_timeline.png` from a run's `metrics.csv` and `events.csv`: successful
/// requests and errors per second, with each injected fault marked.
pub fn plot_failover(metrics_csv: &Path, events_csv: Option<&Path>, png: &Path) -> Result<()> {
    register_font()?;
    let t = Table::read(metrics_csv)?;
    if t.is_empty() {
        return Err(Error::Config(format!("{} has no rows", metrics_csv.display())));
    }
    let xs: Vec<f64> = t.numbers("elapsed_s")?.into_iter().map(|x| x.unwrap_or(0.0)).collect();
    let ok: Vec<(f64, Option<f64>)> = xs.iter().copied().zip(t.numbers("throughput_rps")?).collect();
    let reads = successes_per_row(&t, &xs, "read", None)?;
    let writes = successes_per_row(&t, &xs, "write", None)?;
    let errs: Vec<(f64, Option<f64>)> = xs.iter().copied().zip(t.numbers("error_count")?).collect();
    let events: Vec<(f64, String)> = match events_csv.filter(|p| p.exists()) {
        Some(p) => {
            let e = Table::read(p)?;
            e.numbers("at_s")?
                .into_iter()
                .zip(e.text("event")?)
                .filter_map(|(at, what)| at.map(|a| (a, what)))
                .collect()
        }
        None => Vec::new(),
    };
    let x_max = xs.iter().copied().fold(0.0_f64, f64::max) + 1.0;
    draw_png(png, |root| {
        let root = root.margin(TITLE_MARGIN, 0, 0, 0).titled(
            "Failover timeline: requests per second across a kill of the primary and its return",
            (FAMILY, TITLE_SIZE),
        )?;
        let (top, bottom) = root.split_vertically(PLOT_SIZE.1 * 55 / 100);
        let panels = [
            (
                &top,
                "successful requests per second",
                vec![
                    ("successes/s", &ok, C_MEAN),
                    ("reads/s", &reads, C_READS),
                    ("writes/s", &writes, C_WRITES),
                ],
            ),
            (&bottom, "errors per second", vec![("errors/s", &errs, C_ERR)]),
        ];
        for (i, (area, y_desc, lines)) in panels.into_iter().enumerate() {
            // More headroom than elsewhere: the legend sits above the data, where it cannot
            // hide the drop at the kill.
            // The legend grows by a line for each event, and must stay clear of the data.
            let entries = lines.len() + if i == 0 { events.len() } else { 0 };
            let headroom = LEGEND_HEADROOM.max(1.2 + 0.1 * entries as f64);
            let y_max = (max_of(lines.iter().flat_map(|(_, points, _)| points.iter().map(|p| &p.1)))
                * headroom)
                .max(1.0);
            let mut chart = ChartBuilder::on(area)
                .margin(15)
                .x_label_area_size(if i == 1 { 55 } else { 30 })
                .y_label_area_size(100)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
            axes(&mut chart, y_desc)
                .x_desc(if i == 1 { "seconds since the end of the warm-up" } else { "" })
                .x_label_formatter(&format_tick)
                .draw()?;
            for (label, points, color) in lines {
                // Each second's count is drawn at the middle of its second.
                let shifted = points.iter().map(|(x, y)| (x + 0.5, *y)).collect();
                let series = Series { label: label.into(), color, points: shifted, dashed: false };
                draw_line(&mut chart, &series, 3)?;
            }
            for (k, (at, what)) in events.iter().enumerate() {
                // The kill, the takeover, the restart and the failback each in a colour.
                let color = EVENT_COLORS[k % EVENT_COLORS.len()];
                let s = chart.draw_series(DashedLineSeries::new(
                    vec![(*at, 0.0), (*at, y_max)],
                    8,
                    6,
                    color.stroke_width(2),
                ))?;
                if i == 0 {
                    let what = what.clone();
                    s.label(format!("{what} at {at:.1} s")).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                    });
                }
            }
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, LABEL_SIZE - 2)?;
        }
        Ok(())
    })
}

/// Draws every plot whose data exists under `out` (see the module doc), and says for each
/// PNG whether it was drawn or why not.
pub fn plot_all(out: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut done = Vec::new();
    for (axis, dir) in
        [(SweepAxis::Slaves, "plots_by_slave_count"), (SweepAxis::Clients, "plots_by_client_count")]
    {
        let csv = out.join(format!("{}.csv", axis.name()));
        if csv.exists() {
            for p in plot_sweep(&csv, axis, &out.join(dir))? {
                done.push((p, format!("drawn from {}", csv.display())));
            }
        } else {
            done.push((out.join(dir), format!("skipped: no {}", csv.display())));
        }
    }
    let by_clients = format!("{}.csv", SweepAxis::Clients.name());
    let (master_csv, slaves_csv) = (out.join(&by_clients), out.join(READ_FROM_SLAVES_DIR).join(&by_clients));
    let dir = out.join(READ_FROM_SLAVES_DIR).join("plots_by_client_count");
    if slaves_csv.exists() {
        for p in plot_sweep(&slaves_csv, SweepAxis::Clients, &dir)? {
            done.push((p, format!("drawn from {}", slaves_csv.display())));
        }
    } else {
        done.push((dir, format!("skipped: no {}", slaves_csv.display())));
    }
    let dir = out.join(READ_FROM_PLOTS_DIR);
    match read_from_comparable(&[&master_csv, &slaves_csv])? {
        None => {
            for p in plot_read_from(&[&master_csv, &slaves_csv], &dir)? {
                done.push((p, format!("drawn from {} and {}", master_csv.display(), slaves_csv.display())));
            }
        }
        Some(why) => done.push((dir, format!("skipped: {why}"))),
    }
    let slaves = out.join("load_distribution").join("slaves.csv");
    let png = out.join("load_distribution.png");
    if slaves.exists() {
        plot_load_distribution(&slaves, &png)?;
        done.push((png, format!("drawn from {}", slaves.display())));
    } else {
        done.push((png, format!("skipped: no {}", slaves.display())));
    }
    let metrics = out.join("failover").join("metrics.csv");
    let png = out.join("failover_timeline.png");
    if metrics.exists() {
        let events = out.join("failover").join("events.csv");
        plot_failover(&metrics, Some(&events), &png)?;
        done.push((png, format!("drawn from {}", metrics.display())));
    } else {
        done.push((png, format!("skipped: no {}", metrics.display())));
    }
    Ok(done)
}

/// Why sweeps' CSVs cannot be compared by read mode (one missing, one that does not record
/// its mode, two of the same mode), or `None` when they can.
fn read_from_comparable(csvs: &[&Path]) -> Result<Option<String>> {
    let mut seen: Vec<String> = Vec::new();
    for csv in csvs {
        if !csv.exists() {
            return Ok(Some(format!("no {}", csv.display())));
        }
        let Some(mode) = read_mode(&Table::read(csv)?) else {
            return Ok(Some(format!(
                "{} does not record its read mode (read_from): measured before --read-from \
                 existed, or against a cluster the harness did not start",
                csv.display()
            )));
        };
        if seen.contains(&mode) {
            return Ok(Some(format!("two sweeps of the same read mode, {mode}")));
        }
        seen.push(mode);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_split_series() {
        let s = segments(&[(0.0, Some(1.0)), (1.0, None), (2.0, Some(3.0)), (3.0, Some(4.0))]);
        assert_eq!(s, vec![vec![(0.0, 1.0)], vec![(2.0, 3.0), (3.0, 4.0)]]);
        assert!(segments(&[(0.0, None)]).is_empty());
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(format_number(12345.6), "12346");
        assert_eq!(format_number(2.5), "2.5");
        assert_eq!(format_number(3.0), "3");
    }

    #[test]
    fn the_bundled_font_loads() {
        register_font().unwrap();
    }
}
