"""What a model expects as input, so that recipes can always work in 0..255 pixel space: RGB, or the
model's own channels (gray, RGB + near-infrared, multispectral bands)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace
from functools import lru_cache
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ..errors import FilterVizError

if TYPE_CHECKING:  # imported where tensors are made: the command line reads the presets without torch
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How to turn pixels in 0..255 (NCHW) into the tensor a model was trained on.

    ``mean`` and ``std`` are per channel in 0..255 units and apply in the model's own channel order:
    ``(pixels - mean) / std``; one number instead of a tuple applies to every channel. ``layout`` is
    the input's axis order. ``default_size`` is the side the model was trained at, used when a size is
    needed and none is given. ``fixed_size`` (height, width) is set for a model that takes only that
    size: images of another size are resized (bilinear) on the way in. ``min_size`` is the smallest
    side the whole model runs at, when known.

    ``channels`` is how many channels the input has: 3 (RGB) unless said, or the number of entries of
    ``mean`` when only that is given; 1 for a grayscale model, 4 or more for RGB + near-infrared or
    multispectral bands. ``mean`` and ``std`` have one entry per channel, or are refused in one line.
    ``channel_order="BGR"`` reverses the 3 channels of an RGB model; any other channel count is taken in
    the model's own order ("RGB" then means: as they are).
    """

    mean: tuple[float, ...] = None  # type: ignore[assignment]  # (0.0,) * channels
    std: tuple[float, ...] = None  # type: ignore[assignment]  # (1.0,) * channels
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    default_size: int = 224
    fixed_size: tuple[int, int] | None = None
    min_size: int | None = None
    # Not in repr: the mean's length says it, and an RGB spec reads as it always has (an atlas's record).
    channels: int = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        given = self.channels
        if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 1):
            raise FilterVizError(f"an input has 1 or more channels, not {given!r}")
        sized = [len(v) for v in (self.mean, self.std) if v is not None and not isinstance(v, numbers.Real)]
        channels = given if given is not None else sized[0] if sized else 3
        for name, default in (("mean", 0.0), ("std", 1.0)):
            value = getattr(self, name)
            if value is None:
                value = (default,) * channels
            elif isinstance(value, numbers.Real):
                value = (float(value),) * channels
            elif not isinstance(value, tuple):
                value = tuple(value)
            if len(value) != channels:
                raise FilterVizError(
                    f"InputSpec has {channels} channel{'s' * (channels != 1)} but {len(value)} {name} values "
                    f"{value}; give one {name} per channel, or one number for all")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "channels", channels)
        if self.channel_order not in ("RGB", "BGR"):
            raise FilterVizError(f"channel order must be RGB or BGR, not {self.channel_order!r}")
        if self.channel_order == "BGR" and channels != 3:
            raise FilterVizError(f"channel order BGR reverses the 3 channels of an RGB model; an input of {channels} "
                                 "channels is given in the model's own order (channel_order RGB)")

    @classmethod
    def from_unit_range(
        cls, mean: tuple[float, ...], std: tuple[float, ...], **kwargs: object
    ) -> "InputSpec":
        """Spec for the torchvision convention: ``(pixels / 255 - mean) / std``."""
        return cls(
            mean=tuple(255.0 * m for m in mean),  # type: ignore[arg-type]
            std=tuple(255.0 * s for s in std),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )

    @classmethod
    def preset(cls, name: str, **kwargs: object) -> "InputSpec":
        """A common input convention by name (see ``PRESETS``); ``kwargs`` set the other fields. With
        ``channels`` other than 3, only the presets that treat every channel alike (raw, unit, tf) apply;
        the RGB ones (caffe, imagenet) are refused in one line."""
        try:
            base = PRESETS[name.lower()]
        except KeyError:
            raise FilterVizError(f"unknown preprocessing {name!r}; use one of {', '.join(PRESETS)}") from None
        channels = kwargs.pop("channels", None)
        if channels is not None:
            base = base.with_channels(channels, what=f"preprocessing {name.lower()!r}")  # type: ignore[arg-type]
        return replace(base, **kwargs)  # type: ignore[arg-type]

    def with_preset(self, name: str) -> "InputSpec":
        """This spec with the value range and channel order of preset ``name`` (layout, sizes and channel
        count kept)."""
        other = InputSpec.preset(name, channels=self.channels)
        return replace(self, mean=other.mean, std=other.std, channel_order=other.channel_order)

    def with_channels(self, channels: int, what: str = "the input spec") -> "InputSpec":
        """This spec for ``channels`` channels: only where its values are the same on every channel (raw,
        unit, tf) and it reorders none, so that they mean the same for any count; else FilterVizError."""
        if channels == self.channels:
            return self
        if self.channel_order != "RGB" or len(set(self.mean)) > 1 or len(set(self.std)) > 1:
            values = f"{self.channel_order}, mean {_numbers(self.mean)}, std {_numbers(self.std)}"
            raise FilterVizError(
                f"{what} ({values}) is for {self.channels} channel{'s' * (self.channels != 1)}, and the model takes "
                f"{channels}; give the model's own values: InputSpec(channels={channels}, mean=..., std=...), or "
                "--preprocess raw, unit or tf (the same on every channel)")
        return replace(self, channels=channels, mean=(self.mean[0],) * channels, std=(self.std[0],) * channels)

    def describe(self) -> str:
        """One line for people: channels (their order), normalization, layout and sizes."""
        if self.mean == (0.0,) * self.channels and self.std == (1.0,) * self.channels:
            values = "pixels 0..255 as they are"
        else:
            values = f"(pixels - [{_numbers(self.mean)}]) / [{_numbers(self.std)}]"
        size = (f"fixed {self.fixed_size[0]}x{self.fixed_size[1]} (other sizes are resized on the way in)"
                if self.fixed_size else f"any size (default {self.default_size})")
        return f"{self.channel_words()}, {values}, {self.layout}, {size}"

    def channel_words(self) -> str:
        """The channels for people: ``RGB``, ``BGR``, ``1 channel (grayscale)`` or ``5 channels``."""
        if self.channels == 3:
            return self.channel_order
        return "1 channel (grayscale)" if self.channels == 1 else f"{self.channels} channels"

    def to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Convert a batch of images (N, C, H, W), 0..255 in RGB or the model's own ``channels``, to the
        model's input. Images of another channel count are refused, never broadcast."""
        if pixels.ndim != 4 or pixels.shape[1] != self.channels:
            raise FilterVizError(f"the model takes images of {self.channel_words()} (N, {self.channels}, H, W), "
                                 f"not of shape {tuple(pixels.shape)}")
        x = pixels.flip(1) if self.channel_order == "BGR" else pixels
        mean, std = _constants(self.mean, self.std, x.dtype, x.device)
        x = (x - mean) / std
        if self.fixed_size is not None and tuple(x.shape[2:]) != tuple(self.fixed_size):
            import torch.nn.functional as F

            x = F.interpolate(x, size=self.fixed_size, mode="bilinear", align_corners=False)
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return x


