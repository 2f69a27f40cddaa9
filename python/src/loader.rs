//! `saln.Loader` (the Python class in `saln/__init__.py` wraps this one) and `saln.Batch`.
//!
//! The Rust [`saln::loader::Loader`] sits behind a mutex (tensors are `Send`, not `Sync`)
//! that is only ever taken with the GIL released, so a thread waiting for a batch never
//! blocks Python, and `close()` from another thread waits for that batch instead of
//! deadlocking. The stage counters and the loss table are shared `Arc`s taken at
//! construction: `stats()` and `losses()` never wait for the mutex.
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use saln::batch::LoaderState;
use saln::loader::{Batch, Item, Loader, LoaderBuilder, LoaderReport};
use saln::pipeline::StageStats;
use saln::select::feedback::LossTable;
use tch::Tensor;

use crate::config::ConfigSource;
use crate::errors::{to_py, to_py_with, SalnError};
use crate::json_to_py;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tensor handed to Python without copying its data (the Python object shares the
/// TensorImpl; the Rust handle is released).
pub fn tensor_to_py(py: Python<'_>, t: Tensor) -> PyResult<PyObject> {
    let ptr = t.pyobject_wrap().map_err(|e| {
        SalnError::new_err(format!("libtorch: cannot hand a tensor to Python: {e}"))
    })?;
    // SAFETY: `pyobject_wrap` returns a new (owned) reference to a torch.Tensor.
    Ok(unsafe { PyObject::from_owned_ptr(py, ptr as *mut pyo3::ffi::PyObject) })
}

/// A torch.Tensor (or anything `torch.as_tensor` takes) as a tch tensor sharing its data.
fn tensor_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let torch = obj.py().import("torch")?;
    let obj = if obj.is_instance(&torch.getattr("Tensor")?)? {
        obj.clone()
    } else {
        torch.call_method1("as_tensor", (obj,))?
    };
    Ok(obj.extract::<pyo3_tch::PyTensor>()?.0)
}

/// One curated sub-batch (see `saln.Loader`).
#[pyclass(module = "saln", name = "Batch", frozen)]
pub struct PyBatch {
    /// Epoch, 0-based.
    #[pyo3(get)]
    epoch: usize,
    /// The batch's number in the run, 0-based (the optimizer step it is for).
    #[pyo3(get)]
    step: u64,
    /// Global number of the super-batch it was selected from.
    #[pyo3(get)]
    superbatch: u64,
    /// Size B of that super-batch.
    #[pyo3(get)]
    superbatch_size: usize,
    /// `[n, C, H, W]` float32 on the loader's device, augmented and normalised.
    #[pyo3(get)]
    images: PyObject,
    /// `[n]` int64 on the loader's device.
    #[pyo3(get)]
    labels: PyObject,
    ids: GILOnceCell<PyObject>,
    scores: GILOnceCell<PyObject>,
    /// Address of the image data as saln produced it (tests check it is the tensor's).
    #[pyo3(get)]
    _images_data_ptr: usize,
    n: usize,
    inner: Mutex<Batch>,
}

impl PyBatch {
    fn new(py: Python<'_>, mut b: Batch) -> PyResult<PyBatch> {
        let images = std::mem::replace(&mut b.images, Tensor::new());
        let labels = std::mem::replace(&mut b.labels, Tensor::new());
        let n = b.len();
        let ptr = images.data_ptr() as usize;
        Ok(PyBatch {
            epoch: b.epoch,
            step: b.step,
            superbatch: b.superbatch,
            superbatch_size: b.superbatch_len,
            images: tensor_to_py(py, images)?,
            labels: tensor_to_py(py, labels)?,
            ids: GILOnceCell::new(),
            scores: GILOnceCell::new(),
            _images_data_ptr: ptr,
            n,
            inner: Mutex::new(b),
        })
    }
}

#[pymethods]
impl PyBatch {
    /// `[n]` int64 on the CPU: the samples' stable ids (made on first use).
    #[getter]
    fn ids(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.ids
            .get_or_try_init(py, || {
                let ids: Vec<i64> = lock(&self.inner).ids.iter().map(|&i| i as i64).collect();
                tensor_to_py(py, Tensor::from_slice(&ids))
            })
            .map(|t| t.clone_ref(py))
    }

