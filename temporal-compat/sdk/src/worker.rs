//! [`Worker`]: claims workflow runs of its task queue from Postgres and drives them; a worker
//! that registers activities also claims the task queue's standalone activities (from the
//! queue's activity queue, while it has a free activity slot) and runs them.
//!
//! `run()` opens the namespace's shared system database, registers the task queue and this
//! worker's executor (id = the worker identity, `{pid}@{hostname}` by default), resumes the runs
//! it held before a restart, then claims runs as they are enqueued (woken by LISTEN/NOTIFY, with
//! a slow fallback poll) and hands each to a workflow thread.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use dbos_core::{ExecutorOptions, QueueConfig, SystemDatabase};
use temporal_compat_client::Client;
use temporal_compat_client::protocol;
use temporalio_common_wasm::data_converters::DataConverter;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::threads::WorkflowThreads;
use crate::engine::{Engine, EngineSettings};
use crate::error::{WorkerCreateError, WorkerRunError, WorkerValidationError};
use crate::options::WorkerOptions;
use crate::runtime::Runtime;

/// How many runs one claim round takes at most.
const CLAIM_BATCH: usize = 64;
/// Most runs held at once by one worker.
const MAX_HELD_RUNS: usize = 100_000;
/// Fallback wait between claim rounds when no notification arrives.
const CLAIM_FALLBACK: Duration = Duration::from_secs(5);

