//! Queries addressed to CLOSED runs of this worker's task queue.
//!
//! A client that queries a closed run posts the request to the run's query topic and publishes
//! the hint `closed_run_query_wake(task_queue)`. Every worker of the queue listens for it (one
//! LISTEN connection per process, shared; the hint is only a wake-up, the database is the truth,
//! with the notifier's slow fallback re-check for lost hints). The first worker to claim a request
//! (`take_messages`, `FOR UPDATE SKIP LOCKED`) rebuilds the run by replay on its own workflow
//! thread, answers, and discards the instance.

use std::sync::Arc;
use std::time::Duration;

use dbos_core::WakeKey;
use temporal_compat_client::protocol::{self, QUERY_TOPIC, QueryRequest};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::{Engine, run};

/// Closed runs handled per scan.
const SCAN_BATCH: i64 = 50;
/// Query requests claimed per run per scan.
const TAKE_BATCH: i64 = 100;
/// Re-scan at least this often even without a hint (lost notifications).
const FALLBACK: Duration = Duration::from_secs(5);

type Job = (dbos_core::WorkflowStatus, Vec<QueryRequest>);

/// Serves queries on closed runs until the engine halts. Runs on the main runtime; replays
/// happen on one dedicated workflow thread (instances are `!Send`).
pub(crate) async fn serve(engine: Arc<Engine>) {
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let thread = match start_thread(engine.clone(), rx) {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "cannot start the closed-run query thread; queries on closed runs will not be answered by this worker");
            return;
        }
    };
    let key = WakeKey::Queue(protocol::closed_run_query_wake(&engine.task_queue));
    loop {
        let waiter = engine.db.register_waiter(key.clone());
        let mut full = false;
        match engine
            .db
            .closed_runs_with_messages(&engine.task_queue, QUERY_TOPIC, SCAN_BATCH)
            .await
        {
            Ok(runs) => {
                let batch_full = runs.len() as i64 == SCAN_BATCH;
                let mut claimed_any = false;
                for run_id in runs {
                    if let Some(job) = claim(&engine, &run_id).await {
                        claimed_any = true;
                        if tx.send(job).is_err() {
                            return;
                        }
                    }
                }
                // Scan again at once only if this scan made progress (requests for workflow
                // types this worker does not register stay for other workers).
                full = batch_full && claimed_any;
            }
            Err(e) => warn!(error = %e, "cannot scan for queries on closed runs"),
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = waiter.wait(Some(tokio::time::Instant::now() + FALLBACK)) => {}
            _ = engine.halt.cancelled() => break,
        }
    }
    drop(tx);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}

/// Claims the pending query requests of one closed run.
async fn claim(engine: &Engine, run_id: &str) -> Option<Job> {
    let status = match engine.db.status(run_id).await {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            warn!(run_id, error = %e, "cannot read a closed run");
            return None;
        }
    };
    if engine.workflows.factory(&status.name).is_none() {
        // Another worker of the queue may register it; leave the request for it.
        debug!(run_id, workflow_type = %status.name, "closed-run query for a type this worker does not register");
        return None;
    }
    let taken = match engine
        .db
        .take_messages(run_id, QUERY_TOPIC, TAKE_BATCH)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            warn!(run_id, error = %e, "cannot claim query requests of a closed run");
            return None;
        }
    };
    let queries: Vec<QueryRequest> = taken
        .iter()
        .filter_map(|m| match QueryRequest::decode(&m.body) {
            Ok(q) => Some(q),
            Err(e) => {
                warn!(run_id, error = %e, "dropping an undecodable query");
                None
            }
        })
        .collect();
    (!queries.is_empty()).then_some((status, queries))
}

fn start_thread(
    engine: Arc<Engine>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("temporal-wf-query".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the closed-run query runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                loop {
                    tokio::select! {
                        job = rx.recv() => match job {
                            Some((status, queries)) => {
                                tokio::task::spawn_local(run::answer_closed(engine.clone(), status, queries));
                            }
                            None => break,
                        },
                        _ = engine.halt.cancelled() => break,
                    }
                }
            });
            drop(local);
        })
}
