//! Manager wire format (placeholder; implemented by the wire work).
