"""saln.validate / curate / run and configuration errors, against saln-pipe's messages."""

from __future__ import annotations

import pytest

import saln
from conftest import ROOT, cli_error, read_report, run_cli, saln_yaml

INVALID = ROOT / "fixtures" / "configs" / "invalid"


def test_an_unknown_key_raises_naming_the_key_and_its_line(saln_pipe):
    path = INVALID / "unknown-key.yaml"  # selection.keep_ratoi on line 4
    with pytest.raises(saln.ConfigError) as e:
        saln.Loader(path)
    assert "keep_ratoi" in str(e.value) and "line 4" in str(e.value)
    [p] = e.value.problems
    assert (p.key, p.line) == ("selection.keep_ratoi", 4)
    assert isinstance(e.value, saln.SalnError)
    # The message is the CLI's.
    r = run_cli(saln_pipe, "curate", str(path), "--out", "/tmp/unused", check=False)
    assert r.returncode == 2
    assert str(e.value) == cli_error(r)


def test_value_problems_come_all_at_once_with_keys_and_lines(fmnist, tmp_path, saln_pipe):
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"source:\n  idx: {{ dir: '{fmnist}' }}\ndevice: tpu\n"
        "selection:\n  keep_ratio: 1.5\nsuperbatch:\n  size: 1\ntrainer:\n  epochs: 0\n"
    )
    with pytest.raises(saln.ConfigError) as e:
        saln.curate(path, out=tmp_path / "out")
    got = [(p.key, p.line) for p in e.value.problems]
    assert got == [
        ("device", 3),
        ("superbatch.size", 7),
        ("selection.keep_ratio", 5),
        ("trainer.epochs", 9),
    ]
    r = run_cli(saln_pipe, "curate", str(path), "--out", str(tmp_path / "out"), check=False)
    assert r.returncode == 2 and str(e.value) == cli_error(r)
    # validate: the same problems ordered by line, then what the run needs (the default
    # reference weights are not trained here)
    found = saln.validate(path)
    assert found[:4] == sorted(e.value.problems, key=lambda p: p.line)
    assert [p.key for p in found[4:]] == ["extractor.weights"]


@pytest.mark.parametrize(
    "yaml, key, line, message",
    [
        ("source:\n  idx: { dir: /x }\nsuperbatch:\n  size: lots\n", "superbatch.size", 4, "invalid u64"),
        ("source:\n  idx: { dir: /x }\nselection: { policy: salnn }\n", "selection.policy", 3, "unknown variant `salnn`"),
        ("source:\n  idx: { dir: /x }\nexport: { overwrite: true }\n", "export.dir", 3, "missing field `dir`"),
        ("source: { idx: { dir: /x, dirx: 1 } }\n", "source.idx.dirx", 1, "unknown field `dirx`"),
        ("seed: 1\n", "source", 1, "missing field `source`"),
    ],
)
def test_parse_errors_name_the_key_and_line(yaml, key, line, message):
    with pytest.raises(saln.ConfigError) as e:
        saln.Loader(yaml)
    [p] = e.value.problems
    assert (p.key, p.line) == (key, line)
    assert p.message.startswith(message)
    assert p in saln.validate(yaml)  # with the missing data folder /x


def test_a_wrong_type_and_bad_overrides(fmnist, tmp_path):
    with pytest.raises(saln.ConfigError, match="line 4 column 9: invalid u64") as e:
        saln.Loader(INVALID / "wrong-type.yaml")
    assert [(p.key, p.line) for p in e.value.problems] == [("superbatch.size", 4)]
    ok = tmp_path / "ok.yaml"
    ok.write_text(saln_yaml(fmnist))
    with pytest.raises(saln.ConfigError, match="keep_ratio") as e:
        saln.Loader(ok, selection__keep_ratio=2.0)
    [p] = e.value.problems
    assert (p.key, p.line) == ("selection.keep_ratio", None)
    assert "override" in p.message
    with pytest.raises(saln.ConfigError, match="keep_ratoi"):
        saln.config(ok, selection__keep_ratoi=0.5)
    with pytest.raises(saln.ConfigError, match="not a mapping"):
        saln.config(ok, selection__policy__x=1)
    with pytest.raises(TypeError):
        saln.config(42)


