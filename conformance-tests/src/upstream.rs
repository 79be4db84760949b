//! Temporal's example programs, fetched at test time from crates.io and never copied into this
//! repository.
//!
//! The examples ship inside the `temporalio-sdk` 1.1.1 package (`examples/`, with `[[example]]`
//! targets in its `Cargo.toml`). [`upstream_examples_dir`] downloads that package from
//! `static.crates.io`, checks its sha256 against the value pinned here (the `cksum` that
//! crates.io's index records for the version), and unpacks it under
//! `target/conformance/upstream/`. Later calls reuse the unpacked copy when the saved package
//! still has the pinned checksum and every unpacked file still matches it byte for byte.
//!
//! If the download fails (an offline machine), a copy of the same `.crate` in Cargo's own
//! registry cache is used instead, after the same checksum check.
//!
//! [`example_targets`] reads the package manifest and lists the example binaries.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::paths::{FileLock, conformance_dir, create_dir_all};

/// Name of the upstream package holding the examples.
pub const UPSTREAM_CRATE: &str = "temporalio-sdk";
/// Its pinned version.
pub const UPSTREAM_VERSION: &str = "1.1.1";
/// sha256 of `temporalio-sdk-1.1.1.crate`, as recorded (`cksum`) in crates.io's index.
pub const UPSTREAM_SHA256: &str =
    "b1231674afdc0f422689831e18cc087cb577b1811fcfee5f08167f34632ca770";
/// Where the package is downloaded from.
pub const UPSTREAM_URL: &str =
    "https://static.crates.io/crates/temporalio-sdk/temporalio-sdk-1.1.1.crate";

/// Upper bound for the download (the package is about 120 KB).
const MAX_DOWNLOAD_BYTES: u64 = 32 * 1024 * 1024;

/// File (inside `upstream/`) recording that the unpacked package was verified.
const MARKER: &str = ".verified-temporalio-sdk-1.1.1";

fn package_dir_name() -> String {
    format!("{UPSTREAM_CRATE}-{UPSTREAM_VERSION}")
}

fn crate_file_name() -> String {
    format!("{}.crate", package_dir_name())
}

/// `target/conformance/upstream`: the directory the package is unpacked into.
pub fn upstream_root() -> PathBuf {
    conformance_dir().join("upstream")
}

/// Fetches, verifies and unpacks the upstream package (once; later calls reuse it) and returns
/// the package directory, `target/conformance/upstream/temporalio-sdk-1.1.1`.
///
/// Reuse is checked, once per process, against the saved `.crate`: its sha256 must be the pinned
/// one and every file of the unpacked copy must still hold exactly the archive's bytes (so an
/// edited example is restored rather than tested).
pub fn upstream_package_dir() -> Result<PathBuf> {
    static VERIFIED: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = VERIFIED.get() {
        return Ok(dir.clone());
    }
    let root = upstream_root();
    let package_dir = root.join(package_dir_name());
    let marker = root.join(MARKER);
    if is_verified(&marker, &package_dir) {
        return Ok(VERIFIED.get_or_init(|| package_dir).clone());
    }

    let _lock = FileLock::acquire("upstream.lock")?;
    // Another test binary may have finished the job while we waited for the lock.
    if is_verified(&marker, &package_dir) {
        return Ok(VERIFIED.get_or_init(|| package_dir).clone());
    }

    let bytes = fetch_verified_crate()?;
    create_dir_all(&root)?;
    match std::fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing marker", &marker, e)),
    }
    let staging = root.join(format!(".unpack-{}", std::process::id()));
    remove_dir_if_exists(&staging)?;
    create_dir_all(&staging)?;
    unpack(&bytes, &staging)?;
    remove_dir_if_exists(&package_dir)?;
    let unpacked = staging.join(package_dir_name());
    std::fs::rename(&unpacked, &package_dir)
        .map_err(|e| Error::io("moving unpacked package into place", &unpacked, e))?;
    remove_dir_if_exists(&staging)?;
    std::fs::write(&marker, format!("{UPSTREAM_SHA256}\n"))
        .map_err(|e| Error::io("writing marker", &marker, e))?;
    Ok(VERIFIED.get_or_init(|| package_dir).clone())
}

/// The upstream `examples/` directory (fetching the package first if needed).
pub fn upstream_examples_dir() -> Result<PathBuf> {
    Ok(upstream_package_dir()?.join("examples"))
}

