//! File formats and figures: `.pt`, sweep plans, pictures and metrics.

mod metrics;
mod sweep_plan;
mod torch_pt;
mod viz;
