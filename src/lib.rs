//! cae: a convolutional autoencoder toolkit on Burn, faithful to the PyTorch tutorial.
//!
//! The modules follow the Burn book's layout: [`model`] holds the network, [`data`] the
//! datasets, [`train`] the training loop, [`eval`] inference quality, [`weights`] the files.

pub mod apps;
pub mod atomic;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod eval;
pub mod history;
pub mod imageio;
pub mod inference;
pub mod init;
pub mod kernels;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod settings;
pub mod sweep;
pub mod torch_pt;
pub mod train;
pub mod viz;
pub mod weights;
