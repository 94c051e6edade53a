"""Image output: the book's deprocessing, grids of tiles, and atomic PNG writes."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import OutputError


def deprocess_image(x: np.ndarray) -> np.ndarray:
    """The book's deprocessing: center, scale to std 0.1, shift to 0.5, clip to [0, 1], to uint8.

    Works on a copy; the input array is left as it was.
    """
    x = np.array(x, dtype=np.float64)
    x -= x.mean()
    x /= x.std() + 1e-5
    x *= 0.1
    x += 0.5
    x = np.clip(x, 0, 1)
    x *= 255
    return np.clip(x, 0, 255).astype("uint8")


def stretch_image(x: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Stretch an image's ``low``-``high`` percentile range to 0..255 (clipping the rest), to uint8."""
    x = np.asarray(x, dtype=np.float64)
    bottom, top = np.percentile(x, [low, high])
    scaled = (x - bottom) / max(top - bottom, 1e-12)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def make_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    per_row: int = 8,
    margin: int = 5,
    crossed: Sequence[bool] = (),
) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 images in reading order, ``per_row`` to a row, with black
    ``margin``-pixel gaps between tiles (none around the edge), as the book's 8x8 figure.

    Tiles flagged in ``crossed`` get a red X, so that a filter that could not be rendered (a dead
    filter) is never mistaken for a picture.
    """
    images = [np.asarray(image) for image in images]
    if not images:
        raise ValueError("make_grid needs at least one image")
    height, width = images[0].shape[:2]
    rows = -(-len(images) // per_row)
    columns = min(per_row, len(images))
    grid = np.zeros((rows * height + (rows - 1) * margin, columns * width + (columns - 1) * margin, 3), np.uint8)
    for index, image in enumerate(images):
        top = (index // per_row) * (height + margin)
        left = (index % per_row) * (width + margin)
        tile = image.copy()
        if index < len(crossed) and crossed[index]:
            _cross_out(tile)
        grid[top:top + height, left:left + width] = tile
    return grid


def _cross_out(tile: np.ndarray) -> None:
    height, width = tile.shape[:2]
    steps = np.linspace(0, 1, 4 * max(height, width))
    for thickness in (-1, 0, 1):
        rows = np.clip((steps * (height - 1)).round().astype(int) + thickness, 0, height - 1)
        cols = (steps * (width - 1)).round().astype(int)
        tile[rows, cols] = (255, 0, 0)
        tile[rows, width - 1 - cols] = (255, 0, 0)


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, before any work, if an image cannot be written at ``path``."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write {str(target)!r}: it is a folder; give a file name such as {target / 'out.png'}")
    if target.suffix.lower() not in Image.registered_extensions():
        raise OutputError(f"cannot write {str(target)!r}: unknown image type {target.suffix!r}; use .png")
    folder = target.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {str(target)!r}: folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write {str(target)!r}: folder {str(folder)!r} is not writable")
    return target


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as PNG file bytes (the same image always gives the same bytes)."""
    stream = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(stream, format="PNG")
    return stream.getvalue()


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then a rename, so an
    interrupted run never leaves a half-written file. Text is written as UTF-8."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 is meant for secrets, not pictures
        with os.fdopen(fd, "wb") as stream:
            stream.write(payload)
        os.replace(temp, target)
    except BaseException as exc:
        Path(temp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
        raise
    return target


def save_image(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an (H, W, 3) uint8 image atomically (see ``write_atomic``), in the format its suffix names."""
    target = check_writable(path)
    stream = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
        stream, format=Image.registered_extensions()[target.suffix.lower()])
    return write_atomic(target, stream.getvalue())
