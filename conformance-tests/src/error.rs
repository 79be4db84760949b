//! The harness's error type.
//!
//! Every failure carries enough context to act on from a test's panic message alone: the path
//! or URL involved, and for builds and processes the captured output verbatim.

use std::path::PathBuf;

/// Result alias used throughout the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a harness step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem or process-spawning operation failed.
    #[error("{context}: {path}: {source}")]
    Io {
        /// What the harness was doing.
        context: &'static str,
        /// The file, directory or program involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Downloading the upstream package failed (and no verified local copy was available).
    #[error("could not download {url}: {message}")]
    Download {
        /// The URL that was fetched.
        url: String,
        /// What went wrong, including any fallback that was tried.
        message: String,
    },

    /// A downloaded (or cached) package does not have the expected sha256.
    #[error("checksum mismatch for {what}: expected sha256 {expected}, got {actual}")]
    Checksum {
        /// The file or URL that was checked.
        what: String,
        /// The pinned sha256.
        expected: String,
        /// The sha256 actually computed.
        actual: String,
    },

    /// The upstream package is not shaped as expected (bad archive, manifest, missing example).
    #[error("upstream package: {0}")]
    Upstream(String),

    /// `cargo build` of the generated examples project failed. `output` is cargo's stderr
    /// (compiler errors included) verbatim.
    #[error("`{command}` failed ({status}):\n{output}")]
    Build {
        /// The command line that was run.
        command: String,
        /// Its exit status.
        status: String,
        /// Cargo's stdout and stderr, verbatim.
        output: String,
    },

    /// A build that failed earlier in this process (memoized): the original error's text.
    #[error("{0}")]
    EarlierBuild(String),

    /// `DBOSIFY_TEST_DATABASE_URL` is not set.
    #[error(
        "DBOSIFY_TEST_DATABASE_URL is not set. The conformance tests need the project's private \
         Postgres: run them through `scripts/test.sh`, which starts it and exports the URL, or \
         run `scripts/pg.sh start` and then \
         `DBOSIFY_TEST_DATABASE_URL=$(scripts/pg.sh url) cargo test -p conformance-tests`"
    )]
    MissingDatabaseUrl,

    /// A database operation failed.
    #[error("database: {context}: {message}")]
    Database {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        message: String,
    },

    /// A child process misbehaved (exited early, never printed what was awaited, ...).
    #[error("{0}")]
    Process(String),
}

impl Error {
    /// Builds an [`Error::Io`] from its parts.
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Database`] from its parts.
    pub(crate) fn db(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self::Database {
            context: context.into(),
            message: err.to_string(),
        }
    }
}
