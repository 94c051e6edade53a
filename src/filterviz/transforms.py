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


class _Window(torch.autograd.Function):
    """Each row's window of its image padded with a constant: row ``i`` of the output is rows
    ``tops[i]`` ... and columns ``lefts[i]`` ... of ``F.pad(x, (pad,) * 4, value=value)``, as ``Pad``
    and then ``Jitter`` make it, without the padded image. The numbers are copies either way, so they
    are the same bytes; the gradient is the output's gradient copied back to where each number came from
    (nothing is added), where the plain path zero-fills and stacks a padded image's gradient per row."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: int, value: float, tops: list[int], lefts: list[int],  # type: ignore[override]
                height: int, width: int) -> torch.Tensor:
        ctx.shape = x.shape
        if x.device.type not in ROW_LOOP_DEVICES:
            ctx.offsets = [top - pad for top in tops], [left - pad for left in lefts]
            return _shifted(x, *ctx.offsets, height, width, value)
        out = x.new_empty(x.shape[0], x.shape[1], height, width)
        pieces = []
        for row, (top, left) in enumerate(zip(tops, lefts)):
            # the window's part that lies on the image, in the image's and in the window's coordinates
            y0, y1 = max(top - pad, 0), min(top - pad + height, x.shape[-2])
            x0, x1 = max(left - pad, 0), min(left - pad + width, x.shape[-1])
            inner = (y0 + pad - top, x0 + pad - left)
            pieces.append((y0, y1, x0, x1, *inner))
            _fill_outside(out[row], inner[0], inner[1], max(y1 - y0, 0), max(x1 - x0, 0), value)
            if y1 > y0 and x1 > x0:
                out[row, :, inner[0]:inner[0] + y1 - y0, inner[1]:inner[1] + x1 - x0].copy_(x[row, :, y0:y1, x0:x1])
        ctx.pieces, ctx.shape = pieces, x.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if grad.device.type not in ROW_LOOP_DEVICES:
            tops, lefts = ctx.offsets
            result = _shifted(grad, [-top for top in tops], [-left for left in lefts], *ctx.shape[-2:], 0.0)
            return result, None, None, None, None, None, None
        result = grad.new_empty(ctx.shape)
        for row, (y0, y1, x0, x1, top, left) in enumerate(ctx.pieces):
            _fill_outside(result[row], y0, x0, max(y1 - y0, 0), max(x1 - x0, 0), 0.0)
            if y1 > y0 and x1 > x0:
                result[row, :, y0:y1, x0:x1].copy_(grad[row, :, top:top + y1 - y0, left:left + x1 - x0])
        return result, None, None, None, None, None, None


# Devices on which a batch's rows are copied one by one (a copy per row is cheap, and a gather reads an
# index per number); elsewhere (GPUs) one gather for the batch spares a kernel launch per row.
ROW_LOOP_DEVICES = {"cpu"}


def _shifted(x: torch.Tensor, rows: list[int], columns: list[int], height: int, width: int,
             fill: float) -> torch.Tensor:
    """(N, C, height, width): ``out[i, :, r, c] = x[i, :, r + rows[i], c + columns[i]]`` where that lies in
    ``x``, else ``fill``; one gather (copies: the same numbers as copying row by row)."""
    count, channels, source_height, source_width = x.shape
    device = x.device
    y = torch.tensor(rows, device=device)[:, None] + torch.arange(height, device=device)  # (N, height)
    x_ = torch.tensor(columns, device=device)[:, None] + torch.arange(width, device=device)  # (N, width)
    index = y.clamp(0, source_height - 1)[:, :, None] * source_width + x_.clamp(0, source_width - 1)[:, None, :]
    out = x.reshape(count, channels, source_height * source_width).gather(
        2, index.view(count, 1, height * width).expand(count, channels, height * width))
    inside = ((y >= 0) & (y < source_height))[:, :, None] & ((x_ >= 0) & (x_ < source_width))[:, None, :]
    return torch.where(inside[:, None], out.view(count, channels, height, width), fill)


def _fill_outside(x: torch.Tensor, top: int, left: int, height: int, width: int, value: float) -> None:
    """Fill (C, H, W) ``x`` with ``value`` outside its box of ``height`` x ``width`` at (``top``, ``left``)
    (the box is written next, so only the border around it is filled)."""
    if height <= 0 or width <= 0:
        x.fill_(value)
        return
    x[:, :top].fill_(value)
    x[:, top + height:].fill_(value)
    x[:, top:top + height, :left].fill_(value)
    x[:, top:top + height, left + width:].fill_(value)


def padded_windows(x: torch.Tensor, pad: int, value: float, jitter: int,
                   generators: Sequence[torch.Generator]) -> torch.Tensor:
    """``Jitter(jitter)(Pad(pad, value)(x, generators), generators)`` in one step (the same draws and the
    same numbers), without making the padded image."""
    height, width = x.shape[-2] + 2 * pad - jitter, x.shape[-1] + 2 * pad - jitter
    shifts = [[int(v) for v in torch.randint(jitter + 1, (2,), generator=generator)] for generator in generators]
    return _Window.apply(x, pad, value, [dy for dy, _ in shifts], [dx for _, dx in shifts], height, width)


_BASE_GRIDS: dict[tuple[object, ...], torch.Tensor] = {}


def _base_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (1, H*W, 3) grid of output pixel centers that ``F.affine_grid`` (align_corners=False)
    multiplies by each matrix, made as ATen makes it, once per shape (it is the same at every step)."""
    key = (height, width, dtype, device)
    grid = _BASE_GRIDS.get(key)
    if grid is None:
        def centers(steps: int) -> torch.Tensor:
            if steps <= 1:
                return torch.zeros((), dtype=dtype, device=device)
            return torch.linspace(-1, 1, steps, dtype=dtype, device=device) * (steps - 1) / steps
        grid = torch.empty(1, height, width, 3, dtype=dtype, device=device)
        grid.select(-1, 0).copy_(centers(width))
        grid.select(-1, 1).copy_(centers(height).unsqueeze(-1))
        grid.select(-1, 2).fill_(1)
        grid = grid.view(1, height * width, 3)
        if len(_BASE_GRIDS) >= 16:
            _BASE_GRIDS.clear()
        _BASE_GRIDS[key] = grid
    return grid


