//! Pictures a run produces: reconstruction grids and loss curves.

pub mod grid;
pub mod loss_plot;
