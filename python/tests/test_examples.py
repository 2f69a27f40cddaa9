"""The Python examples run (small sizes; examples/python/ray_curate.py runs in test_ray)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_train_loop_trains_a_torchvision_model_on_curated_batches():
    r = subprocess.run(
        [
            sys.executable, str(ROOT / "examples" / "python" / "train_loop.py"),
            "--policy", "uniform", "--limit", "2048", "--epochs", "2", "--test-limit", "500",
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("epoch ")]
    assert len(lines) == 2, r.stdout
    # a quarter of each super-batch of 256: 8 steps of 64 per epoch
    assert all("8 steps on 512 of 2048 images" in l for l in lines), r.stdout
    assert "selection: 1024 of 4096 samples kept" in r.stdout
