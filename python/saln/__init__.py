"""saln from Python: curated batches as PyTorch tensors in your training loop.

Three uses (docs/python.md):

- ``saln.Loader(config)``: curated sub-batches (``batch.images`` a ``torch.Tensor``
  ``[n, C, H, W]``) for your own training loop, one epoch per ``for`` loop.
- ``saln.validate``, ``saln.curate``, ``saln.run``: the ``saln-pipe`` commands, returning
  problems or the report as a dict.
- ``saln.ray.Curator``: curation of a Ray Data set, one batch = one super-batch.

A configuration is a pipeline YAML file (``str`` ending in ``.yaml``/``.yml`` or naming a
file, or an ``os.PathLike``), YAML text (any other ``str``), a ``dict`` of sections, or
nothing; keyword arguments override single keys: ``seed=1``, ``selection__keep_ratio=0.5``
or ``**{"selection.keep_ratio": 0.5}`` (``__`` and ``.`` both separate sections). A mapping
value is merged into the section (``selection={"keep_ratio": 0.5}`` keeps the file's other
``selection`` keys); any other value replaces what was there.

saln's extension module links against the libtorch of the ``torch`` installed beside it
(it bundles none), so ``torch`` is imported first and must be the release the bindings were
built for: ``torch==2.11.*``.
"""

from __future__ import annotations

import json as _json
import os as _os
from typing import Any, Iterator, Mapping

TORCH_REQUIREMENT = "torch==2.11.*"


def _import_torch():
    try:
        import torch
    except ImportError as e:  # torch missing, or broken
        raise ImportError(
            f"saln needs PyTorch: install {TORCH_REQUIREMENT} in this environment "
            "(`pip install torch==2.11.0`). saln's extension links against that torch's "
            f"libtorch and bundles none. ({e})"
        ) from e
    version = str(getattr(torch, "__version__", "unknown"))
    if not version.startswith("2.11."):
        raise ImportError(
            f"saln needs {TORCH_REQUIREMENT}, but this environment has torch {version}: "
            "saln's libtorch bindings (tch 0.24) are built for PyTorch 2.11. Install "
            "`torch==2.11.0`, then rebuild saln (`pip install ./python`)."
        )
    return torch


_torch = _import_torch()

from . import _saln  # noqa: E402  (after torch: its libtorch must be loaded first)

SalnError = _saln.SalnError
ConfigError = _saln.ConfigError
Problem = _saln.Problem
Batch = _saln.Batch
__version__ = _saln.__version__

__all__ = [
    "Batch",
    "ConfigError",
    "Loader",
    "Problem",
    "SalnError",
    "config",
    "curate",
    "run",
    "validate",
]


def _config_args(config: Any, overrides: Mapping[str, Any]) -> tuple:
    """(path, yaml, overrides as JSON) for the extension."""
    path = yaml = None
    pairs: list = []
    if config is None:
        pass
    elif isinstance(config, _os.PathLike):
        path = _os.fspath(config)
    elif isinstance(config, str):
        one_line = "\n" not in config
        if one_line and (config.endswith((".yaml", ".yml")) or _os.path.isfile(config)):
            path = config
        else:
            yaml = config
    elif isinstance(config, Mapping):
        pairs.extend([str(k), v] for k, v in config.items())
    else:
        raise TypeError(
            "config must be a YAML path, YAML text, a dict or None, not "
            f"{type(config).__name__}"
        )
    for k, v in overrides.items():
        pairs.append([k.replace("__", "."), v])
    if not pairs:
        return path, yaml, None
    return path, yaml, _json.dumps(pairs, default=_json_default)


def _state_json(state: Mapping | None) -> str | None:
    """A loader state (``Loader.state_dict()``) as the JSON the extension takes."""
    if state is None:
        return None
    if not isinstance(state, Mapping):
        raise TypeError(
            f"state_dict must be a dict from Loader.state_dict(), not {type(state).__name__}"
        )
    return _json.dumps(dict(state))


