"""The atlas's trust step: for every shown filter with dataset examples, how far its picture can be
trusted (``filterviz.trust``): its path similarity against its top images, set against random images
of the folder; its plausibility; and each layer's Fréchet distance of its pictures to the folder.

Scores are stored in the manifest, one transaction per layer, each with a fingerprint of all it
depends on (the picture's bytes, the layer's examples, which include the model and the folder's
contents, and these settings), so a resumed or repeated atlas measures only what is missing or stale.
A run without ``--images`` keeps the scores that still hold and drops the others (it has no folder to
measure them again). The pages show them through ``templates/trust.html`` (``index_html``, ``layer_html``,
``filter_html``).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import FilterVizError
from ..models.loaded import LoadedModel
from ..trust import (FRECHET_DIMS, FRECHET_LAYER, PathBaseline, baseline_from_pooled, cosine_similarity, feature_layer,
                     path_from_pooled, path_layers, pooled_activations)
from .examples import load_square
from .files import filter_page, layer_page, read_regular
from .manifest import Example, LayerTrust, Manifest, TrustScore, Unit
from .selection import AtlasLayer

VERSION = 1  # of how scores are measured: a change measures every atlas again
BASELINE_IMAGES = 32  # random images of the folder whose every pair gives the path baseline
FRECHET_IMAGES = 256  # the most images of the folder a layer's Fréchet distance compares its pictures with
SAMPLE_SEED = 0  # which random images those are
FRECHET_SPACE = (f"the embedded EfficientNet-Lite0's {FRECHET_LAYER} (averaged over positions) on {FRECHET_DIMS} "
                 "fixed random directions")


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _sample(count: int, most: int, salt: int) -> list[int]:
    """``most`` of ``count`` indices (all if fewer), drawn by a fixed seed, in order."""
    if count <= most:
        return list(range(count))
    return sorted(np.random.default_rng([SAMPLE_SEED, salt]).choice(count, most, replace=False).tolist())


@dataclass
class TrustReport:
    """What the trust step found: per layer name, the dict the pages show (see ``templates/trust.html``);
    how many pictures have scores, which are flagged ("layer filter"), and how many were measured now."""

    layers: dict[str, dict[str, Any]]
    measured: int
    unnatural: list[str]
    measured_now: int


def _picture(root: Path, unit: Unit, channels: int) -> np.ndarray | None:
    """A filter's picture as the atlas shows it, (H, W, C) 0..255; None if its file is not the one recorded."""
    data = read_regular(root, unit.file)
    if data is None or hashlib.sha256(data).hexdigest() != unit.sha256:
        return None
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    return pixels[..., None] if pixels.ndim == 2 else pixels[..., :channels]


def _reason(unit: Unit, examples: Sequence[Example]) -> str | None:
    """Why a filter's picture is not measured, or None."""
    if unit.dead:
        return "dead: its picture is only its start image"
    if unit.stuck:
        return "stuck: its picture is only its start image"
    if not examples:
        return "no dataset examples"
    return None


