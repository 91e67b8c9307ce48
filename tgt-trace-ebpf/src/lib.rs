//! Built only for the BPF target; see src/main.rs.
#![no_std]
