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
    FlotillaError::new_err(chain(e))
}

/// `e` and its causes, on one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
