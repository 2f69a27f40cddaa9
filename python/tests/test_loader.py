"""saln.Loader: tensors, epochs, feedback, statistics, shutdown, the GIL."""

from __future__ import annotations

import json
import math
import threading
import time

import pyarrow.parquet as pq
import pytest
import torch

import saln
from conftest import read_report, run_cli, saln_threads, saln_yaml


def test_batches_are_torch_tensors_with_the_documented_shapes_and_dtypes(fmnist):
    yaml = saln_yaml(fmnist, limit=1000, size=256, keep=0.25, epochs=2)
    with saln.Loader(yaml) as loader:
        assert len(loader) == math.ceil(1000 / 256) == 4
        assert (loader.epochs, loader.shape, loader.num_classes) == (2, (1, 28, 28), 10)
        assert loader.device == torch.device("cpu")
        seen = []
        for epoch in range(loader.epochs):
            batches = list(loader)  # one epoch per loop
            assert len(batches) == len(loader)
            for b in batches:
                n = len(b)
                # 25% of each super-batch: 64 of 256, 58 of the last 232
                assert n == round(0.25 * b.superbatch_size)
                assert b.epoch == epoch
                assert isinstance(b.images, torch.Tensor)
                assert b.images.dtype == torch.float32 and b.images.shape == (n, 1, 28, 28)
                assert b.images.device == loader.device and b.images.is_contiguous()
                assert b.labels.dtype == torch.int64 and b.labels.shape == (n,)
                assert int(b.labels.min()) >= 0 and int(b.labels.max()) < 10
                assert b.ids.dtype == torch.int64 and b.ids.shape == (n,)
                assert b.scores.dtype == torch.float32 and b.scores.shape == (n,)
                # Handed over without a copy: the tensor's data is the buffer saln filled.
                assert b.images.data_ptr() == b._images_data_ptr
                # normalised: (x - 0.286) / 0.353 over [0, 1]
                assert -0.9 < float(b.images.min()) and float(b.images.max()) < 2.1
                seen.append(b)
        assert list(loader) == []  # every epoch delivered
        assert [b.step for b in seen] == list(range(8))
        report = loader.close()
    assert report["completed"] and report["steps"] == 8
    assert report["loader"]["samples"] == 2000
    # every learner sample appears once per epoch in the super-batches; a quarter is kept
    assert report["selection"]["samples_in"] == 2000
    assert report["selection"]["samples_kept"] == sum(len(b) for b in seen)


def test_ids_kept_equal_saln_pipe_curate_on_the_same_yaml_and_seed(fmnist, feature_model, saln_pipe, tmp_path):
    yaml = saln_yaml(
        fmnist, model=feature_model, policy="saln", limit=1024, size=256, epochs=2, seed=3,
        report=tmp_path / "cli-report.json",
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml)
    run_cli(saln_pipe, "curate", str(path), "--out", str(tmp_path / "cli"))
    cli = read_report(tmp_path / "cli-report.json")
    rows = pq.read_table(tmp_path / "cli").to_pandas().sort_values(["superbatch", "position"])
    with saln.Loader(path) as loader:
        ids, scores = [], []
        for _ in range(loader.epochs):
            for b in loader:
                ids += b.ids.tolist()
                scores += b.scores.tolist()
        report = loader.close()
    assert ids == rows.sample_id.tolist()
    assert scores == pytest.approx(rows.score.tolist(), abs=1e-6)
    assert report["selection"]["kept_digest"] == cli["selection"]["kept_digest"]
    assert report["selection"]["samples_kept"] == cli["selection"]["samples_kept"] == 2 * 256
    # ... and saln.curate in this process agrees too.
    py = saln.curate(path, out=tmp_path / "py", report_path=tmp_path / "py-report.json")
    assert py["selection"]["kept_digest"] == cli["selection"]["kept_digest"]
    assert py["status"] == "completed" and py["export"]["kept_rows"] == 512


def test_reported_losses_reach_the_table_the_selection_stage_reads(fmnist):
    with saln.Loader(saln_yaml(fmnist, limit=512, size=128, epochs=1)) as loader:
        reported = {}
        for b in loader:
            # A loss straight from a training step: requires grad, any float dtype.
            w = torch.ones(1, requires_grad=True)
            per_sample = (b.images.flatten(1).mean(1) * w).double()
            b.report_losses(per_sample)
            reported.update(zip(b.ids.tolist(), per_sample.detach().float().tolist()))
        ids = list(reported)
        got = loader.losses(ids)
        assert got == pytest.approx([reported[i] for i in ids])
        assert loader.losses([10**9]) == [None]
    # Bad feedback raises, naming the sample, and stores nothing.
    with saln.Loader(saln_yaml(fmnist, limit=512, size=128, epochs=1)) as loader:
        b = next(loader)
        bad = torch.zeros(len(b))
        bad[1] = float("nan")
        with pytest.raises(saln.SalnError, match=f"loss feedback: loss of sample id {int(b.ids[1])} is NaN"):
            b.report_losses(bad)
        with pytest.raises(saln.SalnError, match=f"2 losses reported for a batch of {len(b)}"):
            b.report_losses([0.1, 0.2])
        b.report_losses([0.5] * len(b))  # a list works too
        assert loader.losses(b.ids) == [0.5] * len(b)


