//! Tests of the conformance harness itself: fetching the upstream package, generating the
//! examples project, databases and child processes. These pass without our engine.
//!
//! `generated_project_builds_against_real_upstream_sdk` is ignored by default (it compiles
//! Temporal's real SDK, a few minutes on a cold cache); run it with
//! `cargo test -p conformance-tests --test harness -- --ignored` (no database needed).

use std::time::Duration;

use conformance_tests::paths::logs_dir;
use conformance_tests::upstream::{UPSTREAM_SHA256, sha256_hex, upstream_root};
use conformance_tests::{
    ExamplesProject, ManagedProcess, ProcessSpec, SdkFlavor, TestDatabase, example_targets,
    run_to_completion, upstream_examples_dir, upstream_package_dir,
};

/// The examples the conformance suite runs; each must have a worker and a starter upstream.
const SUITE_EXAMPLES: &[&str] = &[
    "hello_world",
    "timer_examples",
    "polling",
    "saga",
    "local_activities",
    "activity_heartbeating",
    "activity_interceptor",
    "message_passing",
    "updatable_timer",
];

#[test]
fn upstream_package_is_fetched_verified_and_unpacked() {
    let examples = upstream_examples_dir().expect("upstream examples available");
    assert!(examples.ends_with("upstream/temporalio-sdk-1.1.1/examples"));
    assert!(examples.join("hello_world/worker.rs").is_file());
    assert!(examples.join("hello_world/workflows.rs").is_file());
    let marker = std::fs::read_to_string(upstream_root().join(".verified-temporalio-sdk-1.1.1"))
        .expect("marker written");
    assert_eq!(marker.trim(), UPSTREAM_SHA256);
    // The saved download (if the network was used) is the verified package.
    let saved =
        conformance_tests::paths::conformance_dir().join("downloads/temporalio-sdk-1.1.1.crate");
    if let Ok(bytes) = std::fs::read(&saved) {
        assert_eq!(sha256_hex(&bytes), UPSTREAM_SHA256);
    }
    // A second call reuses the unpacked copy.
    assert_eq!(upstream_examples_dir().expect("cached"), examples);
}

#[test]
fn upstream_manifest_lists_worker_and_starter_of_every_suite_example() {
    let package = upstream_package_dir().expect("upstream package available");
    let targets = example_targets(&package).expect("manifest readable");
    for example in SUITE_EXAMPLES {
        let names: Vec<&str> = targets
            .iter()
            .filter(|t| t.example == *example)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names.len(), 2, "{example}: {names:?}");
        assert!(names.iter().any(|n| n.ends_with("-worker")), "{example}");
        assert!(names.iter().any(|n| n.ends_with("-starter")), "{example}");
    }
    assert!(
        targets
            .iter()
            .all(|t| t.path.is_absolute() && t.path.is_file())
    );
    // The WASM component (crate-type cdylib, not shipped) is not a binary target.
    assert!(!targets.iter().any(|t| t.name == "wasm-workflows"));
}

#[test]
fn compat_project_renames_our_crates_and_points_at_unchanged_upstream_files() {
    let project = ExamplesProject::generate(SdkFlavor::Compat).expect("project generated");
    let manifest = std::fs::read_to_string(project.manifest_path()).expect("manifest written");
    assert!(manifest.contains("temporalio-sdk = { package = \"temporal-compat\", path = "));
    assert!(
        manifest.contains("temporalio-client = { package = \"temporal-compat-client\", path = ")
    );
    assert!(manifest.contains("\n[workspace]\n"));
    let examples = upstream_examples_dir().expect("upstream examples");
    for target in project.targets() {
        assert!(target.path.starts_with(&examples), "{target:?}");
    }
    assert!(project.examples().contains(&"message_passing"));
    assert!(project.target_dir().ends_with("target/conformance/build"));
}

#[test]
fn databases_are_created_fresh_and_reachable() {
    let db = TestDatabase::create("harness self test").expect("database created");
    assert!(db.name().starts_with("conf_harness_self_test_"));
    assert!(db.url().ends_with(db.name()));
    let current = db
        .query_scalar("SELECT current_database()::text")
        .expect("query runs");
    assert_eq!(current.as_deref(), Some(db.name()));
    db.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);")
        .expect("statements run");
    let count = db
        .query_scalar("SELECT count(*)::text FROM t")
        .expect("query runs");
    assert_eq!(count.as_deref(), Some("2"));
    let other = TestDatabase::create("harness self test").expect("second database created");
    assert_ne!(other.name(), db.name());
}

