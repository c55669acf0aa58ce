//! The one error type of the crate.

use std::fmt;

/// Everything that can go wrong in projroute. Nothing in the crate panics on bad input.
#[derive(Debug)]
pub enum Error {
    /// A caller's argument is unusable: wrong shape, non-finite values, empty batch,
    /// `k` larger than what there is, temperature <= 0, and so on.
    InvalidInput(String),
    /// A model file is not a valid projroute file: foreign, truncated, wrong dtype or
    /// shapes, inconsistent config, non-finite weights.
    Format(String),
    /// A model file was written by a newer format version than this reader knows.
    UnsupportedVersion {
        /// Version found in the file.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// A file could not be read or written.
    Io(std::io::Error),
    /// The tensor backend (candle), the tokenizer or the approximate index library
    /// (usearch) failed.
    Backend(String),
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(msg) => write!(f, "invalid input: {msg}"),
            Error::Format(msg) => write!(f, "invalid projroute model file: {msg}"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "model file has format version {found}, but this projroute reads versions up to \
                 {supported}; upgrade projroute"
            ),
            Error::Io(err) => write!(f, "{err}"),
            Error::Backend(msg) => write!(f, "tensor backend error: {msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(err)
    }
}

/// Shorthand for an [`Error::InvalidInput`].
pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidInput(msg.into()))
}

/// Shorthand for an [`Error::Format`].
pub(crate) fn format_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Format(msg.into()))
}
