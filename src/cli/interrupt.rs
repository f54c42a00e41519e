//! Ctrl-C: the first stops a training run at the end of the batch it is in (the checkpoint of
//! the last finished epoch is kept, and the error says how to resume); a second stops at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use cae::training::Interrupted;

/// The conventional exit status of a program stopped by SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: i32 = 130;

static REQUESTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the SIGINT handlers: the first Ctrl-C sets the flag [`requested`] reads, a second
/// exits with [`EXIT_INTERRUPTED`] (signal-hook's conditional shutdown, registered first, sees
/// the flag the earlier signal set).
pub fn install() {
    let flag = REQUESTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    let sigint = signal_hook::consts::SIGINT;
    // Failing to install leaves Ctrl-C's default action (stop at once), which is safe.
    let _ =
        signal_hook::flag::register_conditional_shutdown(sigint, EXIT_INTERRUPTED, flag.clone());
    let _ = signal_hook::flag::register(sigint, flag.clone());
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    REQUESTED
        .get()
        .is_some_and(|flag| flag.load(Ordering::Relaxed))
}

/// The command that continues an interrupted run: this one, with `--resume` (for `train` and
/// `sweep`, which take it) and the `--out` folder it wrote to when it picked one itself.
pub fn resume_command(interrupted: &Interrupted) -> String {
    let args: Vec<String> = std::env::args().collect();
    let command = args.get(1).map(String::as_str);
    let mut words: Vec<String> = args.clone();
    if let Some(first) = words.first_mut() {
        *first = "cae".to_string();
    }
    let out = match command {
        // A sweep's runs lie in its folder.
        Some("sweep") => interrupted.run_dir.parent().unwrap_or(Path::new(".")),
        _ => interrupted.run_dir.as_path(),
    };
    if !args.iter().any(|a| a == "--out" || a.starts_with("--out=")) {
        words.extend(["--out".to_string(), out.display().to_string()]);
    }
    if matches!(command, Some("train" | "sweep")) && !args.iter().any(|a| a == "--resume") {
        words.push("--resume".to_string());
    }
    words
        .iter()
        .map(|word| shell_quoted(word))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as a POSIX shell reads it back.
fn shell_quoted(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
