//! Files written whole or not at all.
//!
//! Every output saln writes (the report, pretrained weights, plots, export files) goes
//! through a temporary file in the destination's folder and a rename: a crash or a kill
//! leaves either the old file or the new one under the real name, never half of one. The
//! temporary name starts with `.` and carries `.partial` and the process id, so no glob for
//! the real files (`*.json`, `*.parquet`) matches it and two processes never share one.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically (see the module doc).
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("out/report.json");
/// saln::io::write_atomic(&path, b"{}").unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"{}");
/// // Only the file itself is left: no temporary beside it.
/// assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, "", |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Creates `path`'s folder, lets `write` fill a temporary file beside `path` (named
/// `.NAME.PID.partial{suffix}`: `suffix` keeps an extension a writer picks its format by,
/// such as `.png`), then renames it to `path`. On any error the temporary file is removed and
/// `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    suffix: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = partial_name(path, suffix);
    let result =
        write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The temporary name [`write_atomic_with`] uses for `path`.
fn partial_name(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.partial{suffix}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_nothing_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        write_atomic(&path, b"old").unwrap();
        let e = write_atomic_with(&path, ".x", |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::data(tmp, "writer failed"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("writer failed"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("w.bin")]);
    }
}
