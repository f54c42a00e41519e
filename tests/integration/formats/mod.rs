//! File formats and figures: `.pt`, ONNX, sweep plans, pictures and metrics.

mod metrics;
mod onnx;
mod sweep_plan;
mod torch_pt;
mod viz;
