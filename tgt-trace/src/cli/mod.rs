//! The commands behind the command line, one module each. Each turns its
//! options into a call of the library and its result into output and a
//! documented exit code; errors become messages in `main`.

pub mod args;
pub mod check;
pub mod man;
pub mod probes;
pub mod record;
pub mod replay;
pub mod serve;

/// Exit codes, as the README documents them.
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 3;
}
