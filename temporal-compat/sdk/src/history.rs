//! The durable history of a run: one dbos-core checkpoint per activation.
//!
//! Checkpoint `k` (function id `k`, name [`ACTIVATION_STEP`]) holds activation `k` exactly as it
//! was fed to the workflow (jobs, timestamp, seed), prost-encoded and base64'd, preceded by a
//! summary of the commands activation `k - 1` produced (`kind[:seq]` items), which replay
//! compares against. Activation 0 (the `InitializeWorkflow` activation) is not written when it
//! carries nothing but the initialization job: it is rebuilt from the run row (its timestamp is
//! the run's creation time, its randomness seed a hash of the run id and that time).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use prost::Message as _;
use temporalio_common_wasm::protos::coresdk::workflow_activation::WorkflowActivation;
use temporalio_common_wasm::protos::coresdk::workflow_activation::WorkflowActivationJob;
use temporalio_common_wasm::protos::coresdk::workflow_activation::workflow_activation_job::Variant;
use temporalio_common_wasm::protos::coresdk::workflow_commands::WorkflowCommand;
use temporalio_common_wasm::protos::coresdk::workflow_commands::workflow_command::Variant as Cmd;

/// The step name of activation checkpoints.
pub(crate) const ACTIVATION_STEP: &str = "activation";

/// One recorded activation and the summary of the commands of the activation before it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recorded {
    /// Commands of the previous activation (empty for activation 0).
    pub previous_commands: Vec<CommandKey>,
    /// The activation as fed.
    pub activation: WorkflowActivation,
}

/// A command's identity for nondeterminism checks: its kind and (when it has one) sequence
/// number or id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandKey {
    /// Short kind code.
    pub kind: &'static str,
    /// Sequence number or id, when the kind has one.
    pub id: Option<String>,
}

impl std::fmt::Display for CommandKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{}:{}", self.kind, id),
            None => f.write_str(self.kind),
        }
    }
}

const KINDS: &[&str] = &[
    "timer",
    "act",
    "cancel_timer",
    "complete",
    "fail",
    "can",
    "cancel",
    "patch",
    "child",
    "cancel_child",
    "cancel_ext",
    "signal_ext",
    "cancel_signal",
    "local_act",
    "cancel_local_act",
    "upsert_sa",
    "modify_props",
    "nexus",
    "cancel_nexus",
    "cancel_act",
];

fn kind_code(s: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| *k == s)
}

/// The key of a command, or `None` for commands that are not part of history (query answers,
/// update protocol responses).
pub(crate) fn command_key(command: &WorkflowCommand) -> Option<CommandKey> {
    let (kind, id): (&'static str, Option<String>) = match command.variant.as_ref()? {
        Cmd::StartTimer(c) => ("timer", Some(c.seq.to_string())),
        Cmd::ScheduleActivity(c) => ("act", Some(c.seq.to_string())),
        Cmd::RespondToQuery(_) | Cmd::UpdateResponse(_) => return None,
        Cmd::RequestCancelActivity(c) => ("cancel_act", Some(c.seq.to_string())),
        Cmd::CancelTimer(c) => ("cancel_timer", Some(c.seq.to_string())),
        Cmd::CompleteWorkflowExecution(_) => ("complete", None),
        Cmd::FailWorkflowExecution(_) => ("fail", None),
        Cmd::ContinueAsNewWorkflowExecution(_) => ("can", None),
        Cmd::CancelWorkflowExecution(_) => ("cancel", None),
        Cmd::SetPatchMarker(c) => ("patch", Some(c.patch_id.clone())),
        Cmd::StartChildWorkflowExecution(c) => ("child", Some(c.seq.to_string())),
        Cmd::CancelChildWorkflowExecution(c) => {
            ("cancel_child", Some(c.child_workflow_seq.to_string()))
        }
        Cmd::RequestCancelExternalWorkflowExecution(c) => ("cancel_ext", Some(c.seq.to_string())),
        Cmd::SignalExternalWorkflowExecution(c) => ("signal_ext", Some(c.seq.to_string())),
        Cmd::CancelSignalWorkflow(c) => ("cancel_signal", Some(c.seq.to_string())),
        Cmd::ScheduleLocalActivity(c) => ("local_act", Some(c.seq.to_string())),
        Cmd::RequestCancelLocalActivity(c) => ("cancel_local_act", Some(c.seq.to_string())),
        Cmd::UpsertWorkflowSearchAttributes(_) => ("upsert_sa", None),
        Cmd::ModifyWorkflowProperties(_) => ("modify_props", None),
        Cmd::ScheduleNexusOperation(c) => ("nexus", Some(c.seq.to_string())),
        Cmd::RequestCancelNexusOperation(c) => ("cancel_nexus", Some(c.seq.to_string())),
    };
    Some(CommandKey { kind, id })
}

/// The keys of the commands that belong to history, in order.
pub(crate) fn command_keys(commands: &[WorkflowCommand]) -> Vec<CommandKey> {
    commands.iter().filter_map(command_key).collect()
}

