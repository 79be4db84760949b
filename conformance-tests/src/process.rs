//! Child processes: example workers and starters, with their output captured to files.
//!
//! * [`ManagedProcess`]: a long-running process (a worker). Its stdout and stderr go to
//!   `<log dir>/<label>.<n>.stdout.log` / `.stderr.log`, where `n` counts incarnations:
//!   [`ManagedProcess::restart`] starts incarnation `n + 1` with fresh log files. It can wait for a
//!   line to appear ([`ManagedProcess::wait_for_line_containing`]), be SIGKILLed
//!   ([`ManagedProcess::kill`]) and restarted: what kill-and-recover tests need. Dropping it
//!   SIGKILLs the child.
//! * [`run_to_completion`]: a short-lived process (a starter) run with a timeout; the result
//!   ([`CompletedProcess`]) holds its exit status, output and elapsed time.
//!
//! Children inherit the test's environment except for the variables listed in
//! [`ProcessSpec::env_remove`], then get [`ProcessSpec::env`].

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::paths::create_dir_all;

/// How often output files and exit status are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How many trailing lines of each stream [`ManagedProcess::describe`] and
/// [`CompletedProcess::describe`] show.
const TAIL_LINES: usize = 60;

/// What to run and where its output goes.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables set for the child (after removals).
    pub env: Vec<(String, String)>,
    /// Inherited variables removed for the child.
    pub env_remove: Vec<String>,
    /// Directory receiving the log files; also the child's working directory.
    pub log_dir: PathBuf,
    /// File-name prefix of the log files, and the name used in messages.
    pub label: String,
}

impl ProcessSpec {
    /// A spec running `program` with no arguments, logging to `log_dir` under `label`.
    pub fn new(program: impl Into<PathBuf>, log_dir: impl Into<PathBuf>, label: &str) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            log_dir: log_dir.into(),
            label: label.to_owned(),
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes an inherited environment variable for the child.
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    fn log_files(&self, incarnation: u32) -> LogFiles {
        LogFiles {
            stdout: self
                .log_dir
                .join(format!("{}.{incarnation}.stdout.log", self.label)),
            stderr: self
                .log_dir
                .join(format!("{}.{incarnation}.stderr.log", self.label)),
        }
    }

    fn spawn(&self, logs: &LogFiles) -> Result<Child> {
        create_dir_all(&self.log_dir)?;
        let stdout =
            File::create(&logs.stdout).map_err(|e| Error::io("creating log", &logs.stdout, e))?;
        let stderr =
            File::create(&logs.stderr).map_err(|e| Error::io("creating log", &logs.stderr, e))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&self.log_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for key in &self.env_remove {
            command.env_remove(key);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
            .spawn()
            .map_err(|e| Error::io("spawning", &self.program, e))
    }

    fn command_line(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }
}

/// The two log files of one process incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFiles {
    /// Captured stdout.
    pub stdout: PathBuf,
    /// Captured stderr.
    pub stderr: PathBuf,
}

impl LogFiles {
    /// Current content of the stdout file (lossy UTF-8; empty if unreadable).
    pub fn read_stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// Current content of the stderr file (lossy UTF-8; empty if unreadable).
    pub fn read_stderr(&self) -> String {
        read_lossy(&self.stderr)
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        let _ = writeln!(out, "    ... ({start} earlier lines)");
    }
    for line in &all[start..] {
        let _ = writeln!(out, "    {line}");
    }
    if all.is_empty() {
        out.push_str("    (empty)\n");
    }
    out
}

/// The marker Rust's default panic hook prints.
pub const PANIC_MARKER: &str = "panicked at";

/// A long-running child process (see the module documentation). Killed on drop.
#[derive(Debug)]
pub struct ManagedProcess {
    spec: ProcessSpec,
    child: Option<Child>,
    status: Option<ExitStatus>,
    incarnations: Vec<LogFiles>,
}

impl ManagedProcess {
    /// Starts incarnation 1 of `spec`.
    pub fn spawn(spec: ProcessSpec) -> Result<Self> {
        let mut process = Self {
            spec,
            child: None,
            status: None,
            incarnations: Vec::new(),
        };
        process.start()?;
        Ok(process)
    }