def affine_grid(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(matrices, [N, C, height, width], align_corners=False)`` for N matrices (N, 2, 3):
    the same bytes, with the constant grid of pixel centers made once per shape rather than per step."""
    count = matrices.shape[0]
    base = _base_grid(height, width, matrices.dtype, matrices.device).expand(count, -1, -1)
    with torch.autocast(device_type=matrices.device.type, enabled=False):  # coordinates stay exact under autocast
        return base.bmm(matrices.transpose(1, 2)).view(count, height, width, 2)


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
    grid = affine_grid(matrices.to(x.dtype), height, width)
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
        return padded_windows(x, 0, GRAY, self.pixels, generators)


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
        flips = [bool(torch.rand((), generator=g) < 0.5) for g in generators]
        if not any(flips):
            return x
        if all(flips):
            return x.flip(-1)
        return _Flip.apply(x, flips)


def _flip_rows(x: torch.Tensor, flips: Sequence[bool]) -> torch.Tensor:
    """Row ``i`` of ``x`` mirrored left-right where ``flips[i]``: ``torch.where(flips, x.flip(-1), x)``, copied
    row by row on a CPU (a copy of each row, where the ``where`` reads both a mirrored copy and the image)."""
    if x.device.type not in ROW_LOOP_DEVICES:
        return torch.where(torch.tensor(list(flips), device=x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    out = torch.empty_like(x)
    for row, flip in enumerate(flips):
        out[row].copy_(x[row].flip(-1) if flip else x[row])
    return out


class _Flip(torch.autograd.Function):
    """Some rows mirrored (``_flip_rows``); the gradient is the same rows of the gradient mirrored back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, flips: Sequence[bool]) -> torch.Tensor:  # type: ignore[override]
        ctx.flips = flips
        return _flip_rows(x, flips)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return _flip_rows(grad, ctx.flips), None


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
        noise = torch.empty((len(generators), *x.shape[1:]), dtype=x.dtype)
        for row, generator in zip(noise, generators):
            torch.randn(x.shape[1:], generator=generator, dtype=x.dtype, out=row)
        return x + noise.to(x.device).mul_(self.std)


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
        transforms = list(self.transforms)
        index = 0
        while index < len(transforms):
            transform = transforms[index]
            after = transforms[index + 1] if index + 1 < len(transforms) else None
            if type(transform) is Pad and type(after) is Jitter and transform.pixels and after.pixels:
                # a pad and then a jitter: each view's window of the padded image, made in one step
                x = padded_windows(x, transform.pixels, transform.value, after.pixels, generators)
                index += 2
                continue
            x = transform(x, generators)
            index += 1
        return x
