//! The matcher. (being written)
