//! `saln-pipe validate`, `curate` and `run` as Python functions.
//!
//! `curate` and `run` run the pipeline on a thread of their own while the calling thread
//! waits with the GIL released, waking every 100 ms to let Python handle signals: Ctrl-C
//! cancels the run the way SIGINT does for `saln-pipe` (it stops after the current
//! super-batch and writes its report), then raises `KeyboardInterrupt`.
use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;
use saln::config::PipelineConfig;
use saln::pipeline::Cancel;

use crate::config::ConfigSource;
use crate::errors::{problem, problems_of, to_py, to_py_with, ConfigError};
use crate::json_to_py;

/// The configuration, or the Python exception for it.
fn resolve(py: Python<'_>, src: &ConfigSource) -> PyResult<(PipelineConfig, String)> {
    let (text, _) = src.text().map_err(to_py)?;
    let cfg = py
        .allow_threads(|| src.resolve())
        .map_err(|e| to_py_with(e, &text))?;
    Ok((cfg, text))
}

/// Every problem `saln-pipe validate` reports for a pipeline, as `saln.Problem`s: parse
/// and value problems of every section (all of them, with their lines, ordered by line),
/// then the device, the model files, the data set, `$RANK` / `$WORLD_SIZE` and the
/// image-size rule. Without overrides this is exactly `saln-pipe validate`'s list
/// (`saln::config::check`). An empty list means the pipeline can run. A file that cannot be
/// read raises `SalnError`.
#[pyfunction]
#[pyo3(signature = (path=None, yaml=None, overrides=None))]
pub fn validate(
    py: Python<'_>,
    path: Option<String>,
    yaml: Option<String>,
    overrides: Option<String>,
) -> PyResult<Vec<PyObject>> {
    let src = ConfigSource::new(path, yaml, overrides.as_deref()).map_err(to_py)?;
    let (text, _) = src.text().map_err(to_py)?;
    let found = py.allow_threads(|| {
        if src.overrides.is_empty() {
            let checked = saln::config::check::check_text(&text, true);
            return Ok(checked
                .issues
                .into_iter()
                .map(|i| (Some(i.key), i.line, i.message))
                .collect());
        }
        match src.resolve() {
            Err(e @ (saln::Error::ConfigInvalid { .. } | saln::Error::ConfigParse { .. })) => {
                Ok(problems_of(&e, &text))
            }
            Err(e) => Err(e),
            Ok(cfg) => {
                let line = |key: &str| {
                    let overridden = src
                        .overrides
                        .iter()
                        .any(|(k, _)| key == k || key.starts_with(&format!("{k}.")));
                    (!overridden)
                        .then(|| saln::config::locate_key(&text, key))
                        .flatten()
                };
                Ok(cfg
                    .resource_issues(saln::config::ResourceChecks::ALL)
                    .into_iter()
                    .map(|i| (Some(i.key.clone()), line(&i.key), i.message))
                    .collect())
            }
        }
    });
    found
        .map_err(to_py)?
        .into_iter()
        .map(|(k, l, m)| problem(py, k, l, m))
        .collect()
}

/// The resolved configuration (every default filled in) as JSON.
#[pyfunction]
#[pyo3(signature = (path=None, yaml=None, overrides=None))]
pub fn resolve_config(
    py: Python<'_>,
    path: Option<String>,
    yaml: Option<String>,
    overrides: Option<String>,
) -> PyResult<String> {
    let src = ConfigSource::new(path, yaml, overrides.as_deref()).map_err(to_py)?;
    let (cfg, _) = resolve(py, &src)?;
    serde_json::to_string(&cfg).map_err(|e| crate::errors::SalnError::new_err(e.to_string()))
}