/// A worker: runs the registered workflows (and their activities) of one task queue.
pub struct Worker {
    runtime: Runtime,
    options: WorkerOptions,
    database_url: String,
    namespace: String,
    identity: String,
    data_converter: DataConverter,
    client: Option<Client>,
    shutdown: CancellationToken,
    held: Arc<AtomicUsize>,
    instance_key: uuid::Uuid,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("task_queue", &self.options.task_queue)
            .field("namespace", &self.namespace)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// `{pid}@{hostname}`.
pub(crate) fn default_identity() -> String {
    format!("{}@{}", std::process::id(), hostname())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Worker {
    /// Creates a worker for `client`'s namespace and database.
    ///
    /// # Errors
    /// When nothing is registered, or the options ask for something DBOSify cannot honour
    /// (see [`WorkerOptions::unsupported`]).
    pub fn new(
        runtime: &Runtime,
        client: Client,
        options: WorkerOptions,
    ) -> Result<Self, WorkerCreateError> {
        let identity = client.connection().identity().to_string();
        let mut worker = Self::new_with_target(
            runtime,
            client.connection().database_url(),
            &client.options().namespace,
            &identity,
            client.options().data_converter.clone(),
            options,
        )?;
        worker.client = Some(client);
        Ok(worker)
    }

    /// Creates a worker from the raw pieces a client would provide. Used by tests and tools.
    ///
    /// # Errors
    /// As [`Worker::new`].
    #[doc(hidden)]
    pub fn new_with_target(
        runtime: &Runtime,
        database_url: &str,
        namespace: &str,
        client_identity: &str,
        data_converter: DataConverter,
        options: WorkerOptions,
    ) -> Result<Self, WorkerCreateError> {
        let problems = options.unsupported();
        if !problems.is_empty() {
            return Err(WorkerCreateError::Initialization(anyhow::anyhow!(
                "{}",
                problems.join("; ")
            )));
        }
        protocol::schema_for_namespace(namespace)
            .map_err(|e| WorkerCreateError::Initialization(anyhow::anyhow!(e)))?;
        let identity = options
            .client_identity_override
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| (!client_identity.is_empty()).then(|| client_identity.to_string()))
            .unwrap_or_else(default_identity);
        Ok(Self {
            runtime: runtime.clone(),
            options,
            database_url: database_url.to_string(),
            namespace: namespace.to_string(),
            identity,
            data_converter,
            client: None,
            shutdown: CancellationToken::new(),
            held: Arc::new(AtomicUsize::new(0)),
            instance_key: uuid::Uuid::new_v4(),
        })
    }

    /// The task queue this worker serves.
    pub fn task_queue(&self) -> &str {
        &self.options.task_queue
    }

    /// A function that starts a graceful shutdown: the worker stops claiming runs, lets running
    /// activities finish for `graceful_shutdown_period`, then `run()` returns `Ok`.
    pub fn shutdown_handle(&self) -> impl Fn() + use<> {
        let token = self.shutdown.clone();
        move || token.cancel()
    }

    /// How many runs this worker holds right now.
    pub fn cached_workflows(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A key unique to this worker instance.
    pub fn worker_instance_key(&self) -> uuid::Uuid {
        self.instance_key
    }

    /// The worker identity (its executor id).
    #[doc(hidden)]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Runs the worker until shutdown is requested (then returns `Ok`) or it cannot continue.
    ///
    /// # Errors
    /// [`WorkerRunError::Validation`] when the namespace's database cannot be opened;
    /// [`WorkerRunError::Fatal`] when the worker cannot continue.
    pub async fn run(&mut self) -> Result<(), WorkerRunError> {
        let url = self.database_url.clone();
        let namespace = self.namespace.clone();
        let main = self.runtime.handle().clone();
        let connect_handle = main.clone();
        // The pool and its LISTEN connection must live on the main runtime: connect through its
        // handle (on a blocking thread, which also keeps this future `Send`).
        let db: SystemDatabase = tokio::task::spawn_blocking(move || {
            connect_handle.block_on(protocol::system_database(&url, &namespace))
        })
        .await
        .map_err(|e| WorkerRunError::fatal("the worker's runtime is gone", e))?
        .map_err(|e| {
            WorkerRunError::Validation(WorkerValidationError::NamespaceDescribeError {
                source: Box::new(e),
                namespace: self.namespace.clone(),
            })
        })?;
        let task_queue = self.options.task_queue.clone();
        let has_workflows = !self.options.workflows().is_empty();
        let has_activities = !self.options.activities().is_empty();
        // Workflow runs wait in the task queue; standalone activities in its activity queue.
        let workflow_queues: Vec<String> = if has_workflows {
            vec![task_queue.clone()]
        } else {
            Vec::new()
        };
        let activity_queues: Vec<String> = if has_activities {
            vec![protocol::activity_queue(&task_queue)]
        } else {
            Vec::new()
        };
        let queues: Vec<String> = workflow_queues
            .iter()
            .chain(activity_queues.iter())
            .cloned()
            .collect();
        if has_workflows
            && db
                .queue_config(&task_queue)
                .await
                .map_err(|e| WorkerRunError::fatal("cannot read the task queue", e))?
                .is_none()
        {
            db.register_queue(&QueueConfig {
                name: task_queue.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| WorkerRunError::fatal("cannot register the task queue", e))?;
        }
        let executor = db
            .register_executor(ExecutorOptions::new(self.identity.clone()))
            .await
            .map_err(|e| WorkerRunError::fatal("cannot register the worker's executor", e))?;

        let (workflows, activities, act_interceptors, wf_interceptors) =
            self.options.take_registrations();
        let mut fail_types = std::collections::HashSet::new();
        for (t, set) in &self.options.workflow_types_to_failure_errors {
            if set.contains(&crate::runtime::WorkflowErrorType::Nondeterminism) {
                fail_types.insert(t.clone());
            }
        }
        let threads_n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        let engine = Arc::new(Engine {
            db: db.clone(),
            main: main.clone(),
            executor_id: self.identity.clone(),
            namespace: self.namespace.clone(),
            task_queue: task_queue.clone(),
            data_converter: self.data_converter.clone(),
            client: self.client.clone(),
            workflows,
            activities,
            activity_interceptors: act_interceptors.into(),
            workflow_interceptors: wf_interceptors,
            settings: EngineSettings {
                detect_nondeterminism: self.options.detect_nondeterministic_futures,
                nondeterminism_fails_all: self
                    .options
                    .workflow_failure_errors
                    .contains(&crate::runtime::WorkflowErrorType::Nondeterminism),
                nondeterminism_fails_types: fail_types,
                default_heartbeat_throttle: self.options.default_heartbeat_throttle_interval,
                max_heartbeat_throttle: self.options.max_heartbeat_throttle_interval,
                cache_per_thread: self.options.max_cached_workflows.div_ceil(threads_n),
            },
            activity_slots: Arc::new(Semaphore::new(self.options.tuner.activity_slots())),
            stopping: CancellationToken::new(),
            halt: CancellationToken::new(),
            held: AtomicUsize::new(0),
            running_activities: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        // Whatever happens to this future (returned, dropped), the engine halts with it.
        let _halt_guard = engine.halt.clone().drop_guard();
        let threads = WorkflowThreads::start(&engine, threads_n)
            .map_err(|e| WorkerRunError::fatal("cannot start workflow threads", e))?;
        // Queries on closed runs of this task queue (replayed here, answered, discarded).
        let closed_queries =
            has_workflows.then(|| tokio::spawn(crate::engine::queries::serve(engine.clone())));
        // Due schedules of the namespace are fired by every worker.
        let scheduler_stop = CancellationToken::new();
        let scheduler = main.spawn(crate::scheduler::run(db.clone(), scheduler_stop.clone()));
        let _scheduler_guard = scheduler_stop.clone().drop_guard();
        info!(task_queue = %task_queue, identity = %self.identity, "worker started");

        if !queues.is_empty() {
            match db.recover_own_runs(&self.identity).await {
                Ok(runs) => {
                    for s in runs {
                        dispatch(&threads, &engine, s, None);
                    }
                }
                Err(e) => warn!(error = %e, "cannot recover this worker's earlier runs"),
            }
            take_over_dead_local_workers(&db, &self.identity).await;
        }

        let claim_batch = self.options.tuner.workflow_slots().clamp(1, CLAIM_BATCH);
        // Whether each queue set may have claimable work: cleared by a claim that found less
        // than it asked for, set again by a wake-up of one of its queues, or by a wait that
        // ended without one (the fallback: a delay may have fallen due). A worker thus issues
        // one claim per wake-up, not one per queue set.
        let (mut workflows_maybe, mut activities_maybe) = (true, true);
        while !self.shutdown.is_cancelled() {
            self.held
                .store(engine.held_runs(), std::sync::atomic::Ordering::Release);
            if queues.is_empty() {
                self.shutdown.cancelled().await;
                break;
            }
            let waiter = db.register_work_waiter(&queues);
            let free = if has_workflows {
                MAX_HELD_RUNS.saturating_sub(engine.held_runs())
            } else {
                0
            };
            // Standalone activities: claimed only while an activity slot is free, so a busy
            // worker leaves them to others.
            let activity_free = if has_activities {
                engine.activity_slots.available_permits().min(CLAIM_BATCH)
            } else {
                0
            };
            if activities_maybe && activity_free > 0 {
                match db
                    .claim(&self.identity, &activity_queues, activity_free)
                    .await
                {
                    Ok(runs) => {
                        activities_maybe = runs.len() == activity_free;
                        for s in runs {
                            dispatch(&threads, &engine, s, None);
                        }
                    }
                    Err(e) => warn!(error = %e, "claiming standalone activities failed; retrying"),
                }
            }
            if workflows_maybe && free > 0 {
                let want = free.min(claim_batch);
                // Wake-ups from here on are known to the runs claimed now (their inbox and
                // status waiters start from this mark).
                let mark = db.wake_mark();
                match db.claim(&self.identity, &workflow_queues, want).await {
                    Ok(runs) => {
                        workflows_maybe = runs.len() == want;
                        for s in runs {
                            dispatch(&threads, &engine, s, Some(mark));
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "claiming runs failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = self.shutdown.cancelled() => break,
                        }
                        continue;
                    }
                }
            }
            if (workflows_maybe && free > 0) || (activities_maybe && activity_free > 0) {
                continue;
            }
            tokio::select! {
                woken = waiter.wait_woken(CLAIM_FALLBACK) => match woken {
                    Some(woken) => {
                        for q in woken {
                            workflows_maybe |= workflow_queues.contains(&q);
                            activities_maybe |= activity_queues.contains(&q);
                        }
                    }
                    None => (workflows_maybe, activities_maybe) = (true, true),
                },
                _ = self.shutdown.cancelled() => break,
                _ = engine.changed.notified(), if (has_workflows && free == 0) || (has_activities && activity_free == 0) => {}
            }
        }

        // Graceful shutdown: no more claims; let running activities finish for the grace period.
        engine.stopping.cancel();
        if let Some(period) = self.options.graceful_shutdown_period {
            let deadline = tokio::time::Instant::now() + period;
            while engine
                .running_activities
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::select! {
                    _ = engine.changed.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        engine.halt.cancel();
        scheduler_stop.cancel();
        let _ = scheduler.await;
        if let Some(t) = closed_queries {
            let _ = t.await;
        }
        let _ = tokio::task::spawn_blocking(move || threads.join()).await;
        executor.shutdown().await;
        info!(task_queue = %task_queue, "worker stopped");
        Ok(())
    }
}

/// Hands a claimed row to its runner: standalone activities run on the main runtime, workflow
/// runs on their workflow thread.
fn dispatch(
    threads: &WorkflowThreads,
    engine: &Arc<Engine>,
    status: dbos_core::WorkflowStatus,
    mark: Option<dbos_core::Mark>,
) {
    if protocol::is_activity_run(&status.workflow_id) {
        engine
            .main
            .spawn(crate::engine::standalone::run(engine.clone(), status));
    } else {
        threads.dispatch(engine, status, mark);
    }
}

/// A worker killed on this host leaves its executor row behind until its lease lapses. Workers
/// started by default are named `{pid}@{hostname}`, so a new worker on the same host can tell
/// that such a predecessor's process is gone and take its runs over at once instead of after the
/// lease. Executors on other hosts (or with other identities) are left to their leases.
async fn take_over_dead_local_workers(db: &SystemDatabase, me: &str) {
    let executors = match db.list_executors().await {
        Ok(list) => list,
        Err(e) => {
            warn!(error = %e, "cannot list executors");
            return;
        }
    };
    let host = hostname();
    let dead: Vec<String> = executors
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| id != me && local_process_is_gone(id, &host))
        .collect();
    if dead.is_empty() {
        return;
    }
    match db.take_over_executors(me, &dead).await {
        Ok(moved) => info!(executors = ?dead, runs = moved, "took over runs of dead local workers"),
        Err(e) => warn!(error = %e, "cannot take over dead local workers"),
    }
}

/// Whether `identity` is `{pid}@{host}` for this host and no process with that pid exists.
fn local_process_is_gone(identity: &str, host: &str) -> bool {
    let Some((pid, id_host)) = identity.split_once('@') else {
        return false;
    };
    if id_host != host {
        return false;
    }
    match pid.parse::<u32>() {
        Ok(pid) if pid != std::process::id() => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{hostname, local_process_is_gone};

    #[test]
    fn only_dead_local_default_identities_count_as_gone() {
        let host = hostname();
        let parent = std::os::unix::process::parent_id();
        assert!(
            !local_process_is_gone(&format!("{parent}@{host}"), &host),
            "live process"
        );
        assert!(!local_process_is_gone(
            &format!("{}@{host}", std::process::id()),
            &host
        ));
        // Beyond Linux's largest possible pid (2^22), so no such process can exist.
        assert!(local_process_is_gone(
            &format!("{}@{host}", 1u32 << 23),
            &host
        ));
        assert!(
            !local_process_is_gone(&format!("{}@elsewhere", 1u32 << 23), &host),
            "other host"
        );
        assert!(
            !local_process_is_gone("custom-identity", &host),
            "not a default identity"
        );
    }
}
