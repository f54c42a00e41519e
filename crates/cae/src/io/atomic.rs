//! File writes that never leave half a file: a reader (or a crash) sees either the old file or
//! the new one. Only regular files are replaced that way; what is not a regular file is written
//! as it is (see [`write_with`]).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where [`write_with`] puts what it writes.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// `-`: standard output.
    Stdout,
    /// A device, FIFO or socket (`/dev/stdout` in a pipe, `/dev/null`): written directly, as a
    /// stream; renaming a temporary file over it would replace the device node.
    Stream,
    /// A regular file (or none yet) at this path, replaced atomically; a symbolic link's target
    /// is replaced, and the link stays.
    Replace(PathBuf),
}

fn destination(path: &Path) -> Result<Destination> {
    if path.as_os_str() == "-" {
        return Ok(Destination::Stdout);
    }
    let Ok(entry) = fs::symlink_metadata(path) else {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            bail!(
                "cannot write {}: the folder {} does not exist",
                path.display(),
                parent.display()
            );
        }
        return Ok(Destination::Replace(path.to_path_buf()));
    };
    let is_link = entry.file_type().is_symlink();
    let target = if is_link {
        match fs::metadata(path) {
            Ok(target) => target,
            Err(_) => bail!(
                "{} is a symbolic link to {}, which does not exist",
                path.display(),
                fs::read_link(path).map_or_else(|_| "?".into(), |t| t.display().to_string())
            ),
        }
    } else {
        entry
    };
    if target.is_dir() {
        bail!("{} is a folder, not a file", path.display());
    }
    if !target.is_file() {
        return Ok(Destination::Stream);
    }
    if is_link {
        let resolved = fs::canonicalize(path)
            .with_context(|| format!("cannot resolve the link {}", path.display()))?;
        return Ok(Destination::Replace(resolved));
    }
    Ok(Destination::Replace(path.to_path_buf()))
}

/// Writes `path` by calling `fill` on a temporary file beside it, fsyncing it and renaming it
/// over `path`. On any error the temporary file is removed and `path` is left untouched.
///
/// `-` writes to standard output; a device or FIFO (`/dev/stdout`, `/dev/null`) is written
/// directly; a symbolic link to a regular file has its target replaced (the link stays); a
/// folder or a dangling link is refused.
pub fn write_with<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    match destination(path)? {
        Destination::Stdout => {
            stream(std::io::stdout().lock(), fill).context("cannot write to standard output")
        }
        Destination::Stream => {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot open {} for writing", path.display()))?;
            stream(file, fill).with_context(|| format!("writing {} failed", path.display()))
        }
        Destination::Replace(target) => replace(&target, fill),
    }
}

fn stream<W: Write, F>(writer: W, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    let mut writer = BufWriter::new(writer);
    fill(&mut writer)?;
    writer.flush()?;
    Ok(())
}

fn replace<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut writer = BufWriter::new(file);
        fill(&mut writer)?;
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot flush {} to disk", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        sync_parent(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| {
        format!(
            "writing {} failed; any previous version is intact",
            path.display()
        )
    })
}

/// Creates the folder `target` by calling `fill` on an empty temporary folder beside it
/// (`.<name>.partial-<pid>`) and renaming that to `target` once `fill` succeeded; on any error
/// the temporary folder is removed and `target` is not created.
pub(crate) fn create_dir_with<F>(target: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let staging = staging_dir(target);
    let _ = fs::remove_dir_all(&staging);
    let result = (|| -> Result<()> {
        fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
        fill(&staging)?;
        fs::rename(&staging, target)
            .with_context(|| format!("cannot move {} to {}", staging.display(), target.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// The temporary folder of [`create_dir_with`] for `target`.
pub(crate) fn staging_dir(target: &Path) -> PathBuf {
    hidden_beside(target, STAGING_MARK)
}

/// Marks the folders of [`create_dir_with`]: `.<name>.partial-<pid>`.
pub(crate) const STAGING_MARK: &str = ".partial-";

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| {
        w.write_all(bytes)?;
        Ok(())
    })
}

fn temp_path(path: &Path) -> PathBuf {
    hidden_beside(path, TEMP_MARK)
}

/// `.<name><mark><pid>` beside `path`: this process's temporary stand-in for it.
fn hidden_beside(path: &Path, mark: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{mark}{}", std::process::id()))
}

/// Marks the files of [`write_with`]: `.<name>.tmp-<pid>`.
pub(crate) const TEMP_MARK: &str = ".tmp-";

/// Whether `name` is a temporary file of [`write_with`]: `.<name>.tmp-<pid>`.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(TEMP_MARK)
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the temporary files that writes cut short by a kill or a crash left in `dir`, and
/// returns their names. Only for a folder this process has locked (see [`crate::run_folder::RunLock`]): the
/// temporary file of another live writer would go too.
pub(crate) fn remove_stale_temps(dir: &Path) -> Result<Vec<String>> {
    let context = || format!("cannot list {}", dir.display());
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).with_context(context)? {
        let entry = entry.with_context(context)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temp_name(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Makes the rename itself durable; best effort, since not every filesystem allows it.
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
}
