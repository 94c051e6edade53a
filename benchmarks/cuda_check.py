"""A short check of the CUDA path, for a machine with a GPU (exits 0 only if every check passes).

Renders with the embedded model on the GPU in fp32, bf16/fp16 (``auto``) and with selected channels,
compares the GPU's fp32 result with the CPU's, and checks that a batch stays within its memory
budget as the GPU measures it:

    python benchmarks/cuda_check.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

import filterviz


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here")
        return 1
    failures = []
    gpu = filterviz.load_model(device="cuda")
    cpu = filterviz.load_model(device="cpu")
    layer, filters = "blocks.5.depthwise.act", list(range(16))
    start = time.perf_counter()
    on_gpu = filterviz.render_filters(gpu, layer, filters, size=96, steps=20, seed=0)
    print(f"fp32 on {torch.cuda.get_device_name()}: {time.perf_counter() - start:.2f} s for {len(filters)} filters")
    on_cpu = filterviz.render_filters(cpu, layer, filters, size=96, steps=20, seed=0)
    ratio = on_gpu.activation.sum() / on_cpu.activation.sum()
    print(f"GPU/CPU activation ratio, fp32: {ratio:.4f}")
    if not 0.95 < ratio < 1.05:
        failures.append("fp32 on the GPU does not match the CPU")
    reduced = filterviz.render_filters(gpu, layer, filters, size=96, steps=20, seed=0, precision="auto")
    share = reduced.activation.sum() / on_gpu.activation.sum()
    print(f"auto precision reaches {share:.1%} of fp32")
    if share < 0.95:
        failures.append("reduced precision reaches less than 95 % of fp32")
    vgg = filterviz.load_model("vgg16", weights="random", device="cuda")
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    budget = 512 * 2 ** 20
    start = time.perf_counter()
    grid = filterviz.render_filters(vgg, "block3_conv1", list(range(64)), size=150, steps=40, seed=0,
                                    max_memory=budget)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    print(f"VGG16 block3_conv1, 64 filters: {time.perf_counter() - start:.2f} s, peak {peak / 2 ** 20:.0f} MiB "
          f"of a {budget / 2 ** 20:.0f} MiB budget")
    if peak > budget:
        failures.append("a batch went over its memory budget")
    if not np.isfinite(grid.activation).all():
        failures.append("non-finite activations")
    for text in failures:
        print(f"FAILED: {text}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
