"""Is a unit dead? Measured on a probe of natural photos and strong noise, never inferred from a render.

A render whose gradient stayed zero at every step says only that its start image lies in the unit's
flat region. A unit is *dead* when it takes one and the same value on every probe image: eleven
natural photos packaged with filterviz (public-domain and CC0 photos, see
``tools/make_probe_photos.py``), any photos the caller adds, and four images of strong noise (uniform
and Gaussian pixel noise, coarse blotches, and a checkerboard). A unit that varies on any of them
responds to some input, so its picture can be made: it is *stuck*, not dead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .memory import memory_budget
from .models.loaded import LoadedModel
from .objectives import IMAGE, Objective, Rows

PHOTOS_FILE = Path(__file__).parent / "data" / "probe_photos.npz"


@lru_cache(maxsize=1)
def packaged_photos() -> np.ndarray:
    """The packaged probe photos, (11, 128, 128, 3) uint8 RGB."""
    with np.load(PHOTOS_FILE) as data:
        return data["photos"]


def _resized(photo: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(photo).resize((size, size), Image.BILINEAR), dtype=np.float64)


def probe_images(size: int, photos: np.ndarray | None = None) -> np.ndarray:
    """The probe at ``size`` px: the packaged photos, ``photos`` (N, H, W, 3 uint8) if given, and four
    strong-noise images; (M, size, size, 3) float64 RGB pixels in 0..255. Always the same images."""
    rng = np.random.default_rng(0)
    pictures = [_resized(p, size) for p in packaged_photos()]
    pictures += [_resized(np.asarray(p, dtype=np.uint8), size) for p in (photos if photos is not None else ())]
    coarse = np.asarray(Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize(
        (size, size), Image.NEAREST), dtype=np.float64)
    checks = ((np.add.outer(np.arange(size), np.arange(size)) // max(1, size // 8)) % 2 * 255.0)
    pictures += [
        rng.random((size, size, 3)) * 255,  # uniform pixel noise over the whole range
        np.clip(rng.normal(128, 96, (size, size, 3)), 0, 255),  # strong Gaussian noise
        coarse,  # large flat blotches of random colors
        np.repeat(checks[..., None], 3, axis=2),  # black and white edges at every angle a grid has
    ]
    return np.stack(pictures)


def probe_count(photos: np.ndarray | None = None) -> int:
    """How many images ``probe_images`` gives."""
    return len(packaged_photos()) + (0 if photos is None else len(photos)) + 4


def _model_terms(objective: Objective) -> Objective:
    """The part of an objective that reads the model (not the image, not the other images)."""
    return Objective((weight, term) for weight, term in objective.terms
                     if term.layer != IMAGE and not term.batchwise)


def flat_on_probe(model: LoadedModel, objectives: list[Objective], size: int,
                  photos: np.ndarray | None = None, max_memory: int | None = None) -> np.ndarray:
    """For each objective, whether it takes the same value on every probe image (``probe_images``):
    True means dead, a unit that no input tried moves. (N,) bool. Beyond the model's own size the probe
    runs in batches that fit ``max_memory`` (default: the model's, else a share of the free memory)."""
    parts = [_model_terms(objective) for objective in objectives]
    layers = sorted({layer for part in parts for layer in part.layers})
    flat = np.array([not part.terms for part in parts])
    if not layers:
        return flat
    images = probe_images(size, photos)
    count = len(images)
    batch = count
    if size > model.spec.default_size:  # only then can the probe be too large for one batch
        budget = memory_budget(model.device, max_memory if max_memory is not None else model.max_memory)
        batch = int(max(1, min(count, budget // max(model.forward_bytes(size, layers)[0], 1))))
    values: list[list[torch.Tensor]] = [[] for _ in parts]
    with torch.no_grad(), model.capture(layers) as run:
        for first in range(0, count, batch):
            pixels = torch.as_tensor(images[first:first + batch], dtype=model.dtype, device=model.device)
            data = run(pixels.permute(0, 3, 1, 2))
            for index, part in enumerate(parts):
                if part.terms:
                    values[index] += [part.score(data, Rows(slice(row, row + 1), row)) for row in range(len(pixels))]
    for index, part in enumerate(parts):
        if part.terms:
            scores = torch.stack(values[index])
            flat[index] = bool((scores == scores[0]).all())
    return flat
