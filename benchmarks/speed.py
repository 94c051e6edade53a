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
"""

from __future__ import annotations

import argparse
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
from filterviz.device import cpu_supports_bf16
from filterviz.params import classic_start

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--grid", type=int, default=64, help="filters in the grid runs (default 64)")
    parser.add_argument("--reference-filters", type=int, default=3,
                        help="filters timed with the reference loop (its per-filter time is the mean)")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--device", default="cpu",
                        help="cuda: filterviz beside Lucent and the book's loop on the GPU (benchmarks/peer_gpu.py)")
    args = parser.parse_args()
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
