//! The giveback client (F4): partner state block, failure detection, takeover and
//! coordinated bring-up (GIVEWAIT / MBWAIT).
//!
//! - [`state`] holds the node states and the state block published in the health block (F4.1).
//! - [`mailbox`] is the two-copy on-disk mailbox and its file reference implementation.
//! - [`reservation`] is disk reservations (the SCSI persistent reservation stand-in).
//! - [`machine`] is the sans-IO protocol machine, one per node (F4.2-F4.5); [`actions`] is
//!   what it exchanges with its driver.
//! - [`driver`] binds a machine to the manager (state block published in the health block,
//!   the partner's read by the heartbeat), the mailbox, the reservations, the service hooks
//!   and kill messages: [`GivebackNode`]. [`service`] holds the reference hooks.
//! - `lease.rs` is the serving lease ([`ServingLease`]): how long a node may acknowledge
//!   writes without having been taken over.
//! - `writeback_epochs.rs` is [`WriteBackEpochs`]: the mailbox fields that tell a restarted
//!   node its write-back blocks were taken over (and destaged) by its partner.
//! - [`error`] is [`GivebackError`].
//!
//! The failure-detection rule (F4.2), including what an unreadable mailbox means, is
//! documented on the [`machine`] module.

pub mod actions;
mod copy_mark;
mod detector;
pub mod driver;
pub mod error;
mod lease;
pub mod machine;
pub mod mailbox;
mod own_log_mark;
pub mod reservation;
pub mod service;
pub mod state;
mod writeback_epochs;

pub use actions::{
    Action, Command, CommandOutcome, CommandReply, CopyGap, GivebackConfig, GivebackEvent,
    GivebackStatus,
};
pub use copy_mark::{CopyStamp, PartnerCopyMark};
pub use driver::{GivebackNode, GivebackOptions, ServiceHooks};
pub use error::{FormatError, GivebackError};
pub use lease::ServingLease;
pub use machine::GivebackMachine;
pub use mailbox::{
    newest_record, FileMailbox, LogMark, Mailbox, MailboxRecord, MailboxWrite, OwnRecord,
    ReplayedMark,
};
pub use own_log_mark::{OwnLogContext, OwnLogMark, OwnLogStamp, PartnerLogContext};
pub use reservation::{DiskSet, FileReservations, Reservations};
pub use service::JournalHooks;
pub use state::{NodeState, PartnerRead, StateBlock};
pub use writeback_epochs::WriteBackEpochs;
