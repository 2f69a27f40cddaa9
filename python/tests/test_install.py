"""How the package is built and loaded: torch first, no bundled libtorch, clear errors."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import saln
from conftest import ROOT


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=clean
    )


def test_import_saln_imports_torch_first_and_needs_no_library_path():
    r = _python(
        "import sys, saln; assert 'torch' in sys.modules; "
        "print(saln.__version__, sys.modules['torch'].__version__)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1].startswith("2.11.")


def test_without_torch_import_says_which_torch_is_needed():
    r = _python("import sys; sys.modules['torch'] = None; import saln")
    assert r.returncode != 0
    assert "ImportError: saln needs PyTorch: install torch==2.11.*" in r.stderr


def test_another_torch_release_is_refused_with_the_needed_one():
    r = _python(
        "import sys, types; sys.modules['torch'] = types.SimpleNamespace(__version__='2.10.1'); "
        "import saln"
    )
    assert r.returncode != 0
    assert "saln needs torch==2.11.*, but this environment has torch 2.10.1" in r.stderr


def test_the_extension_links_libtorch_by_name_without_cuda_or_an_rpath():
    so = pathlib.Path(saln._saln.__file__)
    dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line]
    assert "libtorch_cpu.so" in needed and "libc10.so" in needed
    assert "libtorch_python.so" in needed  # tensors to and from Python
    # A CPU-only torch has no libtorch_cuda: the extension must not require it.
    assert not any("cuda" in n for n in needed), needed
    # No rpath into the build's environment: the libraries come from `import torch`.
    assert "RPATH" not in dyn and "RUNPATH" not in dyn, dyn
    # Nothing bundled next to the extension (auditwheel would have added saln.libs/).
    assert [p.name for p in so.parent.glob("*.so*")] == [so.name]
    assert not (so.parent.parent / "saln.libs").exists()


def test_pip_install_without_torch_says_which_torch_is_needed(tmp_path):
    """The build backend's check, run against a fresh environment without torch."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    sys.path.insert(0, str(ROOT / "python" / "build_backend"))
    try:
        import saln_build
    finally:
        sys.path.pop(0)
    with pytest.raises(RuntimeError, match=r"install torch==2\.11\.\* first"):
        saln_build.check_torch(str(venv / "bin" / "python"))
    version, folder = saln_build.check_torch(sys.executable)
    assert version.startswith("2.11.") and os.path.isdir(folder)
