"""Building an atlas: render every chosen filter, find dataset examples, write the site; resumable.

Work is done in steps whose results are recorded in the manifest only after their files are complete,
so a run killed at any moment and started again does only what is missing, and ends with the same
files as an uninterrupted run. What each step depends on (model weights, recipe, seed, precision, the
image folder) is fingerprinted; a change redoes exactly the steps that depend on it.

An atlas writes only inside its folder and never through a symbolic link there (see ``files``); it
removes only files that its manifest records it wrote, and its own temporary files.
"""

from __future__ import annotations

import hashlib
import contextlib
import io
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..plan import check_render
from ..errors import FilterVizError, MemoryBudgetError, OutputError
from ..device import DEFAULT_PRECISION, autocast_dtype, resolve_precision
from ..fingerprints import model_fingerprint, render_fingerprint, settings_hash
from ..memory import budget_words, largest, memory_budget, more_memory, readable
from ..image import png_bytes
from ..models.loaded import LoadedModel
from ..objectives import channel
from ..recipes import Recipe, get_recipe, render_size
from .examples import (TopK, check_example_channels, check_images, crop_box, folder_fingerprint, list_images,
                       load_square, pack, receptive_field, scan_images, unpack)
from .executors import Executor, RenderSettings, RenderTask, TaskResult, default_executor
from .files import (INDEX, MANIFEST, MANIFEST_FILES, STYLE_SHEET, activation_files, check_tree, example_crop,
                    filter_image, filter_page, index_path, layer_page, manifest_path, part_leftovers, regular_size,
                    remove_empty_folders, remove_file, source_image, write_file)
from .manifest import Example, ExampleSource, Manifest, ManifestError, Unit, damage_error, damaged, set_aside
from .selection import AtlasLayer, atlas_layers, default_layers, layer_slug
from .site import SiteInfo, SiteLayer, write_site
from .trust import measure_trust

CHECKPOINT_SECONDS = 30.0  # how often a dataset scan in progress is saved
MIN_CROP = 16  # px: smaller receptive fields are shown with some context around them

T = TypeVar("T")


@dataclass(frozen=True)
class AtlasSummary:
    """What ``build_atlas`` did."""

    out: Path
    model: str
    layers: int
    units: int
    rendered: int  # in this run; the rest were already done
    dead: int  # measured dead: the same value on every probe image
    images: int  # dataset images scanned in this run
    examples: int  # dataset examples in the atlas
    seconds: float
    stuck: int = 0  # alive, but their pictures never left the start image (the recipe could not escape)
    notes: tuple[str, ...] = ()  # what else this run did: results it kept, dropped or set aside, and why
    measured: int = 0  # pictures with a path similarity (those with dataset examples; see filterviz.trust)
    unnatural: tuple[str, ...] = ()  # "layer filter" of the pictures that take an unnatural path

    def __str__(self) -> str:
        minutes, seconds = divmod(round(self.seconds), 60)
        reused = self.units - self.rendered
        return (f"atlas of {self.model}: {self.units} filters in {self.layers} layers ({self.rendered} rendered now, "
                f"{reused} already done), {self.dead} dead"
                + (f", {self.stuck} stuck at their start image" if self.stuck else "") + "; "
                + (f"{self.examples} dataset examples ({self.images} images scanned now); " if self.examples else "")
                + (f"path similarity of {self.measured} pictures: {len(self.unnatural)} take an unnatural path"
                   + (f" ({', '.join(self.unnatural[:6])}{', ...' if len(self.unnatural) > 6 else ''})"
                      if self.unnatural else "") + "; " if self.measured else "")
                + "".join(f"{note}; " for note in self.notes)
                + f"{minutes}m{seconds:02d}s; open {index_path(self.out)}")

    def _repr_html_(self) -> str:  # Jupyter: the summary and each layer's first filters
        from ..notebook import atlas_html
        return atlas_html(self)


def _hash(*parts: object) -> str:
    return settings_hash(*parts)


