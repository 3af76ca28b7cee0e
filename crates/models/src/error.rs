//! The model layer's error: one message that names the file, the key or tensor, and the fix.
//!
//! Model files come from users and the network, so every failure is a value, never a panic. Messages are
//! built where the context is known (`bail!`, [`Context::context`]) rather than through a tree of variants:
//! callers print them, they do not branch on them.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn msg(message: impl Into<String>) -> Error {
        Error { message: message.into() }
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<ferrotune_tensor::Error> for Error {
    fn from(e: ferrotune_tensor::Error) -> Error {
        Error::msg(e.to_string())
    }
}

/// Prefix an error with where it happened: `"{context}: {error}"`.
pub trait Context<T> {
    fn context(self, context: impl fmt::Display) -> Result<T>;
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::msg(format!("{context}: {e}")))
    }
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::msg(format!("{}: {e}", context())))
    }
}

/// Return early with a formatted [`Error`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::msg(format!($($arg)*))) };
}
