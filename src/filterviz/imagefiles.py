"""Image files from users' folders (an atlas's ``--images``, MACO's ``--spectrum``): each file is read
safely, or refused in one line that names it, and every pixel format becomes 8-bit RGB on its real
range.

- A file that PIL cannot identify or decode is an ``InputFileError`` naming it, whatever PIL raised
  (damaged files raise OSError, SyntaxError, ValueError, struct.error and more).
- A file with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's guard against decompression
  bombs: a small file that decodes to gigabytes) is refused from its header, before it is decoded;
  PIL warns between the limit and twice it, and fails beyond: both are refused here.
- 16-bit and 32-bit images, which ``Image.convert("RGB")`` clips to nearly white (or black for floats
  in 0..1), are scaled on their real range instead (``to_rgb8``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from .errors import InputFileError, first_line

T = TypeVar("T")

# Modes whose values are not 8-bit: 16-bit integers (PNG, TIFF), 32-bit integers and 32-bit floats.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb8(image: Image.Image) -> Image.Image:
    """An image as 8-bit RGB, its values scaled from their real range:

    - 16-bit integers (``I;16``): value / 257, so that 65535 is 255 (what an 8-bit copy of the same
      picture holds);
    - 32-bit integers (``I``): the same when every value lies in 0..65535 (16-bit pictures are often
      opened so), else their own minimum..maximum;
    - 32-bit floats (``F``): 0..1 (the usual range of float pictures) when every value lies in it, else
      their own minimum..maximum; NaN counts as the minimum.

    Every other mode is converted by PIL (palette, gray, CMYK and alpha are dropped to RGB).
    """
    if image.mode not in WIDE_MODES:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        unit = values / 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        unit = values
    else:  # no declared range: the picture's own
        unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    unit = np.where(finite, unit, 0.0)
    gray = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _bomb_pixels(exc: BaseException) -> str:
    """The pixel count that PIL's decompression-bomb message names, with thousands marks."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found.group(1)):,} pixels" if found else "more pixels"


# What a refusal advises for a file of a folder (an atlas's --images, a --spectrum folder).
FOLDER_ADVICE = "remove it from the folder or replace it with a readable .jpg or .png"


def _read(path: str | os.PathLike[str], use: Callable[[Image.Image], T], advice: str = FOLDER_ADVICE) -> T:
    """``use(image)`` on the opened file, with every failure as one ``InputFileError`` naming it and
    ending in ``advice`` (what to do about a damaged file)."""
    name = str(Path(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a warning alone would decode it
            with Image.open(path) as opened:
                return use(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputFileError(
            f"image {name!r} has {_bomb_pixels(exc)}, more than the {Image.MAX_IMAGE_PIXELS:,} that PIL decodes "
            "safely (PIL.Image.MAX_IMAGE_PIXELS; a larger file may be a decompression bomb); "
            f"{'remove it from the folder or shrink it' if advice == FOLDER_ADVICE else 'shrink it'}") from None
    except FileNotFoundError:
        raise InputFileError(f"image {name!r} does not exist (was it removed during the run?)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files; each is this file's fault
        raise InputFileError(f"cannot read image {name!r} ({first_line(exc, 120)}); {advice}") from None


def _decoded(image: Image.Image) -> Image.Image:
    image.load()
    return to_rgb8(image)


def open_image(path: str | os.PathLike[str], advice: str = FOLDER_ADVICE) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (see ``to_rgb8``). A file that is no image, is damaged, or is
    a decompression bomb is an ``InputFileError`` naming it (ending in ``advice``)."""
    return _read(path, _decoded, advice)


def square_image(image: Image.Image, side: int) -> Image.Image:
    """``image`` as a ``side`` x ``side`` square: its short side scaled to ``side`` (bicubic), then its
    middle cut out, as a classifier's evaluation crop sees a photo."""
    scale = side / min(image.size)
    width, height = max(side, round(image.width * scale)), max(side, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def check_image(path: str | os.PathLike[str], advice: str = FOLDER_ADVICE) -> tuple[int, int]:
    """(width, height), from the header alone (no pixel is decoded), with the checks of ``open_image``
    that a header allows: the file is an image PIL knows, and no decompression bomb."""
    return _read(path, lambda image: image.size, advice)


__all__ = ["WIDE_MODES", "check_image", "open_image", "square_image", "to_rgb8"]
