//! The one error type of the native core. Mapped to Python exceptions in `py/mod.rs`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxError {
    /// A configuration value is invalid (windows, rates table, …).
    Config(String),
    /// A snapshot could not be read (wrong magic, unsupported version, truncated).
    Snapshot(String),
    /// Input columns are inconsistent (different lengths, …).
    Input(String),
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxError::Config(m) => write!(f, "invalid configuration: {m}"),
            TxError::Snapshot(m) => write!(f, "invalid snapshot: {m}"),
            TxError::Input(m) => write!(f, "invalid input: {m}"),
        }
    }
}

impl std::error::Error for TxError {}

pub type TxResult<T> = Result<T, TxError>;
