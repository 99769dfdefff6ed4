//! Simulated cable pulls for the soft provider over TCP: [`set_cut`] marks a local address as
//! cut, and every soft TCP device of this process bound to it then drops all packets in both
//! directions and reports its port down (within the link monitor's 50 ms period), as a veth
//! or RoCE port does when its link goes down. It is what `interlink demo` uses to cut a link
//! on loopback, where no interface can be taken down without root.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

static CUT: RwLock<Vec<IpAddr>> = RwLock::new(Vec::new());
static ANY_CUT: AtomicBool = AtomicBool::new(false);

/// Cuts (`true`) or restores (`false`) the soft TCP devices bound to `addr` in this process.
pub fn set_cut(addr: IpAddr, cut: bool) {
    let mut v = CUT.write().unwrap_or_else(|e| e.into_inner());
    v.retain(|a| *a != addr);
    if cut {
        v.push(addr);
    }
    ANY_CUT.store(!v.is_empty(), Ordering::SeqCst);
    tracing::info!(%addr, cut, "soft provider: simulated link cut");
}

/// Whether `addr` is cut (see [`set_cut`]). One atomic load while nothing is cut.
pub fn is_cut(addr: IpAddr) -> bool {
    ANY_CUT.load(Ordering::Relaxed)
        && CUT
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_and_restore() {
        let a: IpAddr = "127.99.0.1".parse().unwrap();
        assert!(!is_cut(a));
        set_cut(a, true);
        assert!(is_cut(a));
        set_cut(a, true);
        set_cut(a, false);
        assert!(!is_cut(a));
    }
}
