"""Whole atlases on a GPU: how long every filter of a model takes.

- VGG16 (random weights: a step's time does not depend on them), every convolution layer (4,224
  filters), classic recipe, 150 px, 40 steps, tasks of ``--chunk-size`` filters;
- the chunk size's effect on two layers (block1_conv1, block4_conv1);
- the embedded EfficientNet-Lite0 with ``lucid``: one task (the first ``--lucid-chunk`` filters) of every
  ``--lucid-every``-th default layer, and from their time per task, the whole atlas (every filter of
  every default layer).

Writes ``atlas_gpu.json`` and ``atlas_gpu.md`` into ``--out``:

    python benchmarks/atlas_gpu.py --device cuda --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
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
    parser.add_argument("--lucid-chunk", type=int, default=64, help="filters per task of the lucid atlas")
    parser.add_argument("--lucid-every", type=int, default=4, help="time every Nth default layer (the first "
                                                                 "--lucid-chunk filters of each)")
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
        chunk = args.lucid_chunk
        tasks = sum(math.ceil(lite.layer_info(name, side).channels / chunk) for name in names)
        total = sum(lite.layer_info(name, side).channels for name in names)
        sample = names[::args.lucid_every]  # shallow to deep
        seconds, count = timed_atlas(lite, layers=sample, recipe=recipe, filters=[range(chunk)], chunk_size=chunk)
        per_task = seconds / len(sample)
        result["lite0_lucid"] = {"seconds": seconds, "filters": count, "layers_timed": sample, "chunk_size": chunk,
                                 "all_filters": total, "all_tasks": tasks, "layers": len(names), "size": side,
                                 "steps": recipe.steps, "seconds_per_filter": seconds / count,
                                 "whole_atlas_seconds_estimated": per_task * tasks}
        print(json.dumps(result["lite0_lucid"]), flush=True)
        save()
    if "chunks" not in skip:
        rows = []
        for chunk in (int(c) for c in args.chunk_sizes.split(",")):
            seconds, count = timed_atlas(vgg, layers=["block1_conv1", "block4_conv1"], filters=[range(256)],
                                         chunk_size=chunk)
            rows.append({"chunk_size": chunk, "seconds": seconds, "filters": count, "filters_per_s": count / seconds})
            print(json.dumps(rows[-1]), flush=True)
        result["chunks"] = rows
        save()
    lines = [f"# Atlases on {result['device']} (torch {result['torch']})", "",
             "`python benchmarks/atlas_gpu.py --device cuda`", ""]
    if "vgg16_classic" in result:
        v = result["vgg16_classic"]
        lines += [f"- VGG16, every convolution filter ({v['filters']}), classic, 150 px, 40 steps, chunks of "
                  f"{v['chunk_size']}: {v['seconds']:.0f} s ({v['filters_per_s']:.0f} filters/s)"]
    if "lite0_lucid" in result:
        v = result["lite0_lucid"]
        lines += [f"- efficientnet-lite0, lucid ({v['size']} px, {v['steps']} steps, chunks of {v['chunk_size']}): "
                  f"{v['filters']} filters of {len(v['layers_timed'])} layers in {v['seconds']:.0f} s "
                  f"({v['seconds_per_filter']:.2f} s per filter); every filter of its {v['layers']} default layers "
                  f"({v['all_filters']} in {v['all_tasks']} tasks) would take about "
                  f"{v['whole_atlas_seconds_estimated'] / 60:.1f} min at the same time per task"]
    if "chunks" in result:
        lines += ["", "| chunk size | seconds (block1_conv1 + block4_conv1, 256 filters each at most) | filters/s |",
                  "|---|---|---|"]
        lines += [f"| {r['chunk_size']} | {r['seconds']:.1f} | {r['filters_per_s']:.1f} |" for r in result["chunks"]]
    (out / "atlas_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
