"""filterviz beside a peer on one GPU, in one process: Lucent (``torch-lucent``) and the book's loop.

Run through ``python benchmarks/speed.py --device cuda`` (or this file directly). Measures, on VGG16
(random weights: a step's time does not depend on them; no weights can be downloaded on a machine
without internet):

- the GPU's peak: a large matrix product in fp32 (TF32 off), TF32 and bf16;
- classic 64-filter grids of ``block3_conv1`` (150 px, 40 steps): the book's loop (one filter at a time,
  fp32, the network run up to the layer) against filterviz in fp32 and bf16: seconds per picture,
  achieved TFLOP/s (FLOPs counted by torch's flop counter) and their share of the peak, peak memory;
- ``lucid`` class pictures (``classifier.6``, the logits): Lucent's ``render_vis`` with its own defaults
  (Fourier image in decorrelated color, its standard transforms, Adam at 0.05), one picture per call as
  its documentation renders them, and batched (one image per class, objectives summed), against
  filterviz's ``lucid`` recipe at the same side and steps, in fp32 and bf16.

Writes ``peer_gpu.json`` and ``peer_gpu.md`` into ``--out``. Needs ``pip install torch-lucent`` (the
``bench`` extra); without it the Lucent rows are skipped and the table says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import filterviz
from filterviz.params import classic_start
from filterviz.plan import RenderParts

CLASSES = (1, 9, 22, 76, 94, 130, 207, 281)


def synchronized(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, function: Callable[[], object]) -> tuple[float, object]:
    synchronized(device)
    started = time.perf_counter()
    value = function()
    synchronized(device)
    return time.perf_counter() - started, value


def peak_memory(device: torch.device) -> float:
    """GiB allocated at most since the last reset (0 on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else 0.0


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def matmul_peaks(device: torch.device, side: int = 8192) -> dict[str, float]:
    """TFLOP/s of a side^3 matrix product: fp32 (TF32 off), tf32 and bf16, best of several."""
    if device.type != "cuda":
        side = 1024
    peaks = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            if device.type != "cuda" and name == "tf32":
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(side, side, device=device, dtype=dtype)
            b = torch.randn(side, side, device=device, dtype=dtype)
            a @ b
            best = min(timed(device, lambda: a @ b)[0] for _ in range(5))
            peaks[name] = 2 * side ** 3 / best / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return peaks


def vgg16(device: torch.device) -> filterviz.LoadedModel:
    return filterviz.load_model("vgg16", weights="random", device=str(device))


def book_loop(model: filterviz.LoadedModel, layer: str, filter_index: int, size: int, steps: int) -> np.ndarray:
    """The book's recipe as plainly as it reads, for one filter, on the model's device, fp32."""
    index = int(model.resolve(layer).split(".")[1])
    features = model.module.features[: index + 1]
    device = model.device
    image = torch.as_tensor(classic_start(size, [filter_index], 0), dtype=torch.float32,
                            device=device).permute(0, 3, 1, 2)
    for _ in range(steps):
        x = image.detach().requires_grad_(True)
        loss = features(model.spec.to_model_input(x))[:, filter_index].mean()
        (grad,) = torch.autograd.grad(loss, x)
        image = image + grad / (grad.square().mean().sqrt() + 1e-5)
    return image.cpu().numpy()


def step_flops(model: filterviz.LoadedModel, layer: str, size: int) -> int:
    """FLOPs of one image's forward pass to ``layer`` and gradient to the image."""
    image = torch.full((1, 3, size, size), 128.0, device=model.device, requires_grad=True)
    with FlopCounterMode(display=False) as counter, model.capture([layer]) as run:
        torch.autograd.grad(run(image)[layer].mean(), image)
    return counter.get_total_flops()


def classic_grid(model: filterviz.LoadedModel, layer: str, filters: int, size: int, steps: int,
                 reference_filters: int, peaks: dict[str, float]) -> list[dict]:
    device = model.device
    flops = step_flops(model, model.resolve(layer), size) * steps
    rows = []
    book_loop(model, layer, 0, size, 2)  # warm-up: kernels chosen, memory allocated
    seconds = timed(device, lambda: [book_loop(model, layer, f, size, steps) for f in range(reference_filters)])[0]
    per = seconds / reference_filters
    rows.append({"what": "book loop, one filter at a time", "precision": "fp32", "s_per_picture": per,
                 "tflops": flops / per / 1e12, "share_of_peak": flops / per / 1e12 / peaks.get("tf32", peaks["fp32"])})
    for precision in ("fp32", "bf16"):
        filterviz.render_filters(model, layer, list(range(min(filters, 8))), size=size, steps=2, seed=0,
                                 precision=precision)  # warm-up
        reset_memory(device)
        seconds = timed(device, lambda: filterviz.render_filters(model, layer, list(range(filters)), size=size,
                                                                 steps=steps, seed=0, precision=precision))[0]
        per = seconds / filters
        peak = peaks["bf16"] if precision == "bf16" else peaks.get("tf32", peaks["fp32"])
        rows.append({"what": f"filterviz grid of {filters}", "precision": precision, "s_per_picture": per,
                     "tflops": flops / per / 1e12, "share_of_peak": flops / per / 1e12 / peak,
                     "peak_memory_gib": peak_memory(device), "speedup_vs_book": rows[0]["s_per_picture"] / per})
    return rows


def import_lucent() -> types.ModuleType | None:
    """Lucent's render module, or None when torch-lucent is not installed. Lucent imports IPython for
    showing pictures in notebooks, which is never used here: a stand-in is put in its place if
    IPython is missing."""
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("IPython")
        stand_in.display = types.ModuleType("IPython.display")  # type: ignore[attr-defined]
        sys.modules.setdefault("IPython", stand_in)
        sys.modules.setdefault("IPython.display", stand_in.display)  # type: ignore[attr-defined]
    try:
        from lucent.optvis import objectives, param, render
    except ImportError:
        return None
    return types.SimpleNamespace(objectives=objectives, param=param, render=render)


def lucid_classes(model: filterviz.LoadedModel, classes: list[int], size: int, steps: int,
                  peaks: dict[str, float]) -> list[dict]:
    device = model.device
    view = RenderParts.resolve(filterviz.get_recipe("lucid", size=size)).view_side(size)  # padded, jittered
    flops = step_flops(model, model.resolve("classifier.6"), view) * steps
    rows = []
    lucent = import_lucent()
    if lucent is None:
        rows.append({"what": "Lucent: not installed (pip install torch-lucent)", "precision": "-",
                     "s_per_picture": float("nan")})
    else:
        module = model.module

        def one(c: int) -> object:
            return lucent.render.render_vis(module, f"classifier_6:{c}", param_f=lambda: lucent.param.image(size),
                                            thresholds=(steps,), show_image=False, progress=False)

        def batched() -> object:
            objective = sum(lucent.objectives.channel("classifier_6", c, batch=i) for i, c in enumerate(classes))
            return lucent.render.render_vis(module, objective,
                                            param_f=lambda: lucent.param.image(size, batch=len(classes)),
                                            thresholds=(steps,), show_image=False, progress=False)

        lucent.render.render_vis(module, "classifier_6:1", param_f=lambda: lucent.param.image(size),
                                 thresholds=(2,), show_image=False, progress=False)  # warm-up
        reset_memory(device)
        seconds = timed(device, lambda: [one(c) for c in classes])[0]
        rows.append({"what": "Lucent render_vis, one picture per call", "precision": "fp32",
                     "s_per_picture": seconds / len(classes), "peak_memory_gib": peak_memory(device)})
        reset_memory(device)
        seconds = timed(device, batched)[0]
        rows.append({"what": f"Lucent render_vis, {len(classes)} pictures in one batch", "precision": "fp32",
                     "s_per_picture": seconds / len(classes), "peak_memory_gib": peak_memory(device)})
    objectives = [f"class:{c}" for c in classes]
    for precision in ("fp32", "bf16"):
        filterviz.render(model, objectives[:2], "lucid", size=size, steps=2, seed=0, precision=precision)
        reset_memory(device)
        seconds = timed(device, lambda: filterviz.render(model, objectives, "lucid", size=size, steps=steps, seed=0,
                                                         precision=precision))[0]
        per = seconds / len(classes)
        peak = peaks["bf16"] if precision == "bf16" else peaks.get("tf32", peaks["fp32"])
        rows.append({"what": f"filterviz lucid, {len(classes)} pictures", "precision": precision, "s_per_picture": per,
                     "tflops": flops / per / 1e12, "share_of_peak": flops / per / 1e12 / peak,
                     "peak_memory_gib": peak_memory(device)})
    lucent_one = next((r["s_per_picture"] for r in rows if r["what"].startswith("Lucent render_vis, one")), None)
    lucent_batch = next((r["s_per_picture"] for r in rows if "in one batch" in r["what"]), None)
    for row in rows:
        if row["what"].startswith("filterviz") and lucent_one:
            row["speedup_vs_lucent_one"] = lucent_one / row["s_per_picture"]
            row["speedup_vs_lucent_batched"] = lucent_batch / row["s_per_picture"]
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


def table(rows: list[dict]) -> list[str]:
    lines = ["| what | precision | s / picture | TFLOP/s | share of peak | peak GiB | speedup |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        speedup = ", ".join(f"{row[k]:.1f}x {k.removeprefix('speedup_vs_').replace('_', ' ')}"
                            for k in ("speedup_vs_book", "speedup_vs_lucent_one", "speedup_vs_lucent_batched") if k in row)
        lines.append(f"| {row['what']} | {row['precision']} | {row['s_per_picture']:.3f} | "
                     f"{row.get('tflops', float('nan')):.1f} | {row.get('share_of_peak', float('nan')):.0%} | "
                     f"{row.get('peak_memory_gib', float('nan')):.2f} | {speedup} |")
    return lines


def run(device: torch.device, out: Path, *, filters: int = 64, reference_filters: int = 8, size: int = 150,
        steps: int = 40, lucid_size: int = 224, lucid_steps: int = 256, classes: int = len(CLASSES)) -> dict:
    """Every measurement above on ``device``; writes peer_gpu.json/.md into ``out`` and returns the result."""
    torch.manual_seed(0)
    peaks = matmul_peaks(device)
    print("peaks (TFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()), flush=True)
    model = vgg16(device)
    grid = classic_grid(model, "block3_conv1", filters, size, steps, reference_filters, peaks)
    print("\n".join(table(grid)), flush=True)
    lucid = lucid_classes(model, list(CLASSES[:classes]), lucid_size, lucid_steps, peaks)
    print("\n".join(table(lucid)), flush=True)
    result = {"device": device_name(device), "torch": torch.__version__, "peaks_tflops": peaks,
              "classic": {"layer": "block3_conv1", "size": size, "steps": steps, "rows": grid},
              "lucid": {"size": lucid_size, "steps": lucid_steps, "classes": classes, "rows": lucid}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer_gpu.json").write_text(json.dumps(result, indent=2))
    lines = [f"# filterviz beside the book's loop and Lucent on {result['device']} (torch {torch.__version__})",
             "", "VGG16, random weights; `python benchmarks/speed.py --device cuda`", "",
             "peaks (TFLOP/s, matrix product): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()), "",
             f"## classic, block3_conv1, {size} px, {steps} steps", "", *table(grid), "",
             f"## lucid, class pictures (classifier.6), {lucid_size} px, {lucid_steps} steps", "", *table(lucid), ""]
    (out / "peer_gpu.md").write_text("\n".join(lines))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--reference-filters", type=int, default=8)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lucid-size", type=int, default=224)
    parser.add_argument("--lucid-steps", type=int, default=256)
    parser.add_argument("--classes", type=int, default=len(CLASSES))
    args = parser.parse_args()
    run(torch.device(args.device), Path(args.out), filters=args.filters, reference_filters=args.reference_filters,
        size=args.size, steps=args.steps, lucid_size=args.lucid_size, lucid_steps=args.lucid_steps,
        classes=args.classes)


if __name__ == "__main__":
    main()
