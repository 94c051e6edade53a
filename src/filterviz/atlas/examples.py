"""Dataset examples: the natural images that excite each filter most, found in one streaming pass.

Every image of a folder goes through the model once, with all chosen layers captured from the same
forward pass. Each filter keeps only its running top ``k`` (its highest spatial maximum per image, and
where it was), so memory does not grow with the folder. Ties keep the earlier image.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import FilterVizError
from ..device import deterministic
from ..imagefiles import check_image, open_image, square_image
from ..models.loaded import LoadedModel

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def list_images(folder: str | os.PathLike[str], skip: str | os.PathLike[str] | None = None) -> list[Path]:
    """The image files under ``folder`` (recursively), in a fixed order: by relative path.

    Nothing under ``skip`` is listed: an atlas passes its own folder, which may lie inside ``folder``,
    so that its crops and copies never count as dataset images (nor change the folder's fingerprint).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FilterVizError(f"image folder {str(root)!r} does not exist; give a folder of .jpg or .png images")
    skipped: tuple[str, ...] | None = None
    if skip is not None:
        try:  # the skipped folder's place inside the image folder, if it has one (links resolved)
            skipped = Path(skip).resolve().relative_to(root.resolve()).parts
        except ValueError:
            pass
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not (skipped is not None and p.relative_to(root).parts[:len(skipped)] == skipped)),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise FilterVizError(f"image folder {str(root)!r} has no images; give a folder of .jpg or .png images")
    return files


def _open_rgb(path: Path, decode: bool = True) -> Image.Image | None:
    """The image at ``path`` as 8-bit RGB on its real range (16-bit and float images are scaled, not
    clipped; see ``imagefiles.to_rgb8``), or with ``decode=False`` None once its header is checked. A
    file that is not a readable image, or is a decompression bomb, is a one-line error naming it."""
    if not decode:
        check_image(path)
        return None
    return open_image(path)


def check_images(files: Sequence[Path]) -> None:
    """Fail at once, naming the file, if an image cannot be opened or is a decompression bomb (its
    header is read, not its pixels); a file damaged past its header is found when it is decoded."""
    for path in files:
        check_image(path)


