//! Where the harness keeps its files, and small filesystem helpers.
//!
//! Everything lives under `<workspace>/target/conformance/` (independent of `CARGO_TARGET_DIR`,
//! so the outer `cargo test` and the inner example builds never share a build directory):
//!
//! ```text
//! target/conformance/
//!   downloads/temporalio-sdk-1.1.1.crate     the verified package, as downloaded
//!   upstream/temporalio-sdk-1.1.1/           the unpacked package (examples/ inside)
//!   examples-project/                        generated Cargo package, our crates
//!   examples-project-upstream/               generated Cargo package, Temporal's real crates
//!   build/  build-upstream/                  CARGO_TARGET_DIR of those two builds
//!   logs/<test>-<stamp>/                     stdout/stderr of every spawned worker and starter
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The root of this Cargo workspace (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// `<workspace>/target/conformance`: the harness's working directory.
pub fn conformance_dir() -> PathBuf {
    workspace_root().join("target").join("conformance")
}

/// `<workspace>/target/conformance/logs`: where process output is captured.
pub fn logs_dir() -> PathBuf {
    conformance_dir().join("logs")
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))
}

/// Writes `contents` to `path` unless the file already holds exactly that (so that Cargo sees
/// no change and does not rebuild). Returns whether the file was written.
pub(crate) fn write_if_changed(path: &Path, contents: &str) -> Result<bool> {
    if let Ok(existing) = std::fs::read_to_string(path)
        && existing == contents
    {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    std::fs::write(path, contents).map_err(|e| Error::io("writing file", path, e))?;
    Ok(true)
}

/// An exclusive advisory lock on a file under `target/conformance/`, held until dropped.
///
/// Serializes harness steps (download, project generation) across concurrently running test
/// binaries; threads within one binary are serialized by the callers' own mutexes.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
}

impl FileLock {
    /// Blocks until the lock named `name` (a file in `target/conformance/`) is held.
    pub(crate) fn acquire(name: &str) -> Result<Self> {
        let dir = conformance_dir();
        create_dir_all(&dir)?;
        let path = dir.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening lock file", &path, e))?;
        file.lock().map_err(|e| Error::io("locking", &path, e))?;
        Ok(Self { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock as well; unlocking explicitly just makes it prompt.
        let _ = self.file.unlock();
    }
}

/// Reduces `label` to `[a-z0-9_]` (other characters become `_`), for database and directory
/// names.
pub(crate) fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_only_safe_characters() {
        assert_eq!(sanitize("Saga fail-trip/1"), "saga_fail_trip_1");
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("conformance-tests").is_dir());
    }
}
