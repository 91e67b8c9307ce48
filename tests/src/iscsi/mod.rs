//! A small iSCSI initiator for tests: one connection per session, blocking
//! TCP to 127.0.0.1, no authentication, no digests.
//!
//! Submitting never waits for the target, so a test can have a command in
//! flight when it sends a task management function. Every PDU sent and
//! received is recorded as an [`Exchange`], to compare with what tgt-trace
//! saw.
//!
//! ```no_run
//! # use tgt_trace_e2e::iscsi::{Command, LoginOptions, Session, Tmf};
//! # fn demo(portal: std::net::SocketAddrV4, iqn: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let mut session = Session::login(portal, &LoginOptions::new("iqn.2026-11.test:a", iqn))?;
//! let read = session.submit(Command::read10(1, 0, 8, 512))?;
//! let abort = session.submit_tmf(Tmf::abort_task(1, read))?;
//! let answer = session.wait_tmf(abort, std::time::Duration::from_secs(5))?;
//! session.logout()?;
//! # Ok(()) }
//! ```

pub mod pdu;
mod session;

pub use pdu::{Pdu, RESERVED_TAG, Residual, decode_lun, encode_lun, encode_text, parse_text};
pub use session::{
    Command, DataDirection, Exchange, LoginOptions, Negotiated, ReceivedKind, Response,
    ScsiResponse, SentKind, Session, TaskAttr, Tmf, TmfFunction, TmfResponse,
};

use std::{fmt, io, time::Duration};

/// An initiator task tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Itt(pub u32);

impl fmt::Display for Itt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Task management response codes (RFC 7143 §11.6.1).
pub mod tmf_response {
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

/// SCSI status codes (SAM-5) that tests look at.
pub mod scsi_status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

#[derive(Debug)]
pub enum Error {
    Io {
        context: String,
        source: io::Error,
    },
    /// The target ended the login with a non-zero status (RFC 7143 §11.13.5).
    LoginRejected {
        status_class: u8,
        status_detail: u8,
    },
    /// The target broke the protocol, or the caller asked for something this
    /// initiator cannot send.
    Protocol(String),
    Timeout {
        waiting_for: String,
        after: Duration,
    },
    ConnectionClosed {
        context: String,
    },
    /// The session was logged out or disconnected.
    SessionEnded,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        let context = context.into();
        match source.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Error::ConnectionClosed {
                context: format!("{context}: {source}"),
            },
            _ => Error::Io { context, source },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::LoginRejected {
                status_class,
                status_detail,
            } => write!(
                f,
                "login rejected: status class {status_class:#04x} detail {status_detail:#04x} ({})",
                login_status_name(*status_class, *status_detail)
            ),
            Error::Protocol(what) => write!(f, "iSCSI protocol: {what}"),
            Error::Timeout { waiting_for, after } => {
                write!(f, "timed out after {after:?} waiting for {waiting_for}")
            }
            Error::ConnectionClosed { context } => {
                write!(f, "target closed the connection ({context})")
            }
            Error::SessionEnded => write!(f, "the session was already logged out or disconnected"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::ConnectionClosed { .. } => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

fn login_status_name(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (1, _) => "redirection",
        (2, 0x01) => "authentication failure",
        (2, 0x02) => "authorization failure",
        (2, 0x03) => "target not found",
        (2, 0x04) => "target removed",
        (2, 0x05) => "unsupported version",
        (2, 0x06) => "too many connections",
        (2, 0x07) => "missing parameter",
        (2, 0x08) => "cannot include in session",
        (2, 0x09) => "session type not supported",
        (2, 0x0a) => "session does not exist",
        (2, 0x0b) => "invalid request during login",
        (2, _) => "initiator error",
        (3, 0x01) => "service unavailable",
        (3, 0x02) => "out of resources",
        (3, _) => "target error",
        _ => "unknown status",
    }
}
