//! Workflow threads: workflow instances hold `Rc`s, so each run lives on one dedicated thread
//! (a current-thread tokio runtime driving a `LocalSet`) for as long as this worker holds it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use dbos_core::{Mark, WorkflowStatus};
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::Engine;
use super::run;

/// The pool of workflow threads of one worker.
pub(crate) struct WorkflowThreads {
    senders: Vec<mpsc::UnboundedSender<(WorkflowStatus, Option<Mark>)>>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl WorkflowThreads {
    /// Starts `n` workflow threads.
    pub(crate) fn start(engine: &Arc<Engine>, n: usize) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(n);
        let mut joins = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<(WorkflowStatus, Option<Mark>)>();
            let engine = engine.clone();
            let join = std::thread::Builder::new()
                .name(format!("temporal-wf-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            error!(error = %e, "cannot start a workflow thread runtime");
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        loop {
                            tokio::select! {
                                status = rx.recv() => match status {
                                    Some((status, mark)) => {
                                        tokio::task::spawn_local(run::drive(engine.clone(), status, mark));
                                    }
                                    None => break,
                                },
                                _ = engine.halt.cancelled() => break,
                            }
                        }
                    });
                    // Dropping the LocalSet drops every run task still on it.
                    drop(local);
                })?;
            senders.push(tx);
            joins.push(join);
        }
        Ok(Self { senders, joins })
    }

    /// Hands a claimed run to its thread (chosen by run id, so a run always lands on the same
    /// thread within this worker). `mark`, when the run was just claimed, is the wake-up mark
    /// taken before the claim.
    pub(crate) fn dispatch(&self, engine: &Engine, status: WorkflowStatus, mark: Option<Mark>) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        status.workflow_id.hash(&mut h);
        let i = (h.finish() as usize) % self.senders.len().max(1);
        engine.run_started();
        if let Some(tx) = self.senders.get(i)
            && let Err(e) = tx.send((status, mark))
        {
            warn!(run_id = %e.0.0.workflow_id, "workflow thread is gone; run not started");
            engine.run_ended();
        }
    }

    /// Stops the threads (the caller has halted the engine) and waits for them.
    pub(crate) fn join(self) {
        drop(self.senders);
        for j in self.joins {
            let _ = j.join();
        }
    }
}