fn shell_spec(label: &str, script: &str) -> ProcessSpec {
    ProcessSpec::new("/bin/sh", logs_dir().join("harness-self-test"), label).args(["-c", script])
}

#[test]
fn managed_process_waits_for_lines_kills_and_restarts() {
    let spec = shell_spec(
        &format!("sleeper-{}", std::process::id()),
        "echo \"address=$TEMPORAL_ADDRESS\"; echo \"to stderr\" >&2; echo ready; exec sleep 600",
    )
    .env("TEMPORAL_ADDRESS", "postgres://example/db");
    let mut process = ManagedProcess::spawn(spec).expect("spawned");
    let line = process
        .wait_for_line_containing("ready", Duration::from_secs(10))
        .expect("ready line");
    assert_eq!(line, "ready");
    process
        .wait_for_exact_line("to stderr", Duration::from_secs(10))
        .expect("stderr is searched too");
    assert!(process.stdout().contains("address=postgres://example/db"));
    let first_pid = process.pid().expect("running");
    assert!(process.is_running());

    process.kill().expect("killed");
    assert!(!process.is_running());
    let status = process.try_status().expect("status").expect("exited");
    assert!(!status.success(), "SIGKILLed: {status}");

    process.restart().expect("restarted");
    assert_eq!(process.incarnation(), 2);
    process
        .wait_for_line_containing("ready", Duration::from_secs(10))
        .expect("ready again");
    assert_ne!(process.pid(), Some(first_pid));
    assert_eq!(process.all_logs().len(), 2);
    assert_eq!(process.all_stdout().matches("ready").count(), 2);
    process.check_no_panic().expect("no panic");

    // Dropping kills the child.
    let pid = process.pid().expect("running");
    drop(process);
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        proc_status.is_empty() || proc_status.contains("State:\tZ"),
        "child {pid} still alive after drop"
    );
}

#[test]
fn waiting_fails_fast_when_the_process_exits() {
    let spec = shell_spec(
        &format!("quitter-{}", std::process::id()),
        "echo \"thread 'main' panicked at src/main.rs:1:1\" >&2; exit 3",
    );
    let mut process = ManagedProcess::spawn(spec).expect("spawned");
    let err = process
        .wait_for_line_containing("never printed", Duration::from_secs(30))
        .expect_err("process exits first");
    let message = err.to_string();
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("panicked at src/main.rs"), "{message}");
    assert!(process.check_no_panic().is_err());
}

#[test]
fn run_to_completion_captures_output_and_enforces_timeouts() {
    let done = run_to_completion(
        &shell_spec(
            &format!("quick-{}", std::process::id()),
            "echo one; echo two",
        ),
        Duration::from_secs(10),
    )
    .expect("ran");
    assert!(done.success(), "{}", done.describe());
    assert_eq!(done.stdout_lines(), ["one", "two"]);
    assert!(done.has_stdout_line("two"));

    let slow = run_to_completion(
        &shell_spec(
            &format!("slow-{}", std::process::id()),
            "echo started; exec sleep 600",
        ),
        Duration::from_millis(300),
    )
    .expect("ran");
    assert!(slow.timed_out);
    assert!(!slow.success());
    assert!(slow.has_stdout_line("started"));
}

#[test]
#[ignore = "compiles Temporal's real SDK (minutes on a cold cache); run with --ignored"]
fn generated_project_builds_against_real_upstream_sdk() {
    let project = ExamplesProject::generate(SdkFlavor::Upstream).expect("project generated");
    let report = project
        .build_all()
        .unwrap_or_else(|e| panic!("upstream examples project must build:\n{e}"));
    eprintln!("{} took {:?}", report.command, report.elapsed);
    for target in project.targets() {
        assert!(
            project.bin_path(&target.name).is_file(),
            "{} was not built",
            target.name
        );
    }
}
