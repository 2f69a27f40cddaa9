"""Train a torchvision ResNet-18 on curated Fashion-MNIST batches from saln.

    python examples/python/train_loop.py                       # SALN, the demo's pipeline
    python examples/python/train_loop.py --policy uniform      # no reference model needed

saln runs the demo pipeline (pipelines/fashion-mnist.yaml: super-batches of 256, a quarter
of each kept by spectral selection on the reference CNN's features) on its own threads and
hands this loop the kept images as ``torch.Tensor``s; the loop trains its own model and
hands the per-sample losses back. ``policy: saln`` needs the reference CNN:
``saln-pipe pretrain pipelines/fashion-mnist.yaml`` (or ``make demo``) writes it.
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

import saln

ROOT = pathlib.Path(__file__).resolve().parents[2]


def resnet18(classes: int, channels: int) -> torch.nn.Module:
    """torchvision's ResNet-18 with a first convolution for ``channels`` input channels."""
    model = torchvision.models.resnet18(num_classes=classes)
    model.conv1 = torch.nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def test_split(data: pathlib.Path, n: int, ops: list) -> tuple:
    """The first ``n`` test images, normalised as the pipeline's ``normalize`` op does."""
    with gzip.open(data / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(data / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    x = torch.from_numpy(x.astype(np.float32) / 255.0)
    for op in ops:
        if "normalize" in op:
            mean = torch.tensor(op["normalize"]["mean"]).view(1, -1, 1, 1)
            std = torch.tensor(op["normalize"]["std"]).view(1, -1, 1, 1)
            x = (x - mean) / std
    return x, torch.from_numpy(y.astype(np.int64))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", type=pathlib.Path, default=ROOT / "pipelines" / "fashion-mnist.yaml")
    ap.add_argument("--policy", help="override selection.policy (saln, uniform, none)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=8192, help="learner samples per epoch")
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()

    overrides = {
        "trainer.epochs": args.epochs,
        "source.limit": args.limit,
        "report.progress_seconds": 0,
    }
    if args.policy:
        overrides["selection.policy"] = args.policy
    cfg = saln.config(args.pipeline, **overrides)
    weights = pathlib.Path(cfg["extractor"]["weights"])
    if cfg["selection"]["policy"] == "saln" and not weights.exists():
        print(
            f"{weights} is missing: train the reference CNN with "
            f"`saln-pipe pretrain {args.pipeline}`, or pass --policy uniform",
            file=sys.stderr,
        )
        return 2

    torch.manual_seed(cfg["seed"])
    with saln.Loader(args.pipeline, **overrides) as loader:
        channels = loader.shape[0]
        model = resnet18(loader.num_classes, channels).to(loader.device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        test_x, test_y = test_split(
            pathlib.Path(cfg["source"]["idx"]["dir"]), args.test_limit, cfg["augment"]["ops"]
        )
        start = time.time()
        for epoch in range(loader.epochs):
            model.train()
            losses, samples = [], 0
            for batch in loader:  # one epoch: len(loader) curated sub-batches
                per_sample = F.cross_entropy(model(batch.images), batch.labels, reduction="none")
                loss = per_sample.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                batch.report_losses(per_sample)  # feedback for saln (learner-aware policies)
                losses.append(loss.item())
                samples += len(batch)
            model.eval()
            with torch.no_grad():
                pred = torch.cat([model(x).argmax(1) for x in test_x.split(500)])
            accuracy = (pred == test_y).float().mean().item()
            print(
                f"epoch {epoch + 1}: {len(losses)} steps on {samples} of {loader.samples_per_epoch} "
                f"images, loss {np.mean(losses):.3f}, test accuracy {100 * accuracy:.2f}%, "
                f"{time.time() - start:.1f}s"
            )
        for s in loader.stats():
            print(
                f"  stage {s['stage']:8} busy {s['busy_seconds']:6.2f}s  waiting for input "
                f"{s['wait_input_seconds']:6.2f}s  blocked on output {s['blocked_output_seconds']:6.2f}s"
            )
        report = loader.close()
    print(f"selection: {report['selection']['samples_kept']} of {report['selection']['samples_in']} samples kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
