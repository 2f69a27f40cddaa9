//! PNG line plots for the evaluation (plotters, bitmap backend).
//!
//! Text is drawn with `ab_glyph` from a font file registered at run time: DejaVuSans from
//! Debian's `fonts-dejavu-core` ([`FONT`], or the file `SALN_PLOT_FONT` names). No system
//! font lookup happens, so a plot looks the same on every machine; a missing font is an
//! [`Error::Output`] naming the package to install, never a plot without labels.
//!
//! Every PNG is drawn into a temporary file in the same folder and renamed when complete.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// The font the plots use (Debian's `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The font file: `SALN_PLOT_FONT` when set, else [`FONT`].
pub fn font_path() -> PathBuf {
    std::env::var_os("SALN_PLOT_FONT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FONT))
}

/// Reads the font file at `path`; a missing or unreadable file is an [`Error::Output`]
/// that names the package to install.
pub fn read_font(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Output {
        path: path.to_path_buf(),
        message: format!(
            "cannot read the plot font ({e}): install Debian's fonts-dejavu-core \
             (`apt-get install fonts-dejavu-core`, or `scripts/setup.sh data`), \
             or point SALN_PLOT_FONT at a TrueType font"
        ),
    })
}

/// Registers the plot font ([`font_path`]) as `sans-serif`, once per process.
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), (PathBuf, String)>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = font_path();
            let bytes = read_font(&path).map_err(|e| match e {
                Error::Output { path, message } => (path, message),
                e => (path.clone(), e.to_string()),
            })?;
            // plotters keeps a reference for the life of the process: leak it, once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| (path, "is not a TrueType/OpenType font".to_string()))
        })
        .clone()
        .map_err(|(path, message)| Error::Output { path, message })
}

/// One line of a panel.
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend text.
    pub label: String,
    /// Colour.
    pub color: RGBColor,
    /// Drawn dashed (a reference line).
    pub dashed: bool,
    /// `(x, y)` points, in order of x.
    pub points: Vec<(f64, f64)>,
}

/// One chart of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Chart caption.
    pub caption: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// The lines.
    pub lines: Vec<Line>,
}

/// Writes `path` (PNG) through a temporary `.png` file in the same folder: `draw` gets the
/// drawing area of the temporary file.
pub fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    ensure_font()?;
    // The backend picks the encoder from the extension: keep `.png` last.
    crate::io::write_atomic_with(path, ".png", |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| out(path, e))?;
        draw(&root)?;
        root.present().map_err(|e| out(path, e))
    })
}

/// A plotters error as an [`Error::Output`] for `path`.
pub fn out(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Output {
        path: path.to_path_buf(),
        message: format!("drawing failed: {e}"),
    }
}

/// A figure of `panels` side by side under `title`, written to `path` (PNG).
/// y values are fractions and shown in percent.
pub fn line_figure(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let width = 720 * panels.len().max(1) as u32;
    write_png(path, (width, 560), |root| {
        let root = root
            .titled(title, ("sans-serif", 22))
            .map_err(|e| out(path, e))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(path, area, panel)?;
        }
        Ok(())
    })
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |r, v| match r {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

fn draw_panel(
    path: &Path,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<()> {
    let points = || panel.lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = range(points().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (y0, y1) = range(points().map(|p| 100.0 * p.1)).unwrap_or((0.0, 100.0));
    let (x0, x1) = (x0.min(0.0), if x1 > x0 { x1 } else { x0 + 1.0 });
    let pad = ((y1 - y0) * 0.08).max(0.5);
    let (y0, y1) = ((y0 - pad).max(0.0), (y1 + pad).min(100.0));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1 * 1.02, y0..y1)
        .map_err(|e| out(path, e))?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(|e| out(path, e))?;
    for line in &panel.lines {
        let color = line.color;
        let pts: Vec<(f64, f64)> = line.points.iter().map(|&(x, y)| (x, 100.0 * y)).collect();
        let style = color.stroke_width(2);
        let series = if line.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style))
        };
        series
            .map_err(|e| out(path, e))?
            .label(line.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| out(path, e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| out(path, e))?;
    Ok(())
}

/// A colour per policy label, stable across figures (`none` black, `uniform` grey).
pub fn policy_color(label: &str) -> RGBColor {
    match label {
        "none" => RGBColor(0, 0, 0),
        "uniform" => RGBColor(128, 128, 128),
        "loss" => RGBColor(230, 159, 0),
        "rho-loss" => RGBColor(213, 94, 0),
        "jest" => RGBColor(204, 121, 167),
        "saln:extremes" => RGBColor(0, 114, 178),
        "saln:boundary" => RGBColor(86, 180, 233),
        "saln:balanced" => RGBColor(0, 158, 115),
        "saln:quantile" | "saln" => RGBColor(60, 40, 160),
        other => {
            // Anything else: a colour from a hash of the label.
            let h = other.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
            RGBColor(
                (h >> 8) as u8 / 2 + 40,
                (h >> 24) as u8 / 2 + 40,
                (h >> 40) as u8 / 2 + 40,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_font_names_the_package() {
        let e = read_font(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/DejaVuSans.ttf") && msg.contains("fonts-dejavu-core"),
            "{msg}"
        );
    }

    #[test]
    fn a_figure_is_a_png_of_the_right_size_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.png");
        let line = |label: &str, k: f64| Line {
            label: label.into(),
            color: policy_color(label),
            dashed: label == "none",
            points: (1..=4).map(|e| (e as f64, 0.5 + k * e as f64)).collect(),
        };
        let panel = Panel {
            caption: "accuracy".into(),
            x_label: "epoch".into(),
            y_label: "test accuracy (%)".into(),
            lines: vec![line("none", 0.1), line("saln:quantile", 0.08)],
        };
        line_figure(&path, "test", &[panel.clone(), panel]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (1440, 560));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the PNG");
    }
}
