"""An activation atlas's measurements (Carter et al. 2019, "Activation Atlas"): activation vectors
sampled from a folder of images, laid out in 2-D by UMAP, binned into a grid of cells, each cell's
average vector, and the classes each average most supports.

- Sampling: one streaming pass over the images; from each, the activation vectors of one layer at
  ``per_image`` random positions (drawn from ``(seed, image number)`` alone, so a resumed pass draws what
  an uninterrupted one does), with the image and position each came from.
- Layout: UMAP of the vectors (cosine metric, as Carter's notebooks use), seeded, normalized to the
  unit square as Lucid's ``normalize_layout`` does (1st-99th percentiles, a 10 % margin, clipped).
- Cells: a ``grid`` x ``grid`` binning of the square; a cell's direction is the mean of its vectors.
- Attribution (Carter's): the logit of class c at a cell's average ``v`` is linearized through the rest
  of the network. The layer's whole map is set to ``v`` at every position, the network runs from there
  to its logits, and class c's attribution is the directional derivative of logit c along that map
  (the gradient of logit c with respect to the layer's activation, dotted with ``v`` at every
  position), in one forward-mode pass for all classes. Lucid's own collection takes the same
  derivative at a real image for each sample; a cell's average has no image, so the map of its average
  stands for it. That is only the network's answer where the rest of the network reads nothing but
  this layer: a skip connection around it would also carry the base image. That is checked (two base
  images must give the same logits), and where it fails no class is named.
"""

from __future__ import annotations

import importlib.util
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..device import deterministic
from ..errors import FilterVizError, MissingExtraError, first_line
from ..layers import ModuleGraph, split_call
from ..layouts import NCHW, NHWC, Vector, split_part
from ..models.loaded import LoadedModel
from .examples import load_square

UMAP_NEIGHBORS = 20  # Carter's notebooks: n_neighbors=20, min_dist=0.01, metric="cosine"
UMAP_MIN_DIST = 0.01
MIN_SAMPLES = 10  # fewer vectors than this make no layout worth drawing


def check_umap() -> None:
    """umap-learn is an optional extra: say in one line how to install it, before any work."""
    if importlib.util.find_spec("umap") is None:
        raise MissingExtraError("activation atlases need umap-learn, which is not installed; install it with: "
                                "pip install 'filterviz[umap]'")


def umap_version() -> str:
    """umap-learn's version (a layout depends on it), read without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("umap-learn")
    except PackageNotFoundError:
        return "?"


# -- sampling ----------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Activation vectors of one layer, with where each came from: ``vectors`` (n, C) float32,
    ``images`` (n,) the image's number in the folder's list, ``ys``/``xs`` (n,) its position in the
    layer's ``height`` x ``width`` grid (0, 0 for a layer without positions)."""

    vectors: np.ndarray
    images: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def concatenate(cls, parts: Sequence["Samples"]) -> "Samples":
        return cls(np.concatenate([p.vectors for p in parts]), np.concatenate([p.images for p in parts]),
                   np.concatenate([p.ys for p in parts]), np.concatenate([p.xs for p in parts]),
                   parts[0].height, parts[0].width)

    def take(self, keep: np.ndarray) -> "Samples":
        return Samples(self.vectors[keep], self.images[keep], self.ys[keep], self.xs[keep], self.height, self.width)

    def to_bytes(self) -> bytes:
        stream = io.BytesIO()
        np.savez(stream, vectors=self.vectors, images=self.images, ys=self.ys, xs=self.xs,
                 grid=np.array([self.height, self.width]))
        return stream.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Samples":
        with np.load(io.BytesIO(data)) as saved:
            height, width = (int(v) for v in saved["grid"])
            return cls(saved["vectors"], saved["images"], saved["ys"], saved["xs"], height, width)


def positions(seed: int, image: int, height: int, width: int, count: int) -> np.ndarray:
    """The flat positions (row * width + column) sampled from image number ``image``: ``count`` distinct
    ones (all, if the layer has fewer), drawn from ``(seed, image)`` alone, in increasing order."""
    total = height * width
    if count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng([seed, image, 7]).choice(total, size=count, replace=False))


