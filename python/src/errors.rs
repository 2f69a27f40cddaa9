//! saln's errors as Python exceptions. The message is the one `saln-pipe` prints after
//! `error: ` (it names the stage, the sample or the file); configuration errors also carry
//! the list of problems as `(key, line, message)` named tuples.
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use saln::error::Error;

use crate::config;

pyo3::create_exception!(
    saln,
    SalnError,
    pyo3::exceptions::PyException,
    "A saln run failed. The message is saln-pipe's: it names the stage and the sample or file."
);
pyo3::create_exception!(
    saln,
    ConfigError,
    SalnError,
    "An invalid pipeline configuration. `problems` lists every problem as a \
     `saln.Problem(key, line, message)`; `line` is None for defaults and overrides."
);

static PROBLEM: GILOnceCell<Py<PyAny>> = GILOnceCell::new();

/// The `saln.Problem` named tuple type.
pub fn problem_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    PROBLEM
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            let t = py
                .import("collections")?
                .getattr("namedtuple")?
                .call1(("Problem", ("key", "line", "message")))?;
            t.setattr("__module__", "saln")?;
            t.setattr(
                "__doc__",
                "One configuration problem: the dotted key (None when the parser could not \
                 tell), its 1-based line in the YAML (None for defaults and overrides), and \
                 the message.",
            )?;
            Ok(t.unbind())
        })
        .map(|t| t.bind(py))
}

/// One problem as a Python `saln.Problem`.
pub fn problem(
    py: Python<'_>,
    key: Option<String>,
    line: Option<usize>,
    message: String,
) -> PyResult<PyObject> {
    Ok(problem_type(py)?.call1((key, line, message))?.unbind())
}

/// The problems a configuration error holds; `text` is the YAML, to place a parser error's
/// key under its parents.
pub fn problems_of(e: &Error, text: &str) -> Vec<(Option<String>, Option<usize>, String)> {
    match e {
        Error::ConfigInvalid { issues, .. } => issues
            .iter()
            .map(|i| (Some(i.key.clone()), i.line, i.message.clone()))
            .collect(),
        Error::ConfigParse { message, .. } => {
            let line = config::line_in_message(message);
            vec![(
                config::key_in_message(message, text, line),
                line,
                config::short_message(message),
            )]
        }
        _ => Vec::new(),
    }
}

/// A saln error as a Python exception (`text`: the YAML the configuration came from, if
/// any).
pub fn to_py_with(e: Error, text: &str) -> PyErr {
    let message = e.to_string();
    match e {
        Error::ConfigInvalid { .. } | Error::ConfigParse { .. } => Python::with_gil(|py| {
            let err = ConfigError::new_err(message);
            let problems: PyResult<Vec<PyObject>> = problems_of(&e, text)
                .into_iter()
                .map(|(k, l, m)| problem(py, k, l, m))
                .collect();
            match problems.and_then(|p| err.value(py).setattr("problems", p)) {
                Ok(()) => err,
                Err(inner) => inner,
            }
        }),
        _ => SalnError::new_err(message),
    }
}

/// [`to_py_with`] for errors that do not come from parsing YAML text.
pub fn to_py(e: Error) -> PyErr {
    to_py_with(e, "")
}
