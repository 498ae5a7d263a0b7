//! Figures: schedule curves (PNG/SVG via plotters, or text for the terminal), labelled image
//! strips and loss curves. The font is bundled so figures render the same on any machine.
use crate::error::{Error, Result};
use crate::io::output::write_bytes_atomic;
use image::RgbImage;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; a failure here would be a packaging bug.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// One named curve.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel of a figure: a title, a y label and its curves.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const COLORS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(255, 187, 120),
];

fn finite_range(panel: &Panel) -> (f64, f64, f64, f64) {
    let pts = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    (x0, x1.max(x0 + 1.0), y0 - pad, y1 + pad)
}

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    x_label: &str,
    panels: &[Panel],
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, panel) in areas.iter().zip(panels) {
        let (x0, x1, y0, y1) = finite_range(panel);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FAMILY, 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(&panel.y_label)
            .label_style((FAMILY, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in panel.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points
                        .iter()
                        .copied()
                        .filter(|(x, y)| x.is_finite() && y.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(&s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A figure path must end in .png or .svg (checked before any work).
pub fn check_figure_path(path: &Path) -> Result<()> {
    match extension(path).as_str() {
        "png" | "svg" => Ok(()),
        _ => Err(Error::invalid(format!(
            "{}: figure files must end in .png or .svg",
            path.display()
        ))),
    }
}

/// Write a figure of stacked panels to `path` (.png or .svg), atomically.
pub fn write_figure(path: &Path, x_label: &str, panels: &[Panel]) -> Result<()> {
    ensure_font();
    let ext = extension(path);
    let (w, h) = (900u32, 330 * panels.len() as u32);
    let fail = |e: String| Error::format(path, format!("could not draw figure: {e}"));
    match ext.as_str() {
        "svg" => {
            let mut s = String::new();
            draw_panels(
                SVGBackend::with_string(&mut s, (w, h)).into_drawing_area(),
                x_label,
                panels,
            )
            .map_err(fail)?;
            write_bytes_atomic(path, s.as_bytes())
        }
        "png" => {
            let mut buf = vec![0u8; (w * h * 3) as usize];
            draw_panels(
                BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area(),
                x_label,
                panels,
            )
            .map_err(fail)?;
            let img = RgbImage::from_raw(w, h, buf).expect("buffer has w*h*3 bytes");
            crate::io::imageio::save_png(&img, path)
        }
        _ => check_figure_path(path),
    }
}

/// Render panels as text for the terminal: one glyph per series, with a legend.
pub fn text_figure(panels: &[Panel], width: usize, height: usize) -> String {
    const GLYPHS: [char; 8] = ['*', 'o', '+', 'x', '#', '@', '%', '&'];
    let mut out = String::new();
    for panel in panels {
        let (x0, x1, y0, y1) = finite_range(panel);
        let mut grid = vec![vec![' '; width]; height];
        for (i, s) in panel.series.iter().enumerate() {
            for (x, y) in s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
            {
                let c = (((x - x0) / (x1 - x0)) * (width - 1) as f64).round() as usize;
                let r = (((y1 - y) / (y1 - y0)) * (height - 1) as f64).round() as usize;
                grid[r.min(height - 1)][c.min(width - 1)] = GLYPHS[i % GLYPHS.len()];
            }
        }
        out.push_str(&format!("{} ({})\n", panel.title, panel.y_label));
        for (r, row) in grid.iter().enumerate() {
            let label = if r == 0 {
                format!("{y1:>9.3}")
            } else if r == height - 1 {
                format!("{y0:>9.3}")
            } else {
                " ".repeat(9)
            };
            out.push_str(&format!("{label} |{}\n", row.iter().collect::<String>()));
        }
        out.push_str(&format!("{} +{}\n", " ".repeat(9), "-".repeat(width)));
        out.push_str(&format!(
            "{}  {:<w2$}{:>w2$}\n",
            " ".repeat(9),
            format!("{x0:.0}"),
            format!("{x1:.0}"),
            w2 = width / 2
        ));
        let legend: Vec<String> = panel
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} {}", GLYPHS[i % GLYPHS.len()], s.name))
            .collect();
        out.push_str(&format!("{}  {}\n\n", " ".repeat(9), legend.join("   ")));
    }
    out
}

/// Lay image panels side by side, each upscaled to at least `min_side` pixels, with a text
/// label under each.
pub fn labelled_strip(panels: &[RgbImage], labels: &[String], min_side: u32) -> Result<RgbImage> {
    ensure_font();
    let tiles: Vec<RgbImage> = panels
        .iter()
        .map(|p| crate::io::imageio::upscale(p, min_side))
        .collect();
    let (tw, th) = tiles
        .first()
        .map(|t| (t.width(), t.height()))
        .ok_or_else(|| Error::invalid("no panels to draw"))?;
    let (pad, label_h) = (6u32, 24u32);
    let w = tiles.len() as u32 * (tw + pad) + pad;
    let h = th + 2 * pad + label_h;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let style = TextStyle::from((FAMILY, 16).into_font()).color(&BLACK);
        for (i, label) in labels.iter().enumerate() {
            let x = (pad + i as u32 * (tw + pad)) as i32;
            root.draw_text(label, &style, (x + 2, (pad + th + 4) as i32))
                .map_err(|e| Error::Runtime(format!("could not draw label: {e}")))?;
        }
        root.present()
            .map_err(|e| Error::Runtime(format!("could not draw labels: {e}")))?;
    }
    let mut img = RgbImage::from_raw(w, h, buf).expect("buffer has w*h*3 bytes");
    for (i, t) in tiles.iter().enumerate() {
        image::imageops::replace(
            &mut img,
            t,
            (pad + i as u32 * (tw + pad)) as i64,
            pad as i64,
        );
    }
    Ok(img)
}
