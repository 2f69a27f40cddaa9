#!/usr/bin/env python3
"""Writes a reproducible folder of JPEG photographs for the loader benchmarks.

The pixels come from the real photographs that scikit-image ships in its wheel
(`skimage.data`: astronaut, coffee, chelsea, rocket, ...): each output image is a random
crop of one of them, resized to about the requested size (+-10%, some in portrait), maybe
mirrored, with a random colour shift, written as JPEG quality 90, in the torchvision
ImageFolder layout OUT/class_K/NNNNNN.jpg. The same arguments always give the same files.

    python scripts/make-photos.py target/bench-photos/n3000 --count 3000
    python scripts/make-photos.py target/mem-photos/n20000 --count 20000 --size 64x48

Needs numpy, Pillow and scikit-image (scripts/bench-loader.sh installs them into the venv).
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
import skimage.data

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field", "retina", "camera", "coins"]


def sources():
    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append(Image.fromarray(img[..., :3].astype(np.uint8)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of a landscape image")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", type=int, default=90)
    a = ap.parse_args()
    w0, h0 = (int(v) for v in a.size.split("x"))
    rng = np.random.RandomState(a.seed)
    photos = sources()
    done = os.path.join(a.out, ".complete")
    if os.path.exists(done):
        print(f"{a.out}: already complete")
        return 0
    for k in range(a.classes):
        os.makedirs(os.path.join(a.out, f"class_{k:02d}"), exist_ok=True)
    for i in range(a.count):
        src = photos[rng.randint(len(photos))]
        sw, sh = src.size
        # A crop of 30-100% of the area, aspect ratio near the target's.
        frac = rng.uniform(0.3, 1.0)
        cw = max(8, int(sw * np.sqrt(frac)))
        ch = max(8, int(sh * np.sqrt(frac)))
        x, y = rng.randint(0, sw - cw + 1), rng.randint(0, sh - ch + 1)
        w, h = int(w0 * rng.uniform(0.9, 1.1)), int(h0 * rng.uniform(0.9, 1.1))
        if rng.uniform() < 0.25:
            w, h = h, w  # portrait
        img = src.crop((x, y, x + cw, y + ch)).resize((max(w, 1), max(h, 1)), Image.BILINEAR)
        if rng.uniform() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        gain = rng.uniform(0.8, 1.2, size=3)
        arr = np.clip(np.asarray(img, dtype=np.float32) * gain, 0, 255).astype(np.uint8)
        path = os.path.join(a.out, f"class_{i % a.classes:02d}", f"{i:06d}.jpg")
        Image.fromarray(arr).save(path, quality=a.quality)
    open(done, "w").close()
    print(f"{a.out}: {a.count} JPEGs of about {w0}x{h0} in {a.classes} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
