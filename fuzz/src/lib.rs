//! Fuzz harnesses for every decoder of peer input in interlink.
//!
//! Each module has `run(data)` (what its libFuzzer target in `fuzz_targets/` calls) and
//! `seeds()` (real encoded values, written to `corpus/<target>/` by the `seeds` test). A
//! harness panics only on a real defect: a decoder panicking, an accepted input that does not
//! round-trip, or (for `soft_access`) a remote access the model says must be refused.
//!
//! Inputs of targets that cover several decoders start with a selector byte (module docs).

pub mod atomic_table;
pub mod control_request;
pub mod giveback_state;
pub mod log_image;
pub mod manager_session;
pub mod manager_wire;
pub mod messaging_wire;
pub mod soft_access;
pub mod soft_packet;
pub mod writeback_message;

/// A fuzz target: its name (= binary and corpus directory), harness and seed inputs.
pub struct Target {
    /// Binary name, also the corpus directory under `corpus/`.
    pub name: &'static str,
    /// The harness.
    pub run: fn(&[u8]),
    /// Seed inputs built from real encoded values.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "manager_wire",
        run: manager_wire::run,
        seeds: manager_wire::seeds,
    },
    Target {
        name: "manager_session",
        run: manager_session::run,
        seeds: manager_session::seeds,
    },
    Target {
        name: "messaging_wire",
        run: messaging_wire::run,
        seeds: messaging_wire::seeds,
    },
    Target {
        name: "giveback_state",
        run: giveback_state::run,
        seeds: giveback_state::seeds,
    },
    Target {
        name: "log_image",
        run: log_image::run,
        seeds: log_image::seeds,
    },
    Target {
        name: "writeback_message",
        run: writeback_message::run,
        seeds: writeback_message::seeds,
    },
    Target {
        name: "atomic_table",
        run: atomic_table::run,
        seeds: atomic_table::seeds,
    },
    Target {
        name: "control_request",
        run: control_request::run,
        seeds: control_request::seeds,
    },
    Target {
        name: "soft_packet",
        run: soft_packet::run,
        seeds: soft_packet::seeds,
    },
    Target {
        name: "soft_access",
        run: soft_access::run,
        seeds: soft_access::seeds,
    },
];

/// The check on every rejection: it is a typed error (the bound) whose `Display` and
/// `Debug` render without panicking and say something.
pub fn rejected<E: std::error::Error>(e: &E) {
    assert!(!e.to_string().is_empty(), "empty error message: {e:?}");
}

/// `selector` followed by `body`: the input of a multi-decoder target.
pub fn tagged(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(selector);
    v.extend_from_slice(body);
    v
}
