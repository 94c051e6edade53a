"""Is a unit dead? Measured on a probe of natural photos and strong noise, never inferred from a render.

A render whose gradient stayed zero at every step says only that its start image lies in the unit's
flat region. A unit is *dead* when it takes one and the same value on every probe image: eleven
natural photos packaged with filterviz (public-domain and CC0 photos, see
``tools/make_probe_photos.py``), any photos the caller adds, and four images of strong noise (uniform
and Gaussian pixel noise, coarse blotches, and a checkerboard). A unit that varies on any of them
responds to some input, so its picture can be made: it is *stuck*, not dead. A term that compares the
image with its start photo (a caricature) compares each probe image with the first probe photo.

A model of other channels than RGB gets the same probe in its own channels: for fewer than 3 (a gray
model), each photo as gray (ITU-R 601 luma, as Pillow converts) in every channel; for more than 3
(RGB + near-infrared, multispectral), the photo's RGB in the first three and its gray in every other
channel. The noise images are drawn in every channel independently, so each channel, and each
difference between channels, still meets strong variation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .memory import memory_budget
from .models.loaded import LoadedModel
from .objectives import IMAGE, Objective, Rows, start_layer

PHOTOS_FILE = Path(__file__).parent / "data" / "probe_photos.npz"


@lru_cache(maxsize=1)
def packaged_photos() -> np.ndarray:
    """The packaged probe photos, (11, 128, 128, 3) uint8 RGB."""
    with np.load(PHOTOS_FILE) as data:
        return data["photos"]


def _resized(photo: np.ndarray, size: int, method: int = Image.BILINEAR) -> np.ndarray:
    if photo.ndim == 3 and photo.shape[2] != 3:  # Pillow resizes RGB or gray: other counts channel by channel
        return np.stack([_resized(photo[..., c], size, method) for c in range(photo.shape[2])], axis=2)
    return np.asarray(Image.fromarray(photo).resize((size, size), method), dtype=np.float64)


def photo_channels(photo: np.ndarray, channels: int) -> np.ndarray:
    """An RGB photo (H, W, 3) uint8 for a model of ``channels`` channels: as it is for 3; its gray (ITU-R
    601 luma) in every channel for fewer; its RGB, then its gray in every further channel, for more."""
    if channels == 3:
        return photo
    gray = np.asarray(Image.fromarray(photo).convert("L"))[..., None]
    if channels < 3:
        return np.repeat(gray, channels, axis=2)
    return np.concatenate([photo, np.repeat(gray, channels - 3, axis=2)], axis=2)


def probe_images(size: int, photos: np.ndarray | None = None, channels: int = 3) -> np.ndarray:
    """The probe at ``size`` px: the packaged photos, ``photos`` (N, H, W, 3 uint8) if given, and four
    strong-noise images; (M, size, size, C) float64 pixels in 0..255, RGB for 3 ``channels`` (for
    others, see the module's docstring). Always the same images."""
    rng = np.random.default_rng(0)
    given = [np.asarray(p, dtype=np.uint8) for p in (photos if photos is not None else ())]
    pictures = [_resized(photo_channels(p, channels), size) for p in [*packaged_photos(), *given]]
    blotches = (rng.random((4, 4, channels)) * 255).astype(np.uint8)
    coarse = _resized(blotches[..., 0] if channels == 1 else blotches, size, Image.NEAREST)
    coarse = coarse[..., None] if channels == 1 else coarse
    checks = ((np.add.outer(np.arange(size), np.arange(size)) // max(1, size // 8)) % 2 * 255.0)
    pictures += [
        rng.random((size, size, channels)) * 255,  # uniform pixel noise over the whole range
        np.clip(rng.normal(128, 96, (size, size, channels)), 0, 255),  # strong Gaussian noise
        coarse,  # large flat blotches of random colors
        np.repeat(checks[..., None], channels, axis=2),  # black and white edges at every angle a grid has
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
    images = probe_images(size, photos, model.spec.channels)
    count = len(images)
    batch = count
    if size > model.spec.default_size:  # only then can the probe be too large for one batch
        budget = memory_budget(model.device, max_memory if max_memory is not None else model.max_memory)
        batch = int(max(1, min(count, budget // max(model.forward_bytes(size, layers)[0], 1))))
    values: list[list[torch.Tensor]] = [[] for _ in parts]
    compared = sorted({layer for part in parts for layer in part.start_layers})
    reference: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.capture(layers) as run:
        for first in range(0, count, batch):
            pixels = torch.as_tensor(images[first:first + batch], dtype=model.dtype, device=model.device)
            data = run(pixels.permute(0, 3, 1, 2))
            if first == 0:
                reference = {start_layer(layer): data[layer][:1] for layer in compared}
            # a term that compares with the start compares each probe image with the first probe photo
            data.update({name: value.expand(len(pixels), *value.shape[1:]) for name, value in reference.items()})
            for index, part in enumerate(parts):
                if part.terms:
                    values[index] += [part.score(data, Rows(slice(row, row + 1), row)) for row in range(len(pixels))]
    for index, part in enumerate(parts):
        if part.terms:
            scores = torch.stack(values[index])
            flat[index] = bool((scores == scores[0]).all())
    return flat
