"""Shared fixtures: the repository, the Fashion-MNIST files, saln-pipe, a feature model."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
FMNIST = pathlib.Path(os.environ.get("SALN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
NORMALIZE = "{ normalize: { mean: [0.286], std: [0.353] } }"


@pytest.fixture(scope="session")
def fmnist() -> pathlib.Path:
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST is not in {FMNIST}: run `scripts/setup.sh data` (make test does)")
    return FMNIST


@pytest.fixture(scope="session")
def saln_pipe() -> pathlib.Path:
    """The saln-pipe binary of this checkout (make test builds it before pytest runs)."""
    path = pathlib.Path(os.environ.get("SALN_PIPE", ROOT / "target" / "release" / "saln-pipe"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build --release` (make test does)")
    return path


def run_cli(saln_pipe: pathlib.Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(saln_pipe), *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    if check and r.returncode != 0:
        raise AssertionError(f"saln-pipe {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def cli_error(r: subprocess.CompletedProcess) -> str:
    """The message saln-pipe printed after `error: ` (it may span several lines)."""
    text = r.stderr
    at = text.index("error: ")
    return text[at + len("error: "):].rstrip("\n")


@pytest.fixture(scope="session")
def feature_model(tmp_path_factory) -> pathlib.Path:
    """A small TorchScript feature network (random weights, fixed seed): features for
    `policy: saln` without pretraining a reference model."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 32),
    ).eval()
    path = tmp_path_factory.mktemp("model") / "features.pt"
    with torch.no_grad():
        torch.jit.trace(net, torch.zeros(2, 1, 28, 28)).save(str(path))
    return path


def saln_yaml(
    fmnist: pathlib.Path,
    *,
    model: pathlib.Path | None = None,
    policy: str = "uniform",
    limit: int = 1024,
    size: int = 256,
    keep: float = 0.25,
    epochs: int = 1,
    seed: int = 0,
    report: pathlib.Path | None = None,
    ops: str = "[ { hflip: { p: 0.5 } }, " + NORMALIZE + " ]",
    extra: str = "",
) -> str:
    """A small Fashion-MNIST pipeline (seconds to run)."""
    lines = [
        f"seed: {seed}",
        "device: cpu",
        f"source: {{ idx: {{ dir: '{fmnist}' }}, holdout: 0, limit: {limit}, test_limit: 200 }}",
        f"augment: {{ workers: 2, ops: {ops} }}",
        f"superbatch: {{ size: {size} }}",
        f"selection: {{ policy: {policy}, keep_ratio: {keep} }}",
        f"trainer: {{ epochs: {epochs} }}",
    ]
    if model is not None:
        lines.append(
            f"extractor: {{ kind: torchscript, torchscript: {{ path: '{model}' }}, micro_batch: 256 }}"
        )
    if report is not None:
        lines.append(f"report: {{ path: '{report}', progress_seconds: 0 }}")
    return "\n".join(lines) + "\n" + extra


def saln_threads() -> list:
    """Names of this process's threads that saln started (`saln-loader`, `saln-decode-0`, ...)."""
    names = []
    for task in pathlib.Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        if name.startswith("saln-"):
            names.append(name)
    return sorted(names)


def read_report(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())
