//! The one error type of this crate: every message names the key, the value and what was expected.

use std::fmt;

/// Why a config could not be turned into arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgsError {
    /// A key no argument group knows (`ALLOW_EXTRA_ARGS=1` turns this off).
    UnknownKey {
        key: String,
        suggestion: Option<String>,
        hint: Option<String>,
    },
    /// A value of the wrong type or outside the allowed set.
    BadValue {
        key: String,
        value: String,
        expected: String,
    },
    /// A LLaMA-Factory feature ferrotune does not implement yet, set to a non-default value.
    NotImplemented {
        key: String,
        value: String,
        reason: String,
    },
    /// A cross-argument rule (LLaMA-Factory's own checks, with its reasons).
    Invalid(String),
    /// The command line itself (missing value, flag in the wrong place).
    Usage(String),
    /// A config file that could not be read or parsed.
    File { path: String, message: String },
}

impl ArgsError {
    pub(crate) fn bad(key: &str, value: &crate::Value, expected: impl Into<String>) -> ArgsError {
        ArgsError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> ArgsError {
        ArgsError::Invalid(msg.into())
    }
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::UnknownKey {
                key,
                suggestion,
                hint,
            } => {
                write!(f, "unknown argument `{key}`")?;
                if let Some(s) = suggestion {
                    write!(f, "; did you mean `{s}`?")?;
                }
                if let Some(h) = hint {
                    write!(f, " ({h})")?;
                }
                write!(f, " Set ALLOW_EXTRA_ARGS=1 to ignore unknown arguments.")
            }
            ArgsError::BadValue {
                key,
                value,
                expected,
            } => {
                write!(f, "invalid value {value} for `{key}`: expected {expected}")
            }
            ArgsError::NotImplemented { key, value, reason } => {
                write!(
                    f,
                    "`{key}: {value}` is not supported by ferrotune yet: {reason}"
                )
            }
            ArgsError::Invalid(m) | ArgsError::Usage(m) => f.write_str(m),
            ArgsError::File { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

impl std::error::Error for ArgsError {}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, ArgsError>;
