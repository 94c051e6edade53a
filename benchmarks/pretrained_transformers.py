"""Pictures of pretrained vision transformers and CLIP, when their weights are in the local caches.

For each model: class pictures (ImageNet classifiers) or text pictures (CLIP) with each preset, and how
often they are recognized: by the model itself and by EfficientNet-Lite1, a judge the pictures were not
optimized on (the share of random views whose top 5 hold the class, as benchmarks/quality.py measures),
and for CLIP the text's rank among all the prompts' texts. A model whose weights are not cached is
skipped with one line saying so; nothing is downloaded unless the hub answers.

    python benchmarks/pretrained_transformers.py [--steps 256] [--out benchmarks/results/transformers.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import filterviz  # noqa: E402
from filterviz.errors import FilterVizError  # noqa: E402
from quality import CLASSES, judge_model, top5_share  # noqa: E402

CLASSIFIERS = ("timm:vit_base_patch16_224", "timm:deit_small_patch16_224", "timm:swin_tiny_patch4_window7_224",
               "timm:convnext_tiny", "hf:google/vit-base-patch16-224")
CLIP = "open_clip:ViT-B-32/openai"
PROMPTS = ("a photo of a dog", "a photo of a cat", "a red car", "a bowl of fruit", "a mountain lake")


def _load(name: str) -> filterviz.LoadedModel | None:
    try:
        return filterviz.load_model(name, device="auto")
    except FilterVizError as exc:
        print(f"skipped {name}: {exc}")
        return None


def classifier_rows(name: str, judge: filterviz.LoadedModel, steps: int, classes: list[int]) -> list[str]:
    model = _load(name)
    if model is None:
        return [f"| {name} | skipped: weights not in the cache | | | |"]
    rows = []
    for recipe in ("lucid", "maco"):
        started = time.perf_counter()
        render = filterviz.render(model, [f"class:{k}" for k in classes], recipe, steps=steps, seed=0)
        seconds = (time.perf_counter() - started) / len(classes)
        own = top5_share(model, render.images, classes).mean()
        judged = top5_share(judge, render.images, classes).mean()
        rows.append(f"| {name} | {recipe} | {own:.2f} | {judged:.2f} | {seconds:.1f} |")
        print(rows[-1])
    return rows


def clip_rows(steps: int) -> list[str]:
    model = _load(CLIP)
    if model is None:
        return [f"| {CLIP} | skipped: weights not in the cache | | |"]
    texts = torch.stack([model.embed_text(p) for p in PROMPTS])
    texts = texts / texts.norm(dim=1, keepdim=True)
    rows = []
    for recipe in ("lucid", "maco"):
        started = time.perf_counter()
        render = filterviz.render(model, [f"text:{p}" for p in PROMPTS], recipe, steps=steps, seed=0)
        seconds = (time.perf_counter() - started) / len(PROMPTS)
        pixels = torch.as_tensor(render.images, dtype=torch.float32).permute(0, 3, 1, 2).to(model.device)
        with torch.no_grad():
            images = model.logits(pixels).double().cpu()
        images = images / images.norm(dim=1, keepdim=True)
        ranks = (images @ texts.T).argsort(dim=1, descending=True)
        top1 = float(np.mean([int(ranks[i, 0]) == i for i in range(len(PROMPTS))]))
        rows.append(f"| {CLIP} | {recipe} | {top1:.2f} | {seconds:.1f} |")
        print(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--classes", type=int, default=8, help="how many of quality.py's classes")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pretrained_transformers.md"))
    args = parser.parse_args()
    classes = list(CLASSES[:args.classes])
    judge = judge_model()
    lines = [f"# Pretrained transformers: {args.steps} steps, {len(classes)} classes", "",
             "| model | recipe | own top-5 | judge top-5 | s per picture |", "|---|---|---|---|---|"]
    for name in CLASSIFIERS:
        lines += classifier_rows(name, judge, args.steps, classes)
    lines += ["", "| model | recipe | text ranked first among the prompts | s per picture |", "|---|---|---|---|"]
    lines += clip_rows(args.steps)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
