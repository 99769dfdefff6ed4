//! Sans-IO authenticated bootstrap session (placeholder; implemented by the session work).