def _json_default(v: Any) -> Any:
    if isinstance(v, _os.PathLike):
        return _os.fspath(v)
    if hasattr(v, "tolist"):  # numpy / torch scalars and arrays
        return v.tolist()
    raise TypeError(f"cannot use a {type(v).__name__} as a configuration value")


def config(config: Any = None, /, **overrides: Any) -> dict:
    """The configuration as saln resolves it (every default filled in), as a dict.

    Raises ``ConfigError`` (with ``.problems``) when it is invalid.
    """
    return _json.loads(_saln.resolve_config(*_config_args(config, overrides)))


def validate(config: Any = None, /, **overrides: Any) -> list:
    """Every problem ``saln-pipe validate`` finds, as ``saln.Problem(key, line, message)``.

    Parse and value problems come all at once with their keys and lines; a usable
    configuration is then checked against the machine: the device, the model file and the
    data set. An empty list means the pipeline can run. A file that cannot be read raises
    ``SalnError``.
    """
    return _saln.validate(*_config_args(config, overrides))


def curate(
    config: Any = None,
    /,
    *,
    out: str | _os.PathLike | None = None,
    overwrite: bool = False,
    report_path: str | _os.PathLike | None = None,
    **overrides: Any,
) -> dict:
    """``saln-pipe curate``: selection without training, written as Parquet.

    ``out``, ``overwrite`` and ``report_path`` are the command's ``--out``, ``--overwrite``
    and ``--report``. Returns the report (``report["selection"]["kept_digest"]``,
    ``report["export"]``, ...). A failed run raises ``SalnError`` with the command's
    message; Ctrl-C stops the run after the current super-batch (its report is written)
    and raises ``KeyboardInterrupt``.
    """
    return _saln.curate(
        *_config_args(config, overrides),
        out=None if out is None else _os.fspath(out),
        overwrite=overwrite,
        report_path=None if report_path is None else _os.fspath(report_path),
    )


def run(
    config: Any = None,
    /,
    *,
    seed: int | None = None,
    report_path: str | _os.PathLike | None = None,
    **overrides: Any,
) -> dict:
    """``saln-pipe run``: the whole pipeline (training included), or with a
    ``loader_only:`` block the input side alone. Returns the report as a dict; errors and
    Ctrl-C as for :func:`curate`.
    """
    return _saln.run(
        *_config_args(config, overrides),
        seed=seed,
        report_path=None if report_path is None else _os.fspath(report_path),
    )


