#!/usr/bin/env python3
"""Equal-wall-clock comparison at several budgets from an eval results folder.

    scripts/eval-budgets.py RESULTS_DIR [RESULTS_DIR ...] [T1 T2 ...]

Several results folders may be given (e.g. a grid and a longer-training grid of one policy);
a policy whose runs trained for another number of epochs than the first folder's is listed
with its epoch count.

For every (keep ratio, policy) it prints the mean +- sd over seeds of the test accuracy each
run had reached at wall-clock T (linear interpolation between its per-epoch evaluations;
before a run's first evaluation the value lies on the line from chance at 0 s, marked with
a dagger; after its last evaluation the final accuracy holds). Same rule as `saln-pipe eval`'s
"accuracy at T" column, for several T at once. Standard library only.
"""
import json
import statistics
import sys
from pathlib import Path

CHANCE = 0.1


def curve(report):
    return [(e["wall_seconds"], e["test_accuracy"]) for e in report["epochs"]]


def at(points, t):
    if not points:
        return float("nan"), True
    t0, a0 = points[0]
    if t < t0:
        return CHANCE + (a0 - CHANCE) * t / t0, True
    for (ta, aa), (tb, ab) in zip(points, points[1:]):
        if ta <= t <= tb:
            return aa + (ab - aa) * (t - ta) / (tb - ta), False
    return points[-1][1], False


def main():
    args = sys.argv[1:]
    dirs = [Path(a) for a in args if not a.replace(".", "", 1).isdigit()]
    budgets = [float(a) for a in args if a.replace(".", "", 1).isdigit()] or [10.0, 15.0, 20.0, 30.0]
    cells = {}
    base_epochs = None
    for out in dirs:
        for p in sorted((out / "runs").glob("*.json")):
            r = json.loads(p.read_text())
            if r.get("status") != "completed":
                continue
            sel = r["config"]["selection"]
            epochs = r["config"]["trainer"]["epochs"]
            base_epochs = base_epochs or epochs
            name = sel["policy"] if sel["policy"] != "saln" else "saln:" + sel["rule"]
            if epochs != base_epochs:
                name += f", {epochs} epochs"
            cells.setdefault((sel["keep_ratio"], name), []).append(curve(r))
    head = "| keep ratio | policy | " + " | ".join(f"acc. at {b:g} s" for b in budgets) + " |"
    print(head)
    print("|" + "---|" * (2 + len(budgets)))
    for (ratio, name) in sorted(cells, key=lambda k: (-k[0], k[1])):
        row = [f"{ratio:g}", f"`{name}`"]
        for b in budgets:
            vals = [at(c, b) for c in cells[(ratio, name)]]
            xs = [v for v, _ in vals]
            mean = statistics.mean(xs)
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            dag = "†" if any(g for _, g in vals) else ""
            row.append(f"{100 * mean:.2f} ± {100 * sd:.2f}{dag}")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
