"""Atlas benchmark: how long an atlas of the embedded EfficientNet-Lite0 takes on this machine.

Every default layer (18: the stem, 16 blocks, the head), the first ``--filters`` filters of each,
the classic recipe at 150 px, with dataset examples from scikit-image's photos:

- local: a fresh atlas with the local executor (renders, then the dataset pass);
- resume: the same command again, with nothing left to do;
- ray: a fresh atlas on a Ray instance started on this machine (one CPU per task);
- the two atlases are compared file by file.

Prints a table and writes it as JSON and Markdown. Not part of the tests:

    python benchmarks/atlas.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import filterviz
from filterviz.atlas import MANIFEST, LocalExecutor, RayExecutor, build_atlas

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "logo", "camera", "page", "text", "moon", "horse", "coins", "brick", "grass", "gravel")


def write_photos(folder: Path) -> int:
    from skimage import data

    for name in PHOTOS:
        image = np.asarray(getattr(data, name)())
        if image.dtype != np.uint8:
            image = (image * 255 if image.max() <= 1 else image).astype(np.uint8)
        Image.fromarray(image[..., :3] if image.ndim == 3 else image).save(folder / f"{name}.png")
    return len(PHOTOS)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(MANIFEST)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=8, help="filters per layer (default 8)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    model = filterviz.load_model("efficientnet-lite0", device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        photos = Path(temp) / "photos"
        photos.mkdir()
        count = write_photos(photos)
        options = dict(filters=range(args.filters), images=photos, seed=0)
        for label, folder, executor in (("local", "local", LocalExecutor()), ("resume", "local", LocalExecutor()),
                                        ("ray", "ray", RayExecutor())):
            started = time.perf_counter()
            summary = build_atlas(model, Path(temp) / folder, executor=executor, **options)
            seconds = time.perf_counter() - started
            rows.append({"run": label, "seconds": round(seconds, 1), "filters": summary.units,
                         "rendered": summary.rendered, "images_scanned": summary.images, "dead": summary.dead,
                         "layers": summary.layers})
            print(f"{label:7s} {seconds:7.1f} s  {summary}")
        identical = files_of(Path(temp) / "local") == files_of(Path(temp) / "ray")
        site_files = len(files_of(Path(temp) / "local"))
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
                         f"{torch.__version__}, {torch.get_num_threads()} threads",
              "model": "efficientnet-lite0", "recipe": "classic, 150 px, 40 steps", "photos": count,
              "filters_per_layer": args.filters, "site_files": site_files, "ray_equals_local": identical,
              "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "atlas.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Atlas of {result['model']} ({rows[0]['layers']} layers x {args.filters} filters, {result['recipe']}, "
             f"dataset examples from {count} photos) on {result['machine']}", "",
             "| run | seconds | filters rendered | images scanned |", "|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['seconds']} | {r['rendered']} of {r['filters']} | {r['images_scanned']} |" for r in rows]
    lines += ["", f"Ray atlas byte-identical to the local one: {identical} ({site_files} files)."]
    (args.out / "atlas.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
