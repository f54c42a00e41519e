//! Bad inputs, interrupted and diverged runs, full disks, and the fuzzed readers.

mod download;
mod fuzz;
mod inputs;
mod train;
mod weights;
