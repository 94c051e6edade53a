"""A loaded model: the network, its input spec and its layer table, as one object."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import FilterVizError, InputSizeError, LayoutError, MemoryBudgetError, first_line
from ..layers import (ACTIVATION, OUTPUT, LayerGraph, LayerInfo, LayerOutput, ModuleGraph, kind_names,
                      resolve_layer, split_call)
from ..layouts import (NHWC, Ambiguous, Layout, as_layout, declared_tokens, layout_error, part_name, split_part,
                       trace_input_roles)
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

    Every layer's output layout (``layout``) is found by a traced forward pass (``layouts``), with what
    the source declares: ``channels_last`` names layers whose 4-D outputs are (N, H, W, C) (a Keras
    layer's data format, an ONNX graph's channel axes). ``layouts`` says it for layers the trace cannot
    read, or reads otherwise: ``{"blocks.0.attn.q_norm": "nchw"}`` (a name, or a ``Layout``; a name
    without ``#N`` covers every call of its module). Captures give every layer in channels-first form.
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
    layouts: dict[str, Layout] = field(default_factory=dict)
    _probes: dict[int, dict[str, LayerOutput] | str] = field(default_factory=dict, repr=False)
    _shapes: dict[tuple[str, int], tuple[tuple[int, ...] | None, str]] = field(default_factory=dict, repr=False)
    _traced: dict[str, LayerOutput] = field(default_factory=dict, repr=False)  # layouts found so far
    _trace_end: str | None = field(default=None, repr=False)  # "": traced to the end; else why it failed

    def __post_init__(self) -> None:
        self.module.eval()
        for parameter in self.module.parameters():  # one by one: TorchScript modules lack requires_grad_
            parameter.requires_grad_(False)
        if self.graph is None:
            self.graph = ModuleGraph(self.module)
        self.layouts = {str(layer): as_layout(value) for layer, value in dict(self.layouts).items()}

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
                self._probes[size] = probe
            except (RuntimeError, ValueError, AssertionError) as exc:  # e.g. too small for some layer
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
        hw = self._input_hw(size)
        self._trace(size)
        infos = []
        for name, out in probe.items():
            if len(out.shape) < 2:
                continue
            layout = self._layout_of(name, size)
            channels = height = width = None
            try:
                canonical = None if layout.fits(out.shape) else layout.shape(out.shape, hw)
            except FilterVizError as exc:  # tokens that tile no grid at this size
                canonical, layout = None, Ambiguous(str(exc))
            if canonical is not None:
                channels = canonical[1]
                height, width = (canonical[2], canonical[3]) if len(canonical) == 4 else (None, None)
            infos.append(LayerInfo(name, out.kind, channels, height, width, tuple(by_target.get(name, ())),
                                   out.calls, layout, out.shape))
        return infos

    # -- layouts --------------------------------------------------------------------------------

    def _input_hw(self, size: int) -> tuple[int, int]:
        """The model input's height and width for images of side ``size`` (a fixed-size model's own)."""
        return tuple(self.spec.fixed_size) if self.spec.fixed_size else (size, size)  # type: ignore[return-value]

    def _hw_of(self, inputs: torch.Tensor) -> tuple[int, int]:
        return ((inputs.shape[1], inputs.shape[2]) if self.spec.layout == "NHWC"
                else (inputs.shape[-2], inputs.shape[-1]))

    def _trace(self, size: int | None = None, upto: str | None = None) -> None:
        """Find the layouts of every layer call up to ``upto`` (None: to the end), with one forward pass
        that follows each axis and stops after ``upto``, unless they are known already. It runs at the
        model's own size (else at ``size``), with two images, so that the batch axis is never one of the
        axes of size 1."""
        if self._trace_end is not None or (upto is not None and upto in self._traced):
            return
        sides = [self.spec.default_size] + ([size] if size and size != self.spec.default_size else [])
        reason = ""
        for side in sides:
            for batch in (2, 1):
                pixels = torch.full((batch, self.spec.channels, side, side), 128.0, dtype=self.dtype, device=self.device)
                try:
                    inputs = self.spec.to_model_input(pixels)
                    found = self.graph.trace(inputs, trace_input_roles(self.spec.layout),  # type: ignore[union-attr]
                                             declared_tokens(self.module), None if upto is None else [upto])
                except Exception as exc:  # noqa: BLE001 - whatever stops the pass, the layouts stay unknown
                    reason = first_line(exc)
                    continue
                self._traced.update(found)
                if upto is None or upto not in found:  # the pass went to the end
                    self._trace_end = ""
                return
        self._trace_end = reason or "no forward pass ran"

    def _given(self, path: str) -> tuple[str, Layout] | None:
        """The layout ``layouts`` gives layer call ``path``, and the name it was given by: for that call,
        or for every call of its module (a name without ``#N``)."""
        base = split_call(path)[0]
        every = None
        for given, value in self.layouts.items():
            resolved = split_part(self.resolve(given))[0]
            if resolved == path and split_call(given)[0] != given:
                return given, as_layout(value)
            if split_call(resolved)[0] == base and split_call(given)[0] == given:
                every = (given, as_layout(value))
        return every

    def _layout_of(self, path: str, size: int | None = None) -> Layout:
        """The layout of layer call ``path`` (a native name): given in ``layouts``, declared by the source
        (``channels_last``), or traced; ``Ambiguous`` with why where none says."""
        given = self._given(path)
        if given is not None:
            return given[1]
        self._trace(size, path)
        out = self._traced.get(path)
        if out is None:
            why = (f"the forward pass that finds layouts failed: {self._trace_end}" if self._trace_end
                   else "it was not called when filterviz followed the model's forward pass")
            return Ambiguous(why)
        if len(out.shape) == 4 and split_call(path)[0] in self.channels_last:
            return NHWC()  # declared by the model's source: a Keras layer's data format, an ONNX graph's axes
        return out.layout or Ambiguous()

    def _unreadable(self, path: str, layout: Layout, shape: tuple[int, ...], why: str) -> LayoutError:
        """The one line for an output that ``layout`` cannot read: a layout given that does not fit, or
        one that is not known."""
        given = self._given(path)
        if given is not None:
            return LayoutError(f"--layout {given[0]}={given[1].text()} does not fit layer {path} of {self.name}, "
                               f"whose output has shape {'x'.join(map(str, shape))}: {why}")
        return layout_error(path, self.name, shape, why)

    def layout(self, layer: str) -> Layout:
        """How ``layer``'s output is laid out (a ``Layout``; ``Ambiguous``, with why, where that is not
        known). Captures give it in channels-first form."""
        return self._layout_of(split_part(self.resolve(layer))[0])

    def _module_name(self, layer: str) -> str:
        """The native module name behind ``layer`` (no call number, no part)."""
        return split_call(split_part(self.resolve(layer))[0])[0]

    def resolve(self, layer: str) -> str:
        """The module path of ``layer``, given by its native name or an alias.

        A module that runs several times per forward pass is addressed at its first call by its name,
        and at later calls as ``name#2``, ``name#3``... A part of a tokens layer keeps its part:
        ``blocks.6<cls>``.
        """
        base, part = split_part(layer)
        path = resolve_layer(base, self.graph.names(), self.aliases, self.name)
        return part_name(path, part) if part else path

    def layer_info(self, layer: str, size: int) -> LayerInfo:
        """``layer``'s output at input ``size``, channels-first (a ``LayoutError`` where its layout is not
        known); raises InputSizeError if it has no output there."""
        path = self.resolve(layer)
        base, part = split_part(path)
        shape, error = self._shape_at(base, size)
        if shape is None:
            smallest = self._smallest_size(lambda side: self._shape_at(base, side)[0] is not None, size)
            if smallest is not None:
                raise InputSizeError(
                    f"size {size} is too small for layer {layer} of {self.name}: it has no spatial output "
                    f"below {smallest} px; use --size {smallest} or more"
                )
            raise InputSizeError(f"layer {layer} of {self.name} cannot run at size {size}: {error}")
        layout = self._layout_of(base, size)
        why = layout.fits(shape)
        if why:
            raise self._unreadable(base, layout, shape, why)
        canonical = layout.shape(shape, self._input_hw(size))
        aliases = tuple(a for a, t in self.aliases.items() if t == base)
        kind = self.layer_kind(path)
        if part:
            why = layout.part_error(part)
            if why:
                raise LayoutError(f"layer {base} of {self.name} has no {part} part to read: {why}")
            return LayerInfo(path, kind, canonical[1], None, None, aliases, layout=layout, shape=shape)
        height, width = (canonical[2], canonical[3]) if len(canonical) == 4 else (None, None)
        return LayerInfo(path, kind, canonical[1], height, width, aliases, layout=layout, shape=shape)

    def layer_kind(self, layer: str) -> str:
        """The class name of the module behind ``layer``."""
        return self.graph.kind(self._module_name(layer))

    def is_activation(self, layer: str) -> bool:
        """Whether ``layer`` is an activation, or ends in one (a Keras ``Conv2D(..., activation="relu")``)."""
        if self.layer_kind(layer) in ACTIVATIONS:
            return True
        module = self.graph.module(self._module_name(layer))
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
            with torch.no_grad(), self.graph.capture([path]) as run:  # type: ignore[union-attr]
                out = run(self.spec.to_model_input(pixels))[path]  # as the layer gives it
        except (RuntimeError, ValueError, AssertionError) as exc:  # a kernel larger than its input; a size check
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
        paths = [split_part(self.resolve(layer))[0] for layer in layers or () if layer != OUTPUT]
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
        RGB 0..255, (N, 3, H, W); activations are channels-first whatever the model's layout: (N, C, H, W)
        for maps and patch tokens, (N, C) for vectors; a part of a tokens layer as its layout gives it."""
        readers: dict[str, tuple[str, Layout | None, str]] = {}
        for layer in layers:
            if layer == OUTPUT:
                readers[layer] = (OUTPUT, None, "")
            else:
                base, part = split_part(self.resolve(layer))
                readers[layer] = (base, self._layout_of(base), part)
        with self.graph.capture(list({base for base, _, _ in readers.values()})) as run:  # type: ignore[union-attr]
            def run_pixels(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
                inputs = self.spec.to_model_input(pixels)
                outputs = run(inputs)
                return {layer: outputs[base] if layout is None else self._read(base, layout, part, outputs[base], inputs)
                        for layer, (base, layout, part) in readers.items()}
            yield run_pixels

    def _read(self, path: str, layout: Layout, part: str, raw: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """A layer's output in channels-first form (or its ``part``)."""
        why = layout.fits(tuple(raw.shape))
        if why:
            raise self._unreadable(path, layout, tuple(raw.shape), why)
        why = layout.part_error(part) if part else ""
        if why:
            raise LayoutError(f"layer {path} of {self.name} has no {part} part to read: {why}")
        return layout.part(raw, part, self._hw_of(inputs)) if part else layout.canonical(raw, self._hw_of(inputs))

    def activations(self, pixels: torch.Tensor, layer: str) -> torch.Tensor:
        """``layer``'s output for a batch of RGB 0..255 images; nothing after the layer runs."""
        with self.truncated(layer) as run:
            return run(pixels)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The full model's output for a batch of RGB 0..255 images (N, 3, H, W)."""
        return self.module(self.spec.to_model_input(pixels))

