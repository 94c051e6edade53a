"""Building an activation atlas (Carter et al. 2019) of one layer: sample its activation vectors from a
folder of images, lay them out with UMAP, bin them into a grid, render each cell's average as a
direction, name the classes it supports, and write the pages; resumable, as an atlas is.

An activation atlas lives in an atlas folder (``--out``), beside an atlas or alone, and shares its
manifest: each step's result is recorded there only once complete (the dataset pass, checkpointed as it
goes; the layout; each rendered chunk of cells, only after its files are written), so a run killed at
any moment and started again does only what is missing and ends with the same bytes. Its files are
all under ``activations/``; an atlas's index in the same folder links to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..device import DEFAULT_PRECISION, autocast_dtype, resolve_precision
from ..errors import FilterVizError, MemoryBudgetError
from ..image import png_bytes
from ..memory import budget_words, memory_budget, more_memory, readable
from ..models.loaded import LoadedModel
from ..objectives import direction
from ..plan import check_render
from ..recipes import Recipe, get_recipe, render_size
from .activation_site import ActivationSiteInfo, Patch, SiteCell, write_activation_site
from .activations import (MIN_SAMPLES, NoAttribution, Samples, cells_of, check_umap, class_attribution, grid_cells,
                          nearest_members, per_image_count, sample_activations, top_classes, umap_layout,
                          umap_version)
from .build import (CHECKPOINT_SECONDS, MIN_CROP, check_atlas_folder, memory_kept_to, model_fingerprint,
                    retried_note, run_in_folder)
from .examples import (check_example_channels, check_images, crop_box, folder_fingerprint, list_images, load_square,
                       receptive_field)
from .executors import Executor, RenderSettings, RenderTask, TaskResult, default_executor
from .files import (INDEX, MANIFEST_FILES, activation_files, activation_page, cell_image, cell_patch, check_tree,
                    manifest_path, part_leftovers, read_regular, regular_size, remove_empty_folders, remove_file,
                    write_file)
from .manifest import Manifest, ManifestError, Unit, set_aside
from .selection import layer_slug
from .site import add_links

MAX_GRID = 100  # cells a side: 10,000 cells is more than a page can show
PATCH_SIDE = 112  # px: a dataset patch's largest side, as the cell pages show it
# The side of a cell's picture unless said (``size=``): small, as Carter's icons (80-96 px), so that a
# few hundred cells render in minutes on a CPU; a direction's mean over positions reads the same at
# any size.
DEFAULT_SIZE = 96


@dataclass(frozen=True)
class ActivationAtlasSummary:
    """What ``build_activation_atlas`` did."""

    out: Path
    page: Path  # the activation atlas's page
    model: str
    layer: str
    images: int
    samples: int
    cells: int
    rendered: int  # cells rendered in this run; the rest were already done
    scanned: int  # images of the dataset pass gone through in this run (0: its samples were stored)
    labelled: bool  # whether cells name the classes they support
    seconds: float
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        minutes, seconds = divmod(round(self.seconds), 60)
        return (f"activation atlas of {self.layer} of {self.model}: {self.samples} samples from {self.images} images "
                f"({self.scanned} scanned now), "
                f"{self.cells} cells ({self.rendered} rendered now, {self.cells - self.rendered} already done)"
                + ("" if self.labelled else ", no class labels") + "; "
                + "".join(f"{note}; " for note in self.notes) + f"{minutes}m{seconds:02d}s; open {self.page}")


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class _Plan:
    """One activation atlas run, checked."""

    model: LoadedModel
    root: Path
    layer: str  # as given (the name it is shown and recorded by)
    path: str  # the layer's module path
    slug: str
    channels: int
    folder: Path
    files: list[Path]
    per_image: int
    scan_size: int
    scan_batch_size: int
    grid: int
    min_samples: int
    patches: int
    settings: RenderSettings
    executor: Executor
    chunk_size: int
    progress: bool


def build_activation_atlas(
    model: LoadedModel,
    out: str | os.PathLike[str],
    layer: str,
    *,
    images: str | os.PathLike[str],
    grid: int = 20,
    samples: int = 100_000,
    min_samples: int = 3,
    patches: int = 8,
    recipe: Recipe | str = "lucid",
    seed: int = 0,
    size: int | None = DEFAULT_SIZE,
    scan_size: int | None = None,
    executor: Executor | None = None,
    chunk_size: int = 16,
    precision: str = DEFAULT_PRECISION,
    threads: int | None = None,
    scan_batch_size: int = 16,
    progress: bool = False,
    rebuild: bool = False,
    max_memory: int | None = None,
    **overrides: Any,
) -> ActivationAtlasSummary:
    """An activation atlas of ``layer`` from the images of ``images``, written into the atlas folder ``out``.

    One pass over the images samples up to ``samples`` activation vectors of the layer (spread over
    the images, at random positions drawn from ``seed``; at most every position of each image), seen
    at ``scan_size`` px (default: the model's own size). UMAP lays them out in 2-D; a ``grid`` x
    ``grid`` binning keeps the cells of ``min_samples`` samples or more, whose average vectors are
    rendered as ``direction`` objectives with ``recipe`` at ``size`` px (None: the recipe's;
    ``overrides`` change its other fields: ``steps=...``), ``chunk_size`` cells a task on ``executor``
    (as ``build_atlas`` renders filters).
    Where the model names its classes, each cell names the classes its average most supports; each
    cell's page shows its ``patches`` dataset patches most like its average.

    ``out`` is a new or empty folder, or an atlas folder (whose index then links to the activation
    atlas). Running again continues an interrupted run; a changed argument redoes only what it changes.
    ``rebuild=True`` starts this layer's activation atlas afresh (and sets a damaged manifest aside).
    Bad arguments fail before anything is written.
    """
    with memory_kept_to(model, max_memory):
        return _build_activation_atlas(model, out, layer, images, grid, samples, min_samples, patches, recipe, seed,
                                       scan_size, executor, chunk_size, precision, threads, scan_batch_size,
                                       progress, rebuild, {**overrides, "size": size})


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise FilterVizError(f"{what} must be a whole number of 1 or more, not {value!r}")
    return int(value)


def _build_activation_atlas(model: LoadedModel, out: str | os.PathLike[str], layer: str,
                            images: str | os.PathLike[str], grid: int, samples: int, min_samples: int, patches: int,
                            recipe: Recipe | str, seed: int, scan_size: int | None, executor: Executor | None,
                            chunk_size: int, precision: str, threads: int | None, scan_batch_size: int,
                            progress: bool, rebuild: bool, overrides: dict[str, Any]) -> ActivationAtlasSummary:
    started = time.monotonic()
    for value, what in ((samples, "--samples"), (min_samples, "--min-samples"), (patches, "--patches"),
                        (chunk_size, "--chunk-size"), (scan_batch_size, "the scan batch size")):
        _positive(value, what)
    if not 1 <= _positive(grid, "--grid") <= MAX_GRID:
        raise FilterVizError(f"--grid {grid} is too large: at most {MAX_GRID} cells a side")
    check_umap()
    chosen = get_recipe(recipe, **overrides)
    side = render_size(chosen, model.spec.fixed_size)
    chosen = chosen.replace(size=side)
    chosen.check_sizes(side)
    scan_side = model.spec.fixed_size[0] if model.spec.fixed_size else (scan_size or model.spec.default_size)
    info = model.layer_info(layer, scan_side)
    if info.channels is None:
        raise FilterVizError(f"layer {layer} of {model.name} has no channels to sample")
    check_example_channels(model.spec.channels)
    root = Path(out)
    files = list_images(images, skip=root)
    check_images(files)
    positions_per_image = (info.height or 1) * (info.width or 1)
    per_image = per_image_count(samples, len(files), positions_per_image)
    if per_image * len(files) < MIN_SAMPLES:
        raise FilterVizError(f"{len(files)} images give only {per_image * len(files)} samples of {layer} "
                             f"({positions_per_image} positions each); an activation atlas needs {MIN_SAMPLES} or "
                             "more: add images, or choose a layer with more positions")
    autocast_dtype(precision, model.device, model.dtype)
    precision = resolve_precision(precision, model.device, model.dtype)
    # A chunk of cells is rendered as one batch; it must fit, as must a batch of the dataset pass.
    check_render(model, [direction(info.name, [1.0] * info.channels)] * chunk_size, chosen, batch_size=chunk_size,
                 precision=precision, batch_option="--chunk-size")
    _check_scan_memory(model, info.name, scan_side, scan_batch_size)
    check_atlas_folder(root)
    if root.is_dir():
        check_tree(root, MANIFEST_FILES)
    executor = executor or default_executor(model.device)
    threads = threads or getattr(executor, "default_threads", None) or torch.get_num_threads()
    plan = _Plan(model, root, layer, info.name, layer_slug(layer), info.channels, Path(images), files, per_image,
                 scan_side, scan_batch_size, grid, min_samples, patches,
                 RenderSettings(chosen, seed, precision, threads), executor, chunk_size, progress)
    return run_in_folder(root, plan.executor,
                         lambda notes: _open_manifest(manifest_path(root), layer, rebuild, notes),
                         lambda manifest, notes: _build(plan, manifest, started, notes))


def _check_scan_memory(model: LoadedModel, path: str, side: int, batch: int) -> None:
    budget = memory_budget(model.device, model.max_memory)
    need = batch * model.forward_bytes(side, [path])[0]
    if need > budget:
        raise MemoryBudgetError(f"a batch of {batch} images at {side} px up to {path} needs about {readable(need)}, "
                                f"{budget_words(budget, model.max_memory, model.device)}: use a smaller scan size, "
                                f"or {more_memory(need, model.device)}")


def _open_manifest(path: Path, layer: str, rebuild: bool, notes: list[str]) -> Manifest:
    """The folder's manifest; with ``rebuild``, this layer's activation atlas starts afresh (a damaged
    manifest is set aside first)."""
    if not rebuild or not os.path.lexists(path):
        return Manifest(path)
    try:
        manifest = Manifest(path)
    except ManifestError:
        aside = set_aside(path)
        notes.append(f"set the damaged manifest aside as {aside.name} and started afresh")
        return Manifest(path)
    manifest.forget_activations(layer)
    notes.append("started afresh (--rebuild)")
    return manifest


def _build(plan: _Plan, manifest: Manifest, started: float, notes: list[str]) -> ActivationAtlasSummary:
    fingerprint = model_fingerprint(plan.model)
    samples, samples_key, scanned = _samples(plan, manifest, fingerprint)
    nonzero = np.flatnonzero(np.abs(samples.vectors).sum(axis=1) > 0)
    if len(nonzero) < len(samples):
        notes.append(f"left out {len(samples) - len(nonzero)} all-zero samples (they point nowhere)")
    samples = samples.take(nonzero)
    if len(samples) < MIN_SAMPLES:
        raise FilterVizError(f"only {len(samples)} of the samples of {plan.layer} are not all zero; an activation "
                             f"atlas needs {MIN_SAMPLES} or more: add images, or choose another layer")
    layout = _layout(plan, manifest, samples, samples_key)
    cells = cells_of(samples.vectors, grid_cells(layout, plan.grid), plan.min_samples)
    if not cells:
        raise FilterVizError(f"no cell of the {plan.grid}x{plan.grid} grid holds {plan.min_samples} samples or more "
                             f"(of {len(samples)}); use a smaller --grid or --min-samples, or more images")
    means = np.stack([cell.mean for cell in cells])
    try:
        attribution: np.ndarray | None = class_attribution(plan.model, plan.path, means, plan.scan_size)
        no_labels = ""
    except NoAttribution as exc:
        attribution, no_labels = None, str(exc)
    rendered = _render_cells(plan, manifest, fingerprint, cells, means)
    note = retried_note(plan.executor.retried)
    if note:
        notes.append(note)
    manifest.forget_cells(plan.layer, [cell.number for cell in cells], keep=True)
    rows = manifest.cells(plan.layer)
    patches, patch_files = _patches(plan, manifest, samples, cells)
    atlas = INDEX in manifest.files() and regular_size(plan.root, INDEX) is not None
    names = [file.relative_to(plan.folder).as_posix() for file in plan.files]
    site_cells = []
    for number, cell in enumerate(cells):
        row, column = cell.position(plan.grid)
        unit = rows[cell.number]
        sources = Counter(names[int(image)] for image in samples.images[cell.members])
        classes = (tuple(top_classes(attribution[number], plan.model.categories or ()))
                   if attribution is not None else ())
        site_cells.append(SiteCell(cell.number, row, column, len(cell.members), unit.start_score, unit.score,
                                   unit.stuck, classes, tuple(patches[cell.number]),
                                   tuple(sorted(sources.items(), key=lambda item: (-item[1], item[0])))))
    recipe = plan.settings.recipe
    info = ActivationSiteInfo(plan.model.name, plan.layer, plan.slug, plan.folder.resolve().name, len(plan.files),
                              len(samples), plan.per_image, plan.scan_size, plan.grid, plan.min_samples, recipe.name,
                              tuple((name, repr(value)) for name, value in recipe.fields().items()), recipe.size or 0,
                              plan.settings.seed, no_labels, atlas)
    keep = write_activation_site(plan.root, info, site_cells, claim=manifest.claim)
    keep |= patch_files | {unit.file for unit in rows.values()}
    manifest.put_link(activation_page(plan.slug), f"{plan.layer} ({len(cells)} cells)")
    if atlas:
        add_links(plan.root, manifest.links())
    _prune(plan, manifest, keep)
    return ActivationAtlasSummary(plan.root, plan.root / activation_page(plan.slug), plan.model.name, plan.layer,
                                  len(plan.files), len(samples), len(cells), rendered, scanned,
                                  attribution is not None, time.monotonic() - started, tuple(notes))


def _samples(plan: _Plan, manifest: Manifest, fingerprint: str) -> tuple[Samples, str, int]:
    """The dataset pass's samples: stored, else taken (continuing a checkpointed pass); their key, and
    how many images were gone through now."""
    contents = folder_fingerprint(plan.folder, plan.files)
    key = _hash(fingerprint, contents, plan.path, plan.scan_size, plan.per_image, plan.settings.seed,
                plan.scan_batch_size)
    stored = manifest.activation_data(plan.layer, "samples", key)
    if stored is not None:
        return Samples.from_bytes(stored), key, 0
    saved = manifest.activation_data(plan.layer, "scan", key)
    state = None
    if saved is not None:
        next_image = int.from_bytes(saved[:8], "little")
        state = (next_image, Samples.from_bytes(saved[8:]))
    first = state[0] if state else 0
    last_save = time.monotonic()

    def checkpoint(next_image: int, taken: Callable[[], Samples]) -> None:
        nonlocal last_save
        bar.update(next_image - bar.n)
        if next_image < len(plan.files) and time.monotonic() - last_save > CHECKPOINT_SECONDS:
            manifest.put_activation_data(plan.layer, "scan", key,
                                         next_image.to_bytes(8, "little") + taken().to_bytes())
            last_save = time.monotonic()

    with tqdm(total=len(plan.files), initial=first, desc=f"activations of {plan.layer}", unit="image",
              disable=None if plan.progress else True) as bar:
        samples = sample_activations(plan.model, plan.path, plan.files, plan.scan_size, plan.per_image,
                                     plan.settings.seed, batch_size=plan.scan_batch_size, state=state,
                                     on_batch=checkpoint)
    manifest.put_activation_data(plan.layer, "samples", key, samples.to_bytes(), drop=("scan",))
    return samples, key, len(plan.files) - first


def _layout(plan: _Plan, manifest: Manifest, samples: Samples, samples_key: str) -> np.ndarray:
    """The samples' UMAP layout in the unit square: stored, else computed and stored (a fit takes a while)."""
    key = _hash(samples_key, len(samples), plan.settings.seed, umap_version())
    stored = manifest.activation_data(plan.layer, "layout", key)
    if stored is not None:
        return np.frombuffer(stored, dtype=np.float64).reshape(-1, 2)
    if plan.progress:
        tqdm.write(f"filterviz: laying out {len(samples)} samples with UMAP")
    layout = umap_layout(samples.vectors, plan.settings.seed)
    manifest.put_activation_data(plan.layer, "layout", key, np.ascontiguousarray(layout, dtype=np.float64).tobytes())
    return layout


def _render_cells(plan: _Plan, manifest: Manifest, fingerprint: str, cells: Sequence[Any],
                  means: np.ndarray) -> int:
    """Render the cells whose pictures are missing or stale, ``chunk_size`` to a task; returns how many."""
    done = manifest.cells(plan.layer)
    settings = plan.settings
    recipe = settings.recipe.fields()
    recipe.pop("name")
    dtype = autocast_dtype(settings.precision, plan.model.device, plan.model.dtype)
    tasks: list[RenderTask] = []
    fingerprints: dict[RenderTask, str] = {}
    for first in range(0, len(cells), plan.chunk_size):
        chunk = cells[first:first + plan.chunk_size]
        vectors = tuple(tuple(float(v) for v in means[first + i]) for i in range(len(chunk)))
        task = RenderTask(plan.path, tuple(cell.number for cell in chunk), vectors)
        # Everything that can change a pixel: the directions, the batch they share, where and how it runs.
        fingerprints[task] = _hash(fingerprint, recipe, settings.seed, settings.precision, settings.threads,
                                   str(dtype), plan.model.device.type, plan.path, task.filters,
                                   hashlib.sha256(np.asarray(vectors, dtype=np.float64).tobytes()).hexdigest())
        if not all(_is_done(plan.root, done.get(number), fingerprints[task], cell_image(plan.slug, number))
                   for number in task.filters):
            tasks.append(task)
    pending = sum(len(task.filters) for task in tasks)
    with tqdm(total=len(cells), initial=len(cells) - pending, desc=f"activation atlas {plan.layer}", unit="cell",
              smoothing=0.1, disable=None if plan.progress else True) as bar:
        for result in plan.executor.run(plan.model, tasks, settings):
            _store(plan, manifest, result, fingerprints[result.task])
            bar.update(len(result.task.filters))
    return pending


def _is_done(root: Path, unit: Unit | None, fingerprint: str, file: str) -> bool:
    if unit is None or unit.fingerprint != fingerprint or unit.file != file:
        return False
    return regular_size(root, unit.file) == unit.bytes


def _store(plan: _Plan, manifest: Manifest, result: TaskResult, fingerprint: str) -> None:
    """Forget a task's old rows, claim its files, write its pictures, then (and only then) record them."""
    numbers = result.task.filters
    manifest.forget_cells(plan.layer, numbers)
    manifest.claim(cell_image(plan.slug, number) for number in numbers)
    rows = []
    stuck = result.stuck or (False,) * len(numbers)
    for number, data, start, score, still in zip(numbers, result.pngs, result.start_scores, result.scores, stuck):
        relative = cell_image(plan.slug, number)
        write_file(plan.root, relative, data)
        rows.append(Unit(plan.layer, number, fingerprint, relative, len(data), hashlib.sha256(data).hexdigest(),
                         start, score, False, still))
    manifest.put_cells(rows)


def _patches(plan: _Plan, manifest: Manifest, samples: Samples,
             cells: Sequence[Any]) -> tuple[dict[int, list[Patch]], set[str]]:
    """Each cell's dataset patches (its samples most like its average): the region of the image that
    the sample's position sees, at most ``PATCH_SIDE`` px, one file per image and region (claimed
    first; a file already holding the same bytes is left as it is)."""
    side = plan.scan_size
    field = max(receptive_field(plan.model, plan.path, side), min(MIN_CROP, side))
    grid = (samples.height, samples.width) if samples.height * samples.width > 1 else None
    names = [file.relative_to(plan.folder).as_posix() for file in plan.files]
    patches: dict[int, list[Patch]] = {}
    wanted: dict[str, tuple[int, tuple[int, int, int]]] = {}  # file: (image, box)
    for cell in cells:
        unit = cell.mean / max(np.linalg.norm(cell.mean), 1e-30)
        for index in nearest_members(cell, samples.vectors, plan.patches):
            image, y, x = int(samples.images[index]), int(samples.ys[index]), int(samples.xs[index])
            box = crop_box(y, x, grid, field, side)
            wanted[cell_patch(plan.slug, names[image], box)] = (image, box)
            vector = samples.vectors[index].astype(np.float64)
            similarity = float(vector @ unit / max(np.linalg.norm(vector), 1e-30))
            patches.setdefault(cell.number, []).append(
                Patch(cell_patch(plan.slug, names[image], box), names[image], y, x, box, similarity))
    manifest.claim(sorted(wanted))
    loaded: tuple[int, np.ndarray] | None = None  # one image at a time, each loaded once
    for relative, (image, (top, left, crop)) in sorted(wanted.items(), key=lambda item: (item[1][0], item[0])):
        if loaded is None or loaded[0] != image:
            loaded = (image, load_square(plan.files[image], side, plan.model.spec.channels))
        pixels = loaded[1][top:top + crop, left:left + crop]
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        if crop > PATCH_SIDE:  # shown at 112 px: more pixels would only weigh
            picture = picture.resize((PATCH_SIDE, PATCH_SIDE), Image.Resampling.BICUBIC)
        data = png_bytes(np.asarray(picture))
        if read_regular(plan.root, relative) != data:
            write_file(plan.root, relative, data)
    return patches, set(wanted)


def _prune(plan: _Plan, manifest: Manifest, keep: set[str]) -> None:
    """Remove the files this layer's activation atlas wrote (as the manifest records) and no longer
    shows, the folders they leave empty, and temporary files of killed writes; nothing else."""
    prefix = activation_files(plan.slug)
    recorded = manifest.files()
    mine = {file for file in recorded if file.startswith(prefix)}
    gone = [relative for relative in sorted(mine - keep) if remove_file(plan.root, relative)]
    for relative in gone:
        remove_empty_folders(plan.root, relative)
    manifest.release(gone)
    for relative in part_leftovers(plan.root, recorded | keep):
        remove_file(plan.root, relative)
