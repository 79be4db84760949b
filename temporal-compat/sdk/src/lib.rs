//! temporal-compat (work in progress).
