//! Plots of a scenario run (SVG, and PNG on request), drawn with plotters from the outcome's
//! [`PlotData`](sim_core::outcome::PlotData):
//!
//! - the **RMS trend** of each group's probe meter: the 10/12-cycle RMS per phase against time
//!   (each window's value drawn as a level over the window), the upper and lower trip limits as
//!   lines, the hysteresis bands shaded (where a tripped phase has not cleared yet), trip and
//!   clear markers (at the Urms(1/2) value that caused them), and alarm-arrival markers;
//! - the **alarm-latency CDF** of each group's head-end trip alarms, with the spec's limit
//!   ([`ALARM_LATENCY_LIMIT_MS`]) drawn;
//! - **THD over time** of each group's probe meter: THD (%) per phase per 10/12-cycle window
//!   (skipped when it stays below [`THD_PLOT_MIN_PERCENT`]);
//! - the **event waveform** around each of a group's first disturbance onsets: the
//!   instantaneous voltage per phase against time relative to the onset, the onset marked by a
//!   vertical line and the nominal peak ±√2·nominal drawn dashed;
//! - for fleets (more than one meter), **trips per group over time**: each group's cumulative
//!   count of trips at all its meters.
//!
//! Axis labels carry units and every plot has a legend. Each plot is drawn by one function
//! generic over the plotters backend: as SVG its text stays text (`<text>` elements, family
//! [`FONT`]), as PNG ([`PNG_SIZE`]) it is rasterized from [`EMBEDDED_FONT`], compiled in, so
//! rendering needs no system fonts. Deterministic: the same outcome gives the same bytes.

use std::io::Write;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use sim_core::outcome::{EventWaveform, GroupPlot, PlotEvent, ScenarioOutcome};

use crate::{trim_decimals, ReportError};

/// The spec's limit on onset-to-alarm latency at the head-end, ms.
pub const ALARM_LATENCY_LIMIT_MS: f64 = 50.0;
/// Size of every plot, px.
pub const PLOT_SIZE: (u32, u32) = (960, 480);
/// Colour of the per-phase RMS lines (L1, L2, L3).
pub const PHASE_COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
/// Colour of the upper (over-voltage) limit line.
pub const UPPER_LIMIT_COLOR: RGBColor = RGBColor(214, 39, 40);
/// Colour of the lower (under-voltage) limit line.
pub const LOWER_LIMIT_COLOR: RGBColor = RGBColor(255, 127, 14);
/// Colour of the shaded hysteresis bands.
pub const BAND_COLOR: RGBColor = RGBColor(255, 187, 120);
/// Colour of trip markers (filled triangles).
pub const TRIP_COLOR: RGBColor = RGBColor(200, 0, 0);
/// Colour of clear markers (crosses).
pub const CLEAR_COLOR: RGBColor = RGBColor(0, 128, 0);
/// Colour of alarm-arrival markers (circles at the bottom of the RMS plot).
pub const ALARM_COLOR: RGBColor = RGBColor(90, 90, 90);
/// Colour of the latency CDF.
pub const CDF_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Colours of the groups' lines in the fleet trips plot (cycled).
pub const GROUP_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];
/// Colour of the onset line in event waveforms.
pub const ONSET_COLOR: RGBColor = RGBColor(200, 0, 0);
/// Colour of the dashed nominal-peak lines in event waveforms.
pub const NOMINAL_PEAK_COLOR: RGBColor = RGBColor(110, 110, 110);
/// A THD plot is drawn only when some window's THD reaches this, %.
pub const THD_PLOT_MIN_PERCENT: f64 = 0.01;
/// Most alarm-arrival markers drawn on an RMS trend (the first ones by arrival).
pub const ALARM_MARKERS_MAX: usize = 500;

/// Size of every PNG plot, px (the SVG's 2:1 shape, larger).
pub const PNG_SIZE: (u32, u32) = (1200, 600);
/// The font family of every plot's text: DejaVu Sans, compiled into the binary
/// ([`EMBEDDED_FONT`]) for the PNGs; SVG viewers use their own DejaVu Sans, or their
/// sans-serif font where it is not installed. The whole string is the name the embedded font
/// is registered under with plotters.
pub const FONT: &str = "DejaVu Sans, sans-serif";
/// DejaVu Sans 2.37 (Debian's `fonts-dejavu-core`; Bitstream Vera licence, see
/// `reports/fonts/DejaVuSans-LICENSE.txt`).
pub static EMBEDDED_FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// One plot of a scenario: its file name inside `plots/` and what it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotFile {
    /// `<scenario>-<group>-rms.svg` or `<scenario>-<group>-latency-cdf.svg`, with every
    /// character outside `[A-Za-z0-9._-]` as `_`.
    pub name: String,
    /// The group the plot is about.
    pub group: String,
    /// `RMS trend`, `alarm-latency CDF`, `THD over time`, `event waveform` or `trips per
    /// group over time`.
    pub title: &'static str,
    /// The SVG document.
    pub svg: String,
    /// The same plot as a PNG file ([`PNG_SIZE`]), when asked for
    /// ([`scenario_plots_with_png`]); saved as [`PlotFile::png_name`].
    pub png: Option<Vec<u8>>,
}

impl PlotFile {
    /// [`PlotFile::name`] with `.png` for its trailing `.svg`.
    pub fn png_name(&self) -> String {
        format!(
            "{}.png",
            self.name.strip_suffix(".svg").unwrap_or(&self.name)
        )
    }
}

/// Every plot of one scenario (SVG only): per group, the RMS trend and, when the group raised
/// trip alarms, the alarm-latency CDF; THD over time when it is not 0; the event waveforms;
/// then, for a fleet that tripped, trips per group over time.
pub fn scenario_plots(outcome: &ScenarioOutcome) -> Result<Vec<PlotFile>, ReportError> {
    render_plots(outcome, false)
}