def _chunks(filters: Sequence[int], chunk_size: int) -> list[tuple[int, ...]]:
    """Filters grouped by ``index // chunk_size``: a filter's batch never depends on what is done."""
    groups: dict[int, list[int]] = {}
    for index in filters:
        groups.setdefault(index // chunk_size, []).append(index)
    return [tuple(group) for _, group in sorted(groups.items())]


def _is_done(out: Path, unit: Unit | None, fingerprint: str, file: str) -> bool:
    if unit is None or unit.fingerprint != fingerprint or unit.file != file:
        return False
    return regular_size(out, unit.file) == unit.bytes  # a link in its place is not the atlas's file


@dataclass(frozen=True)
class _Plan:
    """One atlas run, checked: what to render and scan, and where."""

    model: LoadedModel
    root: Path
    layers: list[AtlasLayer]
    filters: dict[str, list[int]]  # by layer name: the filters shown
    settings: RenderSettings
    executor: Executor
    chunk_size: int
    folder: Path | None  # of dataset images
    files: list[Path]
    top_k: int
    scan_batch_size: int
    progress: bool

    @property
    def side(self) -> int:
        return self.settings.recipe.size or 0


def build_atlas(
    model: LoadedModel,
    out: str | os.PathLike[str],
    *,
    layers: Sequence[str] | None = None,
    filters: Iterable[int | range] | None = None,
    recipe: Recipe | str = "classic",
    seed: int = 0,
    images: str | os.PathLike[str] | None = None,
    top_k: int = 8,
    executor: Executor | None = None,
    chunk_size: int = 16,
    precision: str = DEFAULT_PRECISION,
    threads: int | None = None,
    scan_batch_size: int = 16,
    progress: bool = False,
    rebuild: bool = False,
    max_memory: int | None = None,
    **overrides: Any,
) -> AtlasSummary:
    """Render every filter of ``layers`` (default: ``default_layers``) into a static site in ``out``.

    ``filters`` limits each layer to those indices (ints or ranges; beyond a layer's channels they
    are skipped). ``images``: a folder whose ``top_k`` most exciting images per filter are shown
    beside it. ``executor``: where the renders run (default ``LocalExecutor``, see ``DEFAULT_EXECUTOR``;
    ``ProcessExecutor`` for processes of this machine, ``RayExecutor`` for a cluster); tasks are
    ``chunk_size`` filters of one layer, each rendered as one batch on ``threads`` CPU threads (default:
    the executor's ``default_threads``, else this process's count), so that any executor gives the
    same bytes.
    ``overrides`` change recipe fields (``size=``, ``steps=``...). ``out`` must be a new or empty
    folder, or an atlas folder. Running again with the same arguments continues an interrupted atlas;
    with other arguments, it redoes only what they change. Bad arguments fail before anything is written.

    ``out`` may lie inside ``images``: the scan skips it. A symbolic link among the atlas's own files
    and folders is refused. A damaged manifest is a ``ManifestError``; ``rebuild=True`` then moves it
    aside (``manifest.sqlite.corrupt-N``) and starts afresh, as it does with a sound one (which it
    keeps, forgetting its results but not the files it wrote). A fresh start renders everything again
    and removes no file it has no record of.

    Without ``images``, the examples that an earlier run found are kept while they still match (model,
    size, top-k, filters), else dropped; the summary says which, and what else the run removed.

    ``max_memory`` (default: the model's, else a safe share of the free memory) bounds a render task's
    batch (``chunk_size`` filters of the deepest layer shown) and a batch of the dataset scan; either
    beyond it is refused before anything is written, with the figures.
    """
    with memory_kept_to(model, max_memory):
        return _build_atlas(model, out, layers, filters, recipe, seed, images, top_k, executor, chunk_size,
                            precision, threads, scan_batch_size, progress, rebuild, overrides)


@contextlib.contextmanager
def memory_kept_to(model: LoadedModel, max_memory: int | None) -> Iterator[None]:
    """Inside: every run of ``model`` (on any executor) keeps to ``max_memory`` bytes, when given."""
    before = model.max_memory
    if max_memory is not None:
        model.max_memory = max_memory
    try:
        yield
    finally:
        model.max_memory = before


def run_in_folder(root: Path, executor: Executor, open_manifest: Callable[[list[str]], Manifest],
                  build: Callable[[Manifest, list[str]], T]) -> T:
    """With ``executor`` open, create ``root``, open its manifest (``open_manifest`` may add notes) and
    ``build`` in it; close both however it ends. A manifest found damaged, or held by another run, is
    one line (``OutputError``)."""
    missing = [name for name in ("run", "open", "close", "retried") if not hasattr(executor, name)]
    if missing:
        raise FilterVizError(f"executor {type(executor).__name__} lacks {', '.join(missing)}: an executor "
                             "has run(), open(), close() and a retried list (see filterviz.atlas.Executor)")
    executor.open()
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create folder {str(root)!r}: {exc.strerror or exc}") from None
        if not os.access(root, os.W_OK):
            raise OutputError(f"cannot write into folder {str(root)!r}")
        notes: list[str] = []
        manifest = open_manifest(notes)
        try:
            return build(manifest, notes)
        finally:
            manifest.close()
    except sqlite3.DatabaseError as exc:
        if damaged(exc):  # found only now, past the check at opening
            raise damage_error(manifest_path(root), exc) from None
        if not isinstance(exc, sqlite3.OperationalError):
            raise
        # e.g. another run holds the manifest
        raise OutputError(f"cannot use the manifest in {str(root)!r} ({exc}); is another run writing "
                          "into this folder?") from None
    finally:
        executor.close()


def _build_atlas(model: LoadedModel, out: str | os.PathLike[str], layers: Sequence[str] | None,
                 filters: Iterable[int | range] | None, recipe: Recipe | str, seed: int,
                 images: str | os.PathLike[str] | None, top_k: int, executor: Executor | None, chunk_size: int,
                 precision: str, threads: int | None, scan_batch_size: int, progress: bool, rebuild: bool,
                 overrides: dict[str, Any]) -> AtlasSummary:
    started = time.monotonic()
    chosen = get_recipe(recipe, **overrides)
    side = render_size(chosen, model.spec.fixed_size)
    chosen = chosen.replace(size=side)
    if chunk_size < 1 or top_k < 1 or scan_batch_size < 1:
        raise FilterVizError("chunk size, top-k and scan batch size must be 1 or more")
    chosen.check_sizes(side)
    names = list(layers) if layers else default_layers(model, side)
    if not names:
        raise FilterVizError(f"{model.name} has no convolution layers to show; name layers with --layers")
    atlas = atlas_layers(model, names, side)
    wanted = {layer.name: _clip(filters, layer.channels) for layer in atlas}
    empty = [layer for layer in atlas if not wanted[layer.name]]
    if empty:
        raise FilterVizError(f"no filters to show in layer {empty[0].name} ({empty[0].channels} channels); "
                             "choose filters that it has")
    autocast_dtype(precision, model.device, model.dtype)  # a precision the device lacks fails here, before any file
    # auto is resolved here, where the atlas is planned: every task (on any Ray worker) runs what this
    # machine chose, and the fingerprints name the precision itself.
    precision = resolve_precision(precision, model.device, model.dtype)
    root = Path(out)
    if images is not None:
        check_example_channels(model.spec.channels)
    files = list_images(images, skip=root) if images is not None else []
    check_images(files)
    _check_memory(model, atlas, wanted, chosen, chunk_size, precision, scan_batch_size if files else 0)
    check_atlas_folder(root)
    if root.is_dir():
        check_tree(root, MANIFEST_FILES)
    executor = executor or default_executor(model.device)
    # Threads per task: given, else the executor's own default (a ProcessExecutor splits the CPUs among
    # its workers), else this process's count.
    threads = threads or getattr(executor, "default_threads", None) or torch.get_num_threads()
    plan = _Plan(model, root, atlas, wanted, RenderSettings(chosen, seed, precision, threads), executor, chunk_size,
                 Path(images) if images is not None else None, files, top_k, scan_batch_size, progress)
    return run_in_folder(root, plan.executor, lambda notes: _open_manifest(manifest_path(root), rebuild, notes),
                         lambda manifest, notes: _build(plan, manifest, started, notes))


def _check_memory(model: LoadedModel, layers: list[AtlasLayer], filters: dict[str, list[int]], recipe: Recipe,
                  chunk_size: int, precision: str, scan_batch: int) -> None:
    """Before anything is written: the largest render task (a chunk of filters, rendered as one batch)
    of the deepest layer shown must fit the memory budget, with everything else a render checks first
    (transforms, spectrum); and so must a batch of the dataset scan (``scan_batch`` images, 0: none),
    which keeps every shown layer's output."""
    order = {info.name: index for index, info in enumerate(model.layers(recipe.size))}
    deepest = max(layers, key=lambda layer: order.get(layer.path, -1))
    count = max(len(chunk) for layer in layers for chunk in _chunks(filters[layer.name], chunk_size))
    check_render(model, [channel(deepest.path, filters[deepest.name][0])] * count, recipe, batch_size=count,
                 precision=precision, batch_option="--chunk-size")
    if not scan_batch:
        return
    side = recipe.size or 0
    budget = memory_budget(model.device, model.max_memory)
    paths = [layer.path for layer in layers]

    def need(size: int) -> int:
        return scan_batch * model.forward_bytes(size, paths)[0]

    total = need(side)
    if total > budget:
        fits = largest(lambda size: need(size) <= budget, side)
        advice = [f"--size {fits} or less"] if fits else []
        where = model.forward_bytes(side, paths)[1]
        raise MemoryBudgetError(
            f"the dataset scan runs {scan_batch} images of {side} px at a time through {model.name}, keeping the "
            f"outputs of {len(paths)} layers, which needs about {readable(total)} at {where}, "
            f"{budget_words(budget, model.max_memory, model.device)}: use "
            f"{', or '.join(advice + [more_memory(total, model.device)])}")


def _clip(filters: Iterable[int | range] | None, channels: int) -> list[int]:
    """The filter indices a layer of ``channels`` has, sorted, each once; ranges are clipped, never
    expanded beyond the layer."""
    if filters is None:
        return list(range(channels))
    chosen: set[int] = set()
    for item in filters:
        if isinstance(item, range):
            chosen.update(range(max(item.start, 0), min(item.stop, channels), item.step))
        elif 0 <= item < channels:
            chosen.add(int(item))
    return sorted(chosen)


def _earlier_files(units: list[tuple[str, int]], images: list[str]) -> list[str]:
    """The pages and image copies that this atlas writes for ``units`` and dataset ``images``: what a
    manifest of an earlier filterviz, which kept no list of its files, is taken to have written."""
    slugs = {name: layer_slug(name) for name, _ in units}
    return ([INDEX, STYLE_SHEET] + [layer_page(slug) for slug in slugs.values()]
            + [filter_page(slugs[name], k) for name, k in units] + [source_image(image) for image in images])


def _open_manifest(path: Path, rebuild: bool, notes: list[str]) -> Manifest:
    """The atlas's manifest; with ``rebuild``, a fresh start: a damaged one is set aside, a sound one
    forgets its results (but not which files it wrote, so that those can still be removed)."""
    if not rebuild or not os.path.lexists(path):
        return Manifest(path, _earlier_files)
    try:
        manifest = Manifest(path, _earlier_files)
    except ManifestError:
        aside = set_aside(path)
        notes.append(f"set the damaged manifest aside as {aside.name} and started afresh")
        return Manifest(path, _earlier_files)
    manifest.forget_results()
    notes.append("started afresh (--rebuild)")
    return manifest


def check_atlas_folder(root: Path) -> None:
    """An atlas goes into a new or empty folder, or an atlas folder: it writes files of its own names
    (index.html, img/...) over whatever is there, so it must never take over a folder of other files."""
    if root.exists() and not root.is_dir():
        raise OutputError(f"cannot write an atlas into {str(root)!r}: it is a file; give a folder")
    try:
        taken = root.is_dir() and not manifest_path(root).is_file() and any(root.iterdir())
    except OSError as exc:  # a folder that cannot be listed
        raise OutputError(f"cannot use folder {str(root)!r} for an atlas: {exc.strerror or exc}") from None
    if taken:
        raise OutputError(f"folder {str(root)!r} is not empty and holds no atlas ({MANIFEST}); give a new or "
                          "empty folder")


def _build(plan: _Plan, manifest: Manifest, started: float, notes: list[str]) -> AtlasSummary:
    fingerprint = model_fingerprint(plan.model)
    rendered = _render_units(plan, manifest, fingerprint)
    note = retried_note(plan.executor.retried)
    if note:
        notes.append(note)
    # What a layer's examples depend on, apart from the images: what a run without images can check.
    settings = {layer.name: _hash(fingerprint, plan.side, plan.top_k, plan.scan_batch_size, layer.path,
                                  plan.filters[layer.name]) for layer in plan.layers}
    if plan.folder is not None:
        scanned = _dataset_examples(plan, manifest, fingerprint, settings)
        with_examples = {layer.name for layer in plan.layers}
    else:
        scanned = 0
        with_examples = _earlier_examples(plan, manifest, settings, notes)
    units_gone, examples_gone = manifest.keep_only(
        {(layer.name, k) for layer in plan.layers for k in plan.filters[layer.name]}, with_examples)
    if units_gone or examples_gone:
        notes.append("removed " + " and ".join(
            f"{count} {what}" for count, what in ((units_gone, "filters"), (examples_gone, "dataset examples"))
            if count) + " that this run no longer shows")
    units = manifest.units()
    # How far each picture can be trusted, now that its examples are known and its picture is on disk.
    trust = measure_trust(plan.model, plan.root, plan.layers, plan.filters, units, with_examples, manifest,
                          fingerprint, plan.side, plan.folder, plan.files, plan.scan_batch_size, notes, plan.progress)
    site_layers = []
    for layer in plan.layers:
        examples: dict[int, list[Example]] = {}
        for example in manifest.examples(layer.name) if layer.name in with_examples else []:
            examples.setdefault(example.filter, []).append(example)
        site_layers.append(SiteLayer(layer, {k: units[layer.name, k] for k in plan.filters[layer.name]}, examples,
                                     trust.layers.get(layer.name)))
    folder, image_count = _examples_source(plan, manifest.example_sources(), with_examples)
    info = SiteInfo(plan.model.name, plan.settings.recipe, plan.settings.seed, plan.side, folder, image_count,
                    plan.top_k)
    manifest.put_site({"model": info.model, "recipe": json.dumps(info.recipe.fields(), sort_keys=True),
                       "seed": str(info.seed), "size": str(info.size)})
    keep = write_site(plan.root, info, site_layers, claim=manifest.claim, links=manifest.links())
    # The files of activation atlases in the same folder are theirs to keep or remove (see ``activations``).
    keep |= {file for file in manifest.files() if file.startswith(activation_files())}
    keep |= {unit.file for layer in site_layers for unit in layer.units.values()}
    for layer in site_layers:
        for examples in layer.examples.values():
            keep |= {e.file for e in examples} | {source_image(e.image) for e in examples}
    _prune(plan.root, manifest, keep)
    all_units = [unit for layer in site_layers for unit in layer.units.values()]
    return AtlasSummary(plan.root, plan.model.name, len(plan.layers), len(all_units), rendered,
                        sum(u.dead for u in all_units), scanned,
                        sum(len(e) for layer in site_layers for e in layer.examples.values()),
                        time.monotonic() - started, sum(u.stuck and not u.dead for u in all_units), tuple(notes),
                        trust.measured, tuple(trust.unnatural))


def _earlier_examples(plan: _Plan, manifest: Manifest, settings: dict[str, str], notes: list[str]) -> set[str]:
    """Without an image folder: the shown layers whose stored examples still match this run (model,
    size, top-k, filters), which are kept; the others' are dropped. Either is told in ``notes``."""
    sources = manifest.example_sources()
    shown = [layer.name for layer in plan.layers if layer.name in sources]
    kept = {name for name in shown if sources[name].settings == settings[name]}
    count = sum(sources[name].examples for name in kept)
    if count:
        folders = ", ".join(sorted({sources[name].folder for name in kept}))
        notes.append(f"kept {count} dataset examples from an earlier run over {folders} "
                     "(run with --images DIR to refresh them)")
    dropped = manifest.forget_examples([name for name in shown if name not in kept])
    if dropped:
        notes.append(f"dropped {dropped} dataset examples of an earlier run because they no longer match the "
                     "model, size, top-k or filters (run with --images DIR to find them again)")
    return kept


def _examples_source(plan: _Plan, sources: dict[str, ExampleSource], layers: set[str]) -> tuple[str | None, int]:
    """The image folder's name and image count, as the pages show them (None: no examples)."""
    if plan.folder is not None:
        return plan.folder.resolve().name, len(plan.files)
    kept = sorted((sources[name].folder, sources[name].images) for name in layers if name in sources)
    return kept[0] if kept else (None, 0)


def _render_units(plan: _Plan, manifest: Manifest, fingerprint: str) -> int:
    """Render what is missing or stale; returns how many filters were rendered."""
    done = manifest.units()
    settings = plan.settings
    tasks: list[RenderTask] = []
    fingerprints: dict[RenderTask, str] = {}
    by_path = {layer.path: layer for layer in plan.layers}
    total = 0
    for layer in plan.layers:
        for chunk in _chunks(plan.filters[layer.name], plan.chunk_size):
            total += len(chunk)
            task = RenderTask(layer.path, chunk)
            # Everything that can change a pixel: the batch it shares, and where and how it runs too.
            fingerprints[task] = render_fingerprint(fingerprint, settings.recipe, settings.seed, settings.precision,
                                                    settings.threads, plan.model.device, layer.path, chunk,
                                                    model_dtype=plan.model.dtype)
            if not all(_is_done(plan.root, done.get((layer.name, k)), fingerprints[task], filter_image(layer.slug, k))
                       for k in chunk):
                tasks.append(task)
    pending = sum(len(task.filters) for task in tasks)
    with tqdm(total=total, initial=total - pending, desc=f"atlas {plan.model.name}", unit="filter", smoothing=0.1,
              disable=None if plan.progress else True) as bar:
        for result in plan.executor.run(plan.model, tasks, settings):
            _store(plan.root, manifest, by_path[result.task.layer], result, fingerprints[result.task])
            bar.update(len(result.task.filters))
    return pending


def retried_note(retried: Sequence[RenderTask]) -> str | None:
    """What the summary says of tasks that had to run again: how many, and which filters."""
    if not retried:
        return None
    shown = ", ".join(f"{task.layer} {task.filters[0]}-{task.filters[-1]}" for task in retried[:4])
    more = f" and {len(retried) - 4} more" if len(retried) > 4 else ""
    return f"ran {len(retried)} task{'s' if len(retried) > 1 else ''} again after their worker or node died ({shown}{more})"


def _store(root: Path, manifest: Manifest, layer: AtlasLayer, result: TaskResult, fingerprint: str) -> None:
    """Forget a task's old rows, claim its files, write its images, then (and only then) record them."""
    manifest.forget_units(layer.name, result.task.filters)
    manifest.claim(filter_image(layer.slug, k) for k in result.task.filters)
    units = []
    stuck = result.stuck or result.dead
    for k, data, start, score, dead, still in zip(result.task.filters, result.pngs, result.start_scores,
                                                  result.scores, result.dead, stuck):
        relative = filter_image(layer.slug, k)
        write_file(root, relative, data)
        units.append(Unit(layer.name, k, fingerprint, relative, len(data), hashlib.sha256(data).hexdigest(),
                          start, score, dead, still))
    manifest.put_units(units)


def _dataset_examples(plan: _Plan, manifest: Manifest, fingerprint: str, settings: dict[str, str]) -> int:
    """Find the top-k dataset examples of every shown filter of the layers whose examples are missing
    or stale, in one pass over the images; returns how many images were scanned."""
    assert plan.folder is not None
    contents = folder_fingerprint(plan.folder, plan.files)
    wanted = {layer.name: _hash(fingerprint, contents, plan.side, plan.top_k, plan.scan_batch_size, layer.path,
                                plan.filters[layer.name]) for layer in plan.layers}
    stored = manifest.example_fingerprints()
    todo = [layer for layer in plan.layers if stored.get(layer.name) != wanted[layer.name]]
    scanned = _scan(plan, manifest, todo, wanted) if todo else 0
    # Recorded for every layer (a manifest of an earlier filterviz lacks it): what a run without images checks.
    manifest.describe_examples({layer.name: (settings[layer.name], plan.folder.resolve().name, len(plan.files))
                                for layer in plan.layers})
    return scanned


def _scan(plan: _Plan, manifest: Manifest, todo: list[AtlasLayer], wanted: dict[str, str]) -> int:
    """Scan the images for the ``todo`` layers' examples (continuing a saved scan) and store them."""
    scan = _hash(sorted(wanted[layer.name] for layer in todo))
    saved = manifest.scan_checkpoint(scan)
    state = (saved[0], unpack(saved[1])) if saved else None
    first = state[0] if state else 0
    last_save = time.monotonic()

    def checkpoint(next_image: int, tops: dict[str, TopK]) -> None:
        nonlocal last_save
        bar.update(next_image - bar.n)
        if next_image == len(plan.files) or time.monotonic() - last_save > CHECKPOINT_SECONDS:
            manifest.put_scan_checkpoint(scan, next_image, pack(tops))
            last_save = time.monotonic()

    with tqdm(total=len(plan.files), initial=first, desc="dataset examples", unit="image",
              disable=None if plan.progress else True) as bar:
        tops = scan_images(plan.model, [layer.path for layer in todo], plan.files, plan.side, plan.top_k,
                           batch_size=plan.scan_batch_size, state=state, on_batch=checkpoint)
    manifest.forget_examples([layer.name for layer in todo])
    examples = _write_examples(plan, manifest, todo, tops)
    manifest.put_examples({layer.name: wanted[layer.name] for layer in todo}, examples, scan)
    return len(plan.files) - first


def _write_examples(plan: _Plan, manifest: Manifest, layers: list[AtlasLayer],
                    tops: dict[str, TopK]) -> list[Example]:
    """Cut each shown filter's example crops, and write a small copy of every image used (each file
    claimed first); returns the examples."""
    assert plan.folder is not None
    side = plan.side
    boxes: dict[int, list[tuple[AtlasLayer, int, int, float, tuple[int, int, int]]]] = {}
    for layer in layers:
        top = tops[layer.path]
        field = max(receptive_field(plan.model, layer.path, side), min(MIN_CROP, side))
        grid = (layer.height, layer.width) if layer.height is not None else None
        for k in plan.filters[layer.name]:
            for rank in range(top.k):
                image = int(top.images[k, rank])
                if image < 0:
                    continue
                box = crop_box(int(top.ys[k, rank]), int(top.xs[k, rank]), grid, field, side)
                boxes.setdefault(image, []).append((layer, k, rank, float(top.values[k, rank]), box))
    names = {image: plan.files[image].relative_to(plan.folder).as_posix() for image in boxes}
    claim = [source_image(name) for name in names.values()]
    claim += [example_crop(layer.slug, k, rank) for uses in boxes.values() for layer, k, rank, *_ in uses]
    manifest.claim(claim)
    examples = []
    for image, uses in sorted(boxes.items()):
        pixels = load_square(plan.files[image], side, plan.model.spec.channels)
        write_file(plan.root, source_image(names[image]), _jpeg(pixels))
        for layer, k, rank, value, (top_px, left, crop) in uses:
            relative = example_crop(layer.slug, k, rank)
            write_file(plan.root, relative, png_bytes(pixels[top_px:top_px + crop, left:left + crop]))
            examples.append(Example(layer.name, k, rank, names[image], value, top_px, left, crop, relative))
    return examples


def _jpeg(pixels: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(stream, format="JPEG", quality=90)
    return stream.getvalue()


def _prune(root: Path, manifest: Manifest, keep: set[str]) -> None:
    """Remove the files the atlas wrote (as its manifest records) and no longer shows (other layers,
    filters or images), then the folders they leave empty, and the temporary files of writes that a
    killed run left, so that the folder holds what a clean run would write. Nothing else is removed:
    not a file the manifest does not record, nor anything reached through a symbolic link (those are
    skipped, never followed; see ``files``)."""
    recorded = manifest.files()
    gone = [relative for relative in sorted(recorded - keep) if remove_file(root, relative)]
    for relative in gone:
        remove_empty_folders(root, relative)
    manifest.release(gone)
    for relative in part_leftovers(root, recorded | keep):
        remove_file(root, relative)


