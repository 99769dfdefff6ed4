//! Messaging (F3): ordered, acknowledged message function calls between the two controllers,
//! on top of a manager client.
//!
//! - [`wire`]: frames and messages, byte by byte (also in `docs/wire-formats.md`).
//! - [`Window`]: the sans-IO sliding window: framing, aggregation, build on demand, in-order
//!   exactly-once delivery, acks, retransmission, calls with responses, control slots.
//! - [`Messenger`]: the driver that binds a window to a manager client: named receive rings
//!   written by RDMA WRITE with immediate, failover, partner failure.

pub mod call_future;
pub mod error;
pub mod messenger;
pub mod outbox;
pub mod window;
pub mod wire;

pub use call_future::CallFuture;
pub use error::MessagingError;
pub use messenger::{CallError, MessageHandler, Messenger, MessengerConfig, MessengerStats};
pub use outbox::{
    AckStatus, BuildFn, CallFailure, CallId, Class, Handler, Head, IncomingCall, Message,
    MessageId, Outbox,
};
pub use window::{Arrival, Transmit, Window, WindowConfig, WindowStats};