/// [`scenario_plots`] with each plot also rendered as a PNG ([`PlotFile::png`]).
pub fn scenario_plots_with_png(outcome: &ScenarioOutcome) -> Result<Vec<PlotFile>, ReportError> {
    render_plots(outcome, true)
}

fn render_plots(outcome: &ScenarioOutcome, with_png: bool) -> Result<Vec<PlotFile>, ReportError> {
    let scenario = outcome.name.as_str();
    let mut figures: Vec<(String, String, &'static str, Figure<'_>)> = Vec::new();
    for g in &outcome.plots.groups {
        let stem = format!("{}-{}", file_part(scenario), file_part(&g.name));
        let mut add = |suffix: String, title, figure| {
            figures.push((
                format!("{stem}-{suffix}.svg"),
                g.name.clone(),
                title,
                figure,
            ));
        };
        add("rms".to_owned(), "RMS trend", Figure::Rms(scenario, g));
        if !g.alarm_latencies.is_empty() {
            let figure = Figure::LatencyCdf(scenario, g);
            add("latency-cdf".to_owned(), "alarm-latency CDF", figure);
        }
        if let Some(max) = thd_max(g) {
            add(
                "thd".to_owned(),
                "THD over time",
                Figure::Thd(scenario, g, max),
            );
        }
        for (k, w) in g.event_waveforms.iter().enumerate() {
            let figure = Figure::Waveform(scenario, g, w);
            add(format!("event-{}", k + 1), "event waveform", figure);
        }
    }
    if has_fleet_trips(outcome) {
        figures.push((
            format!("{}-fleet-trips.svg", file_part(scenario)),
            "all groups".to_owned(),
            "trips per group over time",
            Figure::FleetTrips(outcome),
        ));
    }
    figures
        .into_iter()
        .map(|(name, group, title, figure)| {
            Ok(PlotFile {
                name,
                group,
                title,
                svg: figure.svg()?,
                png: if with_png { Some(figure.png()?) } else { None },
            })
        })
        .collect()
}

/// More than one meter and some meter tripped.
fn has_fleet_trips(outcome: &ScenarioOutcome) -> bool {
    let groups = &outcome.plots.groups;
    let meters: u64 = groups.iter().map(|g| u64::from(g.meters)).sum();
    meters >= 2 && groups.iter().any(|g| !g.trips.is_empty())
}

/// The largest THD of `group`, when it reaches [`THD_PLOT_MIN_PERCENT`].
fn thd_max(group: &GroupPlot) -> Option<f64> {
    let max = group
        .thd
        .iter()
        .flatten()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    (max >= THD_PLOT_MIN_PERCENT).then_some(max)
}

/// Each group's cumulative trips (all its meters) against time, as an SVG document; `None`
/// unless the scenario has more than one meter and some meter tripped.
pub fn fleet_trips_svg(outcome: &ScenarioOutcome) -> Result<Option<String>, ReportError> {
    if !has_fleet_trips(outcome) {
        return Ok(None);
    }
    Figure::FleetTrips(outcome).svg().map(Some)
}

fn draw_fleet_trips<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    o: &ScenarioOutcome,
) -> DrawResult<DB> {
    let groups = &o.plots.groups;
    let t_end = groups
        .iter()
        .flat_map(|g| g.trips.last().map(|b| b.0))
        .fold(o.duration, f64::max)
        .max(1e-3);
    let most = groups
        .iter()
        .map(|g| g.trips.iter().map(|b| b.1).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut chart = styled_chart(
        root,
        format!("{}: trips per group over time", o.name),
        0.0..t_end,
        0.0..most as f64 * 1.08,
        "time since scenario start (s)",
        "trips, cumulative (count)",
        Some(&|v| format!("{v:.0}")),
    )?;
    for (i, g) in groups.iter().enumerate() {
        let style = GROUP_COLORS[i % GROUP_COLORS.len()].stroke_width(2);
        let mut total = 0_u64;
        let mut line = vec![(0.0, 0.0)];
        for (end, n) in &g.trips {
            line.push((*end, total as f64));
            total += n;
            line.push((*end, total as f64));
        }
        line.push((t_end, total as f64));
        chart
            .draw_series(LineSeries::new(line, style))?
            .label(format!(
                "{} ({}, {})",
                g.name,
                count(u64::from(g.meters), "meter"),
                count(total, "trip")
            ))
            .legend(line_key(style));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// `text` with every character outside `[A-Za-z0-9._-]` as `_` (and never empty or `.`/`..`).
pub fn file_part(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        format!("_{s}")
    } else {
        s
    }
}

/// Write [`rms_trend_svg`] to `out`.
pub fn write_rms_trend(
    out: &mut impl Write,
    scenario: &str,
    group: &GroupPlot,
) -> Result<(), ReportError> {
    out.write_all(rms_trend_svg(scenario, group)?.as_bytes())?;
    Ok(())
}

/// Write [`latency_cdf_svg`] to `out`; false (nothing written) when there were no alarms.
pub fn write_latency_cdf(
    out: &mut impl Write,
    scenario: &str,
    group: &GroupPlot,
) -> Result<bool, ReportError> {
    match latency_cdf_svg(scenario, group)? {
        Some(svg) => {
            out.write_all(svg.as_bytes())?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// `1 trip`, `2 trips`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn plot_error(e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// The RMS trend of `group`'s probe meter as an SVG document.
pub fn rms_trend_svg(scenario: &str, group: &GroupPlot) -> Result<String, ReportError> {
    Figure::Rms(scenario, group).svg()
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A chart in the report's coordinates: seconds, volts, percent or milliseconds, all f64.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One plot and what it is drawn from; drawn on either backend, so the SVG and the PNG of a
/// plot come from the same code.
#[derive(Clone, Copy)]
enum Figure<'o> {
    Rms(&'o str, &'o GroupPlot),
    LatencyCdf(&'o str, &'o GroupPlot),
    /// The largest THD, %.
    Thd(&'o str, &'o GroupPlot, f64),
    Waveform(&'o str, &'o GroupPlot, &'o EventWaveform),
    FleetTrips(&'o ScenarioOutcome),
}

impl Figure<'_> {
    fn draw<DB: DrawingBackend>(self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        match self {
            Figure::Rms(s, g) => draw_rms_trend(root, s, g),
            Figure::LatencyCdf(s, g) => draw_latency_cdf(root, s, g),
            Figure::Thd(s, g, max) => draw_thd(root, s, g, max),
            Figure::Waveform(s, g, w) => draw_waveform(root, s, g, w),
            Figure::FleetTrips(o) => draw_fleet_trips(root, o),
        }
    }

    /// The plot on a white [`PLOT_SIZE`] canvas as an SVG document.
    fn svg(self) -> Result<String, ReportError> {
        register_embedded_font()?;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
            root.fill(&WHITE).map_err(plot_error)?;
            self.draw(&root).map_err(plot_error)?;
            root.present().map_err(plot_error)?;
        }
        Ok(svg)
    }

    /// The plot on a white [`PNG_SIZE`] canvas as a PNG file (8-bit RGB), its text rasterized
    /// from the embedded font.
    fn png(self) -> Result<Vec<u8>, ReportError> {
        register_embedded_font()?;
        let (w, h) = PNG_SIZE;
        let mut rgb = vec![0_u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, PNG_SIZE).into_drawing_area();
            root.fill(&WHITE).map_err(plot_error)?;
            self.draw(&root).map_err(plot_error)?;
            root.present().map_err(plot_error)?;
        }
        encode_png(&rgb, PNG_SIZE)
    }
}

/// `rgb` (8-bit RGB rows, top first) as a PNG file.
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, ReportError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(plot_error)?;
    writer.write_image_data(rgb).map_err(plot_error)?;
    writer.finish().map_err(plot_error)?;
    Ok(out)
}

/// Register [`EMBEDDED_FONT`] with plotters as [`FONT`], once per process. With plotters'
/// `ab_glyph` feature (and not `ttf`) text is measured and rasterized only from registered
/// fonts: no system font is looked up, for SVG (text measured for layout) or PNG.
fn register_embedded_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, EMBEDDED_FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Plot(
            "the embedded font reports/fonts/DejaVuSans.ttf is not a valid TrueType font"
                .to_owned(),
        ))
    }
}

