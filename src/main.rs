//! The `cae` command line: a thin layer of flags over the library.

mod cli;

// glibc malloc costs about a third of a Flex training step; mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(error) = cli::run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
