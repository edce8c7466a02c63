//! PyO3 bindings: registration and error mapping only; logic lives in the pure-Rust modules.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::error::TxError;

mod decode;
mod engine;
mod explain;

create_exception!(
    txfast.exceptions,
    TxfastError,
    PyException,
    "Base class of every txfast error."
);
create_exception!(
    txfast.exceptions,
    ConfigError,
    TxfastError,
    "A configuration value is invalid."
);
create_exception!(
    txfast.exceptions,
    SnapshotError,
    TxfastError,
    "A state snapshot cannot be restored."
);
create_exception!(
    txfast.exceptions,
    InputError,
    TxfastError,
    "Input columns are inconsistent."
);

impl From<TxError> for PyErr {
    fn from(e: TxError) -> PyErr {
        let msg = e.to_string();
        match e {
            TxError::Config(_) => ConfigError::new_err(msg),
            TxError::Snapshot(_) => SnapshotError::new_err(msg),
            TxError::Input(_) => InputError::new_err(msg),
        }
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TxfastError", py.get_type::<TxfastError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("SnapshotError", py.get_type::<SnapshotError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    engine::register(m)?;
    decode::register(m)?;
    explain::register(m)?;
    Ok(())
}