    fn start(&mut self) -> Result<()> {
        let number = u32::try_from(self.incarnations.len() + 1).unwrap_or(u32::MAX);
        let logs = self.spec.log_files(number);
        let child = self.spec.spawn(&logs)?;
        self.incarnations.push(logs);
        self.child = Some(child);
        self.status = None;
        Ok(())
    }

    /// The spec it was started from.
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// The label used in file names and messages.
    pub fn label(&self) -> &str {
        &self.spec.label
    }

    /// OS process id of the current incarnation (while it has not been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Which incarnation is current (1 for the first start).
    pub fn incarnation(&self) -> usize {
        self.incarnations.len()
    }

    /// Log files of the current incarnation.
    pub fn logs(&self) -> Option<&LogFiles> {
        self.incarnations.last()
    }

    /// Log files of every incarnation, oldest first.
    pub fn all_logs(&self) -> &[LogFiles] {
        &self.incarnations
    }

    /// Stdout of the current incarnation so far.
    pub fn stdout(&self) -> String {
        self.logs().map(LogFiles::read_stdout).unwrap_or_default()
    }

    /// Stderr of the current incarnation so far.
    pub fn stderr(&self) -> String {
        self.logs().map(LogFiles::read_stderr).unwrap_or_default()
    }

    /// Stdout of all incarnations, concatenated in order.
    pub fn all_stdout(&self) -> String {
        self.incarnations
            .iter()
            .map(LogFiles::read_stdout)
            .collect()
    }

    /// Stderr of all incarnations, concatenated in order.
    pub fn all_stderr(&self) -> String {
        self.incarnations
            .iter()
            .map(LogFiles::read_stderr)
            .collect()
    }

