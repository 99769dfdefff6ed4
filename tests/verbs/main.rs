//! The tests on the verbs provider only, inside the Soft-RoCE VM (`soft-roce/vm`), selected
//! explicitly with `--ignored`: the fabric suite, RDMA FLUSH, the `ibv_rc_pingpong` interop and
//! the NVRAM on emulated persistent memory.

#[path = "../manager_pair/mod.rs"]
mod manager_pair;
#[path = "../netns_node/mod.rs"]
mod netns_node;
#[path = "../suite/mod.rs"]
mod suite;

mod fabric_verbs;
mod interop_rc_pingpong;
mod mirror_dax;
mod mirror_flush_verbs;
