//! The figures that compare the runs of a sweep: everyone's loss curves on one plot, and
//! reconstruction rows stacked under a label column.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::run_folder::RunFolder;
use crate::viz::grid::{RECON_PADDING, RECON_SCALE, make_grid, save_png};
use crate::viz::loss_plot::PLOT_SIZE;

/// `(channels, height, width)` of the images.
pub(crate) type Shape = (usize, usize, usize);

const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const LABEL_FONT_SIZE: f64 = 24.0;
/// Room left and right of the row labels, in pixels.
const LABEL_MARGIN: u32 = 16;

/// Matplotlib's tab10, so that runs look as they would in the tutorial's notebook.
const PALETTE: [RGBColor; 10] = [
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
];

/// `losses.png`: per-epoch training (solid) and validation (dashed) loss of every run, one
/// colour per run.
pub(crate) fn save_losses_plot(path: &Path, labels: &[String], runs: &[RunFolder]) -> Result<()> {
    let image = losses_plot_image(labels, runs)
        .with_context(|| format!("cannot draw {}", path.display()))?;
    save_png(path, &image)
}

type Points = Vec<(f64, f64)>;

fn losses_plot_image(labels: &[String], runs: &[RunFolder]) -> Result<RgbImage> {
    register_font()?;
    let curves: Vec<(Points, Points)> = runs
        .iter()
        .map(|run| {
            let epochs = &run.history.epochs;
            let train = epochs
                .iter()
                .map(|r| (r.epoch as f64, r.train_loss))
                .collect();
            let val = epochs
                .iter()
                .map(|r| (r.epoch as f64, r.val_loss))
                .collect();
            (train, val)
        })
        .collect();
    let all = || {
        curves
            .iter()
            .flat_map(|(t, v)| t.iter().chain(v))
            .filter(|p| p.1.is_finite())
    };
    let last_epoch = all().map(|p| p.0).fold(1.0, f64::max);
    let (low, high) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let y_range = y_range_below_legend(low, high, 2 * runs.len());

    let (width, height) = PLOT_SIZE;
    let mut buffer = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Training and validation loss by run", (FONT, 28))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(85)
            .build_cartesian_2d(0.7..last_epoch + 0.3, y_range)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("MSE loss (epoch mean)")
            .x_label_formatter(&|x| whole_number(*x))
            .y_label_formatter(&|y| format!("{y:.4}"))
            .axis_desc_style((FONT, 20))
            .label_style((FONT, 16))
            .light_line_style(BLACK.mix(0.04))
            .draw()
            .map_err(plot_error)?;
        for (i, (label, (train, val))) in labels.iter().zip(&curves).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let solid = color.stroke_width(3);
            chart
                .draw_series(LineSeries::new(train.clone(), solid.filled()).point_size(5))
                .map_err(plot_error)?
                .label(format!("{label} train"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], solid));
            chart
                .draw_series(DashedLineSeries::new(val.clone(), 10, 6, solid))
                .map_err(plot_error)?
                .label(format!("{label} validation"))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (9, 0)], solid)
                        + PathElement::new(vec![(15, 0), (24, 0)], solid)
                });
            chart
                .draw_series(
                    val.iter()
                        .map(|&p| TriangleMarker::new(p, 7, color.filled())),
                )
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .margin(15)
            .label_font((FONT, 18))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    RgbImage::from_raw(width, height, buffer).context("plot buffer has the wrong size")
}

/// The y range, with room at the top for a legend of `entries` lines so that it never hides a
/// curve.
fn y_range_below_legend(low: f64, high: f64, entries: usize) -> std::ops::Range<f64> {
    if !(low.is_finite() && high.is_finite()) {
        return 0.0..1.0;
    }
    let pad = if high > low {
        (high - low) * 0.05
    } else {
        1e-3
    };
    let (low, high) = ((low - pad).max(0.0), high + pad);
    // Share of the ~450-pixel plotting area that the legend box takes (24 px a line, margins).
    let legend_share = ((entries as f64 * 24.0 + 40.0) / 450.0).min(0.6);
    low..low + (high - low) / (1.0 - legend_share)
}

/// Axis labels on whole epochs only.
fn whole_number(x: f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round())
    } else {
        String::new()
    }
}

/// `recon_compare.png`: the showcase originals, then one row of reconstructions per run, in
/// one grid (one global min-max normalisation, as `make_grid`), labelled on the left.
pub(crate) fn save_recon_compare(
    path: &Path,
    originals: &[f32],
    labels: &[String],
    reconstructions: &[Vec<f32>],
    (channels, height, width): Shape,
) -> Result<()> {
    let image_len = channels * height * width;
    let split = |pixels: &[f32]| -> Vec<Vec<f32>> {
        pixels.chunks(image_len).map(<[f32]>::to_vec).collect()
    };
    let mut rows = vec![split(originals)];
    rows.extend(reconstructions.iter().map(|r| split(r)));
    ensure!(
        rows.iter()
            .all(|r| r.len() == rows[0].len() && !r.is_empty()),
        "cannot draw {}: every run needs a reconstruction of each of the {} showcase images",
        path.display(),
        rows[0].len()
    );
    let grid = make_grid(&rows, channels, height, width, RECON_PADDING, RECON_SCALE);
    let mut row_labels = vec!["original".to_owned()];
    row_labels.extend(labels.iter().cloned());
    save_png(path, &with_row_labels(&grid, &row_labels, height)?)
}

