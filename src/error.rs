//! The library's one error type. Every refusal names the argument and the value,
//! in words close to PyTorch's, so that users recognise them.

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a call, found before any GPU work where possible.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument has a value the layer cannot accept.
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument {
        /// The argument, as PyTorch names it.
        name: &'static str,
        /// What is wrong with its value (which it quotes).
        message: String,
    },

    /// An index lies outside the table (`index out of range in self`, as PyTorch says).
    #[error("index out of range in self: `{name}` holds {value} at position {position}, expected a value in [0, {num_embeddings})")]
    IndexOutOfRange {
        /// The index argument (`indices`, `input`, `grad.indices`, ...).
        name: &'static str,
        /// The flat position of the first bad index.
        position: u64,
        /// Its value.
        value: i64,
        /// Rows in the table (the valid range is `[0, num_embeddings)`).
        num_embeddings: u64,
    },

    /// Shapes of two arguments do not agree.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),

    /// No adapter or device could be had.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),

    /// The device reported an error (validation, out of memory, internal).
    #[error("GPU error: {0}")]
    Device(String),

    /// The device is lost; the context cannot be used any more (make a new one).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),

    /// An allocation was refused: larger than the device or the context allows, or the
    /// device ran out of memory. The context stays usable.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),

    /// A case or tensor file is malformed.
    #[error("file format: {0}")]
    Format(String),

    /// An operation this build does not provide.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn arg(name: &'static str, message: impl fmt::Display) -> Self {
        Error::InvalidArgument { name, message: message.to_string() }
    }
}
