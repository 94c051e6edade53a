"""A short check of the atlas on a GPU (exits 0 only if it passes): the same atlas built twice on CUDA
is byte-identical for every recipe preset (their scale, rotate, crop and resize transforms included),
and running it again renders nothing.

Uses torchvision's ResNet-18 with random weights (no download), two blocks, 8 filters each:

    python benchmarks/cuda_atlas_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

import filterviz
from filterviz.atlas import MANIFEST, build_atlas


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(MANIFEST)}


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here")
        return 1
    model = filterviz.load_model("resnet18", "random", device="cuda")
    failures = []
    with tempfile.TemporaryDirectory() as temp:
        for recipe, steps in (("classic", 30), ("lucid", 30), ("maco", 20)):
            options = dict(layers=["layer1.0", "layer2.0"], filters=range(8), recipe=recipe, steps=steps, size=96,
                           seed=0, chunk_size=8)
            sites = []
            for run in range(2):
                out = Path(temp) / f"{recipe}{run}"
                started = time.perf_counter()
                summary = build_atlas(model, out, **options)
                print(f"{recipe} run {run}: {time.perf_counter() - started:.1f} s, {summary}")
                sites.append(files_of(out))
            again = build_atlas(model, Path(temp) / f"{recipe}0", **options)
            differ = sorted(name for name in sites[0] if sites[0][name] != sites[1].get(name))
            print(f"{recipe}: {len(differ)} of {len(sites[0])} files differ between two clean runs {differ[:4]}; "
                  f"a third run rendered {again.rendered}")
            if differ or again.rendered:
                failures.append(recipe)
    print("FAILED: " + ", ".join(failures) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
