//! The giveback client (F4): partner state block, failure detection, takeover and
//! coordinated bring-up (GIVEWAIT / MBWAIT).
//!
//! - [`state`] holds the node states and the state block published in the health block (F4.1).
//! - [`mailbox`] is the two-copy on-disk mailbox and its file reference implementation.
//! - [`reservation`] is disk reservations (the SCSI persistent reservation stand-in).
//! - [`error`] is [`GivebackError`].

pub mod error;
pub mod mailbox;
pub mod reservation;
pub mod state;

pub use error::{FormatError, GivebackError};
pub use mailbox::{FileMailbox, Mailbox, MailboxRecord, MailboxWrite};
pub use reservation::{DiskSet, FileReservations, Reservations};
pub use state::{NodeState, PartnerRead, StateBlock};