/// `target/conformance/downloads/temporalio-sdk-1.1.1.crate`: the verified package as fetched.
pub fn saved_crate_path() -> PathBuf {
    conformance_dir().join("downloads").join(crate_file_name())
}

/// The marker records the pinned checksum, the saved `.crate` has it, and the unpacked copy
/// matches the archive file by file.
fn is_verified(marker: &Path, package_dir: &Path) -> bool {
    let recorded = std::fs::read_to_string(marker).unwrap_or_default();
    if recorded.trim() != UPSTREAM_SHA256 || !package_dir.join("examples").is_dir() {
        return false;
    }
    let Ok(bytes) = std::fs::read(saved_crate_path()) else {
        return false;
    };
    verify("saved package", &bytes).is_ok()
        && package_dir
            .parent()
            .is_some_and(|root| matches_archive(&bytes, root))
}

/// Whether every regular file of the archive exists under `root` with identical content.
fn matches_archive(bytes: &[u8], root: &Path) -> bool {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let Ok(entries) = archive.entries() else {
        return false;
    };
    for entry in entries {
        let Ok(mut entry) = entry else {
            return false;
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Ok(path) = entry.path().map(|p| p.into_owned()) else {
            return false;
        };
        let mut expected = Vec::new();
        if entry.read_to_end(&mut expected).is_err() {
            return false;
        }
        match std::fs::read(root.join(&path)) {
            Ok(actual) if actual == expected => {}
            _ => return false,
        }
    }
    true
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing directory", dir, e)),
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn verify(what: &str, bytes: &[u8]) -> Result<()> {
    let actual = sha256_hex(bytes);
    if actual == UPSTREAM_SHA256 {
        Ok(())
    } else {
        Err(Error::Checksum {
            what: what.to_owned(),
            expected: UPSTREAM_SHA256.to_owned(),
            actual,
        })
    }
}

/// Returns the verified bytes of the `.crate`: from `target/conformance/downloads/` if a verified
/// copy is there, else downloaded (and saved there), else from Cargo's registry cache.
fn fetch_verified_crate() -> Result<Vec<u8>> {
    let saved = saved_crate_path();
    if let Ok(bytes) = std::fs::read(&saved)
        && verify(&saved.display().to_string(), &bytes).is_ok()
    {
        return Ok(bytes);
    }

    let download_error = match download() {
        Ok(bytes) => {
            verify(UPSTREAM_URL, &bytes)?;
            save(&saved, &bytes)?;
            return Ok(bytes);
        }
        Err(message) => message,
    };

    for candidate in cargo_cache_candidates() {
        if let Ok(bytes) = std::fs::read(&candidate)
            && verify(&candidate.display().to_string(), &bytes).is_ok()
        {
            eprintln!(
                "conformance: downloading {UPSTREAM_URL} failed ({download_error}); using the \
                 verified copy in Cargo's cache, {}",
                candidate.display()
            );
            save(&saved, &bytes)?;
            return Ok(bytes);
        }
    }
    Err(Error::Download {
        url: UPSTREAM_URL.to_owned(),
        message: format!(
            "{download_error}; and no verified {} was found in Cargo's registry cache",
            crate_file_name()
        ),
    })
}

fn save(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        create_dir_all(dir)?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io("saving package", path, e))
}

/// Downloads the package: first trusting Mozilla's roots (works on a machine without a CA
/// bundle), then the platform's (works behind a TLS-inspecting proxy whose CA the system trusts).
/// The content is checked against the pinned sha256 either way.
fn download() -> std::result::Result<Vec<u8>, String> {
    let mut errors = Vec::new();
    for (roots, name) in [
        (ureq::tls::RootCerts::WebPki, "Mozilla roots"),
        (ureq::tls::RootCerts::PlatformVerifier, "platform roots"),
    ] {
        match download_with(roots) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(errors.join("; "))
}

fn download_with(roots: ureq::tls::RootCerts) -> std::result::Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into();
    let mut response = agent.get(UPSTREAM_URL).call().map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(MAX_DOWNLOAD_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// `$CARGO_HOME/registry/cache/*/temporalio-sdk-1.1.1.crate` (default `~/.cargo`).
fn cargo_cache_candidates() -> Vec<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(cache) = cargo_home.map(|h| h.join("registry").join("cache")) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&cache) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join(crate_file_name()))
        .filter(|path| path.is_file())
        .collect()
}