/// The house style every plot shares: caption, margins, label areas, and a light grid with
/// axis descriptions (which carry the units).
#[allow(clippy::too_many_arguments)]
fn styled_chart<'a, DB: DrawingBackend + 'a>(
    root: &'a DrawingArea<DB, Shift>,
    caption: String,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_desc: &str,
    y_desc: &str,
    y_labels: Option<&dyn Fn(&f64) -> String>,
) -> Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc).y_desc(y_desc);
    if let Some(format) = y_labels {
        mesh.y_label_formatter(format);
    }
    mesh.label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    Ok(chart)
}

/// The legend box, at `position`.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// A legend swatch: a short line in the series' style.
fn line_key(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style)
}

fn draw_rms_trend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    scenario: &str,
    g: &GroupPlot,
) -> DrawResult<DB> {
    let th = g.thresholds;
    let points = || g.rms.iter().flatten();
    let t_max = points()
        .map(|p| p.0)
        .chain(g.events.iter().map(|e| e.at))
        .fold(0.0_f64, f64::max);
    let x_range = 0.0..if t_max > 0.0 { t_max } else { 1.0 };
    let (mut lo, mut hi) = (th.lower, th.upper);
    for v in points()
        .map(|p| p.1)
        .chain(g.events.iter().map(|e| e.value))
    {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let pad = ((hi - lo) * 0.08).max(2.0);
    let y_range = (lo - pad).max(0.0)..hi + pad;
    let (x0, x1) = (x_range.start, x_range.end);
    let y_bottom = y_range.start;

    let mut chart = styled_chart(
        root,
        format!("{scenario} — {}: RMS trend", g.name),
        x_range,
        y_range,
        "time since scenario start (s)",
        "10/12-cycle RMS (V)",
        None,
    )?;

    // Hysteresis bands: a tripped phase clears only once back across the band.
    let band = BAND_COLOR.mix(0.35).filled();
    let h = th.hysteresis.max(0.0);
    chart
        .draw_series([
            Rectangle::new([(x0, th.lower), (x1, th.lower + h)], band),
            Rectangle::new([(x0, th.upper - h), (x1, th.upper)], band),
        ])?
        .label(format!("hysteresis bands ({} V)", trim_decimals(h, 3)))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], band));
    for (value, color, name) in [
        (th.upper, UPPER_LIMIT_COLOR, "upper limit"),
        (th.lower, LOWER_LIMIT_COLOR, "lower limit"),
    ] {
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new([(x0, value), (x1, value)], style))?
            .label(format!("{name} {} V", trim_decimals(value, 3)))
            .legend(line_key(style));
    }
    for (ch, trace) in g.rms.iter().enumerate() {
        let color = PHASE_COLORS[ch % PHASE_COLORS.len()];
        let style = color.stroke_width(1);
        chart
            .draw_series(LineSeries::new(steps(trace), style))?
            .label(format!("L{} 10/12-cycle RMS", ch + 1))
            .legend(line_key(style));
    }
    let (trips, clears): (Vec<&PlotEvent>, Vec<&PlotEvent>) =
        g.events.iter().partition(|e| e.code.is_trip());
    if !trips.is_empty() {
        let style = TRIP_COLOR.filled();
        chart
            .draw_series(
                trips
                    .iter()
                    .map(|e| TriangleMarker::new((e.at, e.value), 6, style)),
            )?
            .label("trip (Urms(1/2) at the trip)")
            .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 6, style));
    }
    if !clears.is_empty() {
        let style = CLEAR_COLOR.stroke_width(2);
        chart
            .draw_series(clears.iter().map(|e| Cross::new((e.at, e.value), 5, style)))?
            .label("clear (Urms(1/2) at the clear)")
            .legend(move |(x, y)| Cross::new((x + 9, y), 5, style));
    }
    if !g.alarm_latencies.is_empty() {
        let style = ALARM_COLOR.filled();
        let mut arrivals: Vec<f64> = g.alarm_latencies.iter().map(|a| a.0).collect();
        arrivals.sort_by(f64::total_cmp);
        arrivals.dedup();
        arrivals.truncate(ALARM_MARKERS_MAX);
        chart
            .draw_series(
                arrivals
                    .iter()
                    .filter(|t| **t <= x1)
                    .map(|t| Circle::new((*t, y_bottom), 4, style)),
            )?
            .label("trip alarm at the head-end")
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, style));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// A window's value holds over the window: each (end, value) is drawn as a level from the
/// previous window's end (the first window starts one window length before its end).
fn steps(trace: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(trace.len() * 2);
    for (i, &(t, v)) in trace.iter().enumerate() {
        let start = match (i, trace.get(1)) {
            (0, Some(next)) => (2.0 * t - next.0).max(0.0),
            (0, None) => t,
            _ => trace[i - 1].0,
        };
        out.push((start, v));
        out.push((t, v));
    }
    out
}

