//! Every `cae` command end to end, on real images.

mod apps;
mod bench;
mod config_file;
mod examples;
mod init;
mod report_browser;
mod sweep;
mod train;
mod use_models;
mod variational;
