//! A fault-injecting TCP proxy (placeholder).
