//! The crate's error type.
//!
//! Every fallible function returns [`Result`]. Errors that reach a user or an operator carry a
//! message that names what was wrong; errors caused by a peer never panic a thread.

use std::fmt;
use std::io;

/// Everything that can go wrong in dsm.
#[derive(Debug)]
pub enum Error {
    /// An I/O error from a socket or a file.
    Io(io::Error),
    /// A peer or a user sent something that does not parse; the message says what.
    Protocol(String),
    /// A write-ahead log that cannot be replayed (corrupt in the middle, not just a torn tail).
    Corrupt(String),
    /// The operation cannot be carried out now (no quorum, no server reachable, ...).
    Unavailable(String),
    /// A deadline passed before the operation finished.
    Timeout(String),
    /// A configuration or command-line value that cannot be used.
    Config(String),
    /// A request the client refused to send, because the protocol cannot carry it; the
    /// message is the one the server would give.
    Invalid(String),
    /// A server refused the client's password.
    Auth(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
            Error::Corrupt(m) => write!(f, "corrupt log: {m}"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Timeout(m) => write!(f, "timeout: {m}"),
            Error::Config(m) => write!(f, "configuration error: {m}"),
            Error::Invalid(m) => write!(f, "{m} (refused by the client; nothing was sent)"),
            Error::Auth(m) => write!(f, "authentication failed: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