def _kept_by_epoch(loader, loss_of) -> list:
    """Runs every epoch of `loader`, reporting `loss_of(id)` for each sample trained on;
    returns the ids kept, epoch by epoch."""
    epochs = []
    for _ in range(loader.epochs):
        kept = []
        for b in loader:
            ids = b.ids.tolist()
            b.report_losses(torch.tensor([loss_of(i) for i in ids]))
            kept += ids
        epochs.append(kept)
    return epochs


def test_losses_reported_from_python_decide_what_the_loss_policy_keeps(fmnist):
    # `loss` in a loader: no trainer; the selection reads the losses the loop reports.
    yaml = saln_yaml(fmnist, policy="loss", limit=1024, size=128, keep=0.5, epochs=4)
    hard = lambda i: i % 5 == 0  # noqa: E731
    with saln.Loader(yaml) as loader:
        steered = _kept_by_epoch(loader, lambda i: 100.0 if hard(i) else 1.0)
        report = loader.close()
    with saln.Loader(yaml, augment__workers=1, channels={"extract_to_train": 1}) as loader:
        again = _kept_by_epoch(loader, lambda i: 100.0 if hard(i) else 1.0)
    with saln.Loader(yaml) as loader:
        opposite = _kept_by_epoch(loader, lambda i: 1.0 if hard(i) else 100.0)

    every = set().union(*steered)  # the 1024 samples `limit` drew
    hard_ids = {i for i in every if hard(i)}
    assert len(every) == 1024 and len(hard_ids) > 150
    # Samples with no loss yet come first: by the third epoch every sample was trained on.
    assert set(steered[0]) | set(steered[1]) | set(steered[2]) == every
    # Then the samples reported hard are kept, all of them, in the last epoch ...
    assert hard_ids <= set(steered[3])
    # ... and dropped when the loop reports them easy.
    assert len(hard_ids & set(opposite[3])) < len(hard_ids) // 4
    # The same losses give the same selection, whatever the threads and queues.
    assert again == steered
    fb = report["selection"]["feedback"]
    assert fb["lag"] == 4 and fb["samples_with_loss"] > 0
    assert fb["samples_with_loss"] + fb["samples_without_loss"] == 4 * 1024


def test_a_report_after_the_loop_moved_on_is_refused(fmnist):
    yaml = saln_yaml(fmnist, policy="loss", limit=512, size=128, epochs=1)
    with saln.Loader(yaml, selection__snapshot_lag=0) as loader:
        first, second = next(loader), next(loader)
        with pytest.raises(saln.SalnError, match="the losses of batch 0 came after the loop asked for batch 1"):
            first.report_losses([1.0] * len(first))
        second.report_losses([1.0] * len(second))
        with pytest.raises(saln.SalnError, match="already reported"):
            second.report_losses([1.0] * len(second))


def test_learner_policies_cannot_curate_without_a_learner(fmnist, tmp_path):
    with pytest.raises(saln.ConfigError, match="selection.policy") as e:
        saln.curate(saln_yaml(fmnist, policy="loss"), out=tmp_path / "out")
    assert "a loader" in str(e.value)


def test_stats_show_every_stage_while_running(fmnist):
    with saln.Loader(saln_yaml(fmnist, limit=2048, size=256, epochs=1)) as loader:
        for _ in range(3):
            next(loader)
        live = loader.stats()
        assert [s["stage"] for s in live] == ["loader", "extract"]
        assert live[0]["threads"] == 2 and live[0]["samples"] >= 3 * 256
        for s in live:
            for k in ("busy_seconds", "wait_input_seconds", "blocked_output_seconds"):
                assert s[k] >= 0.0
        assert live[0]["busy_seconds"] > 0 and live[1]["items"] >= 3
        loader.close()
        final = loader.stats()
        assert final[1]["items"] >= live[1]["items"]


def test_close_mid_epoch_stops_every_thread(fmnist):
    assert saln_threads() == []
    loader = saln.Loader(saln_yaml(fmnist, limit=8192, size=256, epochs=3))
    next(loader)
    running = saln_threads()
    assert {"saln-loader", "saln-extract", "saln-decode-0", "saln-decode-1"} <= set(running)
    closer = threading.Thread(target=loader.close)
    closer.start()
    closer.join(timeout=30)
    assert not closer.is_alive(), "close() did not return within 30 s"
    assert saln_threads() == []
    assert not loader.running
    report = loader.close()  # again: the same report
    assert report["completed"] is False and report["steps"] == 1
    assert list(loader) == []