@lru_cache(maxsize=64)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, C, 1, 1) tensors, made once per type and device rather than at every step."""
    import torch

    return (torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1))


def _numbers(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.5g}" for v in values)  # for people: 122.99925 reads as 123


def input_geometry(shape: Sequence[int | None], ambiguous_layout: str) -> dict[str, object]:
    """Layout, channels and sizes of an image input of shape (N, C, H, W) or (N, H, W, C), unknown sizes
    as None: ``layout``, ``channels`` when C is known, and ``default_size``/``fixed_size`` when H and W
    are. The channel axis is the one of axes 1 and 3 that holds 3 (RGB); where neither or both do, the
    one that is known and smaller than the other (a file fixes its channel count, which is smaller
    than an image's side: (N, 1, 28, 28), (N, 64, 64, 5)); else ``ambiguous_layout`` decides."""
    first, last = shape[1], shape[3]
    if (first == 3) != (last == 3):
        layout = "NCHW" if first == 3 else "NHWC"
    elif first != 3 and first is not None and (last is None or first < last):
        layout = "NCHW"
    elif first != 3 and last is not None and (first is None or last < first):
        layout = "NHWC"
    else:
        layout = ambiguous_layout
    channels = first if layout == "NCHW" else last
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    geometry: dict[str, object] = {"layout": layout}
    if channels:
        geometry["channels"] = int(channels)
    if height and width:
        geometry.update(default_size=int(height), fixed_size=(int(height), int(width)))
    return geometry


def file_spec(values: InputSpec | None, **geometry: object) -> InputSpec:
    """The spec of a model file: the layout, channel count and sizes read from the file (``geometry``),
    with the value range and channel order of ``values`` (default: raw 0..255, as nothing in the file
    says). ``values`` for another channel count than the file's is refused in one line."""
    channels = geometry.get("channels")
    if values is None:
        return InputSpec(**geometry)  # type: ignore[arg-type]
    if channels is not None and channels != values.channels:
        raise FilterVizError(f"the input spec is for {values.channel_words()} ({values.channels} channels), and the "
                             f"model file's input has {channels}; give a spec of {channels} channels "
                             f"(InputSpec(channels={channels}, ...))")
    return replace(values, **geometry)  # type: ignore[arg-type]


# Common input conventions. "raw" is what a model file gets when nothing says otherwise.
PRESETS: dict[str, InputSpec] = {
    "raw": InputSpec(),  # RGB 0..255, as is
    "unit": InputSpec(std=(255.0, 255.0, 255.0)),  # RGB 0..1
    "tf": InputSpec(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),  # RGB -1..1 (Keras "tf" mode)
    # BGR with ImageNet's mean pixel subtracted: the original VGG and ResNet (Keras "caffe" mode).
    "caffe": InputSpec(mean=(103.939, 116.779, 123.68), channel_order="BGR"),
    "imagenet": InputSpec.from_unit_range(IMAGENET_MEAN, IMAGENET_STD),  # torchvision, Keras "torch" mode
}
