//! The `cae` command line: a thin layer of flags over the library.

mod cli;

// glibc malloc costs about a third of a Flex training step; mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same index in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Training frees and reallocates the same large buffers every step; by default mimalloc
    // hands them back to the OS after 10 ms and the kernel then zeroes fresh pages again
    // (about a tenth of a step in `cae bench`). Keeping them costs no more than the peak.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    restore_default_sigpipe();
    cli::interrupt::install();
    if let Err(error) = cli::run() {
        eprintln!("error: {error:#}");
        if let Some(interrupted) = error.downcast_ref::<cae::training::Interrupted>() {
            eprintln!(
                "resume with: {}",
                cli::interrupt::resume_command(interrupted)
            );
            std::process::exit(cli::interrupt::EXIT_INTERRUPTED);
        }
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so `cae ... | head` would panic on the closed pipe; a command-line
/// tool should end quietly instead, as the default signal action does.
fn restore_default_sigpipe() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    unsafe { signal(SIGPIPE, SIG_DFL) };
}
