//! The giveback client (F4): partner state block, failure detection, takeover and
//! coordinated bring-up (GIVEWAIT / MBWAIT).
