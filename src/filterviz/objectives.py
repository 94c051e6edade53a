"""Objectives: what the ascent maximizes, computed per image of a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelObjective:
    """Mean activation of one channel (filter) per image: image ``i`` is scored on ``channels[i]``.

    This is the book's loss, ``mean(layer_output[:, :, :, filter_index])``, for a whole batch at once;
    each image's score depends only on that image, so batched and one-at-a-time ascents agree.
    """

    layer: str
    channels: Sequence[int]

    def __call__(self, activations: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(list(self.channels), device=activations.device)
        rows = torch.arange(activations.shape[0], device=activations.device)
        picked = activations[rows, index]  # (N, H, W) for conv layers, (N,) for linear ones
        return picked.reshape(picked.shape[0], -1).mean(dim=1)
