"""A loaded model: the network, its input spec and its layer table, as one object."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputSizeError, MemoryBudgetError, first_line
from ..layers import (ACTIVATION, OUTPUT, LayerGraph, LayerInfo, LayerOutput, ModuleGraph, kind_names,
                      resolve_layer, split_call)
from ..memory import article, budget_words, largest, memory_budget, more_memory, readable
from .spec import InputSpec

ACTIVATIONS = kind_names(ACTIVATION)  # by class name, as the graph gives a layer's kind


@dataclass(eq=False)
class LoadedModel:
    """A network ready for feature visualization.

    ``module`` is in eval mode with weights that never take gradients; ``spec`` converts RGB 0..255
    pixels to its input; ``aliases`` maps extra layer names (such as Keras's ``block3_conv1``) to
    module paths; ``categories`` names its output classes, when known; ``source`` says where the
    weights came from; ``origin``, when set, loads the same model again (in another process).
    ``max_memory`` is the bytes a run with it may use (None: a safe share of the free memory); a
    forward pass at a size whose estimate exceeds it is refused before it runs.
    """

    name: str
    module: nn.Module
    spec: InputSpec
    aliases: dict[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] | None = None
    source: str = ""
    graph: LayerGraph | None = field(default=None, repr=False)
    channels_last: frozenset[str] = frozenset()
    origin: Callable[[], "LoadedModel"] | None = field(default=None, repr=False)
    max_memory: int | None = field(default=None, repr=False)
    _probes: dict[int, dict[str, LayerOutput] | str] = field(default_factory=dict, repr=False)
    _shapes: dict[tuple[str, int], tuple[tuple[int, ...] | None, str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.module.eval()
        for parameter in self.module.parameters():  # one by one: TorchScript modules lack requires_grad_
            parameter.requires_grad_(False)
        if self.graph is None:
            self.graph = ModuleGraph(self.module)

    def _first_tensor(self) -> torch.Tensor | None:
        for tensor in self.module.parameters():
            return tensor
        return next(iter(self.module.buffers()), None)

    @property
    def device(self) -> torch.device:
        """Where the module's weights are (the CPU for a module without any)."""
        tensor = self._first_tensor()
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the module's weights (float32 for a module without any)."""
        tensor = self._first_tensor()
        return tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32

    # -- layers ---------------------------------------------------------------------------------

    def _probe(self, size: int) -> dict[str, LayerOutput] | str:
        """Kind, output shape and call count of every layer call at input ``size`` (cached), or the
        error that stopped the forward pass."""
        if size not in self._probes:
            self.check_forward_memory(size)
            pixels = torch.full((1, self.spec.channels, size, size), 128.0, dtype=self.dtype, device=self.device)
            try:
                probe = self.graph.probe(self.spec.to_model_input(pixels))
                self._probes[size] = {name: LayerOutput(out.kind, self._nchw_shape(name, out.shape), out.calls)
                                      for name, out in probe.items()}
            except (RuntimeError, ValueError) as exc:  # e.g. too small for some layer
                self._probes[size] = first_line(exc)
        return self._probes[size]

    def layers(self, size: int | None = None) -> list[LayerInfo]:
        """Every addressable layer, in forward order (of completion), with channels and spatial size."""
        size = size or self.spec.default_size
        probe = self._probe(size)
        if isinstance(probe, str):
            smallest = self._smallest_size(lambda side: not isinstance(self._probe(side), str), size)
            if smallest is not None:
                raise InputSizeError(f"{self.name} cannot run at size {size}: it needs {smallest} px or more; "
                                     f"use --size {smallest}")
            raise InputSizeError(f"{self.name} cannot run at size {size} ({probe})")
        by_target: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            by_target.setdefault(target, []).append(alias)
        infos = []
        for name, out in probe.items():
            if len(out.shape) < 2:
                continue
            height, width = (out.shape[2], out.shape[3]) if len(out.shape) == 4 else (None, None)
            infos.append(LayerInfo(name, out.kind, out.shape[1], height, width, tuple(by_target.get(name, ())),
                                   out.calls))
        return infos

    def _nchw_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) == 4 and split_call(name)[0] in self.channels_last:
            return (shape[0], shape[3], shape[1], shape[2])
        return shape

    def _to_nchw(self, name: str, activations: torch.Tensor) -> torch.Tensor:
        if activations.ndim == 4 and split_call(name)[0] in self.channels_last:
            return activations.permute(0, 3, 1, 2)
        return activations

    def resolve(self, layer: str) -> str:
        """The module path of ``layer``, given by its native name or an alias.

        A module that runs several times per forward pass is addressed at its first call by its name,
        and at later calls as ``name#2``, ``name#3``...
        """
        return resolve_layer(layer, self.graph.names(), self.aliases, self.name)

    def layer_info(self, layer: str, size: int) -> LayerInfo:
        """``layer``'s output at input ``size``; raises InputSizeError if it has no spatial output there."""
        path = self.resolve(layer)
        shape, error = self._shape_at(path, size)
        if shape is None:
            smallest = self._smallest_size(lambda side: self._shape_at(path, side)[0] is not None, size)
            if smallest is not None:
                raise InputSizeError(
                    f"size {size} is too small for layer {layer} of {self.name}: it has no spatial output "
                    f"below {smallest} px; use --size {smallest} or more"
                )
            raise InputSizeError(f"layer {layer} of {self.name} cannot run at size {size}: {error}")
        height, width = (shape[2], shape[3]) if len(shape) == 4 else (None, None)
        aliases = tuple(a for a, t in self.aliases.items() if t == path)
        kind = self.layer_kind(path)
        return LayerInfo(path, kind, shape[1], height, width, aliases)

    def layer_kind(self, layer: str) -> str:
        """The class name of the module behind ``layer``."""
        return self.graph.kind(split_call(self.resolve(layer))[0])

    def is_activation(self, layer: str) -> bool:
        """Whether ``layer`` is an activation, or ends in one (a Keras ``Conv2D(..., activation="relu")``)."""
        if self.layer_kind(layer) in ACTIVATIONS:
            return True
        module = self.graph.module(split_call(self.resolve(layer))[0])
        activation = getattr(module, "activation", None)
        return callable(activation) and getattr(activation, "__name__", "linear") != "linear"

    def _shape_at(self, path: str, size: int) -> tuple[tuple[int, ...] | None, str]:
        """``path``'s output shape for one image of side ``size``, or None and why not (cached)."""
        if (path, size) not in self._shapes:
            self._shapes[path, size] = self._measure_shape(path, size)
        return self._shapes[path, size]

    def _measure_shape(self, path: str, size: int) -> tuple[tuple[int, ...] | None, str]:
        self.check_forward_memory(size, path)
        pixels = torch.full((1, self.spec.channels, size, size), 128.0, dtype=self.dtype, device=self.device)
        try:
            with torch.no_grad(), self.truncated(path) as run:
                out = run(pixels)
        except (RuntimeError, ValueError) as exc:  # e.g. a kernel larger than its input
            return None, first_line(exc)
        if out.numel() == 0:
            return None, "its output is empty"
        return tuple(out.shape), ""

    def _smallest_size(self, works: Callable[[int], bool], too_small: int) -> int | None:
        """The smallest input side above ``too_small`` that ``works``, by bisection; None if even the
        model's own size fails. The search never goes beyond that size, so a model that fails for
        another reason is never run on huge inputs."""
        low, high = too_small, self.spec.default_size
        if low >= high or not works(high):
            return None
        while high - low > 1:
            middle = (low + high) // 2
            if works(middle):
                high = middle
            else:
                low = middle
        return high

    # -- memory ---------------------------------------------------------------------------------

    @property
    def element_size(self) -> int:
        """Bytes per number of the model's activations (its weights' type)."""
        return torch.empty((), dtype=self.dtype).element_size()

    def forward_bytes(self, size: int, layers: Sequence[str] | None = None) -> tuple[int, str]:
        """About how many bytes one image of side ``size`` needs in a forward pass without gradients that
        ends after the last of ``layers`` (None: the whole model), and the layer where the most is held.

        The need is the input (twice: the pixels and the model's input), three times the largest output
        on the way (a layer's input, its output and a branch beside them) and the outputs that are
        kept. Output sizes come from the layer table at the model's own size, scaled by the pixel
        ratio (a fixed-size model's are not: its input is resized to that size), so nothing runs at
        ``size`` to find out.
        """
        side = self.spec.default_size
        element = self.element_size
        need = 2 * self.spec.channels * size * size * element
        probe = self._probe(side)
        if isinstance(probe, str) or not probe:  # the table cannot be had: the input is what is known
            return need, "the input"
        names = list(probe)
        paths = [self.resolve(layer) for layer in layers or () if layer != OUTPUT]
        ends = [names.index(path) + 1 for path in paths if path in names]
        end = max(ends) if ends and OUTPUT not in (layers or ()) else len(names)
        scale = 1.0 if self.spec.fixed_size else (size / side) ** 2
        sizes = {name: math.prod(out.shape) * element for name, out in list(probe.items())[:end]}
        where = max(sizes, key=sizes.__getitem__)
        kept = sum(sizes.get(path, 0) for path in set(paths))
        return int(need + (3 * sizes[where] + kept) * scale), where

    def check_forward_memory(self, size: int, layer: str | None = None) -> None:
        """Refuse, before it runs, a forward pass of one image of side ``size`` (up to ``layer``; None:
        the whole model) that would need more than ``max_memory``. Sizes up to the model's own are
        never refused: they are what the estimate itself is measured at."""
        if size <= self.spec.default_size:
            return
        budget = memory_budget(self.device, self.max_memory)
        wanted = [layer] if layer else None
        need, where = self.forward_bytes(size, wanted)
        if need <= budget:
            return
        fits = largest(lambda side: self.forward_bytes(side, wanted)[0] <= budget, size)
        what = f"a forward pass up to {layer}" if layer else "a forward pass"
        advice = f"use --size {fits} or less, or {more_memory(need, self.device)}" if fits else (
            f"use {more_memory(need, self.device)}")
        raise MemoryBudgetError(f"{article(size)} {size} px image of {self.name} needs about {readable(need)} "
                                f"at {where} ({what}), {budget_words(budget, self.max_memory, self.device)}: "
                                f"{advice}")

    # -- forward passes -------------------------------------------------------------------------

    @contextmanager
    def truncated(self, layer: str) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """Yield ``run(pixels) -> activations of layer``; pixels are RGB 0..255, (N, 3, H, W)."""
        with self.capture([layer]) as run:
            yield lambda pixels: next(iter(run(pixels).values()))

    @contextmanager
    def capture(self, layers: Sequence[str]) -> Iterator[Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
        """Yield ``run(pixels) -> {layer: activations}`` for several layers (names as given; ``OUTPUT``
        for the model's output) from one forward pass that ends after the last of them. Pixels are
        RGB 0..255, (N, 3, H, W); activations are (N, C, ...) whatever the model's layout."""
        paths = {layer: layer if layer == OUTPUT else self.resolve(layer) for layer in layers}
        with self.graph.capture(list(set(paths.values()))) as run:
            def run_pixels(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
                outputs = run(self.spec.to_model_input(pixels))
                return {layer: self._to_nchw(path, outputs[path]) for layer, path in paths.items()}
            yield run_pixels

    def activations(self, pixels: torch.Tensor, layer: str) -> torch.Tensor:
        """``layer``'s output for a batch of RGB 0..255 images; nothing after the layer runs."""
        with self.truncated(layer) as run:
            return run(pixels)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The full model's output for a batch of RGB 0..255 images (N, 3, H, W)."""
        return self.module(self.spec.to_model_input(pixels))

