//! cae's integration tests, in one binary (each test binary links Burn, which took a large
//! share of CI time): one module per concern, and the shared helpers that run the binary and
//! find the fixtures. The library's readers, formats and PyTorch fidelity are tested inside the
//! `cae` crate (`crates/cae/src/tests`), where they reach its internals without making them
//! public.

mod commands;
mod common;
mod fixtures;
mod formats;
mod robustness;
