//! The fabric suite on the soft provider over TCP: on loopback, and across the ilA/ilB network
//! namespaces (`soft-roce/netns-up`, root). The namespace tests are selected explicitly with
//! `--ignored` (the README's test command does so after creating the namespaces); selected
//! without the namespaces they fail.
mod suite;
use suite::Pair;

mod loopback {
    use super::*;
    fabric_suite!(Pair::tcp_loopback; cut: no);
}

mod netns {
    use super::*;
    fabric_suite!(Pair::tcp_netns, #[ignore = "needs soft-roce/netns-up (root); run with --ignored"]; cut: yes);
}