class Loader:
    """Curated sub-batches from a running saln pipeline, for your own training loop.

    ``Loader(config, **overrides)`` opens the data, loads the reference model and starts
    the stages (decode/augment workers, features + selection) on their own threads. Each
    ``for`` loop over the loader is one epoch of ``len(loader)`` batches;
    ``loader.epochs`` (the pipeline's ``trainer.epochs``) epochs in all::

        with saln.Loader("pipelines/fashion-mnist.yaml", trainer__epochs=2) as loader:
            for epoch in range(loader.epochs):
                for batch in loader:
                    logits = model(batch.images)            # [n, C, H, W] float32
                    per_sample = F.cross_entropy(logits, batch.labels, reduction="none")
                    per_sample.mean().backward(); opt.step(); opt.zero_grad()
                    batch.report_losses(per_sample)         # feedback for saln

    Each ``Batch`` has ``images`` (``[n, C, H, W]`` float32 on the configured device,
    augmented and normalised, handed over without a copy), ``labels`` (``[n]`` int64, same
    device), ``ids`` (``[n]`` int64, CPU: stable sample ids), ``scores`` (``[n]`` float32,
    CPU: the selector's scores), ``epoch``, ``step``, ``superbatch``, ``superbatch_size``
    and ``report_losses(t)``. With ``selection.policy`` ``loss``, ``rho-loss`` or ``jest``
    the reported losses decide what later batches keep (samples with no loss yet first);
    batch ``j`` is scored with the losses of batches ``0 .. j - selection.snapshot_lag``,
    so report each batch before asking for the one ``snapshot_lag + 1`` after it
    (docs/python.md). Waiting for a batch releases the GIL. ``close()`` (or leaving
    the ``with`` block, or dropping the loader) stops every stage and joins its threads.
    ``state_dict()`` says where the loader stands; ``Loader(config, state_dict=sd)``
    continues there (checkpointing your own loop).
    """

    def __init__(
        self, config: Any = None, /, *, state_dict: Mapping | None = None, **overrides: Any
    ) -> None:
        self._args = _config_args(config, overrides)
        self._inner = _saln.Loader(*self._args, _state_json(state_dict))

    # -- checkpointing ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the loader stands: ``{"epoch": E, "superbatch": S}``, the super-batch after
        the last batch taken (the next epoch's first after an epoch ended). Keep it in your
        own checkpoint (it is plain JSON); ``Loader(config, state_dict=sd)`` continues there
        with exactly the batches the uninterrupted loader would have given, provided the
        configuration (seed included) is the same. Losses reported for the ``loss``,
        ``rho-loss`` and ``jest`` policies are not part of it (a resumed loader starts with
        none), and a loader with an ``export`` cannot be resumed this way
        (``saln-pipe run --resume`` resumes exports)."""
        return _json.loads(self._inner.state_json())

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restarts the loader at ``state_dict`` (from ``state_dict()``): new stages are
        started there and the running ones stopped, which loads the data and the reference
        model again (a refused state raises and leaves the loader running as it was). Pass ``state_dict=`` to the constructor instead to start only once (the
        ``torchdata.StatefulDataLoader`` protocol, for code that expects it)."""
        # The new stages start before the old ones stop, so that a refused state leaves
        # this loader as it was.
        new = _saln.Loader(*self._args, _state_json(state_dict))
        self._inner.close()
        self._inner = new

    # -- iteration --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = self._inner.next_batch()
        if batch is None:
            raise StopIteration
        return batch

    def __len__(self) -> int:
        """Batches per epoch (one per super-batch)."""
        return self._inner.batches_per_epoch

    # -- facts ------------------------------------------------------------------------
    @property
    def epochs(self) -> int:
        """Epochs the loader delivers (the pipeline's ``trainer.epochs``)."""
        return self._inner.epochs

    @property
    def shape(self) -> tuple:
        """``(C, H, W)`` of every image."""
        return self._inner.shape

    @property
    def num_classes(self) -> int:
        return self._inner.num_classes

    @property
    def device(self) -> _torch.device:
        """Where ``images`` and ``labels`` are."""
        return _torch.device(self._inner.device)

    @property
    def samples_per_epoch(self) -> int:
        """Learner samples each epoch draws its super-batches from."""
        return self._inner.samples_per_epoch

    @property
    def running(self) -> bool:
        """Whether the stages are still running."""
        return self._inner.running

    @property
    def config(self) -> dict:
        """The resolved configuration (every default filled in)."""
        return _json.loads(self._inner.config_json())

    # -- figures and feedback ---------------------------------------------------------
    def stats(self) -> list:
        """Per stage (``loader``, ``extract``; ``export`` with an export section): items,
        samples, ``busy_seconds``, ``wait_input_seconds`` (upstream is slower),
        ``blocked_output_seconds`` (downstream is slower). Live while running, final after
        ``close()``; safe to call from another thread."""
        return self._inner.stats()

    def losses(self, ids) -> list:
        """The latest loss reported (``Batch.report_losses``) for each id, ``None`` where
        none was: the loss table the loader shares with its selection stage."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._inner.losses([int(i) for i in ids])

    # -- shutdown ---------------------------------------------------------------------
    def close(self) -> dict | None:
        """Stops every stage (each after its current item), joins their threads and
        returns what ran: ``steps``, ``completed``, ``error``, ``loader`` and ``selection``
        figures (``selection["kept_digest"]``), ``export``. Later calls return the same."""
        return self._inner.close()

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._inner.running else "closed"
        return (
            f"saln.Loader({len(self)} batches per epoch x {self.epochs} epochs, "
            f"images {self.shape} on {self._inner.device}, {state})"
        )
