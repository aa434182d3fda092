//! Line plots a person can read: stacked panels, each with a title, axes, tick values, axis labels
//! and an optional logarithmic y axis, drawn with plotters into an RGB bitmap.
//!
//! Text is rendered with plotters' `ab_glyph` backend from DejaVu Sans embedded in the binary (the
//! `dejavu` crate), so plots look the same on a machine without any system font and need no
//! fontconfig.
use std::ops::Range;
use std::sync::Once;

use image::RgbImage;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// Width of a plot, pixels.
pub const PLOT_WIDTH: u32 = 900;
/// Height of one panel, pixels.
pub const PANEL_HEIGHT: u32 = 280;
/// Height of the title strip above the panels (when there is a title), pixels.
pub const TITLE_HEIGHT: u32 = 44;

/// The family name under which the embedded font is registered with plotters.
const FONT: &str = "sans-serif";

/// One panel of a stacked plot: a line through the points `(xs[i], ys[i])` in `color`, under its
/// own title, with `y_label` on the y axis. Points where x or y is not finite (or y ≤ 0 on a
/// logarithmic axis) are left out and break the line.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotPanel {
    /// Title above the panel (e.g. `ᾱ_t = ∏ (1 − β_s)`); may be empty.
    pub title: String,
    /// Label of the y axis (e.g. `ᾱ_t`); may be empty.
    pub y_label: String,
    /// x values.
    pub xs: Vec<f64>,
    /// y values, as many as `xs` (extra values of either are ignored).
    pub ys: Vec<f64>,
    /// Line colour, RGB.
    pub color: [u8; 3],
    /// Logarithmic y axis (base 10).
    pub log_y: bool,
}

impl PlotPanel {
    /// A panel titled `title`, whose y axis is labelled `title` too, drawn in blue on a linear axis.
    pub fn new(title: impl Into<String>, xs: Vec<f64>, ys: Vec<f64>) -> Self {
        let title = title.into();
        Self {
            y_label: title.clone(),
            title,
            xs,
            ys,
            color: [31, 119, 180],
            log_y: false,
        }
    }

    /// The same panel with another y-axis label.
    pub fn y_label(mut self, label: impl Into<String>) -> Self {
        self.y_label = label.into();
        self
    }

    /// The same panel in another colour.
    pub fn color(mut self, color: [u8; 3]) -> Self {
        self.color = color;
        self
    }

    /// The same panel with a logarithmic (`true`) or linear y axis.
    pub fn log_y(mut self, log_y: bool) -> Self {
        self.log_y = log_y;
        self
    }

    /// The drawable points, in order, split into runs at points that cannot be drawn.
    fn segments(&self) -> Vec<Vec<(f64, f64)>> {
        let mut out = vec![Vec::new()];
        for (&x, &y) in self.xs.iter().zip(&self.ys) {
            if x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0) {
                out.last_mut().expect("never empty").push((x, y));
            } else if !out.last().expect("never empty").is_empty() {
                out.push(Vec::new());
            }
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

/// Registers the embedded font with plotters (once per process).
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ok = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .is_ok();
        assert!(ok, "the embedded DejaVu Sans is a valid TrueType font");
    });
}

/// Stacked panels sharing the x-axis label `x_label`, under `title` (no title strip when empty).
///
/// The image is [`PLOT_WIDTH`] wide and [`PANEL_HEIGHT`] per panel high (+ [`TITLE_HEIGHT`] with
/// a title); each panel has its own y range fitted to its drawable points (a panel without any
/// shows empty axes on [0, 1]).
pub fn plot(title: &str, x_label: &str, panels: &[PlotPanel]) -> RgbImage {
    register_font();
    let title_h = if title.is_empty() { 0 } else { TITLE_HEIGHT };
    let (w, h) = (
        PLOT_WIDTH,
        title_h + PANEL_HEIGHT * panels.len().max(1) as u32,
    );
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let body = if title.is_empty() {
            root.clone()
        } else {
            root.titled(title, (FONT, 24).into_font().color(&BLACK))
                .expect("drawing into a bitmap with the embedded font")
        };
        for (area, panel) in body
            .split_evenly((panels.len().max(1), 1))
            .iter()
            .zip(panels)
        {
            draw_panel(area, x_label, panel);
        }
        root.present().expect("a bitmap buffer needs no I/O");
    }
    RgbImage::from_raw(w, h, buf).expect("the buffer holds w × h RGB pixels")
}

/// Height of one caption line of [`captioned`], pixels.
pub const CAPTION_LINE: u32 = 22;

