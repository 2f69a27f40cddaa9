#!/usr/bin/env python3
"""The PyTorch side of scripts/bench-loader.sh: torchvision's ImageFolder + transforms v2
in a DataLoader, over one folder of JPEGs; prints `torch: N images in S s: R images/s`.

The transforms are the ones saln's benchmark pipeline runs: resize to 224x224 (antialiased
bilinear), horizontal flip (p 0.5), rotation up to 15 degrees (bilinear, 0 fill), brightness
0.2, float conversion and normalisation with the ImageNet mean and std. `--variant tensor`
(the default, torchvision's recommended order) converts the PIL image to a uint8 tensor
first and runs the ops on it; `--variant pil` runs the geometric and colour ops on the PIL
image and converts at the end.
"""
import argparse
import resource
import time

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def transforms(variant):
    ops = [
        v2.Resize((224, 224), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=0.2),
    ]
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if variant == "tensor":
        return v2.Compose([v2.ToImage(), *ops, *to_float])
    return v2.Compose([*ops, v2.ToImage(), *to_float])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--variant", choices=["tensor", "pil"], default="tensor")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ds = datasets.ImageFolder(a.folder, transform=transforms(a.variant))
    loader = DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers)
    def cpu():
        # This process and its reaped children (the DataLoader workers, once shut down).
        return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    n = 0
    cpu0 = cpu()
    start = time.perf_counter()
    for _ in range(a.epochs):
        for x, y in loader:
            assert x.shape[1:] == (3, 224, 224) and x.dtype == torch.float32
            n += x.shape[0]
    secs = time.perf_counter() - start
    del loader  # make sure the workers are shut down and reaped before reading their CPU time
    cpu_ms = 1000 * (cpu() - cpu0) / n
    print(f"torch ({a.variant}): {n} images in {secs:.2f} s with {a.workers} workers: "
          f"{n / secs:.1f} images/s")
    print(f"torch ({a.variant}): {cpu_ms:.2f} CPU ms per image")


if __name__ == "__main__":
    main()
