//! Slot tuning. Only fixed-size slot suppliers exist here; resource-based tuning (which sizes
//! slots by CPU and memory use) is not implemented.

use std::fmt::Debug;

const DEFAULT_FIXED_SIZE_SLOTS: usize = 100;

/// A worker tuner configuration.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum WorkerTuner {
    /// Slot suppliers chosen per task type.
    TunerHolder(TunerHolder),
}

impl WorkerTuner {
    /// Slots for workflow runs held at once.
    pub(crate) fn workflow_slots(&self) -> usize {
        match self {
            WorkerTuner::TunerHolder(t) => t.workflow_task_slot_supplier.slots(),
        }
    }

    /// Activities (remote) executed at once.
    pub(crate) fn activity_slots(&self) -> usize {
        match self {
            WorkerTuner::TunerHolder(t) => t.activity_task_slot_supplier.slots(),
        }
    }
}

impl Default for WorkerTuner {
    fn default() -> Self {
        TunerHolder::builder()
            .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(DEFAULT_FIXED_SIZE_SLOTS))
            .activity_task_slot_supplier(FixedSizeSlotSupplier::new(DEFAULT_FIXED_SIZE_SLOTS))
            .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(DEFAULT_FIXED_SIZE_SLOTS))
            .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(DEFAULT_FIXED_SIZE_SLOTS))
            .build()
            .into()
    }
}

impl From<TunerHolder> for WorkerTuner {
    fn from(value: TunerHolder) -> Self {
        Self::TunerHolder(value)
    }
}

/// Slot suppliers chosen per task type.
#[derive(Clone, Debug, bon::Builder)]
#[builder(state_mod(vis = "pub"))]
#[non_exhaustive]
pub struct TunerHolder {
    /// Workflow-task slots: how many runs this worker holds (claims) at once.
    #[builder(into)]
    pub workflow_task_slot_supplier: SlotSupplier,
    /// Activity-task slots.
    #[builder(into)]
    pub activity_task_slot_supplier: SlotSupplier,
    /// Local-activity slots.
    #[builder(into)]
    pub local_activity_task_slot_supplier: SlotSupplier,
    /// Nexus-task slots (Nexus is not supported; accepted and unused).
    #[builder(into)]
    pub nexus_task_slot_supplier: SlotSupplier,
}

/// A fixed number of slots.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FixedSizeSlotSupplier {
    /// The number of slots.
    pub num_slots: usize,
}

impl FixedSizeSlotSupplier {
    /// A supplier of `num_slots` slots.
    pub fn new(num_slots: usize) -> Self {
        Self { num_slots }
    }
}

/// Supplies slots for one task type.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SlotSupplier {
    /// A fixed number of slots.
    FixedSize(FixedSizeSlotSupplier),
}

impl SlotSupplier {
    fn slots(&self) -> usize {
        match self {
            SlotSupplier::FixedSize(f) => f.num_slots.max(1),
        }
    }
}

impl From<FixedSizeSlotSupplier> for SlotSupplier {
    fn from(value: FixedSizeSlotSupplier) -> Self {
        Self::FixedSize(value)
    }
}
