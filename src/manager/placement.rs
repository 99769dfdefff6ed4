//! Placement planner (placeholder; implemented by the placement work).
