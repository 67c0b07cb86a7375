//! Errors that stop a scan. Problems with single entries (an unreadable
//! file, a symlink loop, a path that climbs out of the image) do not stop it:
//! they become findings, so one bad file never hides the rest of the image.

use std::fmt::Display;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading or opening something failed; `context` says what and where.
    #[error("{context}: {err}")]
    Io { context: String, err: io::Error },
    /// The target is readable but is not a valid image of its kind
    /// (malformed JSON, a missing blob, a truncated archive…).
    #[error("{context}: {message}")]
    Format { context: String, message: String },
    /// Content does not hash to the digest that names it.
    #[error("{context}: digest mismatch: expected {expected}, content hashes to {actual}")]
    Digest { context: String, expected: String, actual: String },
    /// The target cannot be scanned as asked (not found, unknown kind…).
    #[error("{target}: {message}")]
    Target { target: String, message: String },
    /// A podman command failed.
    #[error("podman {args}: {message}")]
    Podman { args: String, message: String },
}

impl ScanError {
    pub(crate) fn format(context: impl Display, message: impl Display) -> ScanError {
        ScanError::Format { context: context.to_string(), message: message.to_string() }
    }
}

/// `map_err` helper: an I/O error with what was being done.
pub(crate) fn io_ctx(context: impl Display) -> impl FnOnce(io::Error) -> ScanError {
    move |err| ScanError::Io { context: context.to_string(), err }
}