/// `img` with `lines` of text above it (black on white, 15 px DejaVu Sans, one line per entry,
/// [`CAPTION_LINE`] pixels each), at least as wide as the widest line needs; e.g. a sample grid
/// titled with its scores.
pub fn captioned(img: &RgbImage, lines: &[String]) -> RgbImage {
    register_font();
    let style = (FONT, 15).into_font().color(&BLACK);
    let text_w = lines
        .iter()
        .map(|l| style.font.box_size(l).map_or(0, |(w, _)| w + 8))
        .max()
        .unwrap_or(0);
    let (w, cap_h) = (img.width().max(text_w), CAPTION_LINE * lines.len() as u32);
    let h = cap_h + img.height();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        for (i, line) in lines.iter().enumerate() {
            root.draw_text(line, &style, (4, 3 + CAPTION_LINE as i32 * i as i32))
                .expect("drawing into a bitmap with the embedded font");
        }
        root.present().expect("a bitmap buffer needs no I/O");
    }
    let mut out = RgbImage::from_raw(w, h, buf).expect("the buffer holds w × h RGB pixels");
    image::imageops::overlay(&mut out, img, 0, cap_h as i64);
    out
}

/// Draws one panel into `area`, linear or logarithmic in y.
fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    x_label: &str,
    panel: &PlotPanel,
) {
    let segments = panel.segments();
    let points = || segments.iter().flatten();
    let xr = padded_range(points().map(|p| p.0), false, 0.0);
    if panel.log_y {
        let yr = padded_range(points().map(|p| p.1), true, 0.05);
        let (bold, light) = log_ticks(yr.start, yr.end);
        let y = yr
            .log_scale()
            .with_key_points(bold)
            .with_light_points(light);
        draw_on(area, x_label, panel, &segments, xr, y);
    } else {
        let yr = padded_range(points().map(|p| p.1), false, 0.05);
        draw_on(area, x_label, panel, &segments, xr, yr);
    }
}

/// The chart of one panel on the y coordinate `y` (a linear or a logarithmic range).
fn draw_on<Y>(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    x_label: &str,
    panel: &PlotPanel,
    segments: &[Vec<(f64, f64)>],
    x: Range<f64>,
    y: Y,
) where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top(6)
        .margin_bottom(4)
        .margin_left(8)
        .margin_right(24)
        .x_label_area_size(46)
        .y_label_area_size(84);
    if !panel.title.is_empty() {
        builder.caption(&panel.title, (FONT, 18).into_font().color(&BLACK));
    }
    let mut chart = builder
        .build_cartesian_2d(x, y)
        .expect("non-empty finite ranges");
    let fmt = |v: &f64| tick_label(*v);
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(&panel.y_label)
        .x_labels(10)
        .y_labels(6)
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .label_style((FONT, 14).into_font().color(&BLACK))
        .axis_desc_style((FONT, 15).into_font().color(&BLACK))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(242, 242, 242))
        .axis_style(BLACK)
        .draw()
        .expect("drawing into a bitmap with the embedded font");
    let [r, g, b] = panel.color;
    for seg in segments {
        chart
            .draw_series(LineSeries::new(
                seg.iter().copied(),
                RGBColor(r, g, b).stroke_width(2),
            ))
            .expect("drawing into a bitmap");
    }
}

/// The range of the finite `values`, widened by `pad` of its width on both sides; a single value
/// (or all equal) gets a range around it, no values gives [0, 1] ([1, 10] for a log axis, whose
/// range must also stay positive).
fn padded_range(values: impl Iterator<Item = f64>, log: bool, pad: f64) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return if log { 1.0..10.0 } else { 0.0..1.0 };
    }
    if log {
        let (llo, lhi) = (lo.log10(), hi.log10());
        let (llo, lhi) = if lhi - llo < 1e-9 {
            (llo - 0.5, lhi + 0.5)
        } else {
            (llo - pad * (lhi - llo), lhi + pad * (lhi - llo))
        };
        return 10f64.powf(llo)..10f64.powf(lhi);
    }
    let width = hi - lo;
    if width <= 1e-12 * hi.abs().max(lo.abs()).max(1e-300) {
        let d = if lo == 0.0 { 1.0 } else { 0.5 * lo.abs() };
        return lo - d..hi + d;
    }
    lo - pad * width..hi + pad * width
}

