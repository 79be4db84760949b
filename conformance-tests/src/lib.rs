//! Conformance harness: Temporal's own example programs, unchanged, on our crates and Postgres.
//!
//! The examples ship inside the `temporalio-sdk` 1.1.1 package on crates.io. At test time the
//! harness
//!
//! 1. downloads that package and checks its sha256 ([`upstream`]),
//! 2. generates a Cargo package whose binaries are the upstream `worker.rs`/`starter.rs` files,
//!    with `temporalio-sdk`/`temporalio-client` renamed to our crates exactly as a user would
//!    rename them ([`project`]),
//! 3. builds it in its own target directory, surfacing compiler errors verbatim,
//! 4. creates a fresh Postgres database per run ([`database`]),
//! 5. starts workers and starters with `TEMPORAL_ADDRESS` set to that database, capturing their
//!    output, and can SIGKILL and restart workers ([`process`]).
//!
//! [`ExampleRun`] ties these together for tests. [`recovery`] holds the workflow and activities
//! of the kill-and-recover tests (`tests/recovery*.rs`, binaries `recovery_worker` and
//! `recovery_starter`).
//!
//! Nothing from upstream is copied into this
//! repository; all generated and downloaded files live under `target/conformance/`
//! ([`paths`]).

#![warn(missing_docs)]

pub mod database;
pub mod error;
pub mod example;
pub mod paths;
pub mod process;
pub mod project;
pub mod recovery;
pub mod upstream;

pub use database::TestDatabase;
pub use error::{Error, Result};
pub use example::ExampleRun;
pub use process::{CompletedProcess, LogFiles, ManagedProcess, ProcessSpec, run_to_completion};
pub use project::{ExampleBinaries, ExamplesProject, SdkFlavor, build_all_once, example_binaries};
pub use upstream::{ExampleTarget, example_targets, upstream_examples_dir, upstream_package_dir};
