//! Tests of the library's internals through their own functions: the dataset readers and the
//! download, the fuzzed readers of untrusted files, the file formats and figures, TensorBoard
//! event files, and the model, gradients and Adam steps against PyTorch. The commands are
//! tested end to end in the workspace's `tests/`; the fixture helpers are the same file in both.

mod data;
mod fidelity;
#[path = "../../../../tests/integration/fixtures.rs"]
pub(crate) mod fixtures;
mod formats;
mod robustness;
mod tensorboard;
