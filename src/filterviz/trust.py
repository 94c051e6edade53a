"""Can a feature visualization be trusted? Three measures, each against natural images.

- Path similarity (Geirhos et al. 2024, "Don't trust your eyes: on the (un)reliability of feature
  visualizations"): a network can be built so that a unit's picture shows anything while the unit
  behaves the same on natural images, and even in ordinary networks pictures often take another path
  through the network than natural images do. At each of a few layers before the unit's, the
  activations (spatially averaged, one value per channel) of the picture are compared with those of
  the unit's top natural images by Spearman's rank correlation, and set against the same correlation
  between random pairs of natural images. A picture whose path is less like its own top images' than
  two random photos' paths are like each other is flagged as taking an unnatural path.
- Plausibility (MACO, Fel et al. 2023): the cosine similarity of the picture and its top natural
  images in a judge model's feature space (a layer, spatially averaged).
- Fréchet distance: between the pictures of a layer and a folder of natural images, in a model's
  feature space reduced to a few fixed random directions (a Fréchet distance needs more samples than
  dimensions), computed by torchmetrics (the ``metrics`` extra). No Inception weights are assumed:
  the default space is the embedded EfficientNet-Lite0's, so its values are not comparable with a
  published FID.

Images everywhere are arrays of pixels 0..255, (N, H, W, C) or one (H, W, C), in the model's channels
(a gray picture is repeated into RGB for an RGB judge). Nothing here needs the atlas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .device import deterministic
from .errors import FilterVizError
from .layers import split_call
from .layouts import split_part
from .models.loaded import LoadedModel

PATH_LAYERS = 8  # the most earlier layers compared along a path
FRECHET_DIMS = 8  # dimensions of the Fréchet distance's feature space
FRECHET_LAYER = "head.act"  # of the embedded EfficientNet-Lite0: its last features before pooling
Images = "np.ndarray | Sequence[np.ndarray]"


def _batches(images: np.ndarray | Sequence[np.ndarray], channels: int) -> list[np.ndarray]:
    """Images as float64 (N, H, W, channels) batches, one per image size, in order."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    arrays = [np.asarray(image, dtype=np.float64) for image in images]
    if not arrays:
        raise FilterVizError("no images given; give at least one image of pixels 0..255, (H, W, C)")
    out: list[np.ndarray] = []
    for array in arrays:
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise FilterVizError(f"an image of shape {array.shape} is not (H, W, C); give images as (N, H, W, C) "
                                 "arrays of pixels 0..255")
        if array.shape[-1] == 1 and channels == 3:  # a gray picture, as an RGB model sees it
            array = np.repeat(array, 3, axis=-1)
        if array.shape[-1] != channels:
            raise FilterVizError(f"an image of {array.shape[-1]} channels does not fit a model of {channels}; give "
                                 f"images in the model's {channels} channels")
        if out and out[-1].shape[1:] == array.shape:
            out[-1] = np.concatenate([out[-1], array[None]])
        else:
            out.append(array[None])
    return out


@torch.no_grad()
def pooled_activations(model: LoadedModel, layers: Sequence[str], images: np.ndarray | Sequence[np.ndarray], *,
                       batch_size: int = 16) -> dict[str, np.ndarray]:
    """Each layer's activations of each image, averaged over positions: {layer: (N, channels)} float64,
    from one forward pass per batch that stops after the last of ``layers``."""
    names = list(dict.fromkeys(layers))
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with deterministic(model.device), model.capture(names) as run:
        for group in _batches(images, model.spec.channels):
            for first in range(0, len(group), batch_size):
                pixels = torch.from_numpy(group[first:first + batch_size]).permute(0, 3, 1, 2)
                for name, activations in run(pixels.to(model.device, model.dtype)).items():
                    flat = activations.detach().to("cpu", torch.float64)
                    pooled[name].append((flat.flatten(2).mean(2) if flat.ndim > 2 else flat).numpy())
    return {name: np.concatenate(parts) for name, parts in pooled.items()}