def measure_trust(model: LoadedModel, root: Path, layers: Sequence[AtlasLayer], filters: dict[str, list[int]],
                  units: dict[tuple[str, int], Unit], with_examples: set[str], manifest: Manifest,
                  model_fingerprint: str, side: int, folder: Path | None, files: Sequence[Path], batch_size: int,
                  notes: list[str], progress: bool = False) -> TrustReport:
    """Measure (or keep) the scores of every shown filter of the ``with_examples`` layers; drop those of
    other layers. ``folder``/``files``: this run's images (None/empty: the run has none, and keeps what
    still holds)."""
    examples = {name: _by_filter(manifest.examples(name)) for name in with_examples}
    example_fingerprints = manifest.example_fingerprints()
    stored, stored_layers = manifest.trust_scores(), manifest.trust_layers()
    judge = feature_layer(model, side)
    plans: dict[str, _LayerPlan] = {}
    for layer in layers:
        if layer.name not in with_examples:
            continue
        path = path_layers(model, layer.path, side)
        settings = _hash(VERSION, model_fingerprint, side, path, judge, BASELINE_IMAGES, SAMPLE_SEED,
                         example_fingerprints.get(layer.name, ""))
        plan = _LayerPlan(layer, path, settings)
        for k in filters[layer.name]:
            unit = units[layer.name, k]
            reason = _reason(unit, examples[layer.name].get(k, []))
            if reason:
                plan.skipped[k] = reason
                continue
            fingerprint = _hash(settings, unit.sha256)
            plan.fingerprints[k] = fingerprint
            row = stored.get((layer.name, k))
            if row is not None and row.fingerprint == fingerprint:
                plan.kept[k] = row
            else:
                plan.todo.append(k)
        shas = sorted((k, units[layer.name, k].sha256) for k in plan.fingerprints)
        plan.frechet_fingerprint = _hash(settings, FRECHET_SPACE, FRECHET_IMAGES, shas)
        kept = stored_layers.get(layer.name)
        plan.frechet_kept = kept if kept is not None and kept.fingerprint == plan.frechet_fingerprint else None
        plans[layer.name] = plan
    # Scores of filters and layers no longer measured, or stale, go.
    stale = [key for key, row in stored.items()
             if key[0] not in plans or plans[key[0]].fingerprints.get(key[1]) != row.fingerprint]
    manifest.forget_trust(stale, [name for name in stored_layers if name not in plans
                                  or plans[name].frechet_kept is None])
    measured_now = 0
    if folder is not None and files:
        measured_now = _measure(model, root, plans, units, examples, folder, files, side, judge, batch_size, manifest,
                                notes, progress)
    else:
        lost = sum(len(plan.todo) for plan in plans.values())
        if lost:
            notes.append(f"dropped the path similarity of {lost} pictures that changed since it was measured "
                         "(run with --images DIR to measure them)")
    return _report(plans, measured_now)


@dataclass
class _LayerPlan:
    """One layer's part: its path layers, and its filters' fingerprints, kept scores, filters skipped
    (with why) and to measure; its Fréchet distance's fingerprint, and the stored one if it holds."""

    layer: AtlasLayer
    path: list[str]
    settings: str
    fingerprints: dict[int, str] = field(default_factory=dict)
    kept: dict[int, TrustScore] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)
    frechet_fingerprint: str = ""
    frechet_kept: LayerTrust | None = None
    frechet_note: str = "not measured: run with --images DIR"  # shown while frechet_kept is None


def _by_filter(examples: Sequence[Example]) -> dict[int, list[Example]]:
    found: dict[int, list[Example]] = {}
    for example in examples:
        found.setdefault(example.filter, []).append(example)
    return found


def _measure(model: LoadedModel, root: Path, plans: dict[str, _LayerPlan], units: dict[tuple[str, int], Unit],
             examples: dict[str, dict[int, list[Example]]], folder: Path, files: Sequence[Path], side: int,
             judge: str, batch_size: int, manifest: Manifest, notes: list[str], progress: bool) -> int:
    """Measure every plan's missing scores and Fréchet distances; returns how many pictures were measured."""
    channels = model.spec.channels
    todo = [plan for plan in plans.values() if plan.todo]
    frechet_todo = [plan for plan in plans.values() if plan.frechet_kept is None]
    if not todo and not frechet_todo:
        return 0
    if len(files) < 2:
        notes.append("measured no path similarity: it compares pairs of random images of the folder, which has one")
        return 0
    names = [file.relative_to(folder).as_posix() for file in files]
    baseline_names = [names[i] for i in _sample(len(files), BASELINE_IMAGES, 1)]
    wanted = set(baseline_names) | {e.image for plan in todo for k in plan.todo for e in examples[plan.layer.name][k]}
    order = sorted(wanted)
    layers = list(dict.fromkeys([name for plan in todo for name in plan.path] + [judge]))
    pooled = pooled_activations(model, layers, [load_square(folder / name, side, channels) for name in order],
                                batch_size=batch_size) if todo else {}
    row_of = {name: index for index, name in enumerate(order)}
    baseline_rows = [row_of[name] for name in baseline_names]
    measured = 0
    with tqdm(total=sum(len(plan.todo) for plan in todo), desc="path similarity", unit="picture",
              disable=None if progress else True) as bar:
        for plan in todo:
            baseline = baseline_from_pooled({name: pooled[name][baseline_rows] for name in plan.path})
            measured += _measure_layer(model, root, plan, units, examples[plan.layer.name], pooled, row_of, baseline,
                                       judge, batch_size, manifest)
            bar.update(len(plan.todo))
    _frechet(model, root, frechet_todo, units, folder, files, side, batch_size, manifest, notes)
    return measured


