//! One run of one upstream example: its built binaries, a fresh database, a log directory, and
//! helpers that start its worker and starter pointed at that database.
//!
//! ```no_run
//! use std::time::Duration;
//! use conformance_tests::ExampleRun;
//!
//! let run = ExampleRun::new("hello_world").expect("example ready");
//! let mut worker = run.spawn_worker().expect("worker started");
//! let starter = run.run_starter(&[], Duration::from_secs(60)).expect("starter ran");
//! assert!(starter.has_stdout_line("Workflow result: Hello, Temporal!"), "{}", starter.describe());
//! worker.check_no_panic().expect("worker healthy");
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::database::{TestDatabase, admin_url};
use crate::error::Result;
use crate::paths::{logs_dir, sanitize};
use crate::process::{CompletedProcess, ManagedProcess, ProcessSpec, run_to_completion};
use crate::project::{ExampleBinaries, SdkFlavor, example_binaries};

/// The variable the examples' `ClientOptions::load_from_config` reads the server address from;
/// our crates read a Postgres URL from it.
pub const ADDRESS_ENV: &str = "TEMPORAL_ADDRESS";

/// The default `RUST_LOG` for children when the test's environment has none.
const DEFAULT_RUST_LOG: &str = "info";

/// A prepared run of one example (see the module documentation).
#[derive(Debug)]
pub struct ExampleRun {
    example: String,
    label: String,
    binaries: ExampleBinaries,
    log_dir: PathBuf,
    database: TestDatabase,
    /// How often each process label was handed out (see `unique_label`).
    labels: Mutex<HashMap<String, usize>>,
}

impl ExampleRun {
    /// Builds `example` (a folder name under the upstream `examples/`, e.g. `hello_world`)
    /// against our crates and creates its database; `label` defaults to the example name.
    pub fn new(example: &str) -> Result<Self> {
        Self::with_label(example, example)
    }

    /// Like [`ExampleRun::new`], with `label` naming the database and log directory (use it
    /// when one example is run in several ways, e.g. `saga_fail_trip`).
    pub fn with_label(example: &str, label: &str) -> Result<Self> {
        Self::with_flavor(SdkFlavor::Compat, example, label)
    }

    /// Like [`ExampleRun::with_label`], for either SDK flavor.
    pub fn with_flavor(flavor: SdkFlavor, example: &str, label: &str) -> Result<Self> {
        // Fail fast without a database URL; then build, so that a build failure leaves no
        // database behind.
        let admin_url = admin_url()?;
        let binaries = example_binaries(flavor, example)?;
        let database = TestDatabase::create_with_admin_url(&admin_url, label)?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let log_dir = logs_dir().join(format!(
            "{}-{stamp}-{}",
            sanitize(label),
            std::process::id()
        ));
        eprintln!(
            "conformance: {example} ({label}): database {}, logs in {}",
            database.name(),
            log_dir.display()
        );
        Ok(Self {
            example: example.to_owned(),
            label: label.to_owned(),
            binaries,
            log_dir,
            database,
            labels: Mutex::new(HashMap::new()),
        })
    }

    /// The example's name.
    pub fn example(&self) -> &str {
        &self.example
    }

    /// The run's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The example's built binaries.
    pub fn binaries(&self) -> &ExampleBinaries {
        &self.binaries
    }

    /// The run's database.
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// The run's database URL (what children get as `TEMPORAL_ADDRESS`).
    pub fn database_url(&self) -> &str {
        self.database.url()
    }

    /// Where the children's output is captured.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// A spec for `program` with `args` and the run's environment: inherited `TEMPORAL_*` and
    /// `DBOS_SYSTEM_DATABASE_URL` removed, then `TEMPORAL_ADDRESS=<database URL>`, `RUST_LOG`
    /// (the test's, else `info`) and `RUST_BACKTRACE=1`.
    pub fn spec(&self, program: &Path, label: &str, args: &[&str]) -> ProcessSpec {
        let mut spec = ProcessSpec::new(program, &self.log_dir, label).args(args.iter().copied());
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("TEMPORAL_") || key == "DBOS_SYSTEM_DATABASE_URL" {
                spec = spec.env_remove(key.into_owned());
            }
        }
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_owned());
        spec.env(ADDRESS_ENV, self.database.url())
            .env("RUST_LOG", rust_log)
            .env("RUST_BACKTRACE", "1")
    }

    /// A spec for the example binary named `bin` (e.g. `saga-starter`). Each call gets its own
    /// label (`saga-starter`, `saga-starter-2`, ...) so that several processes of one binary
    /// (two workers, say) never share log files.
    pub fn bin_spec(&self, bin: &str, args: &[&str]) -> Result<ProcessSpec> {
        let program = self.binaries.get(bin)?;
        Ok(self.spec(program, &self.unique_label(bin), args))
    }

    /// A spec for the example's `*-worker` binary (add variables with [`ProcessSpec::env`],
    /// then start it with [`ManagedProcess::spawn`]).
    pub fn worker_spec(&self) -> Result<ProcessSpec> {
        let program = self.binaries.worker()?;
        Ok(self.spec(program, &self.unique_label(&file_label(program)), &[]))
    }

    /// A spec for the example's `*-starter` binary with `args`.
    pub fn starter_spec(&self, args: &[&str]) -> Result<ProcessSpec> {
        let program = self.binaries.starter()?;
        Ok(self.spec(program, &self.unique_label(&file_label(program)), args))
    }

    /// Starts the example's `*-worker` binary.
    pub fn spawn_worker(&self) -> Result<ManagedProcess> {
        ManagedProcess::spawn(self.worker_spec()?)
    }

    /// Starts the example's `*-starter` binary in the background (e.g. to kill the worker while
    /// the starter waits for the result; finish with [`ManagedProcess::wait_exit`]).
    pub fn spawn_starter(&self, args: &[&str]) -> Result<ManagedProcess> {
        ManagedProcess::spawn(self.starter_spec(args)?)
    }

    /// Starts the example binary named `bin` as a long-running process.
    pub fn spawn_bin(&self, bin: &str, args: &[&str]) -> Result<ManagedProcess> {
        ManagedProcess::spawn(self.bin_spec(bin, args)?)
    }

    /// Runs the example's `*-starter` binary with `args` until it exits or `timeout` passes.
    pub fn run_starter(&self, args: &[&str], timeout: Duration) -> Result<CompletedProcess> {
        run_to_completion(&self.starter_spec(args)?, timeout)
    }

    /// Runs the example binary named `bin` with `args` until it exits or `timeout` passes.
    pub fn run_bin(&self, bin: &str, args: &[&str], timeout: Duration) -> Result<CompletedProcess> {
        run_to_completion(&self.bin_spec(bin, args)?, timeout)
    }

    /// `base` for its first use in this run, then `base-2`, `base-3`, ...
    fn unique_label(&self, base: &str) -> String {
        let mut used = self
            .labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = used.entry(base.to_owned()).or_insert(0);
        *count += 1;
        if *count == 1 {
            base.to_owned()
        } else {
            format!("{base}-{count}")
        }
    }
}

/// The binary's file name without extension (its Cargo target name).
fn file_label(program: &Path) -> String {
    program
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "process".to_owned())
}