def path_layers(model: LoadedModel, layer: str, size: int | None = None, limit: int = PATH_LAYERS) -> list[str]:
    """The earlier layers where the paths to ``layer`` are compared: up to ``limit`` activation layers
    (ReLU and the like, with positions) that finish before it, evenly spread from the first on; for a
    layer with none before it, the convolutions before it; for the first layer of all, itself."""
    size = size or model.spec.default_size
    target = split_part(model.resolve(layer))[0]
    infos = model.layers(size)
    names = [info.name for info in infos]
    if target not in names:
        raise FilterVizError(f"layer {layer} of {model.name} is not in its layer table at {size} px; "
                             "give a layer that `filterviz layers` lists")
    before = [info for info in infos[:names.index(target)]
              if info.height is not None and split_call(info.name)[1] == 1 and info.layout is not None
              and info.layout.known and info.channels]
    chosen = [info.name for info in before if model.is_activation(info.name)]
    chosen = chosen or [info.name for info in before if "conv" in info.kind.lower()]
    if len(chosen) > limit:
        chosen = [chosen[i] for i in sorted({round(float(i)) for i in np.linspace(0, len(chosen) - 1, limit)})]
    return chosen or [layer]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (1 = smallest), ties sharing their mean rank, as Spearman's needs."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1, values.shape[-1])
    ranks = np.empty_like(flat)
    for row, out in zip(flat, ranks):
        order = np.argsort(row, kind="stable")
        _, first, counts = np.unique(row[order], return_index=True, return_counts=True)
        out[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks.reshape(values.shape)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of every row of ``a`` (N, C) with every row of ``b`` (M, C): (N, M).
    A row with all values equal has no ranking, and correlates 0 with anything."""
    def standardized(x: np.ndarray) -> np.ndarray:
        ranks = _ranks(np.atleast_2d(x))
        centered = ranks - ranks.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(centered, axis=1, keepdims=True)
        return np.divide(centered, norms, out=np.zeros_like(centered), where=norms > 0)

    return standardized(a) @ standardized(b).T


def _mean_pairs(similarity: np.ndarray) -> float:
    """The mean of a square similarity matrix over its distinct pairs (nan under two items)."""
    count = similarity.shape[0]
    if count < 2:
        return float("nan")
    return float(similarity[np.triu_indices(count, 1)].mean())


@dataclass(frozen=True)
class PathBaseline:
    """How alike random natural images' paths are: per layer, the mean Spearman correlation of the
    pooled activations of every pair of ``images`` images."""

    layers: tuple[str, ...]
    similarity: tuple[float, ...]
    images: int

    def at(self, layer: str) -> float:
        return self.similarity[self.layers.index(layer)]


def baseline_from_pooled(pooled: dict[str, np.ndarray]) -> PathBaseline:
    """The baseline of images whose pooled activations are given ({layer: (N, C)}, N >= 2)."""
    layers = tuple(pooled)
    count = len(next(iter(pooled.values())))
    if count < 2:
        raise FilterVizError("the path baseline compares pairs of natural images: give at least two")
    return PathBaseline(layers, tuple(_mean_pairs(rank_correlation(pooled[n], pooled[n])) for n in layers), count)


def path_baseline(model: LoadedModel, layers: Sequence[str], images: np.ndarray | Sequence[np.ndarray], *,
                  batch_size: int = 16) -> PathBaseline:
    """The baseline of ``layers`` over ``images`` (random natural images, at least two: every pair is
    compared)."""
    return baseline_from_pooled(pooled_activations(model, layers, images, batch_size=batch_size))


@dataclass(frozen=True)
class PathSimilarity:
    """A picture's path against its top natural images', layer by layer (``layers``, before the unit's).

    ``picture``: the mean Spearman correlation of the picture's pooled activations with each top natural
    image's; ``naturals``: the same among the top natural images themselves (nan under two);
    ``baseline``: among random natural images. ``score`` is the mean over layers of picture minus
    baseline: below 0, the picture's path is less like its own top images' than two random photos'
    paths are like each other (``unnatural``).
    """

    layer: str
    layers: tuple[str, ...]
    picture: tuple[float, ...]
    naturals: tuple[float, ...]
    baseline: tuple[float, ...]

    @property
    def gaps(self) -> tuple[float, ...]:
        return tuple(p - b for p, b in zip(self.picture, self.baseline))

    @property
    def score(self) -> float:
        return float(np.mean(self.gaps))

    @property
    def unnatural(self) -> bool:
        return self.score < 0

    @property
    def worst(self) -> str:
        """The layer where the picture's path is least like its top images' (against the baseline)."""
        return self.layers[int(np.argmin(self.gaps))]


def path_from_pooled(layer: str, picture: dict[str, np.ndarray], naturals: dict[str, np.ndarray],
                     baseline: PathBaseline) -> PathSimilarity:
    """The path similarity of one picture of a unit of ``layer`` from pooled activations: ``picture``
    {path layer: (C,)}, ``naturals`` {path layer: (K, C)} over the same layers, in path order."""
    layers = tuple(picture)
    missing = [name for name in layers if name not in baseline.layers]
    if missing:
        raise FilterVizError(f"the path baseline lacks layers {', '.join(missing)}; compute it over the path's "
                             "layers (path_layers)")
    return PathSimilarity(
        layer, layers,
        tuple(float(rank_correlation(picture[name], naturals[name]).mean()) for name in layers),
        tuple(_mean_pairs(rank_correlation(naturals[name], naturals[name])) for name in layers),
        tuple(baseline.at(name) for name in layers))


def path_similarity(model: LoadedModel, layer: str, picture: np.ndarray, naturals: np.ndarray | Sequence[np.ndarray],
                    baseline: PathBaseline | np.ndarray | Sequence[np.ndarray], *, layers: Sequence[str] | None = None,
                    batch_size: int = 16) -> PathSimilarity:
    """Does ``picture`` (one (H, W, C) image, 0..255) of a unit of ``layer`` take the path through
    ``model`` that the unit's top natural images (``naturals``) take? ``baseline``: random natural
    images (at least two), or a ``PathBaseline`` of them. ``layers`` default to ``path_layers``."""
    picture = np.asarray(picture)
    if picture.ndim != 3:
        raise FilterVizError(f"the picture has shape {picture.shape}; give one image, (H, W, C)")
    path = list(layers) if layers is not None else path_layers(model, layer, picture.shape[0])
    if not isinstance(baseline, PathBaseline):
        baseline = path_baseline(model, path, baseline, batch_size=batch_size)
    seen = pooled_activations(model, path, picture, batch_size=batch_size)
    natural = pooled_activations(model, path, naturals, batch_size=batch_size)
    return path_from_pooled(layer, {name: seen[name][0] for name in path}, natural, baseline)


def feature_layer(model: LoadedModel, size: int | None = None) -> str:
    """A judge's feature layer: its last layer with positions and a known layout (a classifier's
    features before their global pooling)."""
    infos = [info for info in model.layers(size or model.spec.default_size)
             if info.height is not None and info.layout is not None and info.layout.known and info.channels]
    if not infos:
        raise FilterVizError(f"{model.name} has no layer with positions to judge pictures by; give a layer")
    return infos[-1].name


def cosine_similarity(picture: np.ndarray, naturals: np.ndarray) -> float:
    """The mean cosine similarity of one feature vector (C,) with each of ``naturals`` (K, C); a zero
    vector is similar to nothing (0)."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)

    return float((unit(picture) @ unit(naturals).T).mean())


def plausibility(judge: LoadedModel, picture: np.ndarray, naturals: np.ndarray | Sequence[np.ndarray], *,
                 layer: str | None = None, batch_size: int = 16) -> float:
    """MACO's plausibility: the mean cosine similarity of ``picture`` (H, W, C) with each of its top
    natural images in ``judge``'s feature space (``layer``, default ``feature_layer``, averaged over
    positions). 1: the judge sees them alike; lower: the picture lies further from its natural images."""
    picture = np.asarray(picture)
    layer = layer or feature_layer(judge, picture.shape[0])
    seen = pooled_activations(judge, [layer], picture, batch_size=batch_size)[layer]
    natural = pooled_activations(judge, [layer], naturals, batch_size=batch_size)[layer]
    return cosine_similarity(seen[0], natural)


class ProjectedFeatures(nn.Module):
    """A Fréchet distance's feature space: ``layer`` of ``model`` averaged over positions, on ``dims``
    fixed orthonormal random directions (seeded), so that a few dozen samples can estimate its
    covariance. Takes images (N, H, W, C) of pixels 0..255 (any number type); gives (N, dims)."""

    def __init__(self, model: LoadedModel, layer: str = FRECHET_LAYER, dims: int = FRECHET_DIMS, seed: int = 0,
                 size: int | None = None) -> None:
        super().__init__()
        channels = model.layer_info(layer, size or model.spec.default_size).channels
        if not channels:
            raise FilterVizError(f"layer {layer} of {model.name} has no channels to measure")
        dims = min(dims, channels)
        generator = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(channels, dims, generator=generator, dtype=torch.float64))
        self.register_buffer("projection", basis)
        self.num_features = dims  # read by torchmetrics instead of running a dummy image
        self.model, self.layer = model, layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = pooled_activations(self.model, [self.layer], images.detach().cpu().numpy())[self.layer]
        return torch.from_numpy(pooled) @ self.projection.cpu()

    def describe(self) -> str:
        return (f"{self.model.name}'s {self.layer}, averaged over positions, on {self.num_features} fixed random "
                "directions")


