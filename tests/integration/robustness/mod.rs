//! Bad inputs, interrupted and diverged runs and full disks (the fuzzed readers are the `cae`
//! crate's tests).

mod inputs;
mod train;
mod weights;