def _measure_layer(model: LoadedModel, root: Path, plan: _LayerPlan, units: dict[tuple[str, int], Unit],
                   examples: dict[int, list[Example]], pooled: dict[str, np.ndarray], row_of: dict[str, int],
                   baseline: PathBaseline, judge: str, batch_size: int, manifest: Manifest) -> int:
    name = plan.layer.name
    pictures = {k: _picture(root, units[name, k], model.spec.channels) for k in plan.todo}
    for k in [k for k, picture in pictures.items() if picture is None]:
        plan.skipped[k] = "its picture file is not the one recorded"
        del pictures[k]
    plan.todo = list(pictures)
    if not pictures:
        return 0
    seen = pooled_activations(model, plan.path + [judge], list(pictures.values()), batch_size=batch_size)
    scores = []
    for index, k in enumerate(pictures):
        rows = [row_of[e.image] for e in examples[k]]
        path = path_from_pooled(plan.layer.path, {layer: seen[layer][index] for layer in plan.path},
                                {layer: pooled[layer][rows] for layer in plan.path}, baseline)
        plausible = cosine_similarity(seen[judge][index], pooled[judge][rows])
        record = {"layers": list(path.layers), "picture": list(path.picture), "naturals": list(path.naturals),
                  "baseline": list(path.baseline), "judge": judge, "examples": len(rows), "random": baseline.images}
        scores.append(TrustScore(name, k, plan.fingerprints[k], path.score, plausible, json.dumps(record)))
    manifest.put_trust(scores)
    plan.kept.update({score.filter: score for score in scores})
    return len(scores)


def _frechet(model: LoadedModel, root: Path, plans: list[_LayerPlan], units: dict[tuple[str, int], Unit],
             folder: Path, files: Sequence[Path], side: int, batch_size: int, manifest: Manifest,
             notes: list[str]) -> None:
    """Each plan's layer's Fréchet distance of its measured pictures to a sample of the folder, in the
    embedded model's feature space; where it cannot be measured, the reason is stored instead."""
    if not plans:
        return
    images = [load_square(files[i], side, model.spec.channels) for i in _sample(len(files), FRECHET_IMAGES, 2)]
    if len(images) <= FRECHET_DIMS:
        distance, note = None, f"needs more than {FRECHET_DIMS} images in the folder; it has {len(images)}"
    else:
        try:
            from ..models.registry import load_model
            from ..trust import FrechetDistance, ProjectedFeatures

            features = ProjectedFeatures(load_model("efficientnet-lite0", device=model.device), FRECHET_LAYER,
                                         FRECHET_DIMS, size=side)
            distance, note = FrechetDistance(images, features, batch_size=batch_size), ""
        except FilterVizError as exc:  # the metrics extra is missing: the rest of the atlas stands
            notes.append(f"measured no Fréchet distances: {exc}")
            for plan in plans:  # nothing stored: a later run, with the extra, measures them
                plan.frechet_note = f"not measured: {exc}"
            return
    for plan in plans:
        shown = [k for k in plan.fingerprints if k in plan.kept]
        pictures = [p for p in (_picture(root, units[plan.layer.name, k], model.spec.channels) for k in shown)
                    if p is not None]
        value, why = None, note
        if distance is not None:
            if len(pictures) > FRECHET_DIMS:
                value = distance(pictures)
            else:
                why = f"needs more than {FRECHET_DIMS} measured pictures; the layer has {len(pictures)}"
        manifest.put_trust([], LayerTrust(plan.layer.name, plan.frechet_fingerprint, value, why, len(pictures),
                                          len(images)))
        plan.frechet_kept = manifest.trust_layers()[plan.layer.name]


