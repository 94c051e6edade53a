"""Start images: a render that begins from a photo instead of noise (feature accentuation, caricatures).

A render's ``start`` is a photo file, one image for every objective (H, W, C), or one image per
objective (N, H, W, C), in pixel units (0..255) of the model's channels. A photo file is read safely
(``imagefiles``: headers first, 16-bit and float images on their range), cut to a square at the
render's size (its short side scaled to the size, then its middle, as ``imagefiles.square_image``)
and given in the model's channels: RGB as it is, gray (ITU-R 601 luma, as Pillow converts) for a gray
model. A photo holds no true values of other bands, so a model of another channel count takes start
arrays only. Objectives that compare the image with its start (``caricature:LAYER``, ``close:LAYER``)
need one. Every bad input is a one-line error before any work.

Imports no torch: the command line checks a start photo before it loads a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import FilterVizError, InputFileError
from .imagefiles import check_image, open_image, square_image

PHOTO_ADVICE = "give a readable .jpg or .png photo"


def _is_file(start: object) -> bool:
    return isinstance(start, (str, os.PathLike))


def check_photo_channels(channels: int) -> None:
    """A photo is RGB, or gray for a gray model; other counts are refused in one line."""
    if channels not in (1, 3):
        raise FilterVizError(f"a start photo holds RGB (or gray) values, and the model takes {channels} channels, "
                             f"which a photo does not hold; in Python, give start= an array (H, W, {channels}) of "
                             "the model's own bands")


def check_photo(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of the start photo at ``path``, from its header alone: a missing file, a folder,
    no image, a damaged header or a decompression bomb is a one-line error naming it."""
    name = str(path)
    if not Path(path).exists():
        raise InputFileError(f"start photo {name!r} does not exist; {PHOTO_ADVICE}")
    if Path(path).is_dir():
        raise InputFileError(f"start photo {name!r} is a folder; {PHOTO_ADVICE}")
    return check_image(path, PHOTO_ADVICE)


def load_photo(path: str | os.PathLike[str], side: int, channels: int = 3) -> np.ndarray:
    """The photo at ``path`` as a start image (side, side, C) float64 in 0..255: its middle square at
    ``side`` px, RGB for ``channels`` 3, gray (C = 1) for 1."""
    check_photo_channels(channels)
    check_photo(path)
    square = square_image(open_image(path, PHOTO_ADVICE), side)
    picture = np.asarray(square) if channels == 3 else np.asarray(square.convert("L"))[..., None]
    return picture.astype(np.float64)


def start_side(start: object) -> int | None:
    """The side an array start gives a render (its images are square), or None for a photo file (read at
    the render's own size) and for no start. A start that is neither a path nor a square array of real
    numbers, one or one per objective, is refused in one line."""
    if start is None or _is_file(start):
        return None
    if not isinstance(start, np.ndarray):
        raise FilterVizError(f"start must be a photo file or an array of pixels (H, W, C) or (N, H, W, C), not "
                             f"{type(start).__name__}")
    if start.ndim not in (3, 4):
        raise FilterVizError(f"start must be an array (H, W, C) for every image or (N, H, W, C) for each, not of "
                             f"shape {start.shape}")
    if start.dtype.kind not in "biuf":
        raise FilterVizError(f"start holds {start.dtype} values; give pixels as real numbers in 0..255")
    height, width = start.shape[-3:-1]
    if height != width or height < 1:
        raise FilterVizError(f"start images must be square, not {height}x{width}: a render's images are "
                             "square (a photo file is cut to its middle square)")
    if not np.isfinite(start).all():
        raise FilterVizError("start holds NaN or infinite values; give finite pixels in 0..255")
    return int(height)


def start_size(start: object, size: int | None) -> int | None:
    """The side of a render with this ``start`` and an asked ``size`` (None: not asked): an array's own
    side, refused when another size is asked; None where the start sets no side (a photo file, none)."""
    side = start_side(start)
    if side is not None and size is not None and size != side:
        raise FilterVizError(f"the start images are {side} px and the size asked is {size}; give start images of "
                             "that size (a photo file is read at the render's size), or leave the size out")
    return side


def start_images(start: object, count: int, side: int, channels: int) -> np.ndarray:
    """The start of ``count`` images of ``side`` px and ``channels`` channels, (N, side, side, C)
    float64: a photo file read at that size, one array repeated for every image, or one per image."""
    if _is_file(start):
        photo = load_photo(start, side, channels)  # type: ignore[arg-type]
        return np.repeat(photo[None], count, axis=0)
    array = np.asarray(start, dtype=np.float64)
    given = start_side(start)
    if array.ndim == 3:
        array = np.repeat(array[None], count, axis=0)
    if array.shape[0] != count or array.shape[3] != channels or given != side:
        raise FilterVizError(f"start must have shape ({count}, H, W, {channels}), not {np.shape(start)}")
    return array


def require_start(objectives: Iterable[object], given: bool) -> None:
    """Refuse objectives that compare the image with its start photo (``caricature``, ``close``) when no
    start is ``given``, naming the first."""
    if given:
        return
    for objective in objectives:
        for _, term in getattr(objective, "terms", ()):
            if getattr(term, "compares_start", False):
                raise FilterVizError(f"{term.label()} compares the image with the photo it starts from; give one: "
                                     "--start PHOTO (start= in Python)")
