//! Loss curves: per-batch training loss plus per-epoch train and validation means, drawn once
//! for a PNG and once for an SVG string (for inlining into an HTML report).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use image::RgbImage;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// Width and height of the loss plot, in pixels.
pub(crate) const PLOT_SIZE: (u32, u32) = (1000, 600);

const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Title, y axis, and the per-batch, epoch-mean training and validation curves' names.
struct Labels {
    title: &'static str,
    y: &'static str,
    batch: &'static str,
    train: &'static str,
    val: &'static str,
}

const PLAIN_LABELS: Labels = Labels {
    title: "Training and validation loss",
    y: "MSE loss",
    batch: "train loss (per batch)",
    train: "train loss (epoch mean)",
    val: "validation loss (epoch mean)",
};

/// A variational run trains on the negative ELBO and validates with the MSE of the
/// reconstructions of the posterior means (what PSNR and the sweep summary use).
const VARIATIONAL_LABELS: Labels = Labels {
    title: "Training objective and validation MSE",
    y: "loss",
    batch: "train negative ELBO per value, nats (per batch)",
    train: "train negative ELBO per value (epoch mean)",
    val: "validation MSE of the mean reconstructions",
};

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(255, 127, 14);

/// Losses spanning more than this ratio (max / min) get a logarithmic y axis.
const LOG_SCALE_RATIO: f64 = 10.0;

/// Everything the loss plot shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LossHistory {
    /// `(position, loss)` per training batch; batch `i` (0-based) of epoch `e` (1-based) sits at
    /// `e - 1 + (i + 1) / batches_per_epoch`, so epoch `e` ends at `e`.
    pub batch_losses: Vec<(f64, f64)>,
    /// `(epoch, mean training loss)`, epochs 1-based.
    pub epoch_train: Vec<(usize, f64)>,
    /// `(epoch, mean validation loss)`, epochs 1-based.
    pub epoch_val: Vec<(usize, f64)>,
    /// A variational run's: the training loss is the negative ELBO (labelled so).
    #[serde(default)]
    pub variational: bool,
}

impl LossHistory {
    #[cfg(test)]
    /// Records the loss of batch `batch` (0-based) of `epoch` (1-based).
    pub(crate) fn record_batch(
        &mut self,
        epoch: usize,
        batch: usize,
        batches_per_epoch: usize,
        loss: f64,
    ) {
        let fraction = (batch + 1) as f64 / batches_per_epoch.max(1) as f64;
        let position = epoch.saturating_sub(1) as f64 + fraction;
        self.batch_losses.push((position, loss));
    }

    #[cfg(test)]
    /// Records the mean losses of `epoch` (1-based).
    pub(crate) fn record_epoch(&mut self, epoch: usize, train: f64, val: Option<f64>) {
        self.epoch_train.push((epoch, train));
        if let Some(val) = val {
            self.epoch_val.push((epoch, val));
        }
    }
}

/// Draws the loss plot as a [`PLOT_SIZE`] PNG at `path`, written atomically.
pub(crate) fn save_loss_plot(path: &Path, history: &LossHistory) -> Result<()> {
    let image = loss_plot_image(history)
        .with_context(|| format!("cannot draw the loss plot {}", path.display()))?;
    super::grid::save_png(path, &image)
}

/// Draws the loss plot into an RGB image of [`PLOT_SIZE`].
pub(crate) fn loss_plot_image(history: &LossHistory) -> Result<RgbImage> {
    let (width, height) = PLOT_SIZE;
    let mut buffer = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, PLOT_SIZE).into_drawing_area();
        draw_loss_chart(&root, history)?;
    }
    RgbImage::from_raw(width, height, buffer).context("plot buffer has the wrong size")
}

/// Draws the loss plot as a standalone `<svg>` document of [`PLOT_SIZE`].
pub(crate) fn loss_plot_svg(history: &LossHistory) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        draw_loss_chart(&root, history)?;
    }
    Ok(svg)
}

/// The finite points of each curve, in chart coordinates.
struct Curves {
    batch: Vec<(f64, f64)>,
    epoch_train: Vec<(f64, f64)>,
    epoch_val: Vec<(f64, f64)>,
}

