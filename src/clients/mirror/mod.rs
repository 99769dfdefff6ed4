//! The mirror client (F5): NVRAM shadow log mirrored into the partner by RDMA WRITE, replay
//! on takeover, and mirrored write-back with atomic multi-block writes.

pub mod atomic;
pub mod error;
pub mod log;
pub mod log_format;
pub mod log_replay;
pub mod nvram;
pub mod recovery_plan;
pub mod shadow;
pub mod writeback;
pub mod writeback_driver;

/// The rights of the write-back's mirror region `wb-mirror`: the partner may RDMA WRITE into
/// it and nothing else; it never reads it back (the owner reads its copy locally on
/// takeover). The shadow log's `shadow-mirror` also lets the partner READ its own log back
/// ([`shadow::SHADOW_MIRROR_ACCESS`]).
pub const MIRROR_REGION_ACCESS: crate::fabric::Access = crate::fabric::Access::REMOTE_WRITE;

pub use atomic::{
    ultimate_state, AtomicGeometry, AtomicRequest, AtomicWriteTable, BufferEntry, BufferIndex,
    BufferState, RequestState, RequestTag, ResolvedRequest, RieIndex, RieWord, UnitId,
    MAX_ATOMIC_BLOCKS,
};
pub use error::{
    AtomicError, LogError, NvramError, ShadowError, WriteBackError, WriteBackMessageError,
};
pub use log::{LogStats, MirrorWrite, ShadowLog};
pub use log_format::LogImageError;
pub use log_replay::{
    replay, LogPosition, Replay, ReplayCursor, ReplayCursorError, ReplayedRecord, ScanStop,
};
pub use nvram::{
    CacheFlush, DaxMode, DaxNvram, FileNvram, MemoryNvram, NvramBacking, NvramKind, Persistence,
};
pub use recovery_plan::{
    next_generation, plan_fetched, plan_recovery, plan_start, OwnLogKnowledge, RecoveryPlan,
};
pub use shadow::{
    AppendTicket, Appended, Recovered, RecoveryOutcome, ShadowConfig, ShadowMirror, ShadowStats,
};
pub use writeback::{
    BlockRef, CompletionStatus, DataRange, DirtyBlock, DirtyRef, Disposition, Message, MirrorStats,
    PrimaryAction, PrimaryStats, RejectReason, RequestId, RequestRef, Rqr, TakeoverReport,
    WriteBackMirror, WriteBackPrimary,
};
pub use writeback_driver::{
    MirroredWriteBack, WriteBackConfig, WriteBackRecovery, WriteBackStats, WriteTicket,
};
