//! `saln._saln`: the extension module of saln's Python package (`python/saln/`).
//!
//! Import it through `import saln`, which imports `torch` first: this module links against
//! the libtorch of the torch in the same environment (no copy of its own, no rpath), and
//! the dynamic loader finds those libraries already loaded by `import torch`. Tensors cross
//! the boundary without copies (pyo3-tch / `Tensor::pyobject_wrap`).
//!
//! | module | what |
//! |---|---|
//! | [`config`] | a configuration from a YAML file, YAML text and dotted overrides |
//! | [`errors`] | `SalnError`, `ConfigError`, `Problem` |
//! | [`loader`] | `Loader` and `Batch` |
//! | [`commands`] | `validate`, `curate`, `run` |
//! | [`selector`] | selection on one super-batch (`saln.ray.Curator`) |
use pyo3::prelude::*;

pub mod commands;
pub mod config;
pub mod errors;
pub mod loader;
pub mod selector;

/// Any serialisable value as the Python object `json.loads` makes of it.
pub(crate) fn json_to_py<T: serde::Serialize + ?Sized>(
    py: Python<'_>,
    value: &T,
) -> PyResult<PyObject> {
    let text =
        serde_json::to_string(value).map_err(|e| errors::SalnError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

#[pymodule]
fn _saln(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("SalnError", py.get_type::<errors::SalnError>())?;
    m.add("ConfigError", py.get_type::<errors::ConfigError>())?;
    m.add("Problem", errors::problem_type(py)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TCH_TORCH_VERSION", "2.11.0")?;
    m.add_class::<loader::PyLoader>()?;
    m.add_class::<loader::PyBatch>()?;
    m.add_class::<selector::PySelector>()?;
    m.add_function(wrap_pyfunction!(commands::validate, m)?)?;
    m.add_function(wrap_pyfunction!(commands::resolve_config, m)?)?;
    m.add_function(wrap_pyfunction!(commands::curate, m)?)?;
    m.add_function(wrap_pyfunction!(commands::run, m)?)?;
    m.add_function(wrap_pyfunction!(loader::bench_rust_loader, m)?)?;
    Ok(())
}