def test_leaving_the_with_block_and_dropping_the_loader_stop_every_thread(fmnist):
    with saln.Loader(saln_yaml(fmnist, limit=4096, size=256, epochs=2)) as loader:
        next(loader)
        assert saln_threads()
    assert saln_threads() == []
    loader = saln.Loader(saln_yaml(fmnist, limit=4096, size=256, epochs=2))
    next(loader)
    del loader
    assert saln_threads() == []


def test_the_gil_is_released_while_waiting_for_a_batch(fmnist):
    # One big super-batch of upscaled, rotated images on one worker: it takes a while.
    yaml = saln_yaml(
        fmnist, limit=4096, size=4096, epochs=1,
        ops="[ { resize: { size: 112 } }, { rotate: { max_degrees: 30 } }, { normalize: { mean: [0.3], std: [0.35] } } ]",
    ).replace("workers: 2", "workers: 1")
    with saln.Loader(yaml) as loader:
        waited = {}

        def consume():
            waited["start"] = time.monotonic()
            next(loader)
            waited["end"] = time.monotonic()

        ticks = []
        t = threading.Thread(target=consume)
        t.start()
        while t.is_alive():
            ticks.append(time.monotonic())  # Python work while the other thread waits
            sum(range(1000))
        t.join()
    start, end = waited["start"], waited["end"]
    assert end - start > 0.05, "the first batch came too fast to tell"
    during = [x for x in ticks if start + 0.01 < x < end - 0.01]
    # With the GIL held by the waiting thread this thread could not run at all meanwhile.
    assert len(during) > 100, f"{len(during)} ticks during a {end - start:.2f} s wait"


def test_overrides_by_keyword(fmnist, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(saln_yaml(fmnist, limit=512, size=256, keep=0.25))
    with saln.Loader(path, seed=1, **{"selection.keep_ratio": 0.5}) as loader:
        b = next(loader)
        assert len(b) == 128
        assert loader.config["seed"] == 1
    cfg = saln.config(path, selection={"rule": "extremes"}, superbatch__size=128)
    assert cfg["selection"] == {**cfg["selection"], "policy": "uniform", "keep_ratio": 0.25, "rule": "extremes"}
    assert cfg["superbatch"]["size"] == 128
    # no YAML at all: a dict and keywords
    cfg = saln.config({"source": {"idx": {"dir": str(fmnist)}}}, trainer__epochs=3)
    assert cfg["trainer"]["epochs"] == 3 and cfg["superbatch"]["size"] == 256


def test_a_failing_stage_raises_the_cli_message(fmnist, tmp_path):
    # A TorchScript "model" that is not one fails when the loader starts, naming the file.
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a model")
    with pytest.raises(saln.SalnError, match="bogus.pt"):
        saln.Loader(saln_yaml(fmnist, model=bogus, policy="saln"))


def test_a_loader_resumed_from_its_state_dict_gives_the_rest_of_the_run(fmnist, tmp_path):
    yaml = saln_yaml(fmnist, limit=1000, size=256, keep=0.25, epochs=2, seed=4)
    with saln.Loader(yaml) as full:
        everything = [b.ids.tolist() for _ in range(full.epochs) for b in full]
    assert len(everything) == 8
    # Stopped after 5 batches (the 2nd of epoch 1); the state goes through a JSON file.
    with saln.Loader(yaml) as first:
        head = [b.ids.tolist() for b in first]  # epoch 0
        it = iter(first)
        head.append(next(it).ids.tolist())
        state = first.state_dict()
    assert state == {"epoch": 1, "superbatch": 1}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    with saln.Loader(yaml, state_dict=json.loads(path.read_text())) as resumed:
        assert resumed.state_dict() == state
        tail = [b.ids.tolist() for b in resumed]  # the rest of epoch 1
        assert list(resumed) == []  # and nothing after it
    assert head + tail == everything
    # load_state_dict restarts a running loader there (the StatefulDataLoader protocol).
    with saln.Loader(yaml) as again:
        next(iter(again))
        again.load_state_dict({"epoch": 0, "superbatch": 3})
        got = [b.ids.tolist() for _ in range(2) for b in again]
    assert got == everything[3:]


def test_a_bad_state_dict_is_refused_naming_it(fmnist, tmp_path):
    yaml = saln_yaml(fmnist, limit=1000, size=256, keep=0.25, epochs=2)
    with pytest.raises(ValueError, match="state_dict"):
        saln.Loader(yaml, state_dict={"epoch": 0, "step": 3})
    with pytest.raises(TypeError, match="state_dict"):
        saln.Loader(yaml, state_dict=[0, 3])
    with pytest.raises(saln.ConfigError, match="outside this run"):
        saln.Loader(yaml, state_dict={"epoch": 0, "superbatch": 9})
    with saln.Loader(yaml) as running:
        with pytest.raises(saln.ConfigError, match="outside this run"):
            running.load_state_dict({"epoch": 5, "superbatch": 0})
        assert running.running and len(list(running)) == len(running)  # still usable
    with pytest.raises(saln.ConfigError, match="export"):
        saln.Loader(yaml, state_dict={"epoch": 0, "superbatch": 1}, export__dir=str(tmp_path / "x"))