def embedded_features(device: str | torch.device = "cpu", dims: int = FRECHET_DIMS) -> ProjectedFeatures:
    """The default Fréchet feature space: the embedded EfficientNet-Lite0's last features (offline; no
    Inception weights are assumed)."""
    from .models.registry import load_model

    return ProjectedFeatures(load_model("efficientnet-lite0", device=device), FRECHET_LAYER, dims)


class FrechetDistance:
    """Fréchet distances of sets of pictures to one set of natural ``images``, whose features are computed
    once: ``FrechetDistance(images, features)(pictures)``. The distance between Gaussians fitted to the
    two sets' features, |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), is torchmetrics'
    FrechetInceptionDistance with ``features`` as its feature module (default ``embedded_features()``;
    any module with an int ``num_features`` that maps a batch of the inputs to (N, num_features)). Each
    set needs more samples than the space has dimensions. Needs the ``metrics`` extra."""

    def __init__(self, images: np.ndarray | Sequence[np.ndarray], features: nn.Module | None = None, *,
                 batch_size: int = 32) -> None:
        from .models.sources import require

        fid = require("torchmetrics.image.fid", "metrics", "Fréchet distances")
        features = features if features is not None else embedded_features()
        self.dims = int(getattr(features, "num_features", 0))
        if self.dims < 1:
            raise FilterVizError("a Fréchet feature module needs an int num_features, the size of what it gives")
        self.images = len(images)
        self._check(self.images, "images")
        self.batch_size = batch_size
        # The natural images' statistics stay across reset(): only the pictures' are computed per call.
        self.metric = fid.FrechetInceptionDistance(feature=features, normalize=False, reset_real_features=False)
        self.metric.set_dtype(torch.float64)
        self._update(images, real=True)

    def _check(self, count: int, what: str) -> None:
        if count <= self.dims:
            raise FilterVizError(f"a Fréchet distance in {self.dims} dimensions needs more than {self.dims} {what}; "
                                 f"got {count}: give more, or fewer dimensions")

    def _update(self, data: np.ndarray | Sequence[np.ndarray], real: bool) -> None:
        for first in range(0, len(data), self.batch_size):
            chunk = np.stack([np.asarray(x) for x in data[first:first + self.batch_size]])
            self.metric.update(torch.as_tensor(chunk), real=real)

    def __call__(self, pictures: np.ndarray | Sequence[np.ndarray]) -> float:
        self._check(len(pictures), "pictures")
        self.metric.reset()
        self._update(pictures, real=False)
        return float(self.metric.compute())


def frechet_distance(pictures: np.ndarray | Sequence[np.ndarray], images: np.ndarray | Sequence[np.ndarray],
                     features: nn.Module | None = None, *, batch_size: int = 32) -> float:
    """The Fréchet distance of ``pictures`` to natural ``images`` in ``features``' space (see
    ``FrechetDistance``; default: the embedded EfficientNet-Lite0's last features on 8 fixed random
    directions). Each set needs more samples than the space has dimensions; needs the ``metrics`` extra."""
    return FrechetDistance(images, features, batch_size=batch_size)(pictures)
