"""Speed benchmark: filterviz against a plain re-implementation of the book's loop, on this machine.

For VGG16 (random weights: timing does not depend on them) at block1_conv1, block3_conv1 and
block4_conv1, 150x150, 40 steps, the classic recipe:

- reference: the book's loop, one filter at a time, fp32, the network run up to the target layer only
  (as TensorFlow's graph does for the book's code), the loss and gradient function rebuilt per filter;
- filterviz, one filter and a 64-filter grid, in fp32 and bf16 (where the CPU has it);
- achieved GFLOP/s (FLOPs counted with torch.utils.flop_counter) and their share of this machine's
  convolution peak, measured in the same run by a micro-benchmark.

Prints a table and writes it as JSON. Not part of the tests:

    python benchmarks/speed.py --out benchmarks/results

On a GPU, ``--device cuda`` runs filterviz beside Lucent and the book's loop instead (peer_gpu.py).

``--recipes``: what each recipe's step costs beyond the model (``recipe_table``), on the embedded
EfficientNet-Lite0 up to blocks.9.depthwise.act, 224 px, batch 4, fp32: ms per image-step of a render
against the bare model's forward pass and input gradient on the views the recipe shows it (lucid: one
236 px view of the padded, jittered image; maco: two 160 px crops), the overhead, the model's FLOPs and
GFLOP/s. Render and bare model run in turns in one process (``--rounds`` times); the figures are
medians, the overhead the median of each round's ratio. Steps after a recipe's escape steps are timed
apart from them (the escape steps redirect gradients through switched-off ReLUs, 16 of lucid's 512
and maco's 256 steps); "whole run" weighs both as the recipe's own step count does. Writes
speed_recipes.md and speed_recipes.json:

    python benchmarks/speed.py --recipes [--device cuda] [--rounds 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import filterviz
from filterviz.ascent import optimize_batch
from filterviz.device import autocast, channels_last, cpu_supports_bf16
from filterviz.params import classic_start
from filterviz.plan import RenderParts, plan_render

LAYERS = ("block1_conv1", "block3_conv1", "block4_conv1")
SIZE, STEPS = 150, 40


def book_loop(features: nn.Sequential, spec: filterviz.InputSpec, filter_index: int, seed: int) -> np.ndarray:
    """The book's recipe as plainly as it reads, for one filter: its own loss and gradient function."""
    start = torch.as_tensor(classic_start(SIZE, [filter_index], seed), dtype=torch.float32).permute(0, 3, 1, 2)

    def loss_and_gradient(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.detach().requires_grad_(True)
        loss = features(spec.to_model_input(image))[:, filter_index].mean()
        (grad,) = torch.autograd.grad(loss, image)
        return loss, grad / (grad.square().mean().sqrt() + 1e-5)

    image = start
    for _ in range(STEPS):
        _, grad = loss_and_gradient(image)
        image = image + grad * 1.0
    return image.numpy()


def step_flops(features: nn.Sequential, spec: filterviz.InputSpec) -> int:
    """FLOPs of one ascent step (forward and backward to the image) for one image."""
    image = torch.full((1, 3, SIZE, SIZE), 128.0, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        loss = features(spec.to_model_input(image))[:, 0].mean()
        torch.autograd.grad(loss, image)
    return counter.get_total_flops()


def conv_peak(dtype: torch.dtype, seconds: float = 3.0) -> float:
    """GFLOP/s of a VGG-like 3x3 convolution (256 -> 256 channels, 38x38), forward, best of repeats."""
    x = torch.randn(4, 256, 38, 38)
    weight = torch.randn(256, 256, 3, 3)
    flops = 2 * 4 * 256 * 256 * 9 * 38 * 38
    best = 0.0
    context = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.no_grad()
    with torch.no_grad(), context:
        F.conv2d(x, weight, padding=1)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            F.conv2d(x, weight, padding=1)
            best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


# -- recipes: a step's cost beyond the model ------------------------------------------------------------------

RECIPE_MODEL, RECIPE_LAYER = "efficientnet-lite0", "blocks.9.depthwise.act"
RECIPES = ("classic", "lucid", "maco")


def machine_name(device: torch.device) -> str:
    """The device in words: the CPU's model name (with AMX or AVX512-BF16 when it has them), or the GPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    for line in text.splitlines():
        if line.startswith("model name"):
            extra = ", AMX" if "amx_bf16" in text else ", AVX512-BF16" if "avx512_bf16" in text else ""
            return line.split(":", 1)[1].strip() + extra
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_and_bare(model: filterviz.LoadedModel, recipe: str, size: int, batch: int, steady: int,
                    device: torch.device, segment: int = 1) -> dict[str, list[tuple[float, float]]]:
    """One render of a batch (the recipe's own loop, ``optimize_batch``) for its escape steps and then
    ``steady`` steps, the bare model run between its steps: after every ``segment`` steps, as many forward
    passes and input gradients of the layer on views of the recipe's shape (the render's own capture, so
    the same channels-last model; its ReLUs not redirected). Each (render seconds, bare seconds) per step
    of a segment, by phase ("escape", "after"). The device is synchronized at the segments' ends only;
    the first segment (with the start's scoring) is left out."""
    objectives = [f"channel:{RECIPE_LAYER}:{k}" for k in range(batch)]
    escape = filterviz.get_recipe(recipe).escape_steps
    plan = plan_render(model, objectives, recipe, size=size, steps=escape + steady, batch_size=batch,
                       select_channels=False, precision="fp32")
    generator = torch.Generator().manual_seed(0)
    views = (torch.rand(batch * plan.recipe.views, model.spec.channels, plan.view, plan.view, generator=generator)
             * 255).to(model.device, model.dtype)
    pairs: dict[str, list[tuple[float, float]]] = {"escape": [], "after": []}
    with plan.forward.open(model, plan.nhwc, bool(escape)) as step, autocast(device, plan.dtype):
        ready = views.contiguous(memory_format=torch.channels_last) if step.nhwc else views

        def bare() -> None:
            x = ready.clone().requires_grad_(True)
            torch.autograd.grad(step.run(x)[RECIPE_LAYER].mean(), x)

        bare()
        done, clock = [0], [time.perf_counter()]

        def on_step() -> None:
            done[0] += 1
            if done[0] % segment:
                return
            _sync(device)
            rendered = time.perf_counter() - clock[0]
            redirection = step.redirection
            active = redirection is not None and redirection.active
            if redirection is not None:
                redirection.active = False
            started = time.perf_counter()
            for _ in range(segment):
                bare()
            _sync(device)
            ended = time.perf_counter()
            if redirection is not None:
                redirection.active = active
            if done[0] > segment:
                pairs["escape" if done[0] <= escape else "after"].append((rendered / segment,
                                                                          (ended - started) / segment))
            clock[0] = time.perf_counter()

        optimize_batch(model, plan.forward.scorer(step, list(range(batch))), plan.keys, plan.recipe, plan.parts,
                       plan.size, 0, None, on_step, step.redirection)
    return pairs


def recipe_table(model: filterviz.LoadedModel, device: torch.device, recipes: tuple[str, ...] = RECIPES,
                 size: int = 224, batch: int = 4, rounds: int = 3, steady: int = 16) -> list[dict[str, object]]:
    """For each recipe, a render's ms per image-step against the bare model's (forward and input gradient
    on the same views), the two in turns step by step (``render_and_bare``; on a GPU four steps at a
    time), ``rounds`` renders: medians, the overhead as the median of the pairs' ratios, the model's
    FLOPs per image and GFLOP/s. ``model`` is on ``device``."""
    segment = 1 if device.type == "cpu" else 4
    rows = []
    for name in recipes:
        recipe = filterviz.get_recipe(name, size=size)
        view = RenderParts.resolve(recipe).view_side(size)
        generator = torch.Generator().manual_seed(0)
        views = (torch.rand(batch * recipe.views, model.spec.channels, view, view, generator=generator) * 255
                 ).to(device, model.dtype)
        with channels_last(model.module) as nhwc, model.capture([RECIPE_LAYER]) as run:
            x = (views.contiguous(memory_format=torch.channels_last) if nhwc else views).requires_grad_(True)
            with FlopCounterMode(display=False) as counter:
                torch.autograd.grad(run(x)[RECIPE_LAYER].mean(), x)
            flops = counter.get_total_flops()
        render_and_bare(model, name, size, batch, 2 * segment, device, segment)  # warm up
        pairs: dict[str, list[tuple[float, float]]] = {"escape": [], "after": []}
        for _ in range(rounds):
            for phase, values in render_and_bare(model, name, size, batch, steady, device, segment).items():
                pairs[phase] += values

        def ms(values: list[float]) -> float:  # per image
            return float(np.median(values)) / batch * 1e3

        def overhead(values: list[tuple[float, float]]) -> float:
            return float(np.median([r / b for r, b in values])) - 1

        after, during = pairs["after"], pairs["escape"]
        bare = [b for _, b in after + during]
        row = {"recipe": name, "views": recipe.views, "view_px": view, "render_ms": ms([r for r, _ in after]),
               "bare_ms": ms(bare), "overhead": overhead(after),
               "escape_ms": ms([r for r, _ in during]) if during else None,
               "escape_overhead": overhead(during) if during else None,
               "gflop_per_image": flops / batch / 1e9, "gflops": flops / float(np.median(bare)) / 1e9,
               "rounds": rounds, "pairs": len(after), "escape_pairs": len(during)}
        escape_share = recipe.escape_steps / recipe.steps if recipe.steps else 0.0
        row["whole_run_overhead"] = (escape_share * (row["escape_overhead"] or 0.0)
                                     + (1 - escape_share) * row["overhead"])
        row["whole_run_ms"] = row["bare_ms"] * (1 + row["whole_run_overhead"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def recipe_markdown(rows: list[dict[str, object]], device: torch.device, size: int, batch: int) -> str:
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    lines = [f"# Recipe step against the bare model: {RECIPE_MODEL} up to {RECIPE_LAYER}, {size} px, batch {batch}, "
             f"fp32, {device.type}{threads}",
             f"{machine_name(device)}, torch {torch.__version__}; `python benchmarks/speed.py --recipes"
             f"{' --device ' + device.type if device.type != 'cpu' else ''}`; render and model in turns, step by step: "
             f"medians of {rows[0]['pairs']} pairs after the escape steps (of {rows[0]['rounds']} renders)", "",
             "| recipe | views per image | view px | render ms per image-step | bare model ms per image | overhead "
             "| escape steps: ms, overhead | whole run: ms, overhead | model GFLOP per image | model GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        escape = "-" if row["escape_ms"] is None else f"{row['escape_ms']:.1f}, {row['escape_overhead']:+.0%}"
        lines.append(f"| {row['recipe']} | {row['views']} | {row['view_px']} | {row['render_ms']:.1f} | "
                     f"{row['bare_ms']:.1f} | {row['overhead']:+.0%} | {escape} | {row['whole_run_ms']:.1f}, "
                     f"{row['whole_run_overhead']:+.0%} | {row['gflop_per_image']:.2f} | {row['gflops']:.0f} |")
    return "\n".join(lines) + "\n"


def recipes_main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = filterviz.load_model(RECIPE_MODEL, device=str(device))
    rows = recipe_table(model, device, tuple(args.recipe_names.split(",")), args.size, args.batch, args.rounds,
                        args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = (f"_{args.threads}thread{'s' * (args.threads > 1)}" if args.threads else "") if device.type == "cpu" \
        else f"_{device.type}"
    result = {"machine": machine_name(device), "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "model": RECIPE_MODEL, "layer": RECIPE_LAYER, "size": args.size,
              "batch": args.batch, "rows": rows}
    (out / f"speed_recipes{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = recipe_markdown(rows, device, args.size, args.batch)
    (out / f"speed_recipes{suffix}.md").write_text(markdown)
    print(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--grid", type=int, default=64, help="filters in the grid runs (default 64)")
    parser.add_argument("--reference-filters", type=int, default=3,
                        help="filters timed with the reference loop (its per-filter time is the mean)")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--recipes", action="store_true",
                        help="time each recipe's step against the bare model instead (recipe_table)")
    parser.add_argument("--recipe-names", default=",".join(RECIPES), help="--recipes: which recipes")
    parser.add_argument("--device", default="cpu", help="--recipes: the device (cpu, cuda); without --recipes, "
                        "cuda runs filterviz beside Lucent and the book's loop on the GPU (benchmarks/peer_gpu.py)")
    parser.add_argument("--size", type=int, default=224, help="--recipes: image side")
    parser.add_argument("--batch", type=int, default=4, help="--recipes: images per batch")
    parser.add_argument("--rounds", type=int, default=3, help="--recipes: renders per recipe")
    parser.add_argument("--threads", type=int, default=None, help="--recipes: CPU threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=16, help="--recipes: steps timed per render after its escape "
                                                               "steps")
    args = parser.parse_args()
    if args.recipes:
        recipes_main(args)
        return
    if args.device != "cpu":
        import peer_gpu  # beside this file

        peer_gpu.run(torch.device(args.device), Path(args.out))
        return
    torch.manual_seed(0)
    model = filterviz.load_model("vgg16", weights="random", device="cpu")
    precisions = ["fp32"] + (["bf16"] if cpu_supports_bf16() else [])
    peaks = {"fp32": conv_peak(torch.float32)}
    if "bf16" in precisions:
        peaks["bf16"] = conv_peak(torch.bfloat16)
    print("conv peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()), flush=True)
    rows = []
    for layer in args.layers.split(","):
        index = int(model.resolve(layer).split(".")[1])
        features = model.module.features[: index + 1]
        flops = step_flops(features, model.spec)
        reference = np.mean([timed(book_loop, features, model.spec, f, 0) for f in range(args.reference_filters)])
        row = {"layer": layer, "gflop_per_filter": flops * STEPS / 1e9, "reference_s_per_filter": reference,
               "reference_gflops": flops * STEPS / reference / 1e9}
        row["reference_share_of_peak"] = row["reference_gflops"] / peaks["fp32"]
        for precision in precisions:
            one = timed(filterviz.render_filters, model, layer, [0], size=SIZE, steps=STEPS, seed=0,
                        precision=precision)
            grid = timed(filterviz.render_filters, model, layer, list(range(args.grid)), size=SIZE, steps=STEPS,
                         seed=0, precision=precision) / args.grid
            row[f"{precision}_s_per_filter"] = one
            row[f"{precision}_grid_s_per_filter"] = grid
            row[f"{precision}_grid_speedup"] = reference / grid
            row[f"{precision}_grid_effective_gflops"] = flops * STEPS / grid / 1e9
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "conv_peak_gflops": peaks, "size": SIZE, "steps": STEPS, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=2))
    header = ["| layer | GFLOP/filter | reference s/filter (GFLOP/s, % of fp32 peak) |"]
    header[0] += "".join(f" filterviz {p} 1 filter s | {p} {args.grid}-grid s/filter (speedup) |" for p in precisions)
    lines = [header[0], "|" + "---|" * (3 + 2 * len(precisions))]
    for row in rows:
        line = (f"| {row['layer']} | {row['gflop_per_filter']:.0f} | {row['reference_s_per_filter']:.2f} "
                f"({row['reference_gflops']:.0f}, {row['reference_share_of_peak']:.0%}) |")
        for p in precisions:
            line += (f" {row[f'{p}_s_per_filter']:.2f} | {row[f'{p}_grid_s_per_filter']:.2f} "
                     f"({row[f'{p}_grid_speedup']:.1f}x) |")
        lines.append(line)
    peak_line = "conv peak on this machine: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
    (out / "speed.md").write_text("\n".join(lines) + f"\n\n{peak_line}\n")
    print("\n".join(lines))
    print(peak_line)


if __name__ == "__main__":
    main()
