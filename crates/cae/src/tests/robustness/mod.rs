//! The download against misbehaving servers, and the fuzzed readers of untrusted files.

mod download;
mod fuzz;