/// `epochs_compare.png`: the originals, then for every run its reconstruction row after epoch 1
/// and after the last epoch, cut out of the run's own `recon_epoch_NN.png` grids.
pub(crate) fn save_epochs_compare(
    path: &Path,
    labels: &[String],
    runs: &[RunFolder],
    (_, height, _): Shape,
) -> Result<()> {
    let mut bands = Vec::new();
    let mut row_labels = vec!["original".to_owned()];
    for (label, run) in labels.iter().zip(runs) {
        let (first, last) = match (run.recon_grids.first(), run.recon_grids.last()) {
            (Some(first), Some(last)) => (first, last),
            _ => return Err(anyhow!("{} has no recon_epoch_NN.png", run.dir.display())),
        };
        let first_grid = open_rgb(&first.1)?;
        if bands.is_empty() {
            bands.push(grid_row(&first_grid, 0, height, &first.1)?);
        }
        for (epoch, grid, grid_path) in [
            (first.0, first_grid, &first.1),
            (last.0, open_rgb(&last.1)?, &last.1),
        ] {
            bands.push(grid_row(&grid, 1, height, grid_path)?);
            row_labels.push(format!("{label}, epoch {epoch}"));
        }
    }
    let grid = stack_bands(&bands)?;
    save_png(path, &with_row_labels(&grid, &row_labels, height)?)
}

fn open_rgb(path: &Path) -> Result<RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .to_rgb8())
}

/// Height of one grid row with the padding above it, in enlarged pixels.
fn band_height(image_height: usize) -> u32 {
    (image_height + RECON_PADDING) as u32 * RECON_SCALE
}

/// Row `row` of a two-row reconstruction grid (as `save_recon_grid` draws it), with the padding
/// above it.
fn grid_row(grid: &RgbImage, row: u32, image_height: usize, path: &Path) -> Result<RgbImage> {
    let band = band_height(image_height);
    let expected = 2 * band + RECON_PADDING as u32 * RECON_SCALE;
    ensure!(
        grid.height() == expected,
        "{} is {} pixels high, not the {expected} of a two-row grid of {image_height}-pixel images",
        path.display(),
        grid.height()
    );
    Ok(image::imageops::crop_imm(grid, 0, row * band, grid.width(), band).to_image())
}

/// Stacks grid rows and closes the grid with the bottom padding.
fn stack_bands(bands: &[RgbImage]) -> Result<RgbImage> {
    let width = bands
        .iter()
        .map(RgbImage::width)
        .max()
        .context("no rows to stack")?;
    let padding = RECON_PADDING as u32 * RECON_SCALE;
    let height = bands.iter().map(RgbImage::height).sum::<u32>() + padding;
    let mut out = RgbImage::new(width, height);
    let mut top = 0;
    for band in bands {
        image::imageops::replace(&mut out, band, 0, i64::from(top));
        top += band.height();
    }
    Ok(out)
}

/// `grid` with a white column on its left holding one label per row, centred on the row.
fn with_row_labels(grid: &RgbImage, labels: &[String], image_height: usize) -> Result<RgbImage> {
    register_font()?;
    let font = (FONT, LABEL_FONT_SIZE).into_font();
    let text_width = labels
        .iter()
        .map(|l| font.box_size(l).map(|(w, _)| w))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("cannot measure the row labels: {e:?}"))?
        .into_iter()
        .max()
        .unwrap_or(0);
    let left = text_width + 2 * LABEL_MARGIN;
    let (width, height) = (left + grid.width(), grid.height());
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    image::imageops::replace(&mut canvas, grid, i64::from(left), 0);
    {
        let root = BitMapBackend::with_buffer(&mut canvas, (width, height)).into_drawing_area();
        let style = TextStyle::from(font)
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        let padding = (RECON_PADDING as u32 * RECON_SCALE) as i32;
        let band = band_height(image_height) as i32;
        for (row, label) in labels.iter().enumerate() {
            let centre = padding + row as i32 * band + band / 2 - padding / 2;
            let x = (left - LABEL_MARGIN) as i32;
            root.draw_text(label, &style, (x, centre))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(canvas)
}

/// Registers the bundled font once per process, so that text renders without system fonts.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    ok.then_some(())
        .context("the bundled font assets/DejaVuSans.ttf is not a valid font")
}

fn plot_error<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("plotting failed: {error}")
}