def sample_activations(
    model: LoadedModel,
    layer: str,
    files: Sequence[Path],
    side: int,
    per_image: int,
    seed: int,
    *,
    batch_size: int = 16,
    state: tuple[int, Samples] | None = None,
    on_batch: Callable[[int, Callable[[], Samples]], None] = lambda next_image, samples: None,
) -> Samples:
    """``per_image`` activation vectors of ``layer`` from each of ``files`` seen at ``side`` px (see
    ``positions``). ``state`` (next image, samples so far) continues an interrupted pass; after every
    batch, ``on_batch(next_image, samples)`` is told, ``samples()`` giving those taken so far (to
    checkpoint them). Batches start at multiples of ``batch_size``, so a continued pass computes
    exactly what an uninterrupted one does."""
    next_image, earlier = state if state is not None else (0, None)
    parts: list[Samples] = [earlier] if earlier is not None else []

    def taken() -> Samples:
        if len(parts) > 1:
            parts[:] = [Samples.concatenate(parts)]
        return parts[0]

    with torch.no_grad(), deterministic(model.device), model.truncated(layer) as run:
        for first in range(next_image, len(files), batch_size):
            chunk = files[first:first + batch_size]
            pixels = np.stack([load_square(path, side, model.spec.channels) for path in chunk])
            batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(model.device, model.dtype)
            activations = run(batch).detach().to("cpu", torch.float32)
            if activations.ndim == 2:  # a layer without positions: one vector per image
                activations = activations[:, :, None, None]
            if activations.ndim != 4:
                raise FilterVizError(f"layer {layer} of {model.name} gives activations of shape "
                                     f"{tuple(activations.shape)}; an activation atlas needs a map (N, C, H, W) "
                                     "or vectors (N, C)")
            _, channels, height, width = activations.shape
            flat = activations.reshape(len(chunk), channels, height * width).numpy()
            for number, image in enumerate(range(first, first + len(chunk))):
                where = positions(seed, image, height, width, per_image)
                parts.append(Samples(flat[number][:, where].T.copy(), np.full(len(where), image, dtype=np.int64),
                                     where // width, where % width, height, width))
            on_batch(first + len(chunk), taken)
    if not parts:
        raise FilterVizError("no images to sample activations from")
    return taken()


# -- layout and cells ----------------------------------------------------------------------------------


def normalize_layout(points: np.ndarray, low: float = 1, high: float = 99, margin: float = 0.1) -> np.ndarray:
    """Points scaled into the unit square, each axis by its ``low``-``high`` percentiles widened by
    ``margin`` of their span, outliers clipped to the border (Lucid's ``normalize_layout``)."""
    points = np.asarray(points, dtype=np.float64)
    lows, highs = np.percentile(points, low, axis=0), np.percentile(points, high, axis=0)
    span = highs - lows
    lows, highs = lows - margin * span, highs + margin * span
    clipped = np.clip(points, lows, highs)
    clipped = clipped - clipped.min(axis=0)
    extent = clipped.max(axis=0)
    # An axis on which every point is the same: all in the middle.
    return np.where(extent > 0, clipped / np.where(extent > 0, extent, 1), 0.5)


def umap_layout(vectors: np.ndarray, seed: int) -> np.ndarray:
    """The vectors laid out in the unit square by UMAP (cosine metric, seeded: the same vectors give the
    same layout on the same machine), normalized by ``normalize_layout``."""
    from ..models.sources import require

    umap = require("umap", "umap", "activation atlases")
    neighbors = min(UMAP_NEIGHBORS, len(vectors) - 1)
    with warnings.catch_warnings():
        # A seed makes UMAP run on one thread, and it says so each time; other library chatter too.
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=neighbors, min_dist=UMAP_MIN_DIST, metric="cosine",
                            random_state=seed, n_jobs=1)
        points = reducer.fit_transform(np.asarray(vectors, dtype=np.float32))
    return normalize_layout(points)


def grid_cells(layout: np.ndarray, grid: int) -> np.ndarray:
    """Each point's cell in a ``grid`` x ``grid`` binning of the unit square: ``row * grid + column``,
    row 0 at the top (the largest y), the right and top edges in the last column and row."""
    column = np.minimum((layout[:, 0] * grid).astype(np.int64), grid - 1)
    row = grid - 1 - np.minimum((layout[:, 1] * grid).astype(np.int64), grid - 1)
    return row * grid + column


@dataclass(frozen=True)
class Cell:
    """One cell of the grid that holds enough samples: its number (``row * grid + column``), the
    indices of its samples, and their mean vector (float64)."""

    number: int
    members: np.ndarray
    mean: np.ndarray

    def position(self, grid: int) -> tuple[int, int]:
        """(row, column)."""
        return divmod(self.number, grid)


def cells_of(vectors: np.ndarray, numbers: np.ndarray, min_samples: int) -> list[Cell]:
    """The cells holding ``min_samples`` samples or more, by number, each with its samples' mean."""
    cells = []
    for number in np.unique(numbers):
        members = np.flatnonzero(numbers == number)
        if len(members) >= min_samples:
            cells.append(Cell(int(number), members, vectors[members].astype(np.float64).mean(axis=0)))
    return cells


def nearest_members(cell: Cell, vectors: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` samples of the cell most like its mean (cosine similarity, ties by sample order)."""
    members = vectors[cell.members].astype(np.float64)
    norms = np.linalg.norm(members, axis=1) * max(np.linalg.norm(cell.mean), 1e-30)
    similarity = members @ cell.mean / np.where(norms > 0, norms, 1)
    order = np.argsort(-similarity, kind="stable")[:count]
    return cell.members[order]


# -- attribution -----------------------------------------------------------------------------------------


class NoAttribution(Exception):
    """Why the classes a cell supports cannot be told for this model and layer (said on the pages)."""


def _replacing(model: LoadedModel, layer: str) -> tuple[torch.nn.Module, int, Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]]:
    """The module whose output is ``layer``, which call of it, and how a channels-first map becomes the
    layer's own output layout."""
    path = model.resolve(layer)
    base, part = split_part(path)
    if part:
        raise NoAttribution(f"layer {layer} is a part of a token layer")
    name, call = split_call(base)
    graph = model.graph
    module = graph.module(name) if isinstance(graph, ModuleGraph) else None
    if module is None:
        raise NoAttribution(f"the rest of {model.name} cannot be run from layer {layer} (it is not a PyTorch module)")
    layout = model.layout(layer)
    if isinstance(layout, NCHW) or isinstance(layout, Vector):
        return module, call, lambda maps, shape: maps.reshape(shape)
    if isinstance(layout, NHWC):
        return module, call, lambda maps, shape: maps.permute(0, 2, 3, 1).reshape(shape)
    raise NoAttribution(f"layer {layer} has a {type(layout).__name__} layout")


def class_attribution(model: LoadedModel, layer: str, vectors: np.ndarray, side: int,
                      batch_size: int = 16) -> np.ndarray:
    """The attribution of each class to each of ``vectors`` (n, C) at ``layer``: (n, classes) float64
    (see the module's docstring). Raises ``NoAttribution`` where no class can be told."""
    categories = model.categories
    if not categories:
        raise NoAttribution(f"{model.name} names no output classes")
    module, call, to_layout = _replacing(model, layer)
    from torch.autograd import forward_ad

    replacement: list[torch.Tensor] = []
    calls = [0]

    def hook(_module: torch.nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
        calls[0] += 1
        if calls[0] != call or not replacement:
            return None
        if not isinstance(output, torch.Tensor):
            raise NoAttribution(f"layer {layer} does not give one tensor")
        return to_layout(replacement[0], tuple(output.shape))

    def logits(pixels: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        calls[0] = 0
        replacement[:] = [maps]
        try:
            output = model.module(model.spec.to_model_input(pixels))
        finally:
            replacement.clear()
        if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[1] != len(categories):
            raise NoAttribution(f"the output of {model.name} is not its {len(categories)} class logits")
        return output

    info = model.layer_info(layer, side)
    height, width = info.height or 1, info.width or 1
    channels = vectors.shape[1]
    results = []
    handle = module.register_forward_hook(hook)
    try:
        with deterministic(model.device), torch.enable_grad():
            for first in range(0, len(vectors), batch_size):
                chunk = torch.as_tensor(vectors[first:first + batch_size], dtype=model.dtype, device=model.device)
                count = len(chunk)
                maps = chunk[:, :, None, None].expand(count, channels, height, width).contiguous()
                if info.height is None:
                    maps = chunk
                gray = torch.full((count, model.spec.channels, side, side), 128.0, dtype=model.dtype,
                                  device=model.device)
                noise = torch.rand((count, model.spec.channels, side, side),
                                   generator=torch.Generator().manual_seed(first), dtype=torch.float64)
                with torch.no_grad():
                    on_gray = logits(gray, maps)
                    on_noise = logits((noise * 255).to(model.device, model.dtype), maps)
                scale = float(on_gray.abs().max()) or 1.0
                if not torch.allclose(on_gray, on_noise, rtol=1e-4, atol=1e-4 * scale):
                    raise NoAttribution(f"the rest of {model.name} does not read layer {layer} alone (a skip "
                                        "connection goes around it), so a direction there does not decide the classes")
                try:
                    with forward_ad.dual_level(), warnings.catch_warnings():
                        # torch's first forward-mode pass scripts its own helpers, with a deprecation
                        # warning about torch.jit.script that concerns torch, not this run.
                        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
                        dual = forward_ad.make_dual(maps, maps)
                        tangent = forward_ad.unpack_dual(logits(gray, dual)).tangent
                except (RuntimeError, NotImplementedError) as exc:
                    raise NoAttribution(f"the rest of {model.name} cannot be differentiated forward from layer "
                                        f"{layer} ({first_line(exc)})") from None
                if tangent is None:
                    raise NoAttribution(f"the classes of {model.name} do not depend on layer {layer}")
                results.append(tangent.detach().to("cpu", torch.float64).numpy())
    finally:
        handle.remove()
    values = np.concatenate(results) if results else np.zeros((0, len(categories)))
    if not np.isfinite(values).all():
        raise NoAttribution("the attribution is not finite")
    return values


def top_classes(attribution: np.ndarray, categories: Sequence[str], count: int = 3) -> list[tuple[str, int, float]]:
    """The ``count`` classes of highest attribution (name, index, value), highest first; ties by index."""
    order = np.argsort(-attribution, kind="stable")[:count]
    return [(categories[int(k)], int(k), float(attribution[k])) for k in order]


def per_image_count(samples: int, images: int, positions_per_image: int) -> int:
    """Samples drawn per image: ``samples`` spread over the images, at most every position of each."""
    return max(1, min(positions_per_image, math.ceil(samples / max(images, 1))))
