//! cae's integration tests, in one binary (each test binary links Burn, which took a large
//! share of CI time): one module per concern, and the shared helpers that run the binary and
//! find the fixtures.

mod commands;
mod common;
mod data;
mod fidelity;
mod formats;
mod robustness;
