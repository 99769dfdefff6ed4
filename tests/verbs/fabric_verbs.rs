//! The fabric suite on the verbs provider: Soft-RoCE devices rxe_a0 (198.18.0.1, in ilA) and
//! rxe_b0 (198.18.0.2, in ilB), found by address. Selected explicitly with `--ignored`, inside
//! the Soft-RoCE VM (`soft-roce/vm`); selected where no such device exists, every test fails.
use crate::{fabric_suite, suite};
use suite::Pair;

fabric_suite!(Pair::verbs, #[ignore = "needs Soft-RoCE: run inside soft-roce/vm with --ignored"]; cut: yes);
