//! temporal-compat-client (work in progress).