    /// `[n]` float32 on the CPU: the selector's scores (the Fiedler value for `saln`, 0
    /// for policies without a score; made on first use).
    #[getter]
    fn scores(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.scores
            .get_or_try_init(py, || {
                let scores = Tensor::from_slice(&lock(&self.inner).scores);
                tensor_to_py(py, scores)
            })
            .map(|t| t.clone_ref(py))
    }

    /// Hands the per-sample losses of this batch back to saln: `losses` is `[n]` (any float
    /// dtype, any device, gradients ignored) in the order of `ids`. Raises `SalnError` when
    /// the count differs or a loss is not finite (naming the sample); nothing is stored then.
    fn report_losses(&self, losses: &Bound<'_, PyAny>) -> PyResult<()> {
        let t = tensor_from_py(losses)?;
        lock(&self.inner).report_losses(&t).map_err(to_py)
    }

    fn __len__(&self) -> usize {
        self.n
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let shape = self.images.bind(py).getattr("shape")?.str()?.to_string();
        Ok(format!(
            "saln.Batch(epoch={}, step={}, superbatch={}, n={}, images={shape})",
            self.epoch, self.step, self.superbatch, self.n
        ))
    }
}

/// The running loader behind `saln.Loader`.
#[pyclass(module = "saln._saln", name = "Loader")]
pub struct PyLoader {
    inner: Mutex<Option<Loader>>,
    /// Where the loader stands (`Loader::state`), kept after `close()`.
    state: Mutex<LoaderState>,
    stats: Vec<Arc<StageStats>>,
    losses: Arc<LossTable>,
    report: Mutex<Option<LoaderReport>>,
    /// Batches per epoch.
    #[pyo3(get)]
    batches_per_epoch: usize,
    /// Epochs the loader delivers (`trainer.epochs`).
    #[pyo3(get)]
    epochs: usize,
    /// `(C, H, W)` of the images.
    #[pyo3(get)]
    shape: (usize, usize, usize),
    /// Number of classes.
    #[pyo3(get)]
    num_classes: usize,
    /// The device the tensors are on (`cpu`, `cuda:0`).
    #[pyo3(get)]
    device: String,
    /// Learner samples per epoch.
    #[pyo3(get)]
    samples_per_epoch: usize,
    config_json: String,
}

