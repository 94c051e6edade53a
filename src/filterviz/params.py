"""Image parameterizations: how the optimized image is represented, and where it starts.

A ``Parameterization`` is a registered part: its ``create`` makes, for a batch of images, an
``nn.Module`` whose parameters are what the optimizer changes and whose ``forward()`` returns the
images as pixels in 0..255, (N, C, H, W): RGB (C = 3), or the model's own C channels (1 for gray, 4 or
more for near-infrared or multispectral bands). A recipe names one (``parameterization="fourier"``);
``render(parameterization=...)`` takes an instance; ``register_parameterization`` adds one. Built in:

- ``PixelImage``: the pixels themselves (the book's), starting from gray noise;
- ``FourierImage``: a spectrum scaled by 1/frequency, in decorrelated color, through a sigmoid
  (Olah et al. 2017; Mordvintsev et al. 2018);
- ``MacoImage``: only the phase of the spectrum, its magnitude fixed to that of natural photos
  (Fel et al. 2023, MACO).

Random starts are drawn per image from ``(seed, key)``, so an image starts the same whether it is
rendered alone or in a batch.

Other channel counts than 3: the pixels start from the same gray noise in every channel; color
decorrelation (fourier's ``decorrelate``, MACO's colors) needs a channel covariance, which is known for
RGB photos only, so other counts are optimized channel by channel (identity); MACO's packaged
magnitude is of RGB photos in decorrelated color, so another count gets the mean of its three
channels' magnitudes in each of its channels (after MACO's standardization only the shape of a
magnitude counts, and natural images of any band share its 1/f fall-off), unless ``--spectrum`` gives
a ``.npy`` of the model's own channel count.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .catalog import PARAMETERIZATIONS, parameterization_fields  # noqa: F401 - declared without torch
from .errors import FilterVizError, InputFileError, first_line
from .imagefiles import check_image, open_image

if TYPE_CHECKING:
    from .recipes import Recipe

# Square root of the color covariance of ImageNet photos (Lucid's published estimate): columns are
# the decorrelated color axes, scaled so that the largest has norm 1.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR_SQRT / np.linalg.norm(_COLOR_SQRT, axis=0).max()

SPECTRUM_FILE = Path(__file__).parent / "data" / "natural_spectrum.npz"


def classic_start(size: int | tuple[int, int], keys: Sequence[int], seed: int | None = None,
                  channels: int = 3) -> np.ndarray:
    """The book's start images: ``uniform(0, 1) * 20 + 128``, one per key, as (N, H, W, C) float64
    (``channels``: C, 3 for RGB).

    With a seed, image ``i`` comes from the seed and ``keys[i]`` alone (e.g. the filter index), so a
    filter starts from the same noise whether it is rendered alone or in any batch or grid.
    """
    height, width = (size, size) if isinstance(size, int) else size
    starts = np.empty((len(keys), height, width, channels))
    for i, key in enumerate(keys):
        rng = np.random.default_rng(None if seed is None else [seed, key])
        starts[i] = rng.random((height, width, channels)) * 20 + 128.0
    return starts


def _normal(shape: tuple[int, ...], keys: Sequence[int], seed: int | None, salt: int) -> np.ndarray:
    """Standard normal draws of ``shape`` per key, from ``(seed, key, salt)`` alone."""
    return np.stack([np.random.default_rng(None if seed is None else [seed, key, salt]).standard_normal(shape)
                     for key in keys])


def _sides(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def decorrelated_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Map (N, 3, H, W) from decorrelated color axes to RGB (before the sigmoid)."""
    matrix = torch.as_tensor(COLOR_CORRELATION, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,njhw->nihw", matrix, x)


def rgb_to_decorrelated(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``decorrelated_to_rgb``."""
    matrix = torch.as_tensor(np.linalg.inv(COLOR_CORRELATION), dtype=x.dtype, device=x.device)
    return torch.einsum("ij,njhw->nihw", matrix, x)


def frequency_scale(height: int, width: int, decay: float = 1.0) -> torch.Tensor:
    """1 / frequency^decay for an rfft2 grid (H, W//2+1), lowest frequency capped, times sqrt(H*W)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequencies = np.sqrt(fy ** 2 + fx ** 2)
    scale = 1.0 / np.maximum(frequencies, 1.0 / max(height, width)) ** decay
    return torch.as_tensor(scale * np.sqrt(height * width))


class PixelImage(nn.Module):
    """The pixels are the parameters (the book's parameterization), 0..255, (N, C, H, W)."""

    def __init__(self, start: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        start = torch.as_tensor(start, dtype=torch.float64)  # (N, H, W, C)
        self.pixels = nn.Parameter(start.permute(0, 3, 1, 2).contiguous())

    @classmethod
    def noise(cls, size: int | tuple[int, int], keys: Sequence[int], seed: int | None = None,
              channels: int = 3) -> "PixelImage":
        return cls(classic_start(_sides(size), keys, seed, channels))

    def forward(self) -> torch.Tensor:
        return self.pixels


class FourierImage(nn.Module):
    """A spectrum scaled by 1/frequency, optionally in decorrelated color, through a sigmoid.

    Gradient steps on the spectrum change low frequencies as readily as high ones, which keeps the
    high-frequency noise of pixel ascent away. ``channels`` other than 3 have no known color
    correlation: they are optimized channel by channel, whatever ``decorrelate`` says.
    """

    def __init__(self, size: int | tuple[int, int], keys: Sequence[int], seed: int | None = None,
                 std: float = 0.01, decorrelate: bool = True, decay: float = 1.0, channels: int = 3) -> None:
        super().__init__()
        self.height, self.width = _sides(size)
        self.decorrelate = decorrelate and channels == 3
        shape = (channels, self.height, self.width // 2 + 1, 2)
        self.spectrum = nn.Parameter(torch.as_tensor(_normal(shape, keys, seed, 1) * std))
        self.register_buffer("scale", frequency_scale(self.height, self.width, decay))

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale.to(self.spectrum.dtype)
        x = torch.fft.irfft2(spectrum, s=(self.height, self.width)) / 4.0
        if self.decorrelate:
            x = decorrelated_to_rgb(x)
        return torch.sigmoid(x) * 255.0

    @torch.no_grad()
    def set_image(self, pixels: torch.Tensor) -> None:
        """Set the spectrum so that ``forward()`` gives ``pixels`` (N, C, H, W), strictly inside 0..255."""
        x = torch.logit(pixels.to(self.spectrum.dtype) / 255.0)
        if self.decorrelate:
            x = rgb_to_decorrelated(x)
        spectrum = torch.fft.rfft2(x * 4.0) / self.scale.to(self.spectrum.dtype)
        self.spectrum.copy_(torch.view_as_real(spectrum))


SPECTRUM_SIZE = 128  # px: the side at which a folder's spectrum is estimated


def estimate_spectrum(images: Sequence[np.ndarray], size: int = SPECTRUM_SIZE, crops: int = 8,
                      seed: int = 0) -> np.ndarray:
    """The mean Fourier magnitude of natural photos, (3, size, size//2+1), in decorrelated color.

    Each photo (H, W, 3) uint8 gives ``crops`` random square crops (at least ``size``, resized to it),
    standardized before the transform, as MACO's generator standardizes its images.
    """
    rng = np.random.default_rng(seed)
    total = np.zeros((3, size, size // 2 + 1))
    count = 0
    for image in images:
        x = torch.as_tensor(np.asarray(image, dtype=np.float64) / 255.0).permute(2, 0, 1)[None]
        height, width = x.shape[-2:]
        if min(height, width) < size:
            raise FilterVizError(f"an image of {height}x{width} is smaller than the spectrum size {size}")
        for _ in range(crops):
            side = int(rng.integers(size, min(height, width) + 1))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crop = F.interpolate(x[..., top:top + side, left:left + side], size=(size, size), mode="bilinear",
                                 antialias=True, align_corners=False)
            crop = rgb_to_decorrelated(crop)
            crop = (crop - crop.mean()) / (crop.std() + 1e-8)
            total += torch.fft.rfft2(crop)[0].abs().numpy()
            count += 1
    if count == 0:
        raise FilterVizError("no images to estimate a spectrum from")
    return total / count


SPECTRUM_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def load_spectrum(source: str | os.PathLike[str] | None = None) -> np.ndarray:
    """A magnitude spectrum (C, h, w//2+1), C = 3 but for a ``.npy`` made for a model of other channels
    (see ``spectrum_for_channels``): the packaged one (from scikit-image's photos), a ``.npy``/
    ``.npz`` file (finite, non-negative real numbers), or estimated from a folder of images (each at
    least 128 px on its short side). Every bad input is a one-line error before any work: the folder's
    files are checked by their headers (no image, a damaged one, a decompression bomb, too small)
    before any is decoded."""
    if source is None:
        return _packaged_spectrum()
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SPECTRUM_SUFFIXES and p.is_file())
        if not files:
            raise InputFileError(f"no images (.png, .jpg) in {str(path)!r} to estimate a spectrum from")
        for file in files:
            width, height = check_image(file)
            if min(width, height) < SPECTRUM_SIZE:
                raise InputFileError(f"image {str(file)!r} is {width}x{height}, smaller than the {SPECTRUM_SIZE} px "
                                     "that a spectrum is estimated at; remove it from the folder")
        key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        return _folder_spectrum(key).copy()
    if not path.exists():
        raise InputFileError(f"spectrum {str(path)!r} does not exist; give a .npy file of shape (3, H, W//2+1), "
                             "or a folder of images")
    try:
        data = np.load(path, allow_pickle=False)  # a pickle in it would run code: never loaded
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                data = data["magnitude"]
        spectrum = np.asarray(data)
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise InputFileError(f"cannot read spectrum {str(path)!r} ({first_line(exc, 120)}); give a .npy file of "
                             "shape (3, H, W//2+1), or a folder of images") from None
    if spectrum.dtype.kind not in "biuf":
        raise InputFileError(f"spectrum {str(path)!r} holds {spectrum.dtype} values, not real numbers; give a .npy "
                             "file of magnitudes, shape (3, H, W//2+1)")
    if spectrum.ndim != 3 or min(spectrum.shape) < 1:
        raise InputFileError(f"spectrum {str(path)!r} has shape {spectrum.shape}; expected (3, H, W//2+1) (or "
                             "(C, H, W//2+1) for a model of C channels)")
    spectrum = np.asarray(spectrum, dtype=np.float64)
    if not np.isfinite(spectrum).all() or (spectrum < 0).any():
        raise InputFileError(f"spectrum {str(path)!r} holds NaN, infinite or negative values; a magnitude "
                             "spectrum is finite and 0 or more")
    if not spectrum.any():
        raise InputFileError(f"spectrum {str(path)!r} is all zeros, which makes a blank image; give magnitudes "
                             "of natural photos")
    return spectrum


@lru_cache(maxsize=4)
def _folder_spectrum(files: tuple[tuple[str, int, int], ...]) -> np.ndarray:
    """The spectrum of a folder's images (keyed by their paths, sizes and times, so a changed folder is
    read again): each render of an atlas asks for it."""
    return estimate_spectrum([np.asarray(open_image(name)) for name, _, _ in files])


@lru_cache(maxsize=1)
def _packaged_spectrum() -> np.ndarray:
    with np.load(SPECTRUM_FILE) as data:
        return np.asarray(data["magnitude"], dtype=np.float64)


def resize_spectrum(magnitude: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Resize a magnitude spectrum (C, h, w//2+1) to (C, height, width//2+1), frequency by frequency."""
    centered = np.fft.fftshift(magnitude, axes=1)  # rows run -f..f, so resizing keeps them in order
    resized = F.interpolate(torch.as_tensor(centered)[None], size=(height, width // 2 + 1), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return torch.fft.ifftshift(resized, dim=1)


def spectrum_for_channels(magnitude: np.ndarray, channels: int, source: str = "the spectrum") -> np.ndarray:
    """A magnitude spectrum for images of ``channels`` channels: one of that many channels as it is; one
    of 3 (RGB photos, in decorrelated color: the packaged one, or a folder's) as the mean of its three
    channels, in each channel; any other count is refused in one line."""
    count = magnitude.shape[0]
    if count == channels:
        return magnitude
    if count == 3:
        return np.repeat(magnitude.mean(axis=0, keepdims=True), channels, axis=0)
    raise FilterVizError(f"{source} has {count} channels, and the model takes {channels}: give --spectrum a .npy "
                         f"of shape ({channels}, H, W//2+1), or one of RGB photos (3, H, W//2+1) or a folder of "
                         "photos, whose mean magnitude each channel then gets")


class _PolarPhase(torch.autograd.Function):
    """``torch.polar(magnitude, phase)`` with the gradient of the phase alone: the same numbers, and the
    phase's gradient by ATen's own formula (``polar_backward``: ``real(conj(grad) * result * 1j)``),
    without the magnitude's, which ATen computes with it though a fixed magnitude needs none."""

    @staticmethod
    def forward(ctx, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        result = torch.polar(magnitude, phase)
        ctx.save_for_backward(result)
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (result,) = ctx.saved_tensors
        return None, torch.real(grad.conj() * (result * 1j))


class MacoImage(nn.Module):
    """Only the phase is optimized; the magnitude is that of natural photos (MACO).

    ``forward()`` standardizes the phase, builds the spectrum, transforms back, standardizes the
    image, recorrelates its colors and maps it through a sigmoid to 0..255. ``channels`` other than 3
    get ``spectrum_for_channels``'s magnitude and no color correlation (channel by channel).
    """

    def __init__(self, size: int | tuple[int, int], keys: Sequence[int], seed: int | None = None,
                 spectrum: np.ndarray | None = None, channels: int = 3) -> None:
        super().__init__()
        self.height, self.width = _sides(size)
        magnitude = spectrum_for_channels(load_spectrum() if spectrum is None else spectrum, channels)
        magnitude = resize_spectrum(magnitude, self.height, self.width)
        self.recorrelate = channels == 3
        self.register_buffer("magnitude", magnitude)
        self.phase = nn.Parameter(torch.as_tensor(_normal(tuple(magnitude.shape), keys, seed, 2)))
        # After ``set_image``, each image's phase is standardized to its photo's own mean and spread, not
        # to 0 and 1 (None: a random start, as MACO's).
        self.register_buffer("phase_center", None)
        self.register_buffer("phase_spread", None)

    def forward(self) -> torch.Tensor:
        x = self.forward_decorrelated()
        return torch.sigmoid(decorrelated_to_rgb(x) if self.recorrelate else x) * 255.0

    def forward_decorrelated(self) -> torch.Tensor:
        """The standardized image in decorrelated color (or its own channels), before the colors and the
        sigmoid."""
        phase = self.phase
        flat = phase.flatten(1)
        phase = (phase - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-4)
        if self.phase_spread is not None:  # a photo's phase: back to its own mean and spread
            phase = phase * self.phase_spread.to(phase.dtype) + self.phase_center.to(phase.dtype)
        magnitude = self.magnitude.to(phase.dtype)
        polar = torch.polar if magnitude.requires_grad else _PolarPhase.apply  # a fixed magnitude: no gradient
        x = torch.fft.irfft2(polar(magnitude.expand_as(phase), phase), s=(self.height, self.width))
        flat = x.flatten(1)
        return (x - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-4)

    @torch.no_grad()
    def set_image(self, pixels: torch.Tensor) -> None:
        """Start from the phase of ``pixels`` (N, C, H, W) in 0..255: the phase of their spectrum where
        ``forward`` builds its own (before the sigmoid, in decorrelated color), kept as it is. The
        magnitude stays natural photos' (MACO's), so the first image is the photo's phase with that
        magnitude: its edges and shapes in place, its contrast and colors MACO's. MACO standardizes the
        phase at every step; here it is standardized to the photo phase's own mean and spread (a
        photo's phases spread over -pi..pi, wider than MACO's random start), which makes ``forward``
        give back exactly that phase at the start."""
        x = torch.logit(pixels.to(self.phase.dtype).clamp(0.5, 254.5) / 255.0)
        if self.recorrelate:
            x = rgb_to_decorrelated(x)
        phase = torch.angle(torch.fft.rfft2(x))
        flat = phase.flatten(1)
        self.phase.copy_(phase)
        self.phase_center = flat.mean(1).view(-1, 1, 1, 1)
        self.phase_spread = flat.std(1).view(-1, 1, 1, 1) + 1e-4


class Parameterization:
    """How a batch of optimized images is represented. A subclass has a ``name`` (what a recipe's
    ``parameterization`` field says), the recipe fields it reads (``recipe_fields``, refused with any
    other parameterization), and ``create``, which makes the images' module. ``importance``: whether a
    render accumulates the per-pixel gradient magnitude (MACO's importance map). ``numbers`` feeds the
    memory estimate that sizes batches before anything runs."""

    name: ClassVar[str] = ""
    recipe_fields: ClassVar[tuple[str, ...]] = ()
    importance: ClassVar[bool] = False

    @classmethod
    def from_recipe(cls, recipe: "Recipe") -> "Parameterization":
        """This parameterization with the recipe's settings (its ``recipe_fields``)."""
        return cls()

    def create(self, size: int, keys: Sequence[int], seed: int | None, start: np.ndarray | None,
               channels: int = 3) -> nn.Module:
        """The module of ``len(keys)`` images of ``size`` px and ``channels`` channels. Image ``i``'s
        random start comes from ``(seed, keys[i])`` alone; ``start`` (N, H, W, C) in 0..255, when given,
        replaces it (a parameterization that cannot start from an image raises FilterVizError). A
        subclass that makes only RGB images may leave ``channels`` out: it is passed only when not 3,
        and such a parameterization is refused (``check_channels``) for a model of other channels."""
        raise NotImplementedError

    def check_channels(self, channels: int) -> None:
        """Refuse, in one line and before any work, a channel count this parameterization cannot make:
        by default, any but 3 where ``create`` takes no ``channels`` argument."""
        if channels == 3:
            return
        try:
            parameters = inspect.signature(self.create).parameters
        except (TypeError, ValueError):  # no signature to read: taken to take it
            return
        if "channels" not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            raise FilterVizError(f"parameterization {self.name or type(self).__name__} makes RGB images (its create() "
                                 f"takes no channels argument), and the model takes {channels} channel"
                                 f"{'s' * (channels != 1)}; use pixel, fourier or maco, or give its create() a "
                                 "channels argument")

    def numbers(self, size: int) -> tuple[int, int]:
        """For one image of ``size`` px: the numbers optimized, and the numbers its forward pass keeps
        for the backward pass. The default assumes a pixel-sized parameter and a few intermediate images."""
        pixels = 3 * size * size
        return pixels, 6 * pixels


def create_images(parameterization: Parameterization, size: int, keys: Sequence[int], seed: int | None,
                  start: np.ndarray | None, channels: int = 3) -> nn.Module:
    """``parameterization.create``, with ``channels`` passed only where it is not 3 (so that a
    parameterization written for RGB images is called as it always was), checked first."""
    if channels == 3:
        return parameterization.create(size, keys, seed, start)
    parameterization.check_channels(channels)
    return parameterization.create(size, keys, seed, start, channels=channels)  # type: ignore[call-arg]


def register_parameterization(kind: type[Parameterization]) -> type[Parameterization]:
    """Add a parameterization (a ``Parameterization`` subclass with a ``name``); usable as a decorator."""
    return PARAMETERIZATIONS.register(kind)


@register_parameterization
class PixelParameterization(Parameterization):
    """The pixels themselves, starting from the book's gray noise."""

    name = "pixel"

    def create(self, size: int, keys: Sequence[int], seed: int | None, start: np.ndarray | None,
               channels: int = 3) -> nn.Module:
        return PixelImage(start if start is not None else classic_start(size, keys, seed, channels))

    def numbers(self, size: int) -> tuple[int, int]:
        pixels = 3 * size * size
        return pixels, pixels


@register_parameterization
class FourierParameterization(Parameterization):
    """A 1/f-scaled spectrum in decorrelated color through a sigmoid (``FourierImage``)."""

    name = "fourier"
    recipe_fields = ("decorrelate", "init_std")

    def __init__(self, std: float = 0.01, decorrelate: bool = True) -> None:
        self.std = std
        self.decorrelate = decorrelate

    @classmethod
    def from_recipe(cls, recipe: "Recipe") -> "FourierParameterization":
        return cls(std=recipe.init_std, decorrelate=recipe.decorrelate)

    def create(self, size: int, keys: Sequence[int], seed: int | None, start: np.ndarray | None,
               channels: int = 3) -> nn.Module:
        image = FourierImage(size, keys, seed, std=self.std, decorrelate=self.decorrelate, channels=channels)
        if start is not None:  # strictly inside 0..255, where the sigmoid can be inverted
            image.set_image(torch.as_tensor(start).permute(0, 3, 1, 2).clamp(0.5, 254.5))
        return image

    def numbers(self, size: int) -> tuple[int, int]:
        # the spectrum's complex numbers; kept: the spectrum, its inverse transform, the colors, the sigmoid
        return 2 * 3 * size * (size // 2 + 1), 6 * 3 * size * size


@register_parameterization
class MacoParameterization(Parameterization):
    """Only the phase, with the magnitude of natural photos (``MacoImage``); a spectrum file or folder
    of images replaces the packaged magnitude."""

    name = "maco"
    recipe_fields = ("spectrum",)
    importance = True

    def __init__(self, spectrum: np.ndarray | str | os.PathLike[str] | None = None) -> None:
        # A file or folder is read now, so a bad one is refused before any work.
        self.spectrum = spectrum if isinstance(spectrum, np.ndarray) else load_spectrum(spectrum)
        self.given = spectrum is not None

    @classmethod
    def from_recipe(cls, recipe: "Recipe") -> "MacoParameterization":
        return cls(recipe.spectrum)

    def create(self, size: int, keys: Sequence[int], seed: int | None, start: np.ndarray | None,
               channels: int = 3) -> nn.Module:
        image = MacoImage(size, keys, seed, self.spectrum, channels)
        if start is not None:  # the photo's phase, with MACO's magnitude
            image.set_image(torch.as_tensor(start).permute(0, 3, 1, 2))
        return image

    def check_channels(self, channels: int) -> None:
        spectrum_for_channels(self.spectrum, channels, "--spectrum" if self.given else "the spectrum")

    def numbers(self, size: int) -> tuple[int, int]:
        # the phase; kept: also the standardized phase and image besides the fourier steps
        return 3 * size * (size // 2 + 1), 10 * 3 * size * size