    /// The exit status of the current incarnation if it has exited (non-blocking).
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child
            .try_wait()
            .map_err(|e| Error::io("polling", &self.spec.program, e))?;
        if status.is_some() {
            self.status = status;
            self.child = None;
        }
        Ok(status)
    }

    /// Whether the current incarnation is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None)) && self.child.is_some()
    }

    /// Waits until a line of the current incarnation's stdout or stderr contains `needle`;
    /// returns that line. Fails if the process exits first or `timeout` passes, with the
    /// process's output in the error.
    pub fn wait_for_line_containing(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_line(&format!("a line containing {needle:?}"), timeout, |line| {
            line.contains(needle)
        })
    }

    /// Waits until a line of the current incarnation's stdout or stderr equals `expected`.
    pub fn wait_for_exact_line(&mut self, expected: &str, timeout: Duration) -> Result<String> {
        self.wait_for_line(&format!("the line {expected:?}"), timeout, |line| {
            line == expected
        })
    }

    /// Waits until a line of the current incarnation's stdout or stderr satisfies `matches`
    /// (`what` describes it in errors); returns that line.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the status before the output: output written before an exit is then seen.
            let exited = self.try_status()?;
            for text in [self.stdout(), self.stderr()] {
                if let Some(line) = text.lines().find(|line| matches(line)) {
                    return Ok(line.to_owned());
                }
            }
            if let Some(status) = exited {
                return Err(Error::Process(format!(
                    "{} exited ({status}) before printing {what}\n{}",
                    self.spec.label,
                    self.describe()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Process(format!(
                    "{} did not print {what} within {timeout:?}\n{}",
                    self.spec.label,
                    self.describe()
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits up to `timeout` for the current incarnation to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if self.child.is_none() {
                return Err(Error::Process(format!(
                    "{} is not running",
                    self.spec.label
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Process(format!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.spec.label,
                    self.describe()
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILLs the current incarnation (if it still runs) and reaps it. Idempotent.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix; it fails only if the child was already reaped.
            let _ = child.kill();
            let status = child
                .wait()
                .map_err(|e| Error::io("reaping", &self.spec.program, e))?;
            self.status = Some(status);
        }
        Ok(())
    }

    /// SIGSTOPs the current incarnation: it stays alive (its connections open, its leases
    /// held) but runs nothing until killed. Sent with the system's `kill` command.
    pub fn freeze(&mut self) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::Process(format!("{} is not running", self.label())))?;
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .map_err(|e| Error::io("sending SIGSTOP with", "kill", e))?;
        if !status.success() {
            return Err(Error::Process(format!(
                "`kill -STOP {pid}` failed ({status})"
            )));
        }
        Ok(())
    }

    /// SIGKILLs the current incarnation if it runs, then starts the next one (new log files).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.start()
    }

    /// Fails if any incarnation's stderr or stdout contains Rust's panic marker
    /// ([`PANIC_MARKER`]).
    pub fn check_no_panic(&self) -> Result<()> {
        let panicked = self.incarnations.iter().any(|logs| {
            logs.read_stderr().contains(PANIC_MARKER) || logs.read_stdout().contains(PANIC_MARKER)
        });
        if panicked {
            Err(Error::Process(format!(
                "{} panicked\n{}",
                self.spec.label,
                self.describe()
            )))
        } else {
            Ok(())
        }
    }

    /// A multi-line report: command, state, log paths and the tail of each stream.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let state = match (&self.child, self.status) {
            (Some(child), _) => format!("running (pid {})", child.id()),
            (None, Some(status)) => format!("exited: {status}"),
            (None, None) => "not running".to_owned(),
        };
        let _ = writeln!(
            out,
            "--- {} [{}], incarnation {}, {state}",
            self.spec.label,
            self.spec.command_line(),
            self.incarnations.len()
        );
        if let Some(logs) = self.logs() {
            let _ = writeln!(out, "  stdout ({}):", logs.stdout.display());
            out.push_str(&tail(&logs.read_stdout(), TAIL_LINES));
            let _ = writeln!(out, "  stderr ({}):", logs.stderr.display());
            out.push_str(&tail(&logs.read_stderr(), TAIL_LINES));
        }
        out
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A process that ran to completion (or was killed at its timeout).
#[derive(Clone, Debug)]
pub struct CompletedProcess {
    /// The label used in file names and messages.
    pub label: String,
    /// The command line.
    pub command: String,
    /// Exit status (after the SIGKILL, if it timed out).
    pub status: ExitStatus,
    /// Whether it was killed because the timeout passed.
    pub timed_out: bool,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Where they were captured.
    pub logs: LogFiles,
}

impl CompletedProcess {
    /// Exited on its own with status 0.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// The stdout lines.
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Whether some stdout line equals `expected`.
    pub fn has_stdout_line(&self, expected: &str) -> bool {
        self.stdout.lines().any(|line| line == expected)
    }

    /// The first stdout line starting with `prefix`.
    pub fn stdout_line_starting_with(&self, prefix: &str) -> Option<&str> {
        self.stdout.lines().find(|line| line.starts_with(prefix))
    }

    /// Whether stdout or stderr contains Rust's panic marker.
    pub fn panicked(&self) -> bool {
        self.stderr.contains(PANIC_MARKER) || self.stdout.contains(PANIC_MARKER)
    }

    /// A multi-line report: command, outcome, log paths and the tail of each stream.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let outcome = if self.timed_out {
            format!("TIMED OUT after {:?} and was killed", self.elapsed)
        } else {
            format!("exited: {} after {:?}", self.status, self.elapsed)
        };
        let _ = writeln!(out, "--- {} [{}], {outcome}", self.label, self.command);
        let _ = writeln!(out, "  stdout ({}):", self.logs.stdout.display());
        out.push_str(&tail(&self.stdout, TAIL_LINES));
        let _ = writeln!(out, "  stderr ({}):", self.logs.stderr.display());
        out.push_str(&tail(&self.stderr, TAIL_LINES));
        out
    }
}

/// Runs `spec` until it exits or `timeout` passes (then SIGKILLs it), capturing its output to
/// `<log dir>/<label>.1.stdout.log` / `.stderr.log` (the next free number if those exist).
pub fn run_to_completion(spec: &ProcessSpec, timeout: Duration) -> Result<CompletedProcess> {
    let mut number = 1;
    let mut logs = spec.log_files(number);
    while logs.stdout.exists() {
        number += 1;
        logs = spec.log_files(number);
    }
    let started = Instant::now();
    let mut child = spec.spawn(&logs)?;
    let deadline = started + timeout;
    let mut timed_out = false;
    let status = loop {
        let polled = child.try_wait();
        match polled {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child
                    .wait()
                    .map_err(|e| Error::io("reaping", &spec.program, e))?;
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::io("polling", &spec.program, e));
            }
        }
    };
    let elapsed = started.elapsed();
    Ok(CompletedProcess {
        label: spec.label.clone(),
        command: spec.command_line(),
        status,
        timed_out,
        elapsed,
        stdout: logs.read_stdout(),
        stderr: logs.read_stderr(),
        logs,
    })
}
