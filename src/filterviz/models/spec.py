"""What a model expects as input, so that recipes can always work in RGB 0..255 pixel space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class InputSpec:
    """How to turn RGB pixels in 0..255 (NCHW) into the tensor a model was trained on.

    ``mean`` and ``std`` are per channel in 0..255 units and apply in the model's own channel order:
    ``(pixels - mean) / std``. ``default_size`` is the side the model was trained at, used when a
    size is needed and none is given (layer listings, size checks).
    """

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    default_size: int = 224

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

    def to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Convert a batch of RGB 0..255 images (N, 3, H, W) to the model's input."""
        x = pixels.flip(1) if self.channel_order == "BGR" else pixels
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return x