def folder_fingerprint(root: Path, files: Sequence[Path]) -> str:
    """Changes when a file is added, removed, renamed or rewritten."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_square(path: Path, side: int, channels: int = 3) -> np.ndarray:
    """An image as (side, side, 3) uint8 RGB: its short side scaled to ``side``, then center-cropped;
    for a gray model (``channels`` 1), as (side, side, 1) gray (ITU-R 601 luma, as Pillow converts)."""
    check_example_channels(channels)
    square = square_image(_open_rgb(path), side)
    return np.asarray(square) if channels == 3 else np.asarray(square.convert("L"))[..., None]


def check_example_channels(channels: int) -> None:
    """Dataset examples come from photos: RGB as they are, or as gray for a gray model. For any other
    channel count a photo holds no true values of the model's bands (near-infrared, ...), and made-up
    ones would rank the units on what they never see: refused in one line."""
    if channels not in (1, 3):
        raise FilterVizError(f"--images shows the photos of a folder that excite each filter most, and the model "
                             f"takes {channels} channels, which RGB or gray photos do not hold; leave --images out "
                             "for this model")


class TopK:
    """The ``k`` highest activations of each of ``channels`` filters, with image index and position.

    ``values``, ``images``, ``ys``, ``xs`` are (channels, k), best first; unfilled places hold -inf
    and image -1. A filter's activation on an image is its maximum over positions.
    """

    def __init__(self, channels: int, k: int) -> None:
        self.k = k
        self.values = torch.full((channels, k), -torch.inf, dtype=torch.float64)
        self.images = torch.full((channels, k), -1, dtype=torch.int64)
        self.ys = torch.zeros((channels, k), dtype=torch.int64)
        self.xs = torch.zeros((channels, k), dtype=torch.int64)

    def update(self, activations: torch.Tensor, first_image: int) -> None:
        """Take a batch's activations (N, C, H, W) or (N, C), of images ``first_image``, ``first_image + 1``..."""
        batch, channels = activations.shape[:2]
        flat = activations.detach().to("cpu", torch.float64).reshape(batch, channels, -1)
        peaks, where = flat.max(dim=2)  # the first maximal position
        width = activations.shape[3] if activations.ndim == 4 else 1
        images = torch.arange(first_image, first_image + batch).expand(channels, batch)
        values = torch.cat([self.values, peaks.T], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :self.k]
        self.values = values.gather(1, order)
        self.images = torch.cat([self.images, images], dim=1).gather(1, order)
        self.ys = torch.cat([self.ys, (where // width).T], dim=1).gather(1, order)
        self.xs = torch.cat([self.xs, (where % width).T], dim=1).gather(1, order)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name).numpy() for name in ("values", "images", "ys", "xs")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "TopK":
        top = cls(*arrays["values"].shape)
        for name in ("values", "images", "ys", "xs"):
            setattr(top, name, torch.from_numpy(np.array(arrays[name])))
        return top


def pack(tops: dict[str, TopK]) -> bytes:
    """The scan state as bytes, for the manifest's checkpoint."""
    arrays: dict[str, np.ndarray] = {"layers": np.array(list(tops), dtype=str)}
    for number, top in enumerate(tops.values()):
        arrays.update({f"{number}_{name}": array for name, array in top.to_arrays().items()})
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def unpack(data: bytes) -> dict[str, TopK]:
    with np.load(io.BytesIO(data)) as saved:
        return {str(layer): TopK.from_arrays({name: saved[f"{number}_{name}"]
                                              for name in ("values", "images", "ys", "xs")})
                for number, layer in enumerate(saved["layers"])}


def scan_images(
    model: LoadedModel,
    layers: Sequence[str],
    files: Sequence[Path],
    side: int,
    k: int,
    *,
    batch_size: int = 16,
    state: tuple[int, dict[str, TopK]] | None = None,
    on_batch: Callable[[int, dict[str, TopK]], None] = lambda next_image, tops: None,
) -> dict[str, TopK]:
    """Top ``k`` images of every filter of ``layers`` (layer paths), over ``files`` seen at ``side`` px.

    ``state`` (next image, tops) continues an interrupted scan; ``on_batch(next_image, tops)`` is told
    after every batch (to checkpoint it and show progress). Batches always start at multiples of
    ``batch_size``, so a continued scan computes exactly what an uninterrupted one does.
    """
    next_image, tops = state if state is not None else (0, {})
    with torch.no_grad(), deterministic(model.device), model.capture(list(layers)) as run:
        for first in range(next_image, len(files), batch_size):
            chunk = files[first:first + batch_size]
            pixels = np.stack([load_square(path, side, model.spec.channels) for path in chunk])
            batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(model.device, model.dtype)
            for layer, activations in run(batch).items():
                if layer not in tops:
                    tops[layer] = TopK(activations.shape[1], k)
                tops[layer].update(activations, first)
            on_batch(first + len(chunk), tops)
    return tops


def receptive_field(model: LoadedModel, layer: str, side: int) -> int:
    """The side, in input pixels, of the region that a unit in the middle of ``layer`` sees (the
    extent of its nonzero input gradient), at most ``side``."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand((1, model.spec.channels, side, side), generator=generator, dtype=torch.float64) * 40 + 108
    pixels = noise.to(model.device, model.dtype).requires_grad_(True)
    with model.truncated(layer) as run:
        activations = run(pixels)
    if activations.ndim != 4:
        return side
    height, width = activations.shape[2:]
    (gradient,) = torch.autograd.grad(activations[0, :, height // 2, width // 2].sum(), pixels)
    seen = gradient[0].abs().sum(dim=0) > 0
    rows, columns = seen.any(dim=1).nonzero(), seen.any(dim=0).nonzero()
    if len(rows) == 0:
        return side
    extent = max(int(rows[-1] - rows[0]) + 1, int(columns[-1] - columns[0]) + 1)
    return min(side, extent)


def crop_box(y: int, x: int, grid: tuple[int, int] | None, field: int, side: int) -> tuple[int, int, int]:
    """(top, left, crop side) of the ``field``-px square centered on grid position (y, x), kept inside
    the image; the whole image for a layer without positions."""
    if grid is None or field >= side:
        return 0, 0, side
    height, width = grid
    center_y, center_x = (y + 0.5) * side / height, (x + 0.5) * side / width
    top = min(max(round(center_y - field / 2), 0), side - field)
    left = min(max(round(center_x - field / 2), 0), side - field)
    return top, left, field