#[pymethods]
impl PyLoader {
    #[new]
    #[pyo3(signature = (path=None, yaml=None, overrides=None, state=None))]
    fn new(
        py: Python<'_>,
        path: Option<String>,
        yaml: Option<String>,
        overrides: Option<String>,
        state: Option<String>,
    ) -> PyResult<Self> {
        let src = ConfigSource::new(path, yaml, overrides.as_deref()).map_err(to_py)?;
        let (text, _) = src.text().map_err(to_py)?;
        let cfg = py
            .allow_threads(|| src.resolve())
            .map_err(|e| to_py_with(e, &text))?;
        let resume = match state.as_deref().map(serde_json::from_str::<LoaderState>) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                return Err(PyValueError::new_err(format!(
                    "state_dict: not a loader state ({{\"epoch\": E, \"superbatch\": S}}): {e}"
                )))
            }
        };
        let loader = py
            .allow_threads(|| {
                let b = LoaderBuilder::from_config(&cfg);
                match resume {
                    Some(s) => b.resume(s),
                    None => b,
                }
                .build()
            })
            .map_err(to_py)?;
        let info = loader.info();
        let device = match info.device {
            tch::Device::Cpu => "cpu".to_string(),
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            d => format!("{d:?}").to_lowercase(),
        };
        Ok(PyLoader {
            stats: loader.stage_stats(),
            losses: loader.losses(),
            report: Mutex::new(None),
            batches_per_epoch: info.superbatches_per_epoch,
            epochs: cfg.trainer.epochs,
            shape: info.shape,
            num_classes: info.classes,
            samples_per_epoch: info.split.learner.len(),
            device,
            config_json: serde_json::to_string(&cfg).unwrap_or_default(),
            state: Mutex::new(loader.state()),
            inner: Mutex::new(Some(loader)),
        })
    }

    /// The next batch, waiting for it with the GIL released; `None` at the end of an epoch
    /// (the next call starts the next epoch) and at the end of the run.
    fn next_batch(&self, py: Python<'_>) -> PyResult<Option<PyBatch>> {
        let item = py.allow_threads(|| {
            let mut inner = lock(&self.inner);
            let item = inner.as_mut().and_then(Iterator::next);
            if let Some(l) = inner.as_ref() {
                *lock(&self.state) = l.state();
            }
            item
        });
        match item {
            None | Some(Ok(Item::EpochEnd { .. })) => Ok(None),
            Some(Ok(Item::Batch(b))) => PyBatch::new(py, b).map(Some),
            Some(Err(e)) => Err(to_py(e)),
        }
    }

    /// Per-stage counters (`loader`, `extract`, `export` with an export): items, samples,
    /// busy / waiting-for-input / blocked-on-output seconds. Live while the loader runs,
    /// final after `close()`.
    fn stats(&self, py: Python<'_>) -> PyResult<PyObject> {
        let snaps: Vec<_> = self.stats.iter().map(|s| s.snapshot()).collect();
        json_to_py(py, &snaps)
    }

    /// The latest loss reported for each id (`None` where none was): the table the
    /// selection stage shares.
    fn losses(&self, ids: Vec<u64>) -> Vec<Option<f32>> {
        self.losses.lookup(&ids)
    }

    /// Number of samples with a reported loss.
    fn losses_len(&self) -> usize {
        self.losses.len()
    }

    /// Where the loader stands, as JSON (`{"epoch": E, "superbatch": S}`): the super-batch
    /// after the last batch taken. A loader made with it continues there.
    fn state_json(&self) -> String {
        serde_json::to_string(&*lock(&self.state)).unwrap_or_default()
    }

    /// Whether the stages are still running.
    #[getter]
    fn running(&self, py: Python<'_>) -> bool {
        py.allow_threads(|| lock(&self.inner).is_some())
    }

    /// The resolved configuration (every default filled in), as JSON.
    fn config_json(&self) -> String {
        self.config_json.clone()
    }

    /// Stops every stage (after the item each is working on), joins their threads and
    /// returns what ran; later calls return the same. Waits for a batch another thread is
    /// waiting for.
    fn close(&self, py: Python<'_>) -> PyResult<PyObject> {
        let taken = py.allow_threads(|| lock(&self.inner).take());
        if let Some(loader) = taken {
            let report = py.allow_threads(|| loader.finish()).map_err(to_py)?;
            *lock(&self.report) = Some(report);
        }
        let report = lock(&self.report).clone();
        match report {
            Some(r) => report_to_py(py, &r),
            None => Ok(py.None()),
        }
    }
}

fn report_to_py(py: Python<'_>, r: &LoaderReport) -> PyResult<PyObject> {
    let v = serde_json::json!({
        "steps": r.steps,
        "completed": r.completed,
        "error": r.error,
        "loader": {
            "superbatches": r.loader.superbatches,
            "samples": r.loader.samples,
            "skipped": r.loader.skipped,
            "first_skipped": r.loader.first_skipped,
        },
        "selection": r.selection,
        "export": r.export,
    });
    json_to_py(py, &v)
}

/// The Rust side of the loader benchmark: iterates a loader over the configuration in
/// Rust, dropping each batch, and returns `(batches, images, seconds, build_seconds)`:
/// seconds from the start of construction to the end of the last epoch, of which
/// `build_seconds` to construct the loader (open the data, load the model, start the
/// stages).
#[pyfunction]
#[pyo3(signature = (path=None, yaml=None, overrides=None))]
pub fn bench_rust_loader(
    py: Python<'_>,
    path: Option<String>,
    yaml: Option<String>,
    overrides: Option<String>,
) -> PyResult<(u64, u64, f64, f64)> {
    let src = ConfigSource::new(path, yaml, overrides.as_deref()).map_err(to_py)?;
    let (text, _) = src.text().map_err(to_py)?;
    py.allow_threads(|| {
        let cfg = src.resolve()?;
        let t = Instant::now();
        let mut loader = Loader::from_config(&cfg)?;
        let built = t.elapsed().as_secs_f64();
        let (mut batches, mut images) = (0u64, 0u64);
        for item in &mut loader {
            if let Item::Batch(b) = item? {
                batches += 1;
                images += b.len() as u64;
            }
        }
        loader.finish()?;
        Ok((batches, images, t.elapsed().as_secs_f64(), built))
    })
    .map_err(|e| to_py_with(e, &text))
}