/// The CDF of `group`'s onset-to-alarm latencies as an SVG document, with the spec limit
/// drawn; `None` when the group raised no trip alarm.
pub fn latency_cdf_svg(scenario: &str, group: &GroupPlot) -> Result<Option<String>, ReportError> {
    if group.alarm_latencies.is_empty() {
        return Ok(None);
    }
    Figure::LatencyCdf(scenario, group).svg().map(Some)
}

fn draw_latency_cdf<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    scenario: &str,
    g: &GroupPlot,
) -> DrawResult<DB> {
    let mut ms: Vec<f64> = g
        .alarm_latencies
        .iter()
        .map(|a| a.1 * 1e3)
        .filter(|v| v.is_finite())
        .collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len().max(1) as f64;
    let max = ms.last().copied().unwrap_or(0.0);
    let x_max = max.max(ALARM_LATENCY_LIMIT_MS) * 1.1;
    let mut chart = styled_chart(
        root,
        format!("{scenario} — {}: alarm-latency CDF", g.name),
        0.0..x_max,
        0.0..1.05,
        "onset-to-alarm latency (ms)",
        "fraction of trip alarms",
        None,
    )?;
    // An empirical CDF is a staircase: up by 1/n at each latency.
    let mut steps = vec![(0.0, 0.0)];
    for (i, v) in ms.iter().enumerate() {
        steps.push((*v, i as f64 / n));
        steps.push((*v, (i + 1) as f64 / n));
    }
    steps.push((x_max, 1.0));
    let style = CDF_COLOR.stroke_width(2);
    chart
        .draw_series(LineSeries::new(steps, style))?
        .label(format!("CDF of {} trip alarms", ms.len()))
        .legend(line_key(style));
    let limit = UPPER_LIMIT_COLOR.stroke_width(2);
    chart
        .draw_series(LineSeries::new(
            [
                (ALARM_LATENCY_LIMIT_MS, 0.0),
                (ALARM_LATENCY_LIMIT_MS, 1.05),
            ],
            limit,
        ))?
        .label(format!(
            "spec limit {} ms",
            trim_decimals(ALARM_LATENCY_LIMIT_MS, 3)
        ))
        .legend(line_key(limit));
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// THD (%) per phase of `group`'s probe meter against time as an SVG document; `None` when no
/// window reached [`THD_PLOT_MIN_PERCENT`].
pub fn thd_svg(scenario: &str, group: &GroupPlot) -> Result<Option<String>, ReportError> {
    let Some(max) = thd_max(group) else {
        return Ok(None);
    };
    Figure::Thd(scenario, group, max).svg().map(Some)
}

fn draw_thd<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    scenario: &str,
    g: &GroupPlot,
    max: f64,
) -> DrawResult<DB> {
    let t_max = g.thd.iter().flatten().map(|p| p.0).fold(0.0_f64, f64::max);
    let x_range = 0.0..if t_max > 0.0 { t_max } else { 1.0 };
    let mut chart = styled_chart(
        root,
        format!("{scenario} — {}: THD over time", g.name),
        x_range,
        0.0..max * 1.15,
        "time since scenario start (s)",
        "THD per 10/12-cycle window (%)",
        None,
    )?;
    for (ch, trace) in g.thd.iter().enumerate() {
        let color = PHASE_COLORS[ch % PHASE_COLORS.len()];
        let style = color.stroke_width(1);
        chart
            .draw_series(LineSeries::new(steps(trace), style))?
            .label(format!("L{} THD", ch + 1))
            .legend(line_key(style));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// The instantaneous voltage per phase of `group`'s probe meter around one disturbance onset,
/// against time relative to the onset (ms), as an SVG document: the onset as a vertical line,
/// the nominal peak ±√2·nominal dashed.
pub fn waveform_svg(
    scenario: &str,
    group: &GroupPlot,
    wave: &EventWaveform,
) -> Result<String, ReportError> {
    Figure::Waveform(scenario, group, wave).svg()
}

/// (ms relative to the onset, V) of each sample of one phase.
fn waveform_points(wave: &EventWaveform, samples: &[f32]) -> Vec<(f64, f64)> {
    samples
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = wave.start + i as f64 * wave.step;
            ((t - wave.onset) * 1e3, f64::from(*v))
        })
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect()
}

