//! The exceptions the package raises, and the one place Rust errors become them.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};

create_exception!(
    flotilla,
    FlotillaError,
    PyException,
    "A Flotilla operation failed: the message says what happened and what to do."
);
create_exception!(
    flotilla,
    InvalidUpdate,
    PyValueError,
    "What a trainer returned cannot be sent: the message names the tensor or metric. Nothing was \
     sent to the coordinator."
);

/// A `FlotillaError` with `e`'s message and its causes, on one line.
pub(crate) fn flotilla_error(e: &(dyn std::error::Error + 'static)) -> pyo3::PyErr {
    FlotillaError::new_err(flotilla_client::error_chain(e))
}
