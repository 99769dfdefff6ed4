//! The node-process tests of the pair across the ilA/ilB namespaces, selected explicitly with
//! `--ignored`: on the soft provider on the host (`soft-roce/netns-up`, root) and on the verbs
//! provider in the Soft-RoCE VM (`INTERLINK_TEST_FABRIC=verbs`). Run with `--test-threads=1`;
//! `soft-roce/test-all` runs each module as its own stage (`-- --ignored manager_netns::`).

mod chaos;
#[path = "../giveback_journal/mod.rs"]
mod giveback_journal;
#[path = "../manager_pair/mod.rs"]
mod manager_pair;
#[path = "../netns_node/mod.rs"]
mod netns_node;

mod chaos_netns;
mod demo;
mod giveback_netns;
mod manager_netns;
mod messaging_netns;
mod mirror_netns;
mod mirror_writeback_netns;