def _report(plans: dict[str, _LayerPlan], measured_now: int) -> TrustReport:
    """The pages' dicts, by layer."""
    layers: dict[str, dict[str, Any]] = {}
    flagged: list[str] = []
    measured = 0
    for name, plan in plans.items():
        shown: dict[int, dict[str, Any]] = {}
        for k, why in plan.skipped.items():
            shown[k] = {"measured": False, "why": why}
        for k in plan.todo:  # not measured in this run (no images to measure it with)
            shown.setdefault(k, {"measured": False, "why": "its picture changed since; run with --images DIR"})
        for k, row in plan.kept.items():
            record = json.loads(row.path)
            shown[k] = {"measured": True, "score": row.score, "unnatural": row.score < 0,
                        "plausibility": row.plausibility, "judge": record["judge"], "examples": record["examples"],
                        "random": record["random"],
                        "worst": record["layers"][int(np.argmin(np.subtract(record["picture"], record["baseline"])))],
                        "layers": [{"name": layer, "picture": p, "naturals": n, "baseline": b}
                                   for layer, p, n, b in zip(record["layers"], record["picture"],
                                                             record["naturals"], record["baseline"])]}
        scored = [shown[k] for k in sorted(shown) if shown[k]["measured"]]
        unnatural = [k for k in sorted(shown) if shown[k]["measured"] and shown[k]["unnatural"]]
        flagged += [f"{name} {k}" for k in unnatural]
        measured += len(scored)
        per_layer = []
        for index, layer in enumerate(plan.path):
            values = [s["layers"][index]["picture"] for s in scored if index < len(s["layers"])]
            base = [s["layers"][index]["baseline"] for s in scored if index < len(s["layers"])]
            if values:
                per_layer.append({"name": layer, "picture": float(np.mean(values)), "baseline": float(np.mean(base))})
        frechet = plan.frechet_kept
        layers[name] = {
            "layer": name, "page": layer_page(plan.layer.slug), "measured": len(scored),
            "unnatural": [{"filter": k, "page": filter_page(plan.layer.slug, k)} for k in unnatural],
            "median": float(np.median([s["score"] for s in scored])) if scored else None,
            "plausibility": float(np.median([s["plausibility"] for s in scored])) if scored else None,
            "per_layer": per_layer, "filters": shown, "baseline_images": BASELINE_IMAGES,
            "frechet": None if frechet is None else frechet.frechet,
            "frechet_note": plan.frechet_note if frechet is None else frechet.note,
            "frechet_pictures": 0 if frechet is None else frechet.pictures,
            "frechet_images": 0 if frechet is None else frechet.images,
            "frechet_space": FRECHET_SPACE,
        }
    return TrustReport(layers, measured, flagged, measured_now)


def _macro(part: str, **context: Any) -> str:
    """One macro of ``templates/trust.html`` as markup."""
    from ..pages import environment

    return str(getattr(environment().get_template("trust.html").module, part)(**context))


def index_html(layers: Sequence[dict[str, Any] | None], page: str) -> str:
    """The index's lines, one per measured layer ("" when none is)."""
    shown = [t for t in layers if t]
    return _macro("index", layers=shown, page=page) if shown else ""


def layer_html(trust: dict[str, Any] | None, page: str) -> str:
    """A layer page's section ("" for a layer without scores)."""
    return _macro("layer", t=trust, page=page) if trust else ""


def filter_html(trust: dict[str, Any] | None, k: int, page: str) -> str:
    """A filter page's section ("" for a layer without scores)."""
    return _macro("filter", f=trust["filters"][k], t=trust, page=page) if trust and k in trust["filters"] else ""
