"""Whole atlases on a GPU: how long every filter of a model takes.

- VGG16 (random weights: a step's time does not depend on them), every convolution layer (4,224
  filters), classic recipe, 150 px, 40 steps, tasks of ``--chunk-size`` filters;
- the chunk size's effect on two layers (block1_conv1, block4_conv1);
- the embedded EfficientNet-Lite0 with ``lucid``: the first ``--lucid-filters`` filters of every default
  layer, and from their time per filter, the whole atlas (every filter of every default layer).

Writes ``atlas_gpu.json`` and ``atlas_gpu.md`` into ``--out``:

    python benchmarks/atlas_gpu.py --device cuda --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import filterviz
from filterviz.atlas import build_atlas
from filterviz.atlas.selection import default_layers
from filterviz.recipes import render_size


def timed_atlas(model: filterviz.LoadedModel, **options: object) -> tuple[float, int]:
    """Seconds of a fresh atlas, and the filters it rendered."""
    with tempfile.TemporaryDirectory() as folder:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        started = time.perf_counter()
        summary = build_atlas(model, Path(folder) / "atlas", **options)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        return time.perf_counter() - started, summary.rendered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--chunk-sizes", default="16,64,256", help="compared on two layers")
    parser.add_argument("--lucid-filters", type=int, default=16)
    parser.add_argument("--lucid-steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--vgg-layers", default=None, help="comma-separated (default: every convolution layer)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: vgg, chunks, lucid")
    args = parser.parse_args()
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                    "torch": torch.__version__}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (out / "atlas_gpu.json").write_text(json.dumps(result, indent=2))

    vgg = filterviz.load_model("vgg16", weights="random", device=str(device))
    layers = args.vgg_layers.split(",") if args.vgg_layers else None
    if "chunks" not in skip:
        rows = []
        for chunk in (int(c) for c in args.chunk_sizes.split(",")):
            seconds, count = timed_atlas(vgg, layers=["block1_conv1", "block4_conv1"], filters=[range(256)],
                                         chunk_size=chunk)
            rows.append({"chunk_size": chunk, "seconds": seconds, "filters": count, "filters_per_s": count / seconds})
            print(json.dumps(rows[-1]), flush=True)
        result["chunks"] = rows
        save()
    if "vgg" not in skip:
        timed_atlas(vgg, layers=["block1_conv1"], filters=[range(8)], chunk_size=8)  # warm-up
        seconds, count = timed_atlas(vgg, layers=layers, chunk_size=args.chunk_size)
        result["vgg16_classic"] = {"seconds": seconds, "filters": count, "chunk_size": args.chunk_size,
                                   "filters_per_s": count / seconds}
        print(json.dumps(result["vgg16_classic"]), flush=True)
        save()
    if "lucid" not in skip:
        lite = filterviz.load_model(device=str(device))
        recipe = filterviz.get_recipe("lucid", steps=args.lucid_steps)
        side = render_size(recipe, lite.spec.fixed_size)
        names = default_layers(lite, side)
        total = sum(lite.layer_info(name, side).channels for name in names)
        seconds, count = timed_atlas(lite, recipe=recipe, filters=[range(args.lucid_filters)],
                                     chunk_size=args.lucid_filters)
        result["lite0_lucid"] = {"seconds": seconds, "filters": count, "all_filters": total, "layers": len(names),
                                 "size": side, "steps": recipe.steps, "seconds_per_filter": seconds / count,
                                 "whole_atlas_seconds_estimated": seconds / count * total}
        print(json.dumps(result["lite0_lucid"]), flush=True)
        save()
    lines = [f"# Atlases on {result['device']} (torch {result['torch']})", "",
             "`python benchmarks/atlas_gpu.py --device cuda`", ""]
    if "vgg16_classic" in result:
        v = result["vgg16_classic"]
        lines += [f"- VGG16, every convolution filter ({v['filters']}), classic, 150 px, 40 steps, chunks of "
                  f"{v['chunk_size']}: {v['seconds']:.0f} s ({v['filters_per_s']:.0f} filters/s)"]
    if "lite0_lucid" in result:
        v = result["lite0_lucid"]
        lines += [f"- efficientnet-lite0, lucid ({v['size']} px, {v['steps']} steps): {v['filters']} filters in "
                  f"{v['seconds']:.0f} s ({v['seconds_per_filter']:.2f} s per filter); every filter of its "
                  f"{v['layers']} default layers ({v['all_filters']}) would take about "
                  f"{v['whole_atlas_seconds_estimated'] / 60:.0f} min"]
    if "chunks" in result:
        lines += ["", "| chunk size | seconds (block1_conv1 + block4_conv1, 256 filters each at most) | filters/s |",
                  "|---|---|---|"]
        lines += [f"| {r['chunk_size']} | {r['seconds']:.1f} | {r['filters_per_s']:.1f} |" for r in result["chunks"]]
    (out / "atlas_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
