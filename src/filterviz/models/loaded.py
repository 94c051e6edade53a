"""A loaded model: the network, its input spec and its layer table, as one object."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputSizeError
from ..layers import LayerInfo, probe_layers, resolve_layer, truncated_forward
from .spec import InputSpec


@dataclass(eq=False)
class LoadedModel:
    """A network ready for feature visualization.

    ``module`` is in eval mode with weights that never take gradients; ``spec`` converts RGB 0..255
    pixels to its input; ``aliases`` maps extra layer names (such as Keras's ``block3_conv1``) to
    module paths; ``categories`` names its output classes, when known; ``source`` says where the
    weights came from.
    """

    name: str
    module: nn.Module
    spec: InputSpec
    aliases: dict[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] | None = None
    source: str = ""
    _probes: dict[int, dict[str, tuple[str, tuple[int, ...], int]]] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        self.module.eval()
        self.module.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    # -- layers ---------------------------------------------------------------------------------

    def _probe(self, size: int) -> dict[str, tuple[str, tuple[int, ...], int]]:
        """Output shapes of every sub-module at input ``size`` (cached); empty if the pass fails."""
        if size not in self._probes:
            pixels = torch.full((1, 3, size, size), 128.0, dtype=self.dtype, device=self.device)
            try:
                self._probes[size] = probe_layers(self.module, self.spec.to_model_input(pixels))
            except RuntimeError:  # too small for some layer: fall back to per-layer probes
                self._probes[size] = {}
        return self._probes[size]

    def layers(self, size: int | None = None) -> list[LayerInfo]:
        """Every addressable layer, in forward order, with output channels and spatial size."""
        probe = self._probe(size or self.spec.default_size)
        if not probe:
            raise InputSizeError(f"size {size} is too small for {self.name}; try --size {self.spec.default_size}")
        by_target: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            by_target.setdefault(target, []).append(alias)
        infos = []
        for name, (kind, shape, calls) in probe.items():
            if len(shape) < 2:
                continue
            height, width = (shape[2], shape[3]) if len(shape) == 4 else (None, None)
            infos.append(LayerInfo(name, kind, shape[1], height, width, tuple(by_target.get(name, ())), calls))
        return infos

    def resolve(self, layer: str) -> str:
        """The module path of ``layer``, given by its native name or an alias.

        A module that runs several times per forward pass is addressed at its first call.
        """
        native = [name for name, _ in self.module.named_modules() if name]
        return resolve_layer(layer, native, self.aliases, self.name)

    def layer_info(self, layer: str, size: int) -> LayerInfo:
        """``layer``'s output at input ``size``; raises InputSizeError if it has no spatial output there."""
        path = self.resolve(layer)
        shape = self._shape_at(path, size)
        if shape is None:
            smallest = self._smallest_size(path, size)
            raise InputSizeError(
                f"size {size} is too small for layer {layer} of {self.name}: it has no spatial output "
                f"below {smallest} px; use --size {smallest} or more"
            )
        height, width = (shape[2], shape[3]) if len(shape) == 4 else (None, None)
        aliases = tuple(a for a, t in self.aliases.items() if t == path)
        kind = type(self.module.get_submodule(path)).__name__
        return LayerInfo(path, kind, shape[1], height, width, aliases)

    def _shape_at(self, path: str, size: int) -> tuple[int, ...] | None:
        pixels = torch.full((1, 3, size, size), 128.0, dtype=self.dtype, device=self.device)
        try:
            with torch.no_grad(), self.truncated(path) as run:
                out = run(pixels)
        except RuntimeError:  # a kernel larger than its input, or an empty output
            return None
        if out.numel() == 0:
            return None
        return tuple(out.shape)

    def _smallest_size(self, path: str, too_small: int) -> int:
        """Smallest input side (above ``too_small``) at which ``path`` has output, by bisection."""
        low, high = too_small, max(too_small * 2, 8)
        while self._shape_at(path, high) is None:
            low, high = high, high * 2
            if high > 1 << 14:
                return high
        while high - low > 1:
            middle = (low + high) // 2
            if self._shape_at(path, middle) is None:
                low = middle
            else:
                high = middle
        return high

    # -- forward passes -------------------------------------------------------------------------

    @contextmanager
    def truncated(self, layer: str) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """Yield ``run(pixels) -> activations of layer``; pixels are RGB 0..255, (N, 3, H, W)."""
        with truncated_forward(self.module, self.resolve(layer)) as run:
            yield lambda pixels: run(self.spec.to_model_input(pixels))

    def activations(self, pixels: torch.Tensor, layer: str) -> torch.Tensor:
        """``layer``'s output for a batch of RGB 0..255 images; nothing after the layer runs."""
        with self.truncated(layer) as run:
            return run(pixels)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The full model's output for a batch of RGB 0..255 images (N, 3, H, W)."""
        return self.module(self.spec.to_model_input(pixels))
