#!/usr/bin/env python3
"""The figures in README.md and docs/ that come from runs, written from committed results.

    scripts/figures.py                 rewrite every marked block from the committed results
    scripts/figures.py --check         exit 1 with a diff when a block differs from what this
                                       script writes (`make test` runs it: tests/it/docs.rs)
    scripts/figures.py record-demo CONSTANT.json COSINE.json [--note TEXT]
                                       copy two demo reports (`lr_schedule: constant` and
                                       `cosine`) into docs/results/demo/, with the machine
    scripts/figures.py record-python DEFAULT.txt DEFAULT.json SALN.txt SALN.json [--note TEXT]
                                       copy the outputs of python/bench/loader_bench.py (the
                                       default pipeline, then the demo pipeline, each with
                                       --json) into docs/results/bench-python/
    scripts/figures.py record-checkpoint REPORT.json [--note TEXT]
                                       the report of a demo run with checkpoints (README's
                                       checkpoint cost)
    scripts/figures.py record-output NAME OUTPUT.txt [--note TEXT]
                                       copy the stdout of scripts/bench-stream.sh (NAME
                                       bench-stream) or scripts/mem-loader.sh (mem-loader)
                                       into docs/results/NAME/
    scripts/figures.py record-grid NAME GRID_OUTPUT [--note TEXT]
                                       copy an eval grid's folder (results.json/.md, plots,
                                       runs/, reference/ excluded) into docs/results/NAME/
    scripts/figures.py record-loader OUTPUT.txt [--note TEXT]
                                       copy the stdout of scripts/bench-loader.sh into
                                       docs/results/bench-loader/, with the machine
    scripts/figures.py record-bench [--note TEXT] [-- ARGS...]
                                       run `target/release/saln-pipe bench selection ARGS`
                                       and save its output and the machine in
                                       docs/results/bench-selection/

A figure block in a page is

    <!-- figures:NAME -->
    ...written by this script...
    <!-- /figures -->

and NAME is one of the generators below. Every block says which machine its figures came
from (the `machine.json` written beside the results when they were recorded). Only the
standard library is used.
"""
import difflib
import functools
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "docs", "results", "demo")
BENCH = os.path.join(ROOT, "docs", "results", "bench-selection")
# The block's indentation (a block inside a list item) is kept on every line it writes.
BLOCK = re.compile(r"^([ \t]*)<!-- figures:([a-z0-9-]+) -->\n(.*?)^[ \t]*<!-- /figures -->", re.S | re.M)


def load(path):
    with open(path) as f:
        return json.load(f)


def machine_line(folder, note=True):
    """`machine, date, commit; note` from the machine.json recorded with the results."""
    m = load(os.path.join(folder, "machine.json"))
    text = f"{m['machine']}, {m['date']}, commit `{m['commit']}`"
    if note and m.get("note"):
        text += f"; {m['note']}"
    return text


# ---- generators: NAME -> text of the block ----


def epoch_line(e):
    # The format of the `epoch` lines `saln-pipe run` prints (src/bin/saln-pipe/progress.rs).
    return (
        f"epoch {e['epoch']:>3}  test accuracy {100 * e['test_accuracy']:6.2f}%  "
        f"train loss {e['train_loss']:.4f}  trained on {e['images_trained']}/{e['images_seen']} "
        f"images  {e['wall_seconds']:.1f}s"
    )


def demo():
    r = load(os.path.join(DEMO, "report.json"))
    s, o = r["selection"], r["overlap"]
    lines = [epoch_line(e) for e in r["epochs"]]
    # The closing lines of `saln-pipe run` (src/bin/saln-pipe/main.rs).
    lines.append(
        f"final test accuracy {100 * r['final_test_accuracy']:.2f}% ({s['samples_kept']} of "
        f"{s['samples_in']} images trained on, selection {s['ms_per_selection']:.2f} ms per "
        f"super-batch = {100 * s['selection_over_forward']:.1f}% of the forward pass)"
    )
    lines.append(
        f"saln: {o['end_to_end_rate']:.0f} samples/s end to end; slowest stage "
        f"{o['slowest_stage']} alone {o['slowest_standalone_rate']:.0f}/s; overlap {o['overlap']:.2f}"
    )
    return (
        "```text\n" + "\n".join(lines) + "\n```\n\n"
        f"(`docs/results/demo/report.json`: `make demo` on {machine_line(DEMO)}. "
        f"{r['wall_seconds']:.0f} s of curation + training, with the reference model already "
        f"trained; device `{r['device']}`.)\n"
    )


def lr_schedule():
    c = load(os.path.join(DEMO, "report.json"))
    k = load(os.path.join(DEMO, "report-cosine.json"))
    assert c["config"]["trainer"]["lr_schedule"] == "constant", "report.json is not constant"
    assert k["config"]["trainer"]["lr_schedule"] == "cosine", "report-cosine.json is not cosine"
    return (
        f"on the demo, constant reached {100 * c['final_test_accuracy']:.2f}% and cosine "
        f"{100 * k['final_test_accuracy']:.2f}% after {len(c['epochs'])} epochs "
        f"(`docs/results/demo/`, the runs of the demo block above)\n"
    )