/// Runs `job` on its own thread; Ctrl-C cancels it (see the module doc).
fn run_job<T: Send + 'static>(
    py: Python<'_>,
    job: impl FnOnce(Cancel) -> saln::Result<T> + Send + 'static,
) -> PyResult<T> {
    let cancel = Cancel::default();
    let (tx, rx) = mpsc::channel();
    let handle = {
        let cancel = cancel.clone();
        std::thread::Builder::new()
            .name("saln-py-run".into())
            .spawn(move || {
                let _ = tx.send(job(cancel));
            })
            .map_err(|e| crate::errors::SalnError::new_err(format!("cannot start a thread: {e}")))?
    };
    let mut interrupted = None;
    let mut rx = rx;
    let result = loop {
        // The receiver is Send but not Sync: it goes into the GIL-free closure and back.
        let (got, back) =
            py.allow_threads(move || (rx.recv_timeout(Duration::from_millis(100)), rx));
        rx = back;
        match got {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(saln::Error::Panic {
                    stage: "run",
                    message: "the run's thread ended without a result".into(),
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if interrupted.is_none() {
                    if let Err(e) = py.check_signals() {
                        // Stop after the current super-batch, as saln-pipe does on SIGINT.
                        cancel.cancel();
                        interrupted = Some(e);
                    }
                }
            }
        }
    };
    let _ = py.allow_threads(|| handle.join());
    match (interrupted, result) {
        (Some(e), _) => Err(e),
        (None, r) => r.map_err(to_py),
    }
}

/// `saln-pipe curate`: selection without training; writes the selection as Parquet and
/// returns the report. `out`, `overwrite` and `report_path` are the command's `--out`,
/// `--overwrite` and `--report`.
#[pyfunction]
#[pyo3(signature = (path=None, yaml=None, overrides=None, out=None, overwrite=false, report_path=None))]
pub fn curate(
    py: Python<'_>,
    path: Option<String>,
    yaml: Option<String>,
    overrides: Option<String>,
    out: Option<String>,
    overwrite: bool,
    report_path: Option<String>,
) -> PyResult<PyObject> {
    let src = ConfigSource::new(path, yaml, overrides.as_deref()).map_err(to_py)?;
    let (mut cfg, _) = resolve(py, &src)?;
    if let Some(dir) = out {
        match &mut cfg.export {
            Some(e) => e.dir = dir.into(),
            None => cfg.export = Some(saln::config::ExportConfig::new(dir)),
        }
    }
    if let (true, Some(e)) = (overwrite, &mut cfg.export) {
        e.overwrite = true;
    }
    if let Some(r) = report_path {
        cfg.report.path = r.into();
    }
    if cfg.export.is_none() {
        let (_, origin) = src.text().map_err(to_py)?;
        return Err(ConfigError::new_err(format!(
            "{}: curate writes Parquet: add an `export:` section with `dir:` or pass out=DIR",
            origin.display()
        )));
    }
    let report = run_job(py, move |cancel| saln::pipeline::curate(&cfg, cancel, None))?;
    json_to_py(py, &report)
}

/// `saln-pipe run`: the whole pipeline (or, with a `loader_only:` block, the input side
/// alone); returns the report. `seed` and `report_path` are the command's `--seed` and
/// `--report`.
#[pyfunction]
#[pyo3(signature = (path=None, yaml=None, overrides=None, seed=None, report_path=None))]
pub fn run(
    py: Python<'_>,
    path: Option<String>,
    yaml: Option<String>,
    overrides: Option<String>,
    seed: Option<u64>,
    report_path: Option<String>,
) -> PyResult<PyObject> {
    let src = ConfigSource::new(path, yaml, overrides.as_deref()).map_err(to_py)?;
    let (mut cfg, _) = resolve(py, &src)?;
    if let Some(s) = seed {
        cfg.seed = s;
    }
    if let Some(r) = report_path {
        cfg.report.path = r.into();
    }
    if cfg.loader_only.is_some() {
        let report = run_job(py, move |cancel| {
            saln::pipeline::loader_only::run(&cfg, cancel)
        })?;
        return json_to_py(py, &report);
    }
    let report = run_job(py, move |cancel| saln::pipeline::run(&cfg, cancel, None))?;
    json_to_py(py, &report)
}
