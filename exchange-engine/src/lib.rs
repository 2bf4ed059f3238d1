//! Order book and matching: pure and deterministic
