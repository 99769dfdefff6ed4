//! The in-process tests, one binary (each test binary links the whole crate): the simulations
//! and models in virtual time, the wire formats and configuration, and the fabric, manager and
//! clients on the soft provider over loopback (in-process nodes and node processes). The
//! fabric suite across the ilA/ilB namespaces (`fabric_tcp::netns`) is selected explicitly with
//! `--ignored` after `soft-roce/netns-up`.

mod executor;
#[path = "../giveback_journal/mod.rs"]
mod giveback_journal;
mod manager_common;
#[path = "../manager_pair/mod.rs"]
mod manager_pair;
#[path = "../messaging_sim/mod.rs"]
mod messaging_sim;
#[path = "../mirror_log_sim/mod.rs"]
mod mirror_log_sim;
#[path = "../suite/mod.rs"]
mod suite;

mod bad_input;
mod example_service;
mod fabric_sim;
mod fabric_tcp;
mod giveback_loopback;
mod giveback_sim;
mod manager_config;
mod manager_control;
mod manager_heartbeat;
mod manager_loopback;
mod manager_placement;
mod manager_session;
mod manager_wire;
mod messaging_loopback;
mod messaging_window;
mod metrics_endpoint;
mod mirror_log;
mod mirror_log_model;
mod mirror_loopback;
mod mirror_nvram_loss;
mod mirror_writeback;
mod mirror_writeback_loopback;
mod node_instance;
mod security_handshake;
mod security_regions;
mod security_rkeys;
mod unsafe_audit;
