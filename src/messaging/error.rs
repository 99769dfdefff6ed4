//! Errors of the messaging layer.

use super::wire::WireError;
use crate::fabric::FabricError;
use crate::manager::ManagerError;
use thiserror::Error;

/// Result of messaging operations.
pub type Result<T, E = MessagingError> = std::result::Result<T, E>;

/// What went wrong in the messaging layer. Variants are named after the failed operation.
#[derive(Debug, Error)]
pub enum MessagingError {
    /// A window configuration value is out of range.
    #[error("configure window: {0}")]
    Config(String),
    /// A message was refused before queueing (reserved code or flags, payload too large).
    #[error("queue message (function {code}): {reason}")]
    Queue {
        /// Function code.
        code: u8,
        /// Why.
        reason: String,
    },
    /// The send queue holds its maximum number of messages.
    #[error("queue message (function {code}): {queued} messages already waiting for frame space")]
    QueueFull {
        /// Function code.
        code: u8,
        /// Messages waiting.
        queued: usize,
    },
    /// A response names a call of an earlier conversation (the partner was declared failed or
    /// restarted since the call arrived).
    #[error("respond to call {call_id}: the call belongs to an earlier conversation")]
    StaleCall {
        /// The call.
        call_id: u64,
    },
    /// The partner's messenger of the same name states a different window (slots, frame
    /// size, payload limit): refused at connect, nothing is sent. Both nodes must use the same
    /// [`WindowConfig`](crate::messaging::WindowConfig).
    #[error("messaging client {name}: refused by the partner: {mismatch}")]
    Refused {
        /// Client name.
        name: String,
        /// The term and both values.
        mismatch: crate::manager::TermMismatch,
    },
    /// A frame or immediate value from the partner was malformed.
    #[error(transparent)]
    Decode(#[from] WireError),
    /// Registering the messaging client with the manager failed.
    #[error("register messaging client {name}: {source}")]
    Register {
        /// Client name.
        name: String,
        /// The manager's error.
        source: ManagerError,
    },
    /// A fabric operation of the driver failed.
    #[error("{op} (messaging client {name}): {source}")]
    Fabric {
        /// The operation.
        op: &'static str,
        /// Client name.
        name: String,
        /// The fabric's error.
        source: FabricError,
    },
    /// The driver thread could not be started.
    #[error("start messaging driver {name}: {source}")]
    Spawn {
        /// Client name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No connection came up within the deadline of a wait for one.
    #[error("wait for a connection of messaging client {name}: none within {waited:?} ({connections} connections so far, partner declared failed {partner_failures} times)")]
    NotConnected {
        /// Client name.
        name: String,
        /// How long the call waited.
        waited: std::time::Duration,
        /// Connections established before (0: never connected).
        connections: u64,
        /// Times the partner was declared failed.
        partner_failures: u64,
    },
    /// The messenger was stopped.
    #[error("messaging client {name} is stopped")]
    Stopped {
        /// Client name.
        name: String,
    },
    /// A blocking call would wait on the thread that must deliver its response.
    #[error("call (function {code}) from a handler of messaging client {name}: a synchronous call inside a handler would deadlock; use call_async")]
    Reentrant {
        /// Function code.
        code: u8,
        /// Client name.
        name: String,
    },
}
