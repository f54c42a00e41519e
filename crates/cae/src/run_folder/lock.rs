//! One process at a time per run folder: `RUN_DIR/.lock`, held with an advisory lock (flock)
//! for as long as a run writes there. The file records the holder's PID for the message that a
//! second process gets.
//!
//! The operating system drops the lock when its holder exits, however it exits (SIGKILL
//! included), so a stale `.lock` left by a killed run never blocks the next one. The file is
//! kept rather than deleted on release: deleting it would let two processes lock two different
//! files of the same name.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The lock file's name inside a run folder.
pub(crate) const LOCK_FILE: &str = ".lock";

/// Exclusive use of a run folder; released when dropped or when the process ends.
#[derive(Debug)]
pub(crate) struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `run_dir` (which must exist), or fails naming the folder and, when it is known,
    /// the PID of the process that holds it.
    pub(crate) fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "the run folder {} is in use by another cae process{}; wait for it to finish \
                 or choose another --out",
                run_dir.display(),
                holder(&mut file).map_or(String::new(), |pid| format!(" (PID {pid})"))
            ),
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        record_pid(&mut file).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

fn record_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()
}

/// The PID the holder wrote, if it has written it yet.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{LOCK_FILE, RunLock};

    #[test]
    fn a_lock_is_exclusive_and_released_when_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(tmp.path()).unwrap();
        let pid = std::process::id().to_string();
        let recorded = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert_eq!(recorded.trim(), pid);
        let error = format!("{:#}", RunLock::acquire(tmp.path()).unwrap_err());
        assert!(error.contains(&format!("(PID {pid})")), "{error}");
        drop(lock);
        RunLock::acquire(tmp.path()).unwrap();
    }
}