fn draw_waveform<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    scenario: &str,
    g: &GroupPlot,
    w: &EventWaveform,
) -> DrawResult<DB> {
    let peak = g.nominal * std::f64::consts::SQRT_2;
    let phases: Vec<Vec<(f64, f64)>> = w.samples.iter().map(|s| waveform_points(w, s)).collect();
    let (mut x0, mut x1) = (0.0_f64, 0.0_f64);
    let mut y_abs = peak;
    for p in phases.iter().flatten() {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y_abs = y_abs.max(p.1.abs());
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y_max = (y_abs * 1.12).max(1.0);
    // Room below the waves for the legend.
    let y_min = -(y_abs * 1.8).max(1.0);
    let mut chart = styled_chart(
        root,
        format!(
            "{scenario} — {}: waveform at the onset at {} s",
            g.name,
            trim_decimals(w.onset, 4)
        ),
        x0..x1,
        y_min..y_max,
        "time relative to the onset (ms)",
        "instantaneous voltage (V)",
        None,
    )?;
    for (ch, points) in phases.into_iter().enumerate() {
        let color = PHASE_COLORS[ch % PHASE_COLORS.len()];
        let style = color.stroke_width(1);
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(format!("L{} voltage", ch + 1))
            .legend(line_key(style));
    }
    let dashed = NOMINAL_PEAK_COLOR.stroke_width(1);
    for (k, level) in [peak, -peak].into_iter().enumerate() {
        let series = chart.draw_series(DashedLineSeries::new(
            [(x0, level), (x1, level)],
            6,
            4,
            dashed,
        ))?;
        if k == 0 {
            series
                .label(format!(
                    "nominal peak ±{} V (√2 · {} V)",
                    trim_decimals(peak, 1),
                    trim_decimals(g.nominal, 3)
                ))
                .legend(move |(x, y)| {
                    plotters::element::DashedPathElement::new([(x, y), (x + 18, y)], 5, 3, dashed)
                });
        }
    }
    let onset = ONSET_COLOR.stroke_width(2);
    chart
        .draw_series(LineSeries::new([(0.0, y_min), (0.0, y_max)], onset))?
        .label(format!("onset at {} s", trim_decimals(w.onset, 4)))
        .legend(line_key(onset));
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testdata;
    use sim_core::outcome::PlotData;

    /// The value of attribute `name` in one SVG tag.
    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let key = format!(" {name}=\"");
        let start = tag.find(&key)? + key.len();
        let len = tag[start..].find('"')?;
        Some(&tag[start..start + len])
    }

    /// Every `<kind …>` opening tag in `svg`.
    fn tags<'a>(svg: &'a str, kind: &str) -> Vec<&'a str> {
        let open = format!("<{kind} ");
        svg.match_indices(&open)
            .map(|(i, _)| {
                let end = svg[i..].find('>').unwrap();
                &svg[i..i + end]
            })
            .collect()
    }

    /// (x, y, text-anchor, content) of every `<text>`.
    fn texts(svg: &str) -> Vec<(f64, f64, String, String)> {
        svg.match_indices("<text ")
            .map(|(i, _)| {
                let end = i + svg[i..].find('>').unwrap();
                let tag = &svg[i..end];
                let close = end + svg[end..].find("</text>").unwrap();
                (
                    attr(tag, "x").unwrap().parse().unwrap(),
                    attr(tag, "y").unwrap().parse().unwrap(),
                    attr(tag, "text-anchor").unwrap().to_owned(),
                    svg[end + 1..close].trim().to_owned(),
                )
            })
            .collect()
    }

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    /// Points of every polyline drawn in `color`.
    fn polylines(svg: &str, color: RGBColor) -> Vec<Vec<(f64, f64)>> {
        tags(svg, "polyline")
            .into_iter()
            .filter(|t| attr(t, "stroke") == Some(hex(color).as_str()))
            .map(|t| {
                attr(t, "points")
                    .unwrap()
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    /// Pixel position of `value` on an axis, fitted through its numeric tick labels
    /// (`anchor` = `end` for the y axis, `middle` for the x axis).
    fn axis(svg: &str, anchor: &str, value: f64) -> f64 {
        let ticks: Vec<(f64, f64)> = texts(svg)
            .into_iter()
            .filter(|t| t.2 == anchor)
            .filter_map(|t| {
                let v: f64 = t.3.parse().ok()?;
                Some((v, if anchor == "end" { t.1 } else { t.0 }))
            })
            .collect();
        assert!(ticks.len() >= 3, "tick labels: {ticks:?}");
        let (a, b) = (ticks[0], ticks[ticks.len() - 1]);
        a.1 + (value - a.0) * (b.1 - a.1) / (b.0 - a.0)
    }

    fn has_text(svg: &str, want: &str) -> bool {
        texts(svg).iter().any(|t| t.3 == want)
    }

    #[test]
    fn rms_trend_draws_limits_bands_markers_axes_and_legend() {
        let o = testdata::passing();
        let g = &o.plots.groups[0];
        let svg = rms_trend_svg(&o.name, g).unwrap();

        // Limit lines: horizontal, across the plot, at 252 V and 210 V on the y axis.
        for (color, volts) in [(UPPER_LIMIT_COLOR, 252.0), (LOWER_LIMIT_COLOR, 210.0)] {
            let lines = polylines(&svg, color);
            let line = lines
                .iter()
                .find(|l| l.len() == 2 && l[1].0 - l[0].0 > 500.0)
                .unwrap_or_else(|| panic!("no limit line in {}", hex(color)));
            assert_eq!(line[0].1, line[1].1, "horizontal");
            let want = axis(&svg, "end", volts);
            assert!((line[0].1 - want).abs() <= 1.5, "{volts} V at y {want}");
        }
        // Hysteresis bands: two shaded rectangles 2 V high, against the limits.
        let bands: Vec<(f64, f64)> = tags(&svg, "rect")
            .into_iter()
            .filter(|t| attr(t, "fill") == Some(hex(BAND_COLOR).as_str()))
            .map(|t| {
                let y: f64 = attr(t, "y").unwrap().parse().unwrap();
                let h: f64 = attr(t, "height").unwrap().parse().unwrap();
                (y, y + h)
            })
            .collect();
        // Two bands and the legend swatch.
        assert_eq!(bands.len(), 3, "{bands:?}");
        let (y210, y212) = (axis(&svg, "end", 210.0), axis(&svg, "end", 212.0));
        assert!(bands
            .iter()
            .any(|b| (b.1 - y210).abs() <= 1.5 && (b.0 - y212).abs() <= 1.5));
        let (y250, y252) = (axis(&svg, "end", 250.0), axis(&svg, "end", 252.0));
        assert!(bands
            .iter()
            .any(|b| (b.1 - y250).abs() <= 1.5 && (b.0 - y252).abs() <= 1.5));

        // One trip triangle and one clear cross (each plus its legend sample), one alarm
        // arrival per distinct receive time (plus the legend's).
        let trips = tags(&svg, "polygon")
            .into_iter()
            .filter(|t| attr(t, "fill") == Some(hex(TRIP_COLOR).as_str()))
            .count();
        assert_eq!(trips, 2);
        let cross_strokes = tags(&svg, "line")
            .into_iter()
            .filter(|t| attr(t, "stroke") == Some(hex(CLEAR_COLOR).as_str()))
            .count();
        assert_eq!(cross_strokes, 4, "two strokes per cross");
        let arrivals = tags(&svg, "circle")
            .into_iter()
            .filter(|t| attr(t, "fill") == Some(hex(ALARM_COLOR).as_str()))
            .count();
        assert_eq!(arrivals, 3 + 1);
        // The trip marker sits at the trip's time and value.
        let tri = tags(&svg, "polygon")
            .into_iter()
            .find(|t| attr(t, "fill") == Some(hex(TRIP_COLOR).as_str()))
            .unwrap();
        let pts: Vec<f64> = attr(tri, "points")
            .unwrap()
            .split([' ', ','])
            .filter_map(|v| v.parse().ok())
            .collect();
        let cx = (pts[0] + pts[2] + pts[4]) / 3.0;
        assert!((cx - axis(&svg, "middle", 1.0021)).abs() <= 2.0, "{cx}");

        // Phase traces, one per phase, and the sag's minimum on L1.
        for (ch, color) in PHASE_COLORS.iter().enumerate() {
            let line = polylines(&svg, *color)
                .into_iter()
                .max_by_key(Vec::len)
                .unwrap();
            assert!(line.len() > 10, "L{} trace", ch + 1);
        }
        let l1_low = polylines(&svg, PHASE_COLORS[0])
            .into_iter()
            .flatten()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!((l1_low - axis(&svg, "end", 161.0)).abs() <= 1.5);

        // Axis labels with units, legend entries, caption.
        assert!(has_text(&svg, "time since scenario start (s)"));
        assert!(has_text(&svg, "10/12-cycle RMS (V)"));
        for entry in [
            "upper limit 252 V",
            "lower limit 210 V",
            "hysteresis bands (2 V)",
            "L1 10/12-cycle RMS",
            "L2 10/12-cycle RMS",
            "L3 10/12-cycle RMS",
            "trip (Urms(1/2) at the trip)",
            "clear (Urms(1/2) at the clear)",
            "trip alarm at the head-end",
        ] {
            assert!(has_text(&svg, entry), "legend entry {entry}");
        }
        assert!(has_text(&svg, "sag-70pct-10-cycles — feeder-a: RMS trend"));
        // Deterministic.
        assert_eq!(svg, rms_trend_svg(&o.name, g).unwrap());
    }

    #[test]
    fn latency_cdf_draws_the_spec_limit_axes_and_legend() {
        let o = testdata::passing();
        let g = &o.plots.groups[0];
        let svg = latency_cdf_svg(&o.name, g).unwrap().unwrap();
        let limit = polylines(&svg, UPPER_LIMIT_COLOR)
            .into_iter()
            .find(|l| l.len() == 2 && l[0].0 == l[1].0)
            .expect("a vertical limit line");
        assert!((limit[0].0 - axis(&svg, "middle", 50.0)).abs() <= 1.5);
        // The staircase reaches 1 after the largest latency (9.5 ms), 1/3 after the smallest.
        let cdf = polylines(&svg, CDF_COLOR)
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap();
        let y_at = |ms: f64| {
            let x = axis(&svg, "middle", ms);
            cdf.iter()
                .filter(|p| p.0 <= x + 0.5)
                .map(|p| p.1)
                .fold(f64::INFINITY, f64::min)
        };
        assert!((y_at(9.6) - axis(&svg, "end", 1.0)).abs() <= 1.5);
        assert!((y_at(7.5) - axis(&svg, "end", 1.0 / 3.0)).abs() <= 1.5);
        assert!(has_text(&svg, "onset-to-alarm latency (ms)"));
        assert!(has_text(&svg, "fraction of trip alarms"));
        assert!(has_text(&svg, "spec limit 50 ms"));
        assert!(has_text(&svg, "CDF of 3 trip alarms"));
    }

    #[test]
    fn fleet_trips_count_up_per_group_with_axes_and_legend() {
        let mut o = testdata::passing();
        o.plots.groups[0].meters = 3;
        o.plots.groups[0].trips = vec![(1.04, 3)];
        let mut b = o.plots.groups[0].clone();
        b.name = "feeder-b".into();
        b.meters = 2;
        b.trips = vec![(2.0, 1), (3.0, 1)];
        o.plots.groups.push(b);
        let svg = fleet_trips_svg(&o).unwrap().unwrap();
        assert!(has_text(&svg, "feeder-a (3 meters, 3 trips)"));
        assert!(has_text(&svg, "feeder-b (2 meters, 2 trips)"));
        assert!(has_text(&svg, "time since scenario start (s)"));
        assert!(has_text(&svg, "trips, cumulative (count)"));
        // feeder-b's line: 0 until 2 s, 1 until 3 s, then 2 to the end (40 s).
        let line = polylines(&svg, GROUP_COLORS[1])
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap();
        let y = |n: f64| axis(&svg, "end", n);
        let x = |t: f64| axis(&svg, "middle", t);
        let want = [
            (0.0, 0.0),
            (2.0, 0.0),
            (2.0, 1.0),
            (3.0, 1.0),
            (3.0, 2.0),
            (40.0, 2.0),
        ];
        assert_eq!(line.len(), want.len());
        for (p, (t, n)) in line.iter().zip(want) {
            assert!(
                (p.0 - x(t)).abs() <= 1.5 && (p.1 - y(n)).abs() <= 1.5,
                "{p:?} vs {t} s {n}"
            );
        }
        let names: Vec<String> = scenario_plots(&o)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names.last().unwrap(), "sag-70pct-10-cycles-fleet-trips.svg");
        // One meter, or no trips: no fleet plot.
        o.plots.groups.truncate(1);
        o.plots.groups[0].meters = 1;
        assert!(fleet_trips_svg(&o).unwrap().is_none());
        o.plots.groups[0].meters = 5;
        let svg = fleet_trips_svg(&o).unwrap().unwrap();
        assert!(has_text(&svg, "feeder-a (5 meters, 3 trips)"));
        o.plots.groups[0].trips = vec![(1.0, 1)];
        assert!(has_text(
            &fleet_trips_svg(&o).unwrap().unwrap(),
            "feeder-a (5 meters, 1 trip)"
        ));
        o.plots.groups[0].trips.clear();
        assert!(fleet_trips_svg(&o).unwrap().is_none());
    }

    #[test]
    fn windows_are_drawn_as_levels() {
        assert_eq!(
            steps(&[(0.2, 1.0), (0.4, 2.0), (0.6, 3.0)]),
            [
                (0.0, 1.0),
                (0.2, 1.0),
                (0.2, 2.0),
                (0.4, 2.0),
                (0.4, 3.0),
                (0.6, 3.0)
            ]
        );
        assert_eq!(
            steps(&[(0.1, 5.0), (0.3, 5.0)])[0],
            (0.0, 5.0),
            "not before 0"
        );
        assert_eq!(steps(&[(0.2, 1.0)]), [(0.2, 1.0), (0.2, 1.0)]);
        assert!(steps(&[]).is_empty());
    }

    #[test]
    fn no_alarms_no_cdf_and_names_are_safe() {
        let mut o = testdata::passing();
        o.name = "a/b <c> & d".into();
        o.plots.groups[0].alarm_latencies.clear();
        o.plots.groups[0].thd.clear();
        o.plots.groups[0].event_waveforms.clear();
        o.plots.groups[0].name = "..".into();
        let files = scenario_plots(&o).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "a_b__c____d-_..-rms.svg");
        assert!(files[0]
            .svg
            .contains("a/b &lt;c&gt; &amp; d — ..: RMS trend"));
        assert_eq!(file_part(""), "_");
        let mut buf = Vec::new();
        assert!(!write_latency_cdf(&mut buf, &o.name, &o.plots.groups[0]).unwrap());
        assert!(buf.is_empty());
        write_rms_trend(&mut buf, &o.name, &o.plots.groups[0]).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), files[0].svg);
        let empty = ScenarioOutcome {
            plots: PlotData::default(),
            ..o
        };
        assert!(scenario_plots(&empty).unwrap().is_empty());
    }

    #[test]
    fn thd_plot_has_units_legend_and_levels_and_is_skipped_when_zero() {
        let o = testdata::passing();
        let g = &o.plots.groups[0];
        let svg = thd_svg(&o.name, g).unwrap().unwrap();
        assert!(has_text(&svg, "time since scenario start (s)"));
        assert!(has_text(&svg, "THD per 10/12-cycle window (%)"));
        for l in ["L1 THD", "L2 THD", "L3 THD"] {
            assert!(has_text(&svg, l), "legend {l}");
        }
        // L1's level sits at 6.4 % on the y axis.
        let want = axis(&svg, "end", 6.4);
        let line = polylines(&svg, PHASE_COLORS[0])
            .into_iter()
            .find(|l| l.len() > 100)
            .unwrap();
        assert!(line.iter().all(|p| (p.1 - want).abs() <= 1.5), "y {want}");

        let mut flat = g.clone();
        for trace in &mut flat.thd {
            for p in trace.iter_mut() {
                p.1 = 0.004;
            }
        }
        assert!(thd_svg(&o.name, &flat).unwrap().is_none());
        flat.thd.clear();
        assert!(thd_svg(&o.name, &flat).unwrap().is_none());
    }

    #[test]
    fn waveform_plot_marks_onset_and_nominal_peak_with_units_and_legend() {
        let o = testdata::passing();
        let g = &o.plots.groups[0];
        let w = &g.event_waveforms[0];
        let svg = waveform_svg(&o.name, g, w).unwrap();
        assert!(has_text(&svg, "time relative to the onset (ms)"));
        assert!(has_text(&svg, "instantaneous voltage (V)"));
        for l in ["L1 voltage", "L2 voltage", "L3 voltage", "onset at 1 s"] {
            assert!(has_text(&svg, l), "legend {l}");
        }
        assert!(has_text(&svg, "nominal peak ±325.3 V (√2 · 230 V)"));
        // The onset line: vertical, at 0 ms on the x axis, spanning the plot.
        let x0 = axis(&svg, "middle", 0.0);
        let onset = polylines(&svg, ONSET_COLOR)
            .into_iter()
            .find(|l| l.len() == 2 && (l[1].1 - l[0].1).abs() > 300.0)
            .expect("onset line");
        assert_eq!(onset[0].0, onset[1].0, "vertical");
        assert!((onset[0].0 - x0).abs() <= 1.5, "onset at x {x0}");
        // Dashed nominal-peak lines: many short horizontal segments at ±325.3 V.
        let dashes = polylines(&svg, NOMINAL_PEAK_COLOR);
        for volts in [325.27, -325.27] {
            let y = axis(&svg, "end", volts);
            let at_level = dashes
                .iter()
                .filter(|l| l.len() == 2 && l.iter().all(|p| (p.1 - y).abs() <= 1.5))
                .count();
            assert!(at_level >= 10, "{at_level} dashes at {volts} V (y {y})");
        }
        // L1 spans ±325 V before the onset and only ±228 V well after it.
        let l1 = polylines(&svg, PHASE_COLORS[0])
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap();
        assert!(l1.len() >= 1500, "{} points", l1.len());
        let (top, after) = (axis(&svg, "end", 300.0), axis(&svg, "middle", 10.0));
        assert!(l1.iter().any(|p| p.0 < x0 && p.1 < top));
        assert!(l1.iter().filter(|p| p.0 > after).all(|p| p.1 > top));
    }

    #[test]
    fn scenario_plots_name_thd_and_event_files() {
        let o = testdata::passing();
        let names: Vec<String> = scenario_plots(&o)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert!(
            names.contains(&"sag-70pct-10-cycles-feeder-a-thd.svg".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"sag-70pct-10-cycles-feeder-a-event-1.svg".to_owned()),
            "{names:?}"
        );
    }

    /// The RGB pixels of a PNG file, checked to be 8-bit RGB of [`PNG_SIZE`].
    fn decode_png(bytes: &[u8]) -> Vec<[u8; 3]> {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), PNG_SIZE);
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf[..info.buffer_size()]
            .chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect()
    }

    #[test]
    fn every_plot_has_a_png_that_decodes_and_shows_the_plot() {
        let o = testdata::passing();
        let with_png = scenario_plots_with_png(&o).unwrap();
        let svg_only = scenario_plots(&o).unwrap();
        assert_eq!(with_png.len(), svg_only.len());
        assert!(with_png.len() >= 4, "{}", with_png.len());
        let (w, h) = (PNG_SIZE.0 as usize, PNG_SIZE.1 as usize);
        for (p, s) in with_png.iter().zip(&svg_only) {
            assert!(s.png.is_none());
            assert_eq!(p.svg, s.svg, "the SVG does not depend on the PNG");
            assert_eq!(p.png_name(), p.name.replace(".svg", ".png"));
            let pixels = decode_png(p.png.as_ref().unwrap());
            assert_eq!(pixels.len(), w * h);
            let drawn = pixels.iter().filter(|px| **px != [255, 255, 255]).count();
            assert!(drawn > w * h / 100, "{}: {drawn} non-white pixels", p.name);
            // The caption (the top 30 rows, centred) is rasterized text: dark pixels there.
            let caption = (0..30)
                .flat_map(|y| (w / 4..3 * w / 4).map(move |x| y * w + x))
                .filter(|&i| pixels[i].iter().all(|c| *c < 100))
                .count();
            assert!(caption > 50, "{}: {caption} dark caption pixels", p.name);
            // Deterministic: the same outcome gives the same bytes.
        }
        let again = scenario_plots_with_png(&o).unwrap();
        assert_eq!(again, with_png);
        // The RMS trend's PNG shows the L1 line and the upper-limit line in their colours.
        let rms = decode_png(with_png[0].png.as_ref().unwrap());
        assert!(with_png[0].name.ends_with("-rms.svg"));
        for color in [PHASE_COLORS[0], UPPER_LIMIT_COLOR] {
            let rgb = [color.0, color.1, color.2];
            let n = rms.iter().filter(|px| **px == rgb).count();
            assert!(n > 200, "{n} pixels of {rgb:?}");
        }
    }

    #[test]
    fn text_comes_only_from_the_embedded_font() {
        register_embedded_font().unwrap();
        // The registered family measures text with real glyph advances.
        let desc = FontDesc::new(FontFamily::Name(FONT), 20.0, FontStyle::Normal);
        let (wide, _) = desc.box_size("WWWW").unwrap();
        let (narrow, _) = desc.box_size("iiii").unwrap();
        assert!(wide > 2 * narrow, "{wide} vs {narrow}");
        // A family that was not registered is not looked up on the system, even where the
        // system has it (this machine may have DejaVu Sans installed as sans-serif): with
        // plotters' `ttf` feature font-kit would find one.
        for family in [FontFamily::SansSerif, FontFamily::Name("DejaVu Sans")] {
            let missing = FontDesc::new(family, 20.0, FontStyle::Normal);
            assert!(missing.box_size("x").is_err());
        }
        // The build has no system-font machinery: plotters without `ttf`, with `ab_glyph`,
        // and nothing in the lock file that reads fontconfig or freetype.
        let manifest = include_str!("../../Cargo.toml");
        let plotters = manifest
            .lines()
            .find(|l| l.starts_with("plotters ="))
            .unwrap();
        assert!(plotters.contains("default-features = false"), "{plotters}");
        assert!(plotters.contains("\"ab_glyph\""), "{plotters}");
        assert!(plotters.contains("\"bitmap_backend\""), "{plotters}");
        assert!(!plotters.contains("\"ttf\""), "{plotters}");
        let lock = include_str!("../../Cargo.lock");
        for crate_name in [
            "font-kit",
            "yeslogic-fontconfig-sys",
            "freetype-sys",
            "servo-fontconfig",
        ] {
            assert!(
                !lock.contains(&format!("name = \"{crate_name}\"")),
                "{crate_name}"
            );
        }
        // Every SVG text names the same family.
        let o = testdata::passing();
        let svg = rms_trend_svg(&o.name, &o.plots.groups[0]).unwrap();
        let families: std::collections::BTreeSet<&str> = tags(&svg, "text")
            .into_iter()
            .filter_map(|t| attr(t, "font-family"))
            .collect();
        assert_eq!(families.into_iter().collect::<Vec<_>>(), [FONT]);
    }
}
