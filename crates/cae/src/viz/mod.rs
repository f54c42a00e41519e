//! Pictures a run produces: reconstruction grids and loss curves.

pub mod grid;
pub(crate) mod loss_plot;