impl Curves {
    fn new(history: &LossHistory) -> Self {
        let epochs = |points: &[(usize, f64)]| -> Vec<(f64, f64)> {
            finite(points.iter().map(|&(epoch, loss)| (epoch as f64, loss)))
        };
        Self {
            batch: finite(history.batch_losses.iter().copied()),
            epoch_train: epochs(&history.epoch_train),
            epoch_val: epochs(&history.epoch_val),
        }
    }

    fn points(&self) -> impl Iterator<Item = &(f64, f64)> {
        self.batch
            .iter()
            .chain(&self.epoch_train)
            .chain(&self.epoch_val)
    }
}

fn finite(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    points
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

enum YAxis {
    Linear(Range<f64>),
    Log(Range<f64>),
}

fn draw_loss_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    history: &LossHistory,
) -> Result<()> {
    register_font()?;
    root.fill(&WHITE).map_err(drawing_error)?;
    let curves = Curves::new(history);
    let x_range = x_range(&curves);
    let y_axis = y_axis(&curves);
    let legend = legend_position(&curves, &x_range, &y_axis);
    let labels = if history.variational {
        &VARIATIONAL_LABELS
    } else {
        &PLAIN_LABELS
    };
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(labels.title, (FONT, 28))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(85);
    match y_axis {
        YAxis::Linear(y_range) => {
            let chart = builder
                .build_cartesian_2d(x_range, y_range)
                .map_err(drawing_error)?;
            draw_curves(chart, &curves, legend, labels)?;
        }
        YAxis::Log(y_range) => {
            let chart = builder
                .build_cartesian_2d(x_range, y_range.log_scale())
                .map_err(drawing_error)?;
            draw_curves(chart, &curves, legend, labels)?;
        }
    }
    root.present().map_err(drawing_error)
}

/// Draws axes, curves and legend; generic over the y coordinate so that linear and log axes
/// share it.
fn draw_curves<'a, DB, Y>(
    mut chart: ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    curves: &Curves,
    legend: SeriesLabelPosition,
    labels: &Labels,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(labels.y)
        .x_label_formatter(&|x| format_epoch(*x))
        .y_label_formatter(&|y| format_loss(*y))
        .axis_desc_style((FONT, 20))
        .label_style((FONT, 16))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(drawing_error)?;

    let batch_style = TRAIN_COLOR.mix(0.35).stroke_width(1);
    draw_line(&mut chart, &curves.batch, batch_style, 0, labels.batch)?;
    let train_style = TRAIN_COLOR.stroke_width(3).filled();
    draw_line(
        &mut chart,
        &curves.epoch_train,
        train_style,
        5,
        labels.train,
    )?;
    let val_style = VAL_COLOR.stroke_width(3).filled();
    draw_line(&mut chart, &curves.epoch_val, val_style, 5, labels.val)?;

    chart
        .configure_series_labels()
        .position(legend)
        .margin(15)
        .label_font((FONT, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .draw()
        .map_err(drawing_error)
}

/// Draws one labelled line, with point markers of radius `marker_size` unless it is 0.
/// Empty curves are skipped so that they get no legend entry.
fn draw_line<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    points: &[(f64, f64)],
    style: ShapeStyle,
    marker_size: u32,
    label: &str,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64>,
{
    if points.is_empty() {
        return Ok(());
    }
    // A single point makes no line, so it needs a marker to be seen at all.
    let point_size = if points.len() == 1 {
        marker_size.max(3)
    } else {
        marker_size
    };
    let series = LineSeries::new(points.iter().copied(), style).point_size(point_size);
    chart
        .draw_series(series)
        .map_err(drawing_error)?
        .label(label)
        .legend(move |(x, y)| {
            let line = PathElement::new(vec![(x, y), (x + 24, y)], style);
            let marker_style = if marker_size > 0 {
                style
            } else {
                TRANSPARENT.into()
            };
            let marker = Circle::new((x + 12, y), marker_size, marker_style);
            EmptyElement::at((0, 0)) + line + marker
        });
    Ok(())
}

/// From 0 (or the smallest position, if negative) to the last position, with a little room on
/// the right so that the last epoch's marker is not cut in half.
fn x_range(curves: &Curves) -> Range<f64> {
    let (min, max) = bounds(curves.points().map(|&(x, _)| x)).unwrap_or((0.0, 1.0));
    let start = min.min(0.0);
    let end = if max > start { max } else { start + 1.0 };
    start..end + (end - start) * 0.02
}

fn y_axis(curves: &Curves) -> YAxis {
    let Some((min, max)) = bounds(curves.points().map(|&(_, y)| y)) else {
        return YAxis::Linear(0.0..1.0);
    };
    if min > 0.0 && max / min > LOG_SCALE_RATIO {
        let margin = (max / min).powf(0.05);
        return YAxis::Log(min / margin..max * margin);
    }
    let span = max - min;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        (max.abs() * 0.1).max(1e-3)
    };
    // Losses are non-negative: do not pad below zero unless the data itself is negative.
    let start = if min >= 0.0 {
        (min - pad).max(0.0)
    } else {
        min - pad
    };
    YAxis::Linear(start..max + pad)
}

