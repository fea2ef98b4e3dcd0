//! The report's plots (SVG and PNG, drawn with plotters): horizontal grouped bars, one row per
//! shape and one bar per implementation, with the measured ceilings as vertical lines. Text uses
//! the DejaVu Sans font embedded in the binary, so plots render the same on any machine.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// DejaVu Sans (Bitstream Vera license, assets/DejaVuSans-LICENSE.txt).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a known-good file compiled into the binary; a failure here is a build bug.
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("embedded DejaVuSans.ttf failed to load"));
    });
}

/// One bar chart: `categories` top to bottom, a bar per (category, series) with a value.
#[derive(Debug)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub categories: Vec<String>,
    pub series: Vec<(String, Vec<Option<f64>>)>,
    /// Vertical reference lines (a ceiling, a peak).
    pub lines: Vec<(String, f64)>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];
const LINE_COLORS: [RGBColor; 3] = [RGBColor(214, 39, 40), RGBColor(23, 190, 207), BLACK];

/// Writes `<stem>.svg` and `<stem>.png` under `dir`.
pub fn draw(chart: &BarChart, dir: &Path, stem: &str) -> Result<(), String> {
    register_font();
    let rows: usize = chart.categories.len();
    let bars = chart.series.len().max(1);
    let height = (120 + rows * (10 + 9 * bars)).max(260) as u32;
    let size = (1100, height);
    let svg = dir.join(format!("{stem}.svg"));
    render(SVGBackend::new(&svg, size).into_drawing_area(), chart)
        .map_err(|e| format!("drawing {}: {e}", svg.display()))?;
    let png = dir.join(format!("{stem}.png"));
    let area = BitMapBackend::new(&png, size).into_drawing_area();
    render(area.clone(), chart).map_err(|e| format!("drawing {}: {e}", png.display()))?;
    area.present()
        .map_err(|e| format!("writing {}: {e:?}", png.display()))
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &BarChart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let label_width = 380;
    let (labels, plot) = root.split_horizontally(label_width);
    let rows = chart.categories.len();
    let max_value = chart
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .chain(chart.lines.iter().map(|(_, v)| v))
        .fold(0.0f64, |m, &v| m.max(v));
    let x_max = if max_value > 0.0 {
        max_value * 1.12
    } else {
        1.0
    };
    let mut ctx = ChartBuilder::on(&plot)
        .caption(&chart.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(0)
        .build_cartesian_2d(0f64..x_max, 0f64..rows.max(1) as f64)
        .map_err(err)?;
    ctx.configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(&chart.x_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .draw()
        .map_err(err)?;

    // Row r (top to bottom) spans y in [rows - 1 - r, rows - r); bars share 80% of it.
    let bar_h = 0.8 / chart.series.len().max(1) as f64;
    for (s, (name, values)) in chart.series.iter().enumerate() {
        let color = PALETTE[s % PALETTE.len()];
        ctx.draw_series(values.iter().enumerate().filter_map(|(r, v)| {
            let v = (*v)?;
            let top = (rows - r) as f64 - 0.1 - s as f64 * bar_h;
            Some(Rectangle::new(
                [(0.0, top - bar_h), (v, top)],
                color.filled(),
            ))
        }))
        .map_err(err)?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    for (i, (name, v)) in chart.lines.iter().enumerate() {
        let color = LINE_COLORS[i % LINE_COLORS.len()];
        let style = ShapeStyle::from(color).stroke_width(2);
        ctx.draw_series(LineSeries::new([(*v, 0.0), (*v, rows as f64)], style))
            .map_err(err)?
            .label(format!("{name}: {v:.0}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], style));
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(err)?;

    // Category names in the left margin, right-aligned against the plot, centred on their row.
    let style = TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (r, name) in chart.categories.iter().enumerate() {
        let (_, y) = ctx.backend_coord(&(0.0, (rows - r) as f64 - 0.5));
        labels
            .draw(&Text::new(
                name.clone(),
                (label_width - 6, y),
                style.clone(),
            ))
            .map_err(err)?;
    }
    Ok(())
}
