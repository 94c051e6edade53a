"""Robustness transforms: random changes to the image at every step, so that the picture must work
under small shifts, zooms and turns, not only at one exact alignment.

Each transform is a ``Transform`` (an ``nn.Module``) called as ``transform(x, generators)`` on a batch
of views (M, 3, H, W) in RGB 0..255 pixels. ``generators[i]`` is row ``i``'s own ``torch.Generator``,
so every image's random draws depend on its own seed alone, never on what else is in the batch.
Transforms are registered parts: each declares its text syntax (``jitter:PX``), which a recipe's
``extra_transforms`` and ``--transform`` use; ``register_transform`` adds one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .catalog import TRANSFORMS  # declared without torch, for the command line
from .errors import FilterVizError

GRAY = 127.5


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _choice(generator: torch.Generator, options: Sequence[float]) -> float:
    return float(options[int(torch.randint(len(options), (), generator=generator))])


def _deterministic_cuda(x: torch.Tensor) -> bool:
    """Whether deterministic kernels were asked for on this CUDA tensor (see ``device.deterministic``).
    PyTorch's CUDA backward of grid_sample and interpolate adds with atomics, in no fixed order; the
    gather and matrix forms below have deterministic backward passes, at some cost in speed."""
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def _source_index(position: torch.Tensor, length: int, padding: str) -> torch.Tensor:
    """Pixel coordinates as grid_sample (align_corners=False) maps them back into the image."""
    if padding == "reflection":  # mirror about the outer pixel edges, -0.5 and length - 0.5
        position = torch.remainder(position + 0.5, 2 * length)
        position = torch.where(position >= length, 2 * length - position, position) - 0.5
    return position.clamp(0, length - 1) if padding != "zeros" else position


def gather_sample(x: torch.Tensor, grid: torch.Tensor, padding: str = "reflection") -> torch.Tensor:
    """``F.grid_sample(x, grid, "bilinear", padding, align_corners=False)`` by gathers, whose gradient
    is deterministic on CUDA."""
    batch, channels, height, width = x.shape
    out_height, out_width = grid.shape[1:3]
    grid = grid.float() if grid.dtype in (torch.bfloat16, torch.float16) else grid  # exact pixel indices
    column = _source_index(((grid[..., 0] + 1) * width - 1) / 2, width, padding)
    row = _source_index(((grid[..., 1] + 1) * height - 1) / 2, height, padding)
    left, top = column.floor(), row.floor()
    flat = x.reshape(batch, channels, height * width)
    result = x.new_zeros(batch, channels, out_height * out_width)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        y, x_ = top + dy, left + dx
        weight = (1 - (row - y).abs()) * (1 - (column - x_).abs())
        inside = (y >= 0) & (y <= height - 1) & (x_ >= 0) & (x_ <= width - 1)
        index = (y.clamp(0, height - 1) * width + x_.clamp(0, width - 1)).long().reshape(batch, 1, -1)
        values = flat.gather(2, index.expand(batch, channels, -1))
        result = result + values * (weight * inside).reshape(batch, 1, -1).to(x.dtype)
    return result.reshape(batch, channels, out_height, out_width)


def matrix_resize(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """``F.interpolate(x, (size, size), "bilinear", antialias=...)`` as two matrix products (resizing
    is separable), whose gradient is deterministic on CUDA. Each matrix is the resize of an identity."""
    def along(length: int) -> torch.Tensor:
        identity = torch.eye(length, dtype=torch.float64)[None, None]
        return F.interpolate(identity, size=(size, length), mode="bilinear", align_corners=False,
                             antialias=antialias)[0, 0].to(x.device, x.dtype)
    x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # weights kept exact to fp32
    return torch.einsum("ih,nchw,jw->ncij", along(x.shape[-2]), x, along(x.shape[-1]))


def affine(x: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int] | None = None,
           padding: str = "reflection") -> torch.Tensor:
    """Resample each row of ``x`` through its 2x3 matrix in normalized coordinates (output -> input),
    bilinear, to ``size`` (default: x's own)."""
    height, width = size or tuple(x.shape[-2:])
    # Coordinates in at least fp32: in bf16 a position near 200 px is off by up to a pixel, and a
    # gathered pixel's flat index (row * width + column) by hundreds: a wrong pixel, or out of bounds.
    x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
    grid = F.affine_grid(matrices.to(x.dtype), [x.shape[0], x.shape[1], height, width], align_corners=False)
    if _deterministic_cuda(x):
        return gather_sample(x, grid, padding)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


class Transform(nn.Module):
    """A random change of a batch of views. A subclass has a ``name`` and a ``syntax`` (``NAME`` or
    ``NAME:ARGS``, shown in help), reads its arguments in ``from_text``, and says what it does to
    the side of a view (``output_side``) and how many numbers per pixel of a view it keeps for the
    backward pass (``numbers_per_pixel``: 3 for a copy, 5 for a resampling, which also keeps its grid;
    0 when it does nothing), for the memory estimate that sizes batches."""

    name: ClassVar[str] = ""
    syntax: ClassVar[str] = ""

    @classmethod
    def from_text(cls, args: str) -> "Transform":
        """The transform that ``NAME:ARGS`` names (``args`` is the text after the colon, "" if none)."""
        if args:
            raise FilterVizError(f"transform {cls.name} takes no arguments: write {cls.syntax or cls.name}")
        return cls()

    def output_side(self, side: int) -> int:
        return side

    def numbers_per_pixel(self) -> int:
        return 3


def register_transform(kind: type[Transform]) -> type[Transform]:
    """Add a transform (a ``Transform`` subclass with a ``name`` and ``syntax``); usable as a decorator."""
    return TRANSFORMS.register(kind)


def parse_transform(text: str) -> Transform:
    """A transform from its text, ``NAME`` or ``NAME:ARGS`` (``jitter:8``, ``scale:0.9,1.1``)."""
    name, _, args = text.strip().partition(":")
    kinds = TRANSFORMS.parts()
    if name not in kinds:
        raise FilterVizError(f"unknown transform {text.strip()!r}; use one of "
                             f"{', '.join(kind.syntax or kind.name for kind in kinds.values())}")
    return kinds[name].from_text(args.strip())


def _count(text: str, name: str, syntax: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise FilterVizError(f"transform {name} needs a whole number of px, 0 or more: {syntax}, not {text!r}")
    return value


def _floats(text: str, name: str, syntax: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise FilterVizError(f"transform {name} needs finite numbers separated by commas: {syntax}, not {text!r}")
    return values


@register_transform
class Pad(Transform):
    """Pad every side by ``pixels`` with a constant (mid-gray), as Lucid does before jittering."""

    name, syntax = "pad", "pad:PX"

    def __init__(self, pixels: int, value: float = GRAY) -> None:
        super().__init__()
        self.pixels, self.value = int(pixels), float(value)

    @classmethod
    def from_text(cls, args: str) -> "Pad":
        return cls(_count(args, cls.name, cls.syntax))

    def output_side(self, side: int) -> int:
        return side + 2 * self.pixels

    def numbers_per_pixel(self) -> int:
        return 3 if self.pixels else 0

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        return F.pad(x, (self.pixels,) * 4, value=self.value) if self.pixels else x


@register_transform
class Jitter(Transform):
    """A random crop ``pixels`` smaller in each direction: a shift of 0..pixels px."""

    name, syntax = "jitter", "jitter:PX"

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.pixels = int(pixels)

    @classmethod
    def from_text(cls, args: str) -> "Jitter":
        return cls(_count(args, cls.name, cls.syntax))

    def output_side(self, side: int) -> int:
        return side - self.pixels

    def numbers_per_pixel(self) -> int:
        return 3 if self.pixels else 0

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if not self.pixels:
            return x
        height, width = x.shape[-2] - self.pixels, x.shape[-1] - self.pixels
        rows = []
        for row, generator in zip(x, generators):
            dy, dx = (int(v) for v in torch.randint(self.pixels + 1, (2,), generator=generator))
            rows.append(row[:, dy:dy + height, dx:dx + width])
        return torch.stack(rows)


@register_transform
class RandomScale(Transform):
    """Zoom about the center by a factor drawn from ``factors`` (>1 zooms in); the size is kept."""

    name, syntax = "scale", "scale:F,F,..."

    def __init__(self, factors: Sequence[float]) -> None:
        super().__init__()
        self.factors = tuple(float(f) for f in factors)

    @classmethod
    def from_text(cls, args: str) -> "RandomScale":
        factors = _floats(args, cls.name, cls.syntax)
        if min(factors) <= 0:
            raise FilterVizError(f"transform scale needs zoom factors above 0: {cls.syntax}, not {args!r}")
        return cls(factors)

    def numbers_per_pixel(self) -> int:
        return 5 if self.factors else 0

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if not self.factors:
            return x
        scales = torch.tensor([1.0 / _choice(g, self.factors) for g in generators], dtype=torch.float64)
        matrices = torch.zeros(len(generators), 2, 3, dtype=torch.float64)
        matrices[:, 0, 0] = matrices[:, 1, 1] = scales
        return affine(x, matrices.to(x.device))


@register_transform
class RandomRotate(Transform):
    """Turn about the center by an angle in degrees drawn from ``degrees``; the size is kept."""

    name, syntax = "rotate", "rotate:DEG,DEG,..."

    def __init__(self, degrees: Sequence[float]) -> None:
        super().__init__()
        self.degrees = tuple(float(d) for d in degrees)

    @classmethod
    def from_text(cls, args: str) -> "RandomRotate":
        return cls(_floats(args, cls.name, cls.syntax))

    def numbers_per_pixel(self) -> int:
        return 5 if self.degrees else 0

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if not self.degrees:
            return x
        angles = torch.tensor([math.radians(_choice(g, self.degrees)) for g in generators], dtype=torch.float64)
        cos, sin = angles.cos(), angles.sin()
        aspect = x.shape[-1] / x.shape[-2]  # normalized coordinates stretch a non-square image
        matrices = torch.stack([torch.stack([cos, -sin * aspect, torch.zeros_like(cos)], 1),
                                torch.stack([sin / aspect, cos, torch.zeros_like(cos)], 1)], 1)
        return affine(x, matrices.to(x.device))


@register_transform
class RandomCrop(Transform):
    """A random square box (a ``box`` fraction of the side, centered near the middle, as MACO draws
    them) resized to ``size`` px: lets a large canvas be optimized through model-sized views."""

    name, syntax = "crop", "crop:LOW,HIGH"

    def __init__(self, box: tuple[float, float], size: int | None = None, spread: float = 0.15) -> None:
        super().__init__()
        self.box, self.size, self.spread = (float(box[0]), float(box[1])), size, float(spread)

    @classmethod
    def from_text(cls, args: str) -> "RandomCrop":
        box = _floats(args, cls.name, cls.syntax)
        if len(box) != 2 or not 0 < box[0] <= box[1] <= 1:
            raise FilterVizError(f"transform crop needs 0 < LOW <= HIGH <= 1: {cls.syntax}, not {args!r}")
        return cls((box[0], box[1]))

    def output_side(self, side: int) -> int:
        return self.size or side

    def numbers_per_pixel(self) -> int:
        return 5

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        matrices = torch.zeros(len(generators), 2, 3, dtype=torch.float64)
        for i, generator in enumerate(generators):
            side = _uniform(generator, *self.box)
            limit = 1.0 - side  # keep the box inside the image
            centers = torch.randn(2, generator=generator, dtype=torch.float64) * self.spread * 2
            matrices[i, 0, 0] = matrices[i, 1, 1] = side
            matrices[i, :, 2] = centers.clamp(-limit, limit)
        size = (self.size, self.size) if self.size else None
        return affine(x, matrices.to(x.device), size)


@register_transform
class RandomFlip(Transform):
    """Mirror left-right with probability one half."""

    name, syntax = "flip", "flip"

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        flips = torch.tensor([bool(torch.rand((), generator=g) < 0.5) for g in generators], device=x.device)
        return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)


@register_transform
class Noise(Transform):
    """Add Gaussian noise of ``std`` pixel units (0..255)."""

    name, syntax = "noise", "noise:STD"

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = float(std)

    @classmethod
    def from_text(cls, args: str) -> "Noise":
        values = _floats(args, cls.name, cls.syntax)
        if len(values) != 1 or values[0] < 0:
            raise FilterVizError(f"transform noise needs one standard deviation, 0 or more: {cls.syntax}, "
                                 f"not {args!r}")
        return cls(values[0])

    def numbers_per_pixel(self) -> int:
        return 3 if self.std else 0

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if not self.std:
            return x
        noise = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in generators])
        return x + noise.to(x.device) * self.std