/// Unpacks the gzip'd tarball into `dest`, refusing entries outside `<name>-<version>/`.
fn unpack(bytes: &[u8], dest: &Path) -> Result<()> {
    let prefix = package_dir_name();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = archive
        .entries()
        .map_err(|e| Error::Upstream(format!("reading archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::Upstream(format!("reading archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| Error::Upstream(format!("archive entry path: {e}")))?
            .into_owned();
        if !path.starts_with(&prefix) {
            return Err(Error::Upstream(format!(
                "archive entry {} is outside {prefix}/",
                path.display()
            )));
        }
        // `unpack_in` refuses `..` components and absolute paths.
        entry
            .unpack_in(dest)
            .map_err(|e| Error::Upstream(format!("unpacking {}: {e}", path.display())))?;
    }
    Ok(())
}

/// One example binary declared by the upstream package (`[[example]]` in its `Cargo.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExampleTarget {
    /// Target name, e.g. `hello-world-worker`; the generated project uses it as the binary name.
    pub name: String,
    /// The example it belongs to: its folder under `examples/` (e.g. `hello_world`), or the file
    /// stem for single-file examples (e.g. `workflow_context`).
    pub example: String,
    /// Absolute path of the unchanged upstream source file.
    pub path: PathBuf,
}

/// Lists the example binaries of the unpacked package at `package_dir`, in manifest order.
///
/// Only plain binaries that exist in the package are listed: targets with a `crate-type`
/// (the WASM component) or needing features beyond `examples` are skipped.
pub fn example_targets(package_dir: &Path) -> Result<Vec<ExampleTarget>> {
    let manifest_path = package_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|e| Error::io("reading upstream manifest", &manifest_path, e))?;
    let manifest: toml::Table = text
        .parse()
        .map_err(|e| Error::Upstream(format!("parsing {}: {e}", manifest_path.display())))?;
    let examples = manifest
        .get("example")
        .and_then(toml::Value::as_array)
        .ok_or_else(|| Error::Upstream("manifest has no [[example]] targets".to_owned()))?;

    let mut targets = Vec::new();
    for example in examples {
        let Some(table) = example.as_table() else {
            continue;
        };
        let (Some(name), Some(rel_path)) = (
            table.get("name").and_then(toml::Value::as_str),
            table.get("path").and_then(toml::Value::as_str),
        ) else {
            continue;
        };
        if table.contains_key("crate-type") {
            continue;
        }
        let features_ok = table
            .get("required-features")
            .and_then(toml::Value::as_array)
            .is_none_or(|features| {
                features
                    .iter()
                    .all(|f| f.as_str().is_some_and(|f| f == "examples"))
            });
        if !features_ok {
            continue;
        }
        let path = package_dir.join(rel_path);
        if !path.is_file() {
            continue;
        }
        let rel = Path::new(rel_path);
        let group = match rel.parent().and_then(Path::file_name) {
            Some(parent) if parent != "examples" => parent.to_string_lossy().into_owned(),
            _ => rel
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        targets.push(ExampleTarget {
            name: name.to_owned(),
            example: group,
            path,
        });
    }
    if targets.is_empty() {
        return Err(Error::Upstream(format!(
            "no usable [[example]] targets in {}",
            manifest_path.display()
        )));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn unpacked_copies_are_checked_file_by_file() {
        upstream_package_dir().expect("upstream package available");
        let bytes = std::fs::read(saved_crate_path()).expect("saved package");
        let scratch = conformance_dir().join(format!("scratch-unpack-{}", std::process::id()));
        remove_dir_if_exists(&scratch).expect("clean scratch");
        create_dir_all(&scratch).expect("scratch dir");
        unpack(&bytes, &scratch).expect("unpacks");
        assert!(matches_archive(&bytes, &scratch));
        let worker = scratch
            .join(package_dir_name())
            .join("examples/hello_world/worker.rs");
        let mut text = std::fs::read_to_string(&worker).expect("worker.rs");
        text.push_str("// edited\n");
        std::fs::write(&worker, text).expect("edit");
        assert!(!matches_archive(&bytes, &scratch));
        remove_dir_if_exists(&scratch).expect("clean scratch");
    }

    #[test]
    fn verify_rejects_other_bytes() {
        let err = verify("test", b"not the crate").expect_err("must not verify");
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
    }
}
