//! Samples (work in progress).
