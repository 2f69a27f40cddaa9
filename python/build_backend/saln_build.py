"""PEP 517 backend of saln's Python package: maturin, after a check of torch.

saln's extension is built against the libtorch of the torch installed in the environment it
is installed into (tch's ``LIBTORCH_USE_PYTORCH=1`` route) and bundles none. So before
maturin runs, this backend

- checks that the target interpreter imports ``torch==2.11.*`` (the release tch 0.24 pairs
  with), failing with a message that says which torch to install;
- points the build at that interpreter: ``LIBTORCH_USE_PYTORCH=1``, its ``bin`` folder
  first on ``PATH`` and ``VIRTUAL_ENV`` set (tch's build script then runs its ``python``),
  and drops the build-isolation overlay from ``PYTHONPATH`` for the build's subprocesses,
  so that ``import torch`` there sees the environment's site-packages.
"""

from __future__ import annotations

import os
import subprocess
import sys

import maturin
from maturin import *  # noqa: F401,F403  (the hooks this module does not wrap)

TORCH = "2.11"
REQUIREMENT = f"torch=={TORCH}.*"

_PROBE = "import torch, os; print(torch.__version__); print(os.path.dirname(torch.__file__))"


def _clean_env() -> dict:
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    kept = [p for p in parts if "pip-build-env" not in p and "build-env-" not in p]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    return env


def check_torch(python: str = sys.executable) -> tuple[str, str]:
    """(version, folder) of the torch that ``python`` imports; raises ``RuntimeError``
    naming the torch saln needs when there is none or another release."""
    r = subprocess.run(
        [python, "-c", _PROBE], env=_clean_env(), capture_output=True, text=True
    )
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(
            f"saln needs PyTorch in the environment it is installed into: install "
            f"{REQUIREMENT} first (`{python} -m pip install torch==2.11.0`), then install "
            f"saln again. saln's extension links against that torch's libtorch and bundles "
            f"none. (`import torch` failed in {python}: {last})"
        )
    version, folder = r.stdout.strip().splitlines()[-2:]
    if not version.startswith(TORCH + "."):
        raise RuntimeError(
            f"saln needs {REQUIREMENT} (its libtorch bindings, tch 0.24, are built for "
            f"PyTorch {TORCH}), but {python} has torch {version}: install torch==2.11.0."
        )
    return version, folder


def _prepare() -> None:
    version, _ = check_torch()
    os.environ["LIBTORCH_USE_PYTORCH"] = "1"
    if version.split("+")[0] != TORCH + ".0":
        # tch checks for exactly 2.11.0; patch releases keep the same operators.
        os.environ["LIBTORCH_BYPASS_VERSION_CHECK"] = "1"
    bindir = os.path.dirname(sys.executable)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    os.environ["VIRTUAL_ENV"] = sys.prefix
    os.environ.update({"PYTHONPATH": _clean_env().get("PYTHONPATH", "")})
    if not os.environ["PYTHONPATH"]:
        del os.environ["PYTHONPATH"]


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _prepare()
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _prepare()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _prepare()
    return maturin.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _prepare()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)