def bench_rows():
    """The rows of the committed `saln-pipe bench selection` table, as dicts."""
    with open(os.path.join(BENCH, "cpu.txt")) as f:
        text = f.read()
    lines = text.splitlines()
    k = next(i for i, l in enumerate(lines) if l.split()[:3] == ["B", "d", "w"])
    rows = []
    for l in lines[k + 1 :]:
        c = l.split()
        if len(c) < 10 or not c[0].isdigit():
            continue
        num = lambda x: None if x == "-" else float(x.rstrip("x"))
        rows.append(
            dict(B=int(c[0]), d=int(c[1]), w=c[2], dense=num(c[3]), lanczos=num(c[4]),
                 speedup=num(c[5]), dot=num(c[8]), degenerate="(degenerate)" in l)
        )
    return text, lines[: k], rows


def bench_table():
    text, preamble, _ = bench_rows()
    body = "\n".join(l for l in text.splitlines() if l.strip())
    return "```text\n" + body + "\n```\n\n" + f"({machine_line(BENCH)}.)\n"


def bench_summary():
    _, _, rows = bench_rows()
    at = [r for r in rows if r["B"] == 2048 and r["speedup"] is not None]
    lo = min(at, key=lambda r: r["speedup"])
    hi = max(at, key=lambda r: r["speedup"])
    dot = min(r["dot"] for r in at)
    big = sorted((r for r in rows if r["B"] == 16384 and r["w"] == "shift" and r["lanczos"]),
                 key=lambda r: r["d"])
    text = (
        f"`saln-pipe bench selection`: at B = 2048 the "
        f"iterative solver is {lo['speedup']:.0f}x ({lo['w']}, d = {lo['d']}) to "
        f"{hi['speedup']:.0f}x ({hi['w']}, d = {hi['d']}) faster than dense `eigh`, agreeing "
        + ("to |<v, v_ref>| = 1.000000 (six digits)" if f"{dot:.6f}" == "1.000000"
           else f"to |<v, v_ref>| >= {dot:.6f}")
    )
    if big:
        parts = [f"{r['lanczos'] / 1000:.2f} s (d = {r['d']})" for r in big]
        text += f"; B = 16384 with `shift` takes {' and '.join(parts)}"
    return text + f". (Measured on {machine_line(BENCH)}. The whole table: `docs/selection.md`.)\n"


def demo_selection_cost():
    r = load(os.path.join(DEMO, "report.json"))
    s, cfg = r["selection"], r["config"]
    return (
        f"In the demo (B = {cfg['superbatch']['size']}, `{cfg['selection']['weights']}` weights), "
        f"selection costs {s['ms_per_selection']:.1f} ms per super-batch, "
        f"{100 * s['selection_over_forward']:.0f}% of the feature forward pass "
        f"(`docs/results/demo/report.json`).\n"
    )


EVAL = os.path.join(ROOT, "docs", "results", "fashion-mnist", "runs")


def eval_cost():
    """The cost breakdown of docs/results/README.md, from the committed grid's run reports
    (seed 2, keep ratio 0.25; wall-clock: the mean over the three seeds)."""
    run = lambda name: load(os.path.join(EVAL, name + ".json"))
    saln, none, jest = run("saln-quantile_r0.25_s2"), run("none_r1_s2"), run("jest_r0.25_s2")

    def per_step(r):
        busy = next(x for x in r["stages"] if x["stage"] == "train")["busy_seconds"]
        return 1000 * busy / sum(e["steps"] for e in r["epochs"])

    fwd, sel = saln["selection"]["ms_per_forward"], saln["selection"]["ms_per_selection"]
    step_b, step_all = per_step(saln), per_step(none)
    b = round(saln["config"]["selection"]["keep_ratio"] * saln["config"]["superbatch"]["size"])
    extra, saved = fwd + sel, step_all - step_b
    wall = lambda n: sum(run(f"{n}_s{k}")["wall_seconds"] for k in range(3)) / 3
    w_saln, w_none, w_uni = wall("saln-quantile_r0.25"), wall("none_r1"), wall("uniform_r0.25")
    verdict = "about as large as" if abs(extra - saved) <= 0.1 * saved else (
        "larger than" if extra > saved else "smaller than")
    return (
        f"| work | time |\n|---|---|\n"
        f"| reference forward pass | {fwd:.1f} ms |\n"
        f"| SALN selection (graph, Lanczos, rule) | {sel:.1f} ms |\n"
        f"| one training step on {b} kept samples | {step_b:.1f} ms |\n"
        f"| one training step on all {saln['config']['superbatch']['size']} (`none`) | {step_all:.1f} ms |\n\n"
        f"The step times are the train stage's busy time per step; it includes the four test "
        f"evaluations, the same in both runs, so their difference is the training time saved.\n\n"
        f"- **SALN's extra work ({fwd:.1f} + {sel:.1f} = {extra:.1f} ms) is {verdict} the "
        f"training time it saves at ratio 0.25 ({step_all:.1f} - {step_b:.1f} = {saved:.1f} ms).** "
        f"Per super-batch SALN spends about what `none` spends, while `uniform` keeps the whole "
        f"saving: a step on {b} samples is not four times cheaper than one on 256, and the "
        f"selection eats the rest.\n"
        f"- On two cores the extract and train stages overlap, so the run ends at about "
        f"{w_saln / w_none:.2f}x `none`'s wall-clock ({w_saln:.1f} s against {w_none:.1f} s, "
        f"mean of three seeds), not near uniform's {w_uni / w_none:.2f}x ({w_uni:.1f} s).\n"
        f"- `jest` and `rho-loss` cost more still, because they run both the reference and a "
        f"learner snapshot over every super-batch ({jest['selection']['ms_per_forward']:.0f} ms "
        f"per super-batch for `jest`).\n"
    )


