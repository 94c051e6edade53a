"""What a recipe's step costs beyond the model: ms per image-step of a render, against the bare model's
forward pass plus input gradient on the same views, with the model's FLOPs and GFLOP/s.

The render's time per step is taken between two renders of different step counts (so loading,
planning and the final scoring cancel out); the bare model runs on the views that the recipe shows
it at each step (lucid: one view of the padded, jittered image; maco: two 160 px crops), batch 4.

    python benchmarks/recipe_step.py [--size 224] [--batch 4] [--out benchmarks/results/recipe_step.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import filterviz
from filterviz.device import autocast, autocast_dtype, channels_last
from filterviz.plan import RenderParts

LAYER = "blocks.9.depthwise.act"


def synchronized(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_seconds(model: filterviz.LoadedModel, recipe: str, size: int, batch: int, steps: int,
                   precision: str) -> float:
    objectives = [f"channel:{LAYER}:{k}" for k in range(batch)]
    synchronized(model.device)
    started = time.perf_counter()
    filterviz.render(model, objectives, recipe, size=size, steps=steps, seed=0, batch_size=batch,
                     select_channels=False, precision=precision)
    return time.perf_counter() - started


def bare_seconds(model: filterviz.LoadedModel, views: torch.Tensor, repeats: int, precision: str) -> tuple[float, int]:
    """Seconds per forward + input gradient of the model up to LAYER on ``views``, and its FLOPs."""
    dtype = autocast_dtype(precision, model.device)
    with channels_last(model.module) as nhwc, model.capture([LAYER]) as run, autocast(model.device, dtype):
        views = views.contiguous(memory_format=torch.channels_last) if nhwc else views

        def once() -> None:
            x = views.clone().requires_grad_(True)
            torch.autograd.grad(run(x)[LAYER].mean(), x)
        once()
        with FlopCounterMode(display=False) as counter:
            once()
        synchronized(model.device)
        started = time.perf_counter()
        for _ in range(repeats):
            once()
        synchronized(model.device)
        return (time.perf_counter() - started) / repeats, counter.get_total_flops()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            flags = Path("/proc/cpuinfo").read_text()
            extra = ", AMX" if "amx_bf16" in flags else ", AVX512-BF16" if "avx512_bf16" in flags else ""
            return line.split(":", 1)[1].strip() + extra
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=24, help="steps of the longer timed render")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "recipe_step.md"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="of the render and the bare model alike")
    args = parser.parse_args()
    model = filterviz.load_model("efficientnet-lite0", device=args.device)
    where = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else cpu_name()
    lines = [f"# Recipe step against the bare model: efficientnet-lite0 up to {LAYER}, {args.size} px, "
             f"batch {args.batch}, {args.precision}" + (f", {torch.get_num_threads()} threads" if model.device.type == "cpu" else ""),
             f"{where}, torch {torch.__version__}; `python benchmarks/recipe_step.py --device {args.device}`", "",
             "| recipe | views per image | view px | render ms per image-step | bare model ms per image | "
             "overhead | model GFLOP per image | model GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for name in ("classic", "lucid", "maco"):
        recipe = filterviz.get_recipe(name, size=args.size)
        view = RenderParts.resolve(recipe).view_side(args.size)
        short, long = 4, args.steps
        render_seconds(model, name, args.size, args.batch, 2, args.precision)  # warm up
        per_step = (render_seconds(model, name, args.size, args.batch, long, args.precision)
                    - render_seconds(model, name, args.size, args.batch, short, args.precision)) / (long - short)
        views = torch.rand(args.batch * recipe.views, 3, view, view, dtype=model.dtype, device=model.device) * 255
        bare, flops = bare_seconds(model, views, max(3, long - short), args.precision)
        per_image_step = per_step / args.batch * 1e3
        bare_per_image = bare / args.batch * 1e3
        gflop = flops / args.batch / 1e9
        lines.append(f"| {name} | {recipe.views} | {view} | {per_image_step:.1f} | {bare_per_image:.1f} | "
                     f"{per_image_step / bare_per_image - 1:+.0%} | {gflop:.2f} | {flops / bare / 1e9:.0f} |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
