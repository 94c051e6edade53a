"""The optimization as an animation: a frame every few steps of a render, as an animated WebP or GIF.

A ``Recorder`` is a ``render`` callback; give it with ``callback_every=N`` for a frame every N steps::

    recorder = Recorder()
    result = render(model, ["channel:blocks.5:3"], "lucid", callback=recorder, callback_every=4)
    recorder.save("blocks.5-3.webp")

WebP frames are lossless (each frame is the render's picture at that step, byte for byte); GIF frames
have at most 256 colors, as GIF allows.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import OutputError
from .image import make_grid, show_channels, write_atomic

ANIMATION_TYPES = {".webp": "WEBP", ".gif": "GIF"}
FRAME_MILLISECONDS = 100  # 10 frames a second
LAST_FRAME_MILLISECONDS = 1500  # the result stays a while before the animation starts again


def check_animation_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if an animation can be written there (.webp or .gif), else a one-line ``OutputError``."""
    path = Path(path)
    if path.suffix.lower() not in ANIMATION_TYPES:
        raise OutputError(f"cannot write an animation to {path.name}: its name must end in "
                          f"{' or '.join(ANIMATION_TYPES)}")
    return path


def tiled(images: np.ndarray, shown: Sequence[int] | None = None, per_row: int = 8, margin: int = 5,
          crossed: Sequence[bool] = ()) -> np.ndarray:
    """Pictures (N, H, W, C) as one frame: the picture itself when N is 1, else a grid of them."""
    pictures = show_channels(images, shown)
    if len(pictures) == 1:
        return pictures[0]
    return make_grid(pictures, per_row=min(per_row, len(pictures)), margin=margin, crossed=crossed)


class Recorder:
    """A render callback that keeps every picture it is told of as a frame (tiled as ``tiled`` does);
    ``save`` writes them as an animation. ``steps`` lists the step of each frame."""

    def __init__(self, shown: Sequence[int] | None = None, per_row: int = 8, margin: int = 5) -> None:
        self.shown, self.per_row, self.margin = shown, per_row, margin
        self.frames: list[np.ndarray] = []
        self.steps: list[int] = []

    def __call__(self, step: int, images: np.ndarray, scores: np.ndarray) -> None:
        self.frames.append(tiled(images, self.shown, self.per_row, self.margin))
        self.steps.append(step)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the frames to ``path`` (.webp or .gif), atomically; returns the path."""
        return save_animation(self.frames, path)


def animation_bytes(frames: Sequence[np.ndarray], kind: str = "WEBP") -> bytes:
    """The frames (each (H, W, 3) RGB or (H, W) gray uint8, all of one size) as an animated ``kind``."""
    if not frames:
        raise OutputError("no frames to write: the render ran no steps")
    pictures = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    durations = [FRAME_MILLISECONDS] * (len(pictures) - 1) + [LAST_FRAME_MILLISECONDS]
    options = {"lossless": True, "method": 4} if kind == "WEBP" else {"optimize": False}
    stream = io.BytesIO()
    pictures[0].save(stream, format=kind, save_all=True, append_images=pictures[1:], duration=durations, loop=0,
                     **options)
    return stream.getvalue()


def save_animation(frames: Sequence[np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Write ``frames`` as an animated WebP or GIF (by ``path``'s suffix), atomically."""
    path = check_animation_path(path)
    return write_atomic(path, animation_bytes(frames, ANIMATION_TYPES[path.suffix.lower()]))