GRID = os.path.join(ROOT, "docs", "results", "fashion-mnist")
GRID8 = os.path.join(ROOT, "docs", "results", "fashion-mnist-uniform-8-epochs")
EPOCH_POLICIES = ["none", "uniform", "saln:quantile", "saln:balanced", "saln:extremes",
                  "saln:boundary", "jest", "rho-loss", "loss"]


def pm(m):
    return f"{100 * m['mean']:.2f} ± {100 * m['sd']:.2f}"


def eval_epochs():
    """The equal-epochs table of docs/results/README.md, from the grid's results.json."""
    cells = load(os.path.join(GRID, "results.json"))["cells"]
    by = {(c["keep_ratio"], c["policy"]): c for c in cells}
    ratios = sorted({c["keep_ratio"] for c in cells}, reverse=True)
    out = ["| keep ratio | " + " | ".join(EPOCH_POLICIES) + " |",
           "|---" * (len(EPOCH_POLICIES) + 1) + "|"]
    for r in ratios:
        here = [p for p in EPOCH_POLICIES if (r, p) in by]
        best = max(here, key=lambda p: by[(r, p)]["final_accuracy"]["mean"])
        row = []
        for p in EPOCH_POLICIES:
            c = by.get((r, p))
            text = pm(c["final_accuracy"]) if c else ""
            row.append(f"**{text}**" if p == best else text)
        out.append(f"| {r:g} | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def seed_accuracies(cells, policy, ratio):
    """{seed: final test accuracy} of a grid cell's runs (their reports under runs/)."""
    (cell,) = [c for c in cells if c["policy"] == policy and c["keep_ratio"] == ratio]
    return {int(r.rsplit("_s", 1)[1]): load(os.path.join(GRID, "runs", r + ".json"))["final_test_accuracy"]
            for r in cell["runs"]}


def eval_seed_diff():
    """`quantile - uniform` seed by seed, and the `quantile - jest` range."""
    cells = load(os.path.join(GRID, "results.json"))["cells"]
    ratios = sorted({c["keep_ratio"] for c in cells if c["keep_ratio"] < 1}, reverse=True)
    first = seed_accuracies(cells, "uniform", ratios[0])
    seeds = sorted(first)
    out = ["| keep ratio | " + " | ".join(f"seed {s}" for s in seeds) + " |",
           "|---" * (len(seeds) + 1) + "|"]
    vs_jest = []
    for r in ratios:
        q = seed_accuracies(cells, "saln:quantile", r)
        u = seed_accuracies(cells, "uniform", r)
        j = seed_accuracies(cells, "jest", r)
        out.append(f"| {r:g} | " + " | ".join(f"{100 * (q[s] - u[s]):+.2f}" for s in seeds) + " |")
        vs_jest += [100 * (q[s] - j[s]) for s in seeds]
    ahead = sum(d > 0 for d in vs_jest)
    return (
        "\n".join(out) + "\n\n"
        "At equal epochs, then, `quantile` and `uniform` cannot be told apart with three seeds. "
        f"Against `jest`, `quantile` is ahead in {ahead} of {len(vs_jest)} seed pairs (by "
        f"{min(vs_jest):+.2f} to {max(vs_jest):+.2f} points).\n"
    )


BUDGETS = [15, 20, 27, 35]


def eval_budgets():
    """The equal-wall-clock table (scripts/eval-budgets.py on the committed grids) and what
    it says at 27 s."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "eval-budgets.py"), GRID, GRID8]
        + [str(b) for b in BUDGETS],
        check=True, capture_output=True, text=True).stdout.splitlines()
    rows = {}
    for line in out[2:]:
        cols = [c.strip() for c in line.strip("|").split("|")]
        rows[(cols[0], cols[1].strip("`"))] = cols[2:]
    keep = [("1", "none")] + [(r, p) for r in ("0.5", "0.25", "0.125")
                              for p in ("uniform, 8 epochs", "saln:quantile", "jest")]
    table = [out[0], out[1]] + [
        f"| {r} | `{p}` | " + " | ".join(rows[(r, p)]) + " |" for r, p in keep]
    at27 = BUDGETS.index(27)

    def mean(r, p):
        return float(rows[(r, p)][at27].split(" ")[0].strip("†"))

    ratios = ("0.5", "0.25", "0.125")
    beat = [mean(r, "uniform, 8 epochs") - mean(r, "saln:quantile") for r in ratios]
    over = [mean(r, "saln:quantile") - mean(r, "jest") for r in ratios]
    none = mean("1", "none")
    u5, u25 = mean("0.5", "uniform, 8 epochs"), mean("0.25", "uniform, 8 epochs")
    verb = "also beats" if min(u5, u25) > none else "is compared with"
    return (
        "\n".join(table) + "\n\n"
        "27 s is about SALN `quantile`'s own wall-clock for 4 epochs. At that budget:\n"
        f"- **uniform beats SALN by {', '.join(f'{d:.1f}' for d in beat[:-1])} and "
        f"{beat[-1]:.1f} points** at keep ratios 0.5, 0.25 and 0.125;\n"
        f"- **SALN beats `jest` by {', '.join(f'{d:.1f}' for d in over[:-1])} and {over[-1]:.1f} "
        f"points**;\n"
        f"- uniform at 0.5 and 0.25 {verb} training on everything (`none`): at 27 s, "
        f"{u5:.2f} and {u25:.2f} against {none:.2f}.\n"
    )


LOADER = os.path.join(ROOT, "docs", "results", "bench-loader")


def loader_figures():
    """The figures of the committed `scripts/bench-loader.sh` output (docs/results/bench-loader/)."""
    with open(os.path.join(LOADER, "output.txt")) as f:
        text = f.read()

    def row(label):
        m = re.search(r"^" + re.escape(label) + r"\s+([0-9.]+)\s+([0-9.]+)\s*$", text, re.M)
        if not m:
            sys.exit(f"docs/results/bench-loader/output.txt: no `{label}` line")
        return float(m.group(1)), float(m.group(2))

    head = re.search(r"^images: (\d+) JPEGs .*?, (\d+) workers, batch (\d+), median of (\d+)", text, re.M)
    load = re.search(r"^load average now: ([0-9.]+)", text, re.M)
    variant = re.search(r"^torch DataLoader \((\w+)\)", text, re.M).group(1)
    saln, torch = row("saln loader-only"), row(f"torch DataLoader ({variant})")
    return {
        "n": int(head.group(1)), "workers": int(head.group(2)), "repeat": int(head.group(4)),
        "load": float(load.group(1)), "variant": variant,
        "saln": saln, "torch": torch,
        "ratio": saln[0] / torch[0], "cpu_ratio": torch[1] / saln[1],
    }


def bench_loader():
    f = loader_figures()
    return (
        f"Measured with `scripts/bench-loader.sh` on {f['n']} JPEGs of about 500 x 375 (resize 224, "
        f"flip, rotation 15 degrees, brightness 0.2, normalise, {f['workers']} workers each): saln's "
        f"loader-only pipeline delivered {f['saln'][0]:.0f} images/s against {f['torch'][0]:.0f} for "
        f"PyTorch's DataLoader with torchvision transforms v2, **{f['ratio']:.2f}x** (median of "
        f"{f['repeat']} alternating runs), using {f['saln'][1]:.2f} against {f['torch'][1]:.2f} CPU ms "
        f"per image ({f['cpu_ratio']:.2f}x less). (`docs/results/bench-loader/output.txt`: "
        f"{machine_line(LOADER)}; load average {f['load']:.1f} at the end of the run.)\n"
    )


def bench_loader_row():
    f = loader_figures()
    return (
        "| script run | saln images/s | torch images/s | ratio | saln CPU ms/image | torch CPU ms/image | CPU ratio |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {f['variant']} variant, median of {f['repeat']}, load {f['load']:.1f} "
        f"(`docs/results/bench-loader/output.txt`) | {f['saln'][0]:.0f} | {f['torch'][0]:.0f} | "
        f"**{f['ratio']:.2f}x** | {f['saln'][1]:.2f} | {f['torch'][1]:.2f} | **{f['cpu_ratio']:.2f}x** |\n"
    )


PYBENCH = os.path.join(ROOT, "docs", "results", "bench-python")
PYBENCH_CASES = [
    ("default", "default: 20 epochs of all 60,000 Fashion-MNIST images, no selection, B = 256 "
                "(the hardest case for Python: thousands of batches per second)"),
    ("saln", "`pipelines/fashion-mnist.yaml` (SALN, reference CNN, a quarter kept), "
             "`--epochs 1 --limit 8192`"),
]


def bench_python():
    """The table of docs/python.md's measurements, from `loader_bench.py --json` outputs."""
    import statistics
    out = ["| pipeline | images delivered per run | rust loader | python loader | python / rust |",
           "|---|---|---|---|---|"]
    for name, what in PYBENCH_CASES:
        f = load(os.path.join(PYBENCH, f"{name}.json"))
        with open(os.path.join(PYBENCH, f"{name}.txt")) as t:
            images = re.search(r"^run 1: (\d+) images in (\d+) batches", t.read(), re.M)

        def med(side, kind):
            return statistics.median(x[kind] for x in f[side])

        def k(v):
            return f"{v / 1000:.0f}k/s" if v >= 10000 else f"{v:.0f}/s"

        out.append(
            f"| {what} | {int(images.group(1)):,} in {int(images.group(2)):,} batches | "
            f"{k(med('rust', 'total'))} ({k(med('rust', 'streaming'))} streaming) | "
            f"{k(med('python', 'total'))} ({k(med('python', 'streaming'))} streaming) | "
            f"**{f['total_ratio']:.3f}** ({f['streaming_ratio']:.3f} streaming), {len(f['rust'])} runs |"
        )
    return "\n".join(out) + f"\n\n(`docs/results/bench-python/`: {machine_line(PYBENCH)}.)\n"


# Scripts whose whole output is the figure: docs/results/NAME/output.txt, shown verbatim.
VERBATIM = {"bench-stream": "scripts/bench-stream.sh", "mem-loader": "scripts/mem-loader.sh"}


def verbatim(name):
    folder = os.path.join(ROOT, "docs", "results", name)

    def block():
        with open(os.path.join(folder, "output.txt")) as f:
            text = f.read().rstrip("\n")
        return (f"```text\n{text}\n```\n\n(`{VERBATIM[name]}`, `docs/results/{name}/output.txt`: "
                f"{machine_line(folder)}.)\n")

    return block


CKPT = os.path.join(ROOT, "docs", "results", "checkpoint")


def checkpoint_cost():
    """README's checkpoint cost, from the committed report of a 1-epoch demo run that
    checkpointed every 40 steps."""
    r = load(os.path.join(CKPT, "report.json"))
    c = r["checkpoints"]
    mb = c["last_bytes"] / 1e6
    share = 100 * c["mean_seconds"] / 300
    return (
        f"**What it costs**, measured on the demo pipeline (`pipelines/fashion-mnist.yaml`, one "
        f"epoch, `every_steps: 40`: {c['written']} checkpoints): {c['mean_seconds']:.3f} s per "
        f"checkpoint (the train stage waits that long) and {mb:.2f} MB per checkpoint, so "
        f"{2 * mb:.0f} MB on disk for the two kept. At the default of one every 5 minutes that is "
        f"{share:.2g}% of the run's time. (`docs/results/checkpoint/report.json`: "
        f"{machine_line(CKPT)}.)\n"
    )


# Issue 15's grids: a ResNet-18 learner, on Fashion-MNIST and on a redundant version of it.
RESNET = os.path.join(ROOT, "docs", "results", "fashion-mnist-resnet")
REDUNDANT = os.path.join(ROOT, "docs", "results", "fashion-mnist-resnet-redundant")
SALN = "saln:quantile"
BASELINES = ["uniform", "jest"]  # what SALN is compared with, seed by seed


@functools.lru_cache(maxsize=None)
def grid_runs(folder):
    """{(policy, keep ratio, seed): run report} of a grid folder's completed runs (read once
    per folder: every block of the ResNet page reads them)."""
    out = {}
    runs = os.path.join(folder, "runs")
    for name in sorted(os.listdir(runs)):
        r = load(os.path.join(runs, name))
        if r.get("status") != "completed":
            continue
        sel = r["config"]["selection"]
        policy = sel["policy"] if sel["policy"] != "saln" else "saln:" + sel["rule"]
        out[(policy, sel["keep_ratio"], r["config"]["seed"])] = r
    return out


def _load_eval_budgets():
    spec = importlib.util.spec_from_file_location(
        "eval_budgets", os.path.join(ROOT, "scripts", "eval-budgets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVAL_BUDGETS = _load_eval_budgets()


def accuracy_at(report, t):
    """The eval's rule (scripts/eval-budgets.py): linear between evaluations, from chance at
    0 s, the final accuracy after the end."""
    return EVAL_BUDGETS.at(EVAL_BUDGETS.curve(report), t)[0]


def mean_sd(xs):
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return m, sd


def mean_end(runs, policy, ratio):
    """Mean over seeds of the wall-clock at the end of the last evaluation of a cell."""
    return mean_sd([r["epochs"][-1]["wall_seconds"] for k, r in runs.items()
                    if k[:2] == (policy, ratio)])[0]


def grid_budgets(runs):
    """Three equal-wall-clock budgets: the mean wall-clock of uniform at the smallest keep
    ratio, of uniform at the largest below 1, and of `none`."""
    ratios = sorted({k[1] for k in runs if k[1] < 1})
    who = [("uniform", ratios[0]), ("uniform", ratios[-1]), ("none", 1)]
    return who, [mean_end(runs, p, r) for p, r in who]


def grid_table(folder):
    """Per (keep ratio, policy): final accuracy, wall-clock, times to the targets, and the
    accuracy at three equal-wall-clock budgets, mean ± sd over seeds."""
    s = load(os.path.join(folder, "results.json"))
    runs = grid_runs(folder)
    who, budgets = grid_budgets(runs)
    targets = s["target_accuracy"]
    head = (["keep ratio", "policy", "final accuracy (%)", "wall-clock (s)"]
            + [f"time to {100 * t:.0f}% (s)" for t in targets]
            + [f"accuracy at {b:.0f} s (%)" for b in budgets])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in s["cells"]:
        seeds = [p["seed"] for p in c["per_seed"]]
        at = [mean_sd([accuracy_at(runs[(c["policy"], c["keep_ratio"], k)], b) for k in seeds])
              for b in budgets]
        ttt = []
        for t in c["time_to_target"]:
            if t["seconds"] is None:
                ttt.append("not reached")
            else:
                v = f"{t['seconds']['mean']:.0f} ± {t['seconds']['sd']:.0f}"
                ttt.append(v if t["reached"] == t["runs"] else f"{v} ({t['reached']}/{t['runs']})")
        row = ([f"{c['keep_ratio']:g}", f"`{c['policy']}`", pm(c["final_accuracy"]),
                f"{c['wall_seconds']['mean']:.0f} ± {c['wall_seconds']['sd']:.0f}"] + ttt
               + [f"{100 * m:.2f} ± {100 * sd:.2f}" for m, sd in at])
        out.append("| " + " | ".join(row) + " |")
    names = ", ".join(f"`{p}` at {r:g}" for p, r in who)
    return ("\n".join(out) + "\n\n"
            f"Mean ± sd over {len(s['cells'][0]['per_seed'])} seeds. The three budgets are the "
            f"mean wall-clock (to the end of the last evaluation) of {names}. Time to a target: "
            f"wall-clock at the end of the first epoch whose test accuracy reached it, over the "
            f"seeds that reached it. (`{os.path.relpath(folder, ROOT)}/`: {machine_line(folder)}.)\n")


def ratio_budget(runs, ratio):
    """The equal-wall-clock budget of a keep ratio: uniform's mean wall-clock there (to the
    end of its last evaluation), the time the free baseline needs for its epochs."""
    return mean_end(runs, "uniform", ratio)


def seed_diffs(folder, base):
    """{keep ratio: (budget, [(seed, at budget, final)])}: SALN minus `base`, points, same
    seed, at the ratio's budget (`ratio_budget`) and at the end of training."""
    runs = grid_runs(folder)
    out = {}
    for ratio in sorted({k[1] for k in runs if k[0] == SALN}, reverse=True):
        seeds = sorted(k[2] for k in runs if k[:2] == (SALN, ratio) and (base, ratio, k[2]) in runs)
        if not seeds:
            continue
        t = ratio_budget(runs, ratio)
        diff = lambda k, f: 100 * (f(runs[(SALN, ratio, k)]) - f(runs[(base, ratio, k)]))
        out[ratio] = (t, [(k, diff(k, lambda r: accuracy_at(r, t)),
                           diff(k, lambda r: r["final_test_accuracy"])) for k in seeds])
    return out


def seed_table(folder, bases):
    rows = []
    for base in bases:
        for ratio, (t, d) in seed_diffs(folder, base).items():
            cells = "; ".join(f"s{k}: {a:+.2f} / {f:+.2f}" for k, a, f in d)
            ahead = sum(a > 0 for _, a, _ in d)
            rows.append(f"| {ratio:g} | `{base}` | {t:.0f} s | {cells} | {ahead} of {len(d)} |")
    return ("| keep ratio | SALN minus | T | per seed: at T / final (points) | SALN ahead at T |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            "T is `uniform`'s mean wall-clock at that keep ratio: the time the free baseline "
            "needs for its 4 epochs. Same seed = same split, order, augmentation and "
            "initialisation.\n")


def verdict(folder, bases):
    """One line per (base, keep ratio): whether SALN beats it at equal wall-clock (ahead in
    every seed), loses (behind in every seed) or ties (mixed signs)."""
    lines = []
    for base in bases:
        for ratio, (t, d) in seed_diffs(folder, base).items():
            m, sd = mean_sd([a for _, a, _ in d])
            ahead = sum(a > 0 for _, a, _ in d)
            word = "**beats**" if ahead == len(d) else "**loses to**" if ahead == 0 else "**ties**"
            lines.append(f"- keep ratio {ratio:g}: SALN {word} `{base}` at equal wall-clock "
                         f"({t:.0f} s): {m:+.2f} ± {sd:.2f} points, ahead in {ahead} of "
                         f"{len(d)} seeds.")
    return ("\n".join(lines) + "\n\n(beats: ahead in every seed; loses: behind in every seed; "
            "ties: the sign changes from seed to seed.)\n")


def redundant_repeats():
    """Share of repeats among the samples offered and kept, per policy (the redundant grid)."""
    s = load(os.path.join(REDUNDANT, "results.json"))
    out = ["| keep ratio | policy | repeats offered (%) | repeats kept (%) |", "|---|---|---|---|"]
    for c in s["cells"]:
        r = c.get("repeats")
        if r and c["keep_ratio"] < 1:
            out.append(f"| {c['keep_ratio']:g} | `{c['policy']}` | {pm(r['offered'])} | {pm(r['kept'])} |")
    return "\n".join(out) + "\n"


def diff_summary(folder, base):
    """'+1.2 ± 0.8 at 0.5, -0.3 ± 1.1 at 0.25 (ahead in 4 of 6 seed pairs)'."""
    parts, ahead, n = [], 0, 0
    for ratio, (_, d) in seed_diffs(folder, base).items():
        m, sd = mean_sd([a for _, a, _ in d])
        parts.append(f"{m:+.1f} ± {sd:.1f} points at keep ratio {ratio:g}")
        ahead += sum(a > 0 for _, a, _ in d)
        n += len(d)
    return f"{', '.join(parts)} (ahead in {ahead} of {n} seed pairs)"


def resnet_evidence():
    """README's summary of docs/results/resnet.md."""
    s = load(os.path.join(REDUNDANT, "results.json"))
    ratio = min(c["keep_ratio"] for c in s["cells"])
    rep = {c["policy"]: c["repeats"]["kept"]["mean"] for c in s["cells"]
           if c.get("repeats") and c["keep_ratio"] == ratio}
    return (
        f"- **With an expensive learner** (a ResNet-18 whose training step costs about "
        f"{resnet_cost_ratio():.0f} times SALN's selection), SALN against uniform subsampling at "
        f"equal wall-clock: "
        f"{diff_summary(RESNET, 'uniform')}; against `jest`: {diff_summary(RESNET, 'jest')}.\n"
        f"- **On redundant data** (every image four times), SALN against uniform: "
        f"{diff_summary(REDUNDANT, 'uniform')}; against `jest`: "
        f"{diff_summary(REDUNDANT, 'jest')}. At keep ratio {ratio:g} SALN kept "
        f"{100 * rep.get(SALN, float('nan')):.1f}% repeats, uniform {100 * rep.get('uniform', float('nan')):.1f}%.\n"
        f"- (`docs/results/resnet.md`: 42 runs, 3 seeds, early training: 1,024 samples, 4 epochs; "
        f"{machine_line(RESNET, note=False)}.)\n"
    )


def resnet_vs_none():
    """SALN and uniform at keep ratio 0.5 against training on everything, in time."""
    runs = grid_runs(RESNET)
    t = ratio_budget(runs, 0.5)

    def cell(policy, ratio, f):
        return mean_sd([f(r) for k, r in runs.items() if k[:2] == (policy, ratio)])

    end = lambda r: r["final_test_accuracy"]
    (sa, ssd), (ua, usd) = cell(SALN, 0.5, end), cell("uniform", 0.5, end)
    (na, nsd), nw = cell("none", 1, end), mean_end(runs, "none", 1)
    (nt, ntsd) = cell("none", 1, lambda r: accuracy_at(r, t))
    return (
        f"Against training on everything: at keep ratio 0.5, SALN ends its 4 epochs at "
        f"{100 * sa:.1f} ± {100 * ssd:.1f}% after {t:.0f} s, uniform at {100 * ua:.1f} ± "
        f"{100 * usd:.1f}%; `none` needs {nw:.0f} s for its 4 epochs and ends at {100 * na:.1f} ± "
        f"{100 * nsd:.1f}%, and was at {100 * nt:.1f} ± {100 * ntsd:.1f}% after {t:.0f} s.\n"
    )


def resnet_cost_figures():
    """(ms per image trained by `none`, SALN's ms per super-batch, jest's ms per super-batch,
    super-batch size) from the seed-0 reports of the ResNet grid."""
    runs = grid_runs(RESNET)
    none, saln, jest = runs[("none", 1, 0)], runs[(SALN, 0.5, 0)], runs[("jest", 0.5, 0)]
    busy = next(x for x in none["stages"] if x["stage"] == "train")["busy_seconds"]
    images = sum(e["images_trained"] for e in none["epochs"])
    per_sb = lambda r: r["selection"]["ms_per_forward"] + r["selection"]["ms_per_selection"]
    return 1000 * busy / images, per_sb(saln), per_sb(jest), saln["config"]["superbatch"]["size"]


def resnet_cost_ratio():
    step, saln, _, b = resnet_cost_figures()
    return step / (saln / b)


def resnet_cost():
    """The regime: a ResNet-18 training step per image against SALN's and jest's selection
    cost per image, from the seed-0 run reports of the ResNet grid."""
    step, saln, jest, b = resnet_cost_figures()
    return (
        f"**The regime**, from the seed-0 reports: `none`'s train stage spends {step:.0f} ms per "
        f"image trained (a ResNet-18 step, plus its share of the test evaluations); SALN's "
        f"reference forward pass and selection cost {saln:.1f} ms "
        f"per super-batch of {b}, {saln / b:.2f} ms per image, so a training step costs about "
        f"{resnet_cost_ratio():.0f} times SALN's selection, far past the 10x the question needs. "
        f"`jest` scores every candidate with the learner itself, a ResNet-18 forward pass: "
        f"{jest / b:.1f} ms per image, on the extract stage's core.\n"
    )


GENERATORS = {
    "checkpoint-cost": checkpoint_cost,
    **{name: verbatim(name) for name in VERBATIM},
    "bench-python": bench_python,
    "eval-epochs": eval_epochs,
    "eval-seed-diff": eval_seed_diff,
    "eval-budgets": eval_budgets,
    "bench-loader": bench_loader,
    "bench-loader-table": bench_loader_row,
    "eval-cost": eval_cost,
    "demo": demo,
    "lr-schedule": lr_schedule,
    "bench-selection": bench_table,
    "bench-summary": bench_summary,
    "demo-selection-cost": demo_selection_cost,
    "resnet-table": lambda: grid_table(RESNET),
    "resnet-seeds": lambda: seed_table(RESNET, BASELINES),
    "resnet-verdict": lambda: verdict(RESNET, BASELINES),
    "redundant-table": lambda: grid_table(REDUNDANT),
    "redundant-seeds": lambda: seed_table(REDUNDANT, BASELINES),
    "redundant-verdict": lambda: verdict(REDUNDANT, BASELINES),
    "redundant-repeats": redundant_repeats,
    "resnet-evidence": resnet_evidence,
    "resnet-vs-none": resnet_vs_none,
    "resnet-cost": resnet_cost,
}


def pages():
    out = [os.path.join(ROOT, "README.md")]
    for d, _, files in os.walk(os.path.join(ROOT, "docs")):
        out += [os.path.join(d, f) for f in files if f.endswith(".md")]
    return sorted(out)


def rewrite(text, where):
    def one(m):
        name = m.group(2)
        if name not in GENERATORS:
            sys.exit(f"{where}: unknown figure block `{name}` (known: {', '.join(GENERATORS)})")
        pad = m.group(1)
        body = "".join(pad + l if l.strip() else l for l in GENERATORS[name]().splitlines(True))
        return f"{pad}<!-- figures:{name} -->\n{body}{pad}<!-- /figures -->"

    return BLOCK.sub(one, text)


def update(check):
    stale = 0
    for p in pages():
        with open(p) as f:
            old = f.read()
        rel = os.path.relpath(p, ROOT)
        new = rewrite(old, rel)
        if new == old:
            continue
        if check:
            stale += 1
            sys.stdout.writelines(
                difflib.unified_diff(old.splitlines(True), new.splitlines(True), rel, rel + " (generated)")
            )
        else:
            tmp = p + ".partial"
            with open(tmp, "w") as f:
                f.write(new)
            os.replace(tmp, p)
            print(f"rewrote {rel}")
    if stale:
        print(f"\n{stale} page(s) have figure blocks that differ from the committed results: "
              "run scripts/figures.py", file=sys.stderr)
        sys.exit(1)


# ---- recording results with their machine ----


def describe_machine(note):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load1 = os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {
        "machine": f"{os.cpu_count()} CPU cores ({cpu})",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "commit": commit + ("+changes" if dirty else ""),
        "load_average_at_recording": round(load1, 2),
        "note": note,
    }


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".partial", "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(path + ".partial", path)


def copy_result(src, folder, name):
    """Copies the file `src` to `folder/name` (atomically) and returns its text."""
    with open(src) as f:
        text = f.read()
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, name)
    with open(dst + ".partial", "w") as f:
        f.write(text)
    os.replace(dst + ".partial", dst)
    return text


def take_note(args):
    if "--note" in args:
        k = args.index("--note")
        note = args[k + 1]
        return note, args[:k] + args[k + 2 :]
    return "", args


def main(argv):
    if argv[:1] == ["--check"]:
        return update(check=True)
    if not argv:
        return update(check=False)
    if argv[0] == "record-demo":
        note, rest = take_note(argv[1:])
        constant, cosine = rest
        write_json(os.path.join(DEMO, "report.json"), load(constant))
        write_json(os.path.join(DEMO, "report-cosine.json"), load(cosine))
        write_json(os.path.join(DEMO, "machine.json"), describe_machine(note))
        return update(check=False)
    if argv[0] == "record-python":
        note, rest = take_note(argv[1:])
        os.makedirs(PYBENCH, exist_ok=True)
        for (name, _), (txt, js) in zip(PYBENCH_CASES, zip(rest[0::2], rest[1::2])):
            copy_result(txt, PYBENCH, f"{name}.txt")
            copy_result(js, PYBENCH, f"{name}.json")
        write_json(os.path.join(PYBENCH, "machine.json"), describe_machine(note))
        return update(check=False)
    if argv[0] == "record-checkpoint":
        note, rest = take_note(argv[1:])
        (report,) = rest
        write_json(os.path.join(CKPT, "report.json"), load(report))
        write_json(os.path.join(CKPT, "machine.json"), describe_machine(note))
        return update(check=False)
    if argv[0] == "record-output":
        note, rest = take_note(argv[1:])
        name, output = rest
        if name not in VERBATIM:
            sys.exit(f"record-output: NAME is one of {', '.join(VERBATIM)}")
        folder = os.path.join(ROOT, "docs", "results", name)
        copy_result(output, folder, "output.txt")
        write_json(os.path.join(folder, "machine.json"), describe_machine(note))
        return update(check=False)
    if argv[0] == "record-grid":
        note, rest = take_note(argv[1:])
        name, output = rest
        folder = os.path.join(ROOT, "docs", "results", name)
        for d, _, files in os.walk(output):
            for f in files:
                if f.endswith((".json", ".md", ".png")):
                    rel = os.path.relpath(os.path.join(d, f), output)
                    os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
                    with open(os.path.join(d, f), "rb") as src, open(os.path.join(folder, rel), "wb") as dst:
                        dst.write(src.read())
        write_json(os.path.join(folder, "machine.json"), describe_machine(note))
        return update(check=False)
    if argv[0] == "record-loader":
        note, rest = take_note(argv[1:])
        (output,) = rest
        copy_result(output, LOADER, "output.txt")
        write_json(os.path.join(LOADER, "machine.json"), describe_machine(note))
        loader_figures()  # refuses an output it cannot read
        return update(check=False)
    if argv[0] == "record-bench":
        rest = argv[1:]
        extra = rest[rest.index("--") + 1 :] if "--" in rest else []
        note, _ = take_note(rest[: rest.index("--")] if "--" in rest else rest)
        if "--device" in extra and extra[extra.index("--device") + 1] != "cpu":
            sys.exit("record-bench records the CPU table; on a GPU run scripts/gpu-check.sh (docs/gpu.md)")
        cmd = [os.path.join(ROOT, "target", "release", "saln-pipe"), "bench", "selection"] + extra
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        os.makedirs(BENCH, exist_ok=True)
        with open(os.path.join(BENCH, "cpu.txt.partial"), "w") as f:
            f.write("$ saln-pipe bench selection " + " ".join(extra) + "\n" + out)
        os.replace(os.path.join(BENCH, "cpu.txt.partial"), os.path.join(BENCH, "cpu.txt"))
        write_json(os.path.join(BENCH, "machine.json"), describe_machine(note))
        return update(check=False)
    sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