/// Labelled ticks and light grid lines of a logarithmic axis over `lo..hi` (0 < lo < hi): powers
/// of ten over many decades, 1-2-5 steps over a few, 1-2-3-5 over one or two; a range within one
/// decade (where a log axis is nearly linear), or one with fewer than three such ticks, gets evenly
/// spaced round values. At most 10 labels. Light lines are at every digit.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let decades = (hi / lo).log10();
    let in_range = |mults: &[f64]| -> Vec<f64> {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (k0..=k1)
            .flat_map(|k| mults.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let digits: Vec<f64> = (1..10).map(f64::from).collect();
    let mut bold = if decades > 4.0 {
        in_range(&[1.0])
    } else if decades > 2.0 {
        in_range(&[1.0, 2.0, 5.0])
    } else if decades > 1.0 {
        in_range(&[1.0, 2.0, 3.0, 5.0])
    } else {
        Vec::new()
    };
    if bold.len() < 3 {
        let step = nice_step((hi - lo) / 5.0);
        let first = (lo / step).ceil() as i64;
        bold = (first..)
            .map(|i| i as f64 * step)
            .take_while(|&v| v <= hi)
            .collect();
    }
    let thin = bold.len().div_ceil(10);
    let bold = bold.into_iter().step_by(thin.max(1)).collect();
    (bold, in_range(&digits))
}

/// The round step (1, 2 or 5 × 10^k) nearest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

/// A tick value as a person writes it: `0`, `250`, `0.02`, `1.5`, `1e-4`, `2.5e6`.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        s.replace(".0e", "e")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".into()
        } else {
            s.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_read_like_numbers() {
        let cases = [
            (0.0, "0"),
            (250.0, "250"),
            (0.02, "0.02"),
            (1.5, "1.5"),
            (-10.0, "-10"),
            (1e-4, "1e-4"),
            (2.5e6, "2.5e6"),
            (0.00125, "0.0013"),
        ];
        for (v, want) in cases {
            assert_eq!(tick_label(v), want, "{v}");
        }
    }

    #[test]
    fn ranges_fit_the_drawable_values() {
        let r = padded_range([1.0, 3.0, f64::NAN].into_iter(), false, 0.5);
        assert_eq!(r, 0.0..4.0);
        assert_eq!(padded_range([2.0, 2.0].into_iter(), false, 0.1), 1.0..3.0);
        assert_eq!(padded_range([0.0].into_iter(), false, 0.1), -1.0..1.0);
        assert_eq!(padded_range(std::iter::empty(), false, 0.1), 0.0..1.0);
        let r = padded_range([-1.0, 1e-3, 1e-1].into_iter(), true, 0.0);
        assert!(
            (r.start - 1e-3).abs() < 1e-15 && (r.end - 1e-1).abs() < 1e-15,
            "{r:?}"
        );
        let r = padded_range([10.0].into_iter(), true, 0.1);
        assert!(r.start > 0.0 && r.start < 10.0 && r.end > 10.0, "{r:?}");
        assert_eq!(padded_range([-5.0].into_iter(), true, 0.1), 1.0..10.0);
    }

    #[test]
    fn log_axes_get_readable_ticks_at_any_span() {
        // Many decades: powers of ten.
        let (bold, light) = log_ticks(1e-6, 1.0);
        assert_eq!(bold.len(), 7);
        assert!(bold
            .iter()
            .zip([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
            .all(|(a, b)| (a / b - 1.0).abs() < 1e-12));
        assert!(light.len() > 40);
        // Two decades: 1-2-5.
        let (bold, _) = log_ticks(1e-4, 2e-2);
        let labels: Vec<String> = bold.iter().map(|&v| tick_label(v)).collect();
        assert_eq!(
            labels,
            ["1e-4", "2e-4", "5e-4", "0.001", "0.002", "0.005", "0.01", "0.02"]
        );
        // One to two decades: 1-2-3-5.
        let (bold, _) = log_ticks(0.05, 1.0);
        let labels: Vec<String> = bold.iter().map(|&v| tick_label(v)).collect();
        assert_eq!(labels, ["0.05", "0.1", "0.2", "0.3", "0.5", "1"]);
        // Within a decade (here across 1): round linear steps.
        let (bold, _) = log_ticks(0.7, 1.45);
        let labels: Vec<String> = bold.iter().map(|&v| tick_label(v)).collect();
        assert_eq!(labels, ["0.8", "1", "1.2", "1.4"]);
        // Very many decades: at most 10 labels.
        assert!(log_ticks(1e-40, 1.0).0.len() <= 10);
        // Too narrow for digits: round linear steps.
        let (bold, _) = log_ticks(0.71, 0.79);
        let labels: Vec<String> = bold.iter().map(|&v| tick_label(v)).collect();
        assert_eq!(labels, ["0.72", "0.74", "0.76", "0.78"]);
    }

    #[test]
    fn undrawable_points_break_the_line() {
        let p = PlotPanel::new(
            "p",
            vec![0.0, 1.0, 2.0, 3.0, 4.0],
            vec![1.0, f64::NAN, 2.0, 0.0, 3.0],
        );
        assert_eq!(
            p.segments(),
            vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 0.0), (4.0, 3.0)]]
        );
        let p = p.log_y(true);
        assert_eq!(
            p.segments(),
            vec![vec![(0.0, 1.0)], vec![(2.0, 2.0)], vec![(4.0, 3.0)]]
        );
    }
}