/// Where the legend covers the fewest points, preferring the top right (losses fall).
fn legend_position(curves: &Curves, x_range: &Range<f64>, y_axis: &YAxis) -> SeriesLabelPosition {
    // Share of the plotting area the legend box takes, with some room to spare.
    const WIDTH: f64 = 0.4;
    const HEIGHT: f64 = 0.3;
    let fraction =
        |value: f64, range: &Range<f64>| (value - range.start) / (range.end - range.start);
    let to_unit_square = |&(x, y): &(f64, f64)| {
        let y = match y_axis {
            YAxis::Linear(range) => fraction(y, range),
            YAxis::Log(range) => fraction(y.ln(), &(range.start.ln()..range.end.ln())),
        };
        (fraction(x, x_range), y)
    };
    // (position, left edge, bottom edge) in the unit square, y pointing up.
    let candidates = [
        (SeriesLabelPosition::UpperRight, 1.0 - WIDTH, 1.0 - HEIGHT),
        (
            SeriesLabelPosition::UpperMiddle,
            0.5 - WIDTH / 2.0,
            1.0 - HEIGHT,
        ),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.0),
        (SeriesLabelPosition::LowerRight, 1.0 - WIDTH, 0.0),
        (SeriesLabelPosition::UpperLeft, 0.0, 1.0 - HEIGHT),
        (SeriesLabelPosition::LowerMiddle, 0.5 - WIDTH / 2.0, 0.0),
    ];
    let covered = |left: f64, bottom: f64| {
        curves
            .points()
            .map(to_unit_square)
            .filter(|&(x, y)| {
                (left..=left + WIDTH).contains(&x) && (bottom..=bottom + HEIGHT).contains(&y)
            })
            .count()
    };
    candidates
        .into_iter()
        .min_by_key(|(_, left, bottom)| covered(*left, *bottom))
        .map(|(position, _, _)| position)
        .unwrap_or(SeriesLabelPosition::UpperRight)
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |bounds, v| match bounds {
        None => Some((v, v)),
        Some((min, max)) => Some((min.min(v), max.max(v))),
    })
}

/// Epoch positions without float noise: "1", "2.5", not "2.5000000000000004".
fn format_epoch(x: f64) -> String {
    let rounded = (x * 1e6).round() / 1e6;
    format!("{}", rounded + 0.0)
}

/// Three significant digits, trailing zeros trimmed; scientific notation for tiny or huge values.
fn format_loss(y: f64) -> String {
    if y == 0.0 {
        return "0".to_owned();
    }
    let magnitude = y.abs().log10().floor() as i32;
    if !(-3..=4).contains(&magnitude) {
        return format!("{y:.1e}");
    }
    let decimals = (2 - magnitude).max(0) as usize;
    let text = format!("{y:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Registers the bundled font once per process so that text renders without system fonts.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "the bundled font assets/DejaVuSans.ttf is not a valid font"
        ))
    }
}

fn drawing_error<E>(error: DrawingAreaErrorKind<E>) -> anyhow::Error
where
    E: std::error::Error + Send + Sync,
{
    anyhow!("plotting failed: {error}")
}