fn encode_keys(keys: &[CommandKey]) -> String {
    keys.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_keys(text: &str) -> Result<Vec<CommandKey>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|item| {
            let (kind, id) = match item.split_once(':') {
                Some((k, id)) => (k, Some(id.to_string())),
                None => (item, None),
            };
            let kind = kind_code(kind).ok_or_else(|| format!("unknown command kind `{kind}`"))?;
            Ok(CommandKey { kind, id })
        })
        .collect()
}

/// The checkpoint text of a recorded activation.
pub(crate) fn encode(record: &Recorded) -> String {
    format!(
        "{}\n{}",
        encode_keys(&record.previous_commands),
        B64.encode(record.activation.encode_to_vec())
    )
}

/// Parses a checkpoint written by [`encode`].
pub(crate) fn decode(text: &str) -> Result<Recorded, String> {
    let (keys, body) = text
        .split_once('\n')
        .ok_or_else(|| "activation checkpoint without a command summary".to_string())?;
    let bytes = B64
        .decode(body.trim())
        .map_err(|e| format!("activation checkpoint is not base64: {e}"))?;
    let activation = WorkflowActivation::decode(bytes.as_slice())
        .map_err(|e| format!("activation checkpoint does not decode: {e}"))?;
    Ok(Recorded {
        previous_commands: decode_keys(keys)?,
        activation,
    })
}

/// Core's job order within an activation: initialization, patches, random seed updates,
/// signals and updates (in arrival order), other resolutions and cancel, then local-activity
/// resolutions. Queries never share an activation with other jobs.
fn job_rank(job: &WorkflowActivationJob) -> u8 {
    match job.variant.as_ref() {
        Some(Variant::InitializeWorkflow(_)) => 0,
        Some(Variant::NotifyHasPatch(_)) => 1,
        Some(Variant::UpdateRandomSeed(_)) => 2,
        Some(Variant::SignalWorkflow(_)) | Some(Variant::DoUpdate(_)) => 3,
        Some(Variant::ResolveActivity(r)) if r.is_local => 5,
        Some(Variant::QueryWorkflow(_)) => 6,
        Some(Variant::RemoveFromCache(_)) => 7,
        _ => 4,
    }
}

/// Sorts jobs into Core's order (stable: arrival order within a class).
pub(crate) fn order_jobs(jobs: &mut [WorkflowActivationJob]) {
    jobs.sort_by_key(job_rank);
}

/// A deterministic randomness seed for a run (FNV-1a of the run id and its creation time).
pub(crate) fn seed_for(run_id: &str, created_at_ms: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in run_id
        .as_bytes()
        .iter()
        .chain(created_at_ms.to_le_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use temporalio_common_wasm::protos::coresdk::workflow_activation::{
        FireTimer, InitializeWorkflow, ResolveActivity, SignalWorkflow,
    };
    use temporalio_common_wasm::protos::coresdk::workflow_commands::{
        ScheduleActivity, StartTimer,
    };

    fn job(v: Variant) -> WorkflowActivationJob {
        WorkflowActivationJob { variant: Some(v) }
    }

    #[test]
    fn round_trip() {
        let record = Recorded {
            previous_commands: command_keys(&[
                Cmd::ScheduleActivity(ScheduleActivity {
                    seq: 1,
                    ..Default::default()
                })
                .into(),
                Cmd::StartTimer(StartTimer {
                    seq: 2,
                    ..Default::default()
                })
                .into(),
            ]),
            activation: WorkflowActivation {
                run_id: "r".into(),
                jobs: vec![job(Variant::FireTimer(FireTimer { seq: 2 }))],
                ..Default::default()
            },
        };
        let text = encode(&record);
        assert!(text.starts_with("act:1,timer:2\n"), "{text}");
        assert_eq!(decode(&text).unwrap(), record);
        assert!(decode("nonsense").is_err());
    }

    #[test]
    fn jobs_are_ordered_like_core() {
        let mut jobs = vec![
            job(Variant::ResolveActivity(ResolveActivity {
                seq: 1,
                is_local: true,
                ..Default::default()
            })),
            job(Variant::FireTimer(FireTimer { seq: 1 })),
            job(Variant::SignalWorkflow(SignalWorkflow {
                signal_name: "a".into(),
                ..Default::default()
            })),
            job(Variant::InitializeWorkflow(InitializeWorkflow::default())),
            job(Variant::SignalWorkflow(SignalWorkflow {
                signal_name: "b".into(),
                ..Default::default()
            })),
        ];
        order_jobs(&mut jobs);
        let names: Vec<u8> = jobs.iter().map(job_rank).collect();
        assert_eq!(names, vec![0, 3, 3, 4, 5]);
        match (&jobs[1].variant, &jobs[2].variant) {
            (Some(Variant::SignalWorkflow(a)), Some(Variant::SignalWorkflow(b))) => {
                assert_eq!((a.signal_name.as_str(), b.signal_name.as_str()), ("a", "b"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seeds_are_deterministic() {
        assert_eq!(seed_for("w", 5), seed_for("w", 5));
        assert_ne!(seed_for("w", 5), seed_for("w", 6));
    }
}
