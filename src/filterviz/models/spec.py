"""What a model expects as input, so that recipes can always work in RGB 0..255 pixel space."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import FilterVizError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How to turn RGB pixels in 0..255 (NCHW) into the tensor a model was trained on.

    ``mean`` and ``std`` are per channel in 0..255 units and apply in the model's own channel order:
    ``(pixels - mean) / std``. ``layout`` is the input's axis order. ``default_size`` is the side the
    model was trained at, used when a size is needed and none is given. ``fixed_size`` (height, width)
    is set for a model that takes only that size: images of another size are resized (bilinear) on the
    way in. ``min_size`` is the smallest side the whole model runs at, when known.
    """

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    default_size: int = 224
    fixed_size: tuple[int, int] | None = None
    min_size: int | None = None

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
        """A common input convention by name (see ``PRESETS``); ``kwargs`` set the other fields."""
        try:
            base = PRESETS[name.lower()]
        except KeyError:
            raise FilterVizError(f"unknown preprocessing {name!r}; use one of {', '.join(PRESETS)}") from None
        return replace(base, **kwargs)  # type: ignore[arg-type]

    def with_preset(self, name: str) -> "InputSpec":
        """This spec with the value range and channel order of preset ``name`` (layout and sizes kept)."""
        other = InputSpec.preset(name)
        return replace(self, mean=other.mean, std=other.std, channel_order=other.channel_order)

    def describe(self) -> str:
        """One line for people: channel order, normalization, layout and sizes."""
        def numbers(values: tuple[float, ...]) -> str:
            return ", ".join(f"{v:.5g}" for v in values)  # for people: 122.99925 reads as 123

        if self.mean == (0.0,) * 3 and self.std == (1.0,) * 3:
            values = "pixels 0..255 as they are"
        else:
            values = f"(pixels - [{numbers(self.mean)}]) / [{numbers(self.std)}]"
        size = (f"fixed {self.fixed_size[0]}x{self.fixed_size[1]} (other sizes are resized on the way in)"
                if self.fixed_size else f"any size (default {self.default_size})")
        return f"{self.channel_order}, {values}, {self.layout}, {size}"

    def to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Convert a batch of RGB 0..255 images (N, 3, H, W) to the model's input."""
        x = pixels.flip(1) if self.channel_order == "BGR" else pixels
        mean, std = _constants(self.mean, self.std, x.dtype, x.device)
        x = (x - mean) / std
        if self.fixed_size is not None and tuple(x.shape[2:]) != tuple(self.fixed_size):
            x = F.interpolate(x, size=self.fixed_size, mode="bilinear", align_corners=False)
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return x


@lru_cache(maxsize=64)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) tensors, made once per type and device rather than at every step."""
    return (torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1))


def input_geometry(shape: Sequence[int | None], ambiguous_layout: str) -> dict[str, object]:
    """Layout and sizes of an image input of shape (N, 3, H, W) or (N, H, W, 3), unknown sizes as None:
    ``layout``, and ``default_size``/``fixed_size`` when H and W are known. ``ambiguous_layout`` decides
    when axes 1 and 3 both, or neither, hold 3."""
    first, last = shape[1] == 3, shape[3] == 3
    layout = ambiguous_layout if first == last else ("NCHW" if first else "NHWC")
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if height and width:
        return {"layout": layout, "default_size": int(height), "fixed_size": (int(height), int(width))}
    return {"layout": layout}


def file_spec(values: InputSpec | None, **geometry: object) -> InputSpec:
    """The spec of a model file: the layout and sizes read from the file (``geometry``), with the value
    range and channel order of ``values`` (default: raw RGB 0..255, as nothing in the file says)."""
    return replace(values or InputSpec(), **geometry)  # type: ignore[arg-type]


# Common input conventions. "raw" is what a model file gets when nothing says otherwise.
PRESETS: dict[str, InputSpec] = {
    "raw": InputSpec(),  # RGB 0..255, as is
    "unit": InputSpec(std=(255.0, 255.0, 255.0)),  # RGB 0..1
    "tf": InputSpec(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),  # RGB -1..1 (Keras "tf" mode)
    # BGR with ImageNet's mean pixel subtracted: the original VGG and ResNet (Keras "caffe" mode).
    "caffe": InputSpec(mean=(103.939, 116.779, 123.68), channel_order="BGR"),
    "imagenet": InputSpec.from_unit_range(IMAGENET_MEAN, IMAGENET_STD),  # torchvision, Keras "torch" mode
}