@register_transform
class Resize(Transform):
    """Resize to ``size`` x ``size`` (bilinear, antialiased when shrinking)."""

    name, syntax = "resize", "resize:PX"

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    @classmethod
    def from_text(cls, args: str) -> "Resize":
        size = _count(args, cls.name, cls.syntax)
        if size < 1:
            raise FilterVizError(f"transform resize needs a side of 1 px or more: {cls.syntax}, not {args!r}")
        return cls(size)

    def output_side(self, side: int) -> int:
        return self.size

    def numbers_per_pixel(self) -> int:
        return 0  # its output is the view, which the model's own figures count

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        if _deterministic_cuda(x):
            return matrix_resize(x, self.size, antialias=self.size < x.shape[-1])
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=self.size < x.shape[-1])


class _Function(nn.Module):
    """A plain function ``f(x, generators)`` as a module, so that a list of transforms may hold one."""

    def __init__(self, function: Callable[[torch.Tensor, Sequence[torch.Generator]], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        return self.function(x, generators)


class Compose(nn.Module):
    """Apply transforms in order. Transforms that are not ``Transform``s (any module or function called
    as ``t(x, generators)``) are taken to keep the side and to keep one copy of the views."""

    def __init__(self, transforms: Sequence[nn.Module]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(t if isinstance(t, nn.Module) else _Function(t) for t in transforms)

    def output_side(self, side: int) -> int:
        """The side of the views that come out for an image of ``side`` px."""
        for transform in self.transforms:
            side = transform.output_side(side) if isinstance(transform, Transform) else side
        return side

    def kept_numbers(self, side: int, views: int) -> int:
        """About how many numbers the views of one image keep for the backward pass: their copy, and
        what each transform keeps, each counted at the largest side a transform is given (the last
        output is the view itself, which the model's own figures count)."""
        largest, per_pixel = side, 3  # 3: the views' copy of the image
        for transform in self.transforms:
            largest = max(largest, side)
            if isinstance(transform, Transform):
                per_pixel += transform.numbers_per_pixel()
                side = transform.output_side(side)
            else:
                per_pixel += 3
        return views * per_pixel * largest * largest

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        for transform in self.transforms:
            x = transform(x, generators)
        return x