def test_validate_lists_what_saln_pipe_validate_reports(fmnist, tmp_path, saln_pipe):
    good = tmp_path / "good.yaml"
    good.write_text(saln_yaml(fmnist))
    assert saln.validate(good) == []
    assert saln.validate(saln_yaml(fmnist)) == []  # YAML text
    missing = INVALID / "missing-data.yaml"
    problems = saln.validate(missing)
    r = run_cli(saln_pipe, "validate", str(missing), check=False)
    assert r.returncode == 2
    assert problems and all(p.message in r.stderr for p in problems)
    # the model file of `policy: saln` is checked too
    model = saln.validate(
        good, selection__policy="saln",
        extractor={"kind": "torchscript", "torchscript": {"path": str(tmp_path / "none.pt")}},
    )
    assert [(p.key, p.line) for p in model] == [("extractor.torchscript.path", None)]
    assert "none.pt" in model[0].message
    with pytest.raises(saln.SalnError, match="No such file"):
        saln.validate(tmp_path / "absent.yaml")


def test_a_run_failure_raises_the_cli_message(tmp_path, saln_pipe):
    path = tmp_path / "nodata.yaml"
    path.write_text(
        f"source: {{ idx: {{ dir: '{tmp_path / 'nowhere'}' }}, holdout: 0 }}\n"
        "selection: { policy: uniform }\n"
        f"report: {{ path: '{tmp_path / 'r.json'}' }}\n"
    )
    with pytest.raises(saln.SalnError) as e:
        saln.curate(path, out=tmp_path / "out")
    assert not isinstance(e.value, saln.ConfigError)
    r = run_cli(saln_pipe, "curate", str(path), "--out", str(tmp_path / "out2"), check=False)
    assert r.returncode == 1
    assert str(e.value) == cli_error(r).splitlines()[0]
    assert "nowhere" in str(e.value)


def test_curate_needs_an_export(fmnist):
    with pytest.raises(saln.ConfigError, match="curate writes Parquet"):
        saln.curate(saln_yaml(fmnist))


def test_run_trains_and_returns_the_report(fmnist, tmp_path):
    report = saln.run(
        saln_yaml(fmnist, limit=512, size=128, epochs=1, report=tmp_path / "r.json"),
        seed=7, source__test_limit=200, trainer__arch={"conv1": 4, "conv2": 8, "hidden": 16},
    )
    assert report["status"] == "completed" and report["seed"] == 7
    assert len(report["epochs"]) == 1 and 0.0 <= report["final_test_accuracy"] <= 1.0
    assert read_report(tmp_path / "r.json")["seed"] == 7
    loader_only = saln.run(
        saln_yaml(fmnist, limit=1024, report=tmp_path / "lo.json"), loader_only={"epochs": 1}
    )
    assert loader_only["mode"] == "loader-only" and loader_only["images"] == 1024


def test_ctrl_c_stops_a_curation_like_saln_pipe_and_raises_keyboard_interrupt(fmnist, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    # 6 billion samples: hours of work even at the loader's full speed (a uniform curation
    # goes through about a million samples a second here)
    yaml = saln_yaml(fmnist, limit=60000, epochs=100000, report=tmp_path / "r.json")
    code = (
        "import faulthandler, signal, sys, saln\n"
        # A process started in the background by a non-interactive shell (make launched with
        # `&`, some CI runners) inherits SIGINT ignored, and Python then leaves it ignored;
        # an interactive Python has this handler, which is what the test is about.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "faulthandler.dump_traceback_later(50, exit=True)  # a hang shows where it is\n"
        "print('start', flush=True)\n"
        "try:\n"
        f"    r = saln.curate({yaml!r}, out={str(tmp_path / 'out')!r})\n"
        "    print('returned', r['status'], r['wall_seconds'], flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "start"
    time.sleep(3.0)  # loading the data, then curating
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"no exit 60 s after SIGINT; stdout {out!r}, stderr {err[-4000:]!r}")
    assert p.returncode == 130, (out, err)
    assert "interrupted" in out
    assert time.monotonic() - t < 20
    report = read_report(tmp_path / "r.json")
    assert report["status"] == "cancelled"
    assert 0 < report["selection"]["superbatches"] < 100000 * 235
