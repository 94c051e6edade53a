"""Layers: listing a model's layers, looking one up by name, and the truncated forward pass.

A layer is a named module of a model. A module that runs several times in one forward pass (such as
a ReLU shared by a ResNet block's branches) has one layer per call: ``layer1.0.relu`` is its first
call, ``layer1.0.relu#2`` its second. Running "up to a layer" records the layer's output and then ends
the forward pass, so nothing after the layer is computed. How a model is reached inside is a
``LayerGraph``: ``ModuleGraph`` uses forward hooks (PyTorch, timm, Keras on its torch backend, converted
ONNX graphs), which are always removed when the context ends; ``ScriptGraph`` (TorchScript files) steps
through compiled graphs. Both probe, trace and capture through ``WatchedGraph``, written once. A trace
is a forward pass that follows what each axis of each tensor means (``axes.AxisTrace``), and so
gives every layer call's output layout (channel map, channels-last map, tokens, vector).

The kinds of module that filterviz treats specially (activations, normalizations, per-channel modules,
ReLU-like modules with a flat region) are known here, in one table: ``MODULE_KINDS``.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import torch
from torch import nn

from .errors import UnknownLayerError
from .axes import AxisTrace
from .layouts import OUTPUT, Ambiguous, Layout, Roles, TokenDeclaration, classify

CALL_MARK = "#"  # "name#2": the second call of a module that runs more than once


# -- kinds of module -------------------------------------------------------------------------------
# What filterviz knows of kinds of module, in one table: each kind (a PyTorch class, or the class name
# of a kind known by name only) and its traits. Every list of kinds elsewhere is derived from it.
ACTIVATION = "activation"  # a nonlinearity: a layer of this kind is an activation
PER_CHANNEL = "per-channel"  # acts on each channel alone, so picking a channel commutes with it
FLAT = "flat"  # ReLU-like, with a flat region that a redirected gradient can cross (redirect.py)
NORM = "norm"  # a normalization: an atlas shows a convolution as it is after its norm

MODULE_KINDS: dict[type[nn.Module] | str, frozenset[str]] = {
    nn.ReLU: frozenset({ACTIVATION, PER_CHANNEL, FLAT}),
    nn.ReLU6: frozenset({ACTIVATION, PER_CHANNEL, FLAT}),  # an nn.Hardtanh
    nn.Hardswish: frozenset({ACTIVATION, PER_CHANNEL, FLAT}),
    nn.Hardtanh: frozenset({FLAT}),
    nn.SiLU: frozenset({ACTIVATION, PER_CHANNEL}),
    nn.GELU: frozenset({ACTIVATION, PER_CHANNEL}),
    nn.LeakyReLU: frozenset({ACTIVATION, PER_CHANNEL}),
    nn.ELU: frozenset({ACTIVATION, PER_CHANNEL}),
    nn.Mish: frozenset({ACTIVATION, PER_CHANNEL}),
    nn.Sigmoid: frozenset({ACTIVATION, PER_CHANNEL}),
    nn.Tanh: frozenset({ACTIVATION, PER_CHANNEL}),
    nn.Identity: frozenset({PER_CHANNEL}),
    nn.BatchNorm2d: frozenset({NORM}),  # per channel too, in eval mode only: fastpath.py checks that itself
    nn.GroupNorm: frozenset({NORM}),
    nn.InstanceNorm2d: frozenset({NORM}),
    "BatchNormalization": frozenset({NORM}),  # Keras
    "LayerNorm2d": frozenset({NORM}),  # timm
}


def module_classes(trait: str) -> tuple[type[nn.Module], ...]:
    """The PyTorch classes of the kinds that have ``trait`` (for ``isinstance`` and ``type(...) in``)."""
    return tuple(kind for kind, traits in MODULE_KINDS.items() if trait in traits and not isinstance(kind, str))


def kind_names(trait: str) -> frozenset[str]:
    """The class names of the kinds that have ``trait``, as ``LayerGraph.kind`` gives them."""
    return frozenset(kind if isinstance(kind, str) else kind.__name__
                     for kind, traits in MODULE_KINDS.items() if trait in traits)


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: its name, kind, output channels and spatial size at a given input size.

    ``calls`` counts how often the module runs per forward pass; each call is a layer of its own
    (``name``, ``name#2``, ...). ``layout`` says how its output is laid out (``layouts``); channels,
    height and width are those of its channels-first form: a token layer's hidden units and its patch
    grid, a channels-last map's channels. ``shape`` is the output's own shape, for one image. Where the
    layout is not known, channels, height and width are None.
    """

    name: str
    kind: str
    channels: int | None
    height: int | None
    width: int | None
    aliases: tuple[str, ...] = ()
    calls: int = 1
    layout: Layout | None = None
    shape: tuple[int, ...] = ()

    @property
    def spatial(self) -> str:
        return "-" if self.height is None else f"{self.height}x{self.width}"

    @property
    def output(self) -> str:
        """The layout, positions and channels, for people: ``tokens 1+14x14, 768``, ``nchw 56x56, 96``,
        ``vector 1000``; ``? 3x197x64`` where the layout is not known."""
        if self.layout is None or not self.layout.known or self.channels is None:
            return Ambiguous().describe(self.shape, ())
        canonical = (1, self.channels) if self.height is None else (1, self.channels, self.height, self.width)
        return self.layout.describe(self.shape, canonical)


@dataclass(frozen=True)
class LayerOutput:
    """What a probe saw of one call of a layer: its kind, output shape, and the module's call count; a
    trace also says its layout."""

    kind: str
    shape: tuple[int, ...]
    calls: int = 1
    layout: Layout | None = None


class StopForward(Exception):
    """Raised inside a forward pass once the target layer's output is captured, to end it there."""


def split_call(name: str) -> tuple[str, int]:
    """``"relu#2"`` -> ``("relu", 2)``; a name without a call number is its first call."""
    base, mark, number = name.rpartition(CALL_MARK)
    if mark and number.isdigit() and int(number) >= 1:
        return base, int(number)
    return name, 1


def call_name(name: str, call: int) -> str:
    return name if call == 1 else f"{name}{CALL_MARK}{call}"


def outputs_by_call(events: Sequence[tuple[str, str, tuple[int, ...]]] | Sequence[tuple[str, str, tuple[int, ...], Layout]]
                    ) -> dict[str, LayerOutput]:
    """Probe events (name, kind, output shape, and from a trace its layout), in the order the calls
    ended, as layers: one per call (``name``, ``name#2``...), each knowing how often its module ran."""
    totals = Counter(event[0] for event in events)
    counts: Counter[str] = Counter()
    layers: dict[str, LayerOutput] = {}
    for name, kind, shape, *layout in events:
        counts[name] += 1
        layers[call_name(name, counts[name])] = LayerOutput(kind, shape, totals[name], *layout)
    return layers


class LayerGraph(Protocol):
    """How filterviz reaches inside a model: list its layers, probe their outputs, run up to one."""

    def names(self) -> list[str]:
        """Native names of every module that can be a layer (without call numbers)."""

    def kind(self, name: str) -> str:
        """What kind of layer ``name`` (a native name) is: its class name."""

    def module(self, name: str) -> nn.Module | None:
        """The ``nn.Module`` behind layer ``name`` (a native name), or None where there is none (a name
        it does not know, or a graph whose layers are not modules)."""

    def modules(self) -> Mapping[str, nn.Module]:
        """Every layer's ``nn.Module`` by native name, in the order of ``names`` (empty for a graph
        whose layers are not modules); read-only."""

    def probe(self, inputs: torch.Tensor) -> dict[str, LayerOutput]:
        """Run the whole model once; every layer call's output, keyed by layer name, in forward order."""

    def trace(self, inputs: torch.Tensor, roles: Roles, declared: TokenDeclaration | None = None,
              upto: Sequence[str] | None = None) -> dict[str, LayerOutput]:
        """Run the model once, following what each axis means from the input's (``roles``), up to the
        last of the layer calls ``upto`` (None: to the end); every layer call's output with its layout,
        keyed by layer name, in forward order."""

    def capture(self, layers: Sequence[str]) -> AbstractContextManager[Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
        """A context yielding ``run(inputs) -> {layer: output}`` for native layer names (with call
        numbers) and ``OUTPUT``; nothing runs after the last of them."""


Seen = Callable[[str, object], None]  # told (native name, output) as each call of a watched layer ends


class WatchedGraph:
    """``probe`` and ``capture`` of a LayerGraph, written once over the one thing each graph does its
    own way: ``watch``, a forward pass that reports the calls of chosen layers as they end."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def kind(self, name: str) -> str:
        raise NotImplementedError

    def watch(self, layers: Collection[str] | None,
              seen: Seen) -> AbstractContextManager[Callable[[torch.Tensor], object]]:
        """A context yielding ``forward(inputs) -> the model's output``, which tells ``seen`` of every call
        of ``layers`` (native names; None: of every module called) as it ends. An exception that
        ``seen`` raises (``StopForward``) ends the forward pass there."""
        raise NotImplementedError

    def probe(self, inputs: torch.Tensor) -> dict[str, LayerOutput]:
        events: list[tuple[str, str, tuple[int, ...]]] = []
        known = set(self.names())

        def seen(name: str, output: object) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            events.append((name, self.kind(name) if name in known else "?", shape))

        with self.watch(None, seen) as forward, torch.no_grad():
            forward(inputs)
        return outputs_by_call(events)

    def followed(self, trace: AxisTrace) -> AbstractContextManager[object]:
        """A context in which every operation of a forward pass is told to ``trace``: the torch function
        mode itself; a graph that runs operations its own way says so here."""
        return trace

    def trace(self, inputs: torch.Tensor, roles: Roles, declared: TokenDeclaration | None = None,
              upto: Sequence[str] | None = None) -> dict[str, LayerOutput]:
        trace = AxisTrace()
        trace.seed(inputs, roles)
        events: list[tuple[str, str, tuple[int, ...], Layout]] = []
        known = set(self.names())
        wanted = {split_call(layer) for layer in upto} if upto is not None else set()
        calls: Counter[str] = Counter()

        def seen(name: str, output: object) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            layout = classify(trace.roles(output), shape, declared) if shape else Ambiguous("it is not one tensor")
            events.append((name, self.kind(name) if name in known else "?", shape, layout))
            calls[name] += 1
            wanted.discard((name, calls[name]))
            if upto is not None and not wanted:
                raise StopForward

        with torch.no_grad(), self.followed(trace), self.watch(None, seen) as forward:
            try:
                forward(inputs)
            except StopForward:
                pass
            except Exception:
                if upto is None or wanted:  # not our stop, re-raised (Keras does)
                    raise
        return outputs_by_call(events)

    @contextmanager
    def capture(self, layers: Sequence[str]) -> Iterator[Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
        wanted = {split_call(layer) for layer in layers if layer != OUTPUT}
        captured: dict[str, torch.Tensor] = {}
        calls: dict[str, int] = {}
        whole = OUTPUT in layers  # the model's own output: no early stop

        def seen(name: str, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if (name, calls[name]) in wanted:
                captured[call_name(name, calls[name])] = output  # type: ignore[assignment]
                if not whole and len(captured) == len(wanted):
                    raise StopForward

        with self.watch({n for n, _ in wanted}, seen) as forward:
            def run(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
                captured.clear()
                calls.clear()
                try:
                    output = forward(inputs)
                except StopForward:
                    return dict(captured)
                except Exception:
                    if not whole and captured and len(captured) == len(wanted):  # our stop, re-raised (Keras)
                        return dict(captured)
                    raise
                if len(captured) < len(wanted):
                    missing = sorted(call_name(n, c) for n, c in wanted if call_name(n, c) not in captured)
                    raise UnknownLayerError(f"layer {missing[0]!r} is not called by the model's forward pass; "
                                            "choose a layer that the forward pass uses")
                return {**captured, OUTPUT: output} if whole else dict(captured)  # type: ignore[dict-item]

            yield run


class ModuleGraph(WatchedGraph):
    """A LayerGraph over ``nn.Module``s, with forward hooks.

    ``modules`` maps layer names to the modules to hook (default: the root's named sub-modules).
    """

    def __init__(self, root: nn.Module, modules: Mapping[str, nn.Module] | None = None) -> None:
        self.root = root
        self._layers = dict(modules) if modules is not None else {n: m for n, m in root.named_modules() if n}

    def names(self) -> list[str]:
        return list(self._layers)

    def kind(self, name: str) -> str:
        return type(self._layers[name]).__name__

    def module(self, name: str) -> nn.Module | None:
        return self._layers.get(name)

    def modules(self) -> Mapping[str, nn.Module]:
        return MappingProxyType(self._layers)

    @contextmanager
    def followed(self, trace: AxisTrace) -> Iterator[AxisTrace]:
        # Before any other hook: a module output that no operation explained gets its input's meanings.
        handles = [module.register_forward_hook(lambda _m, inputs, output: trace.module_output(inputs, output),
                                                prepend=True)
                   for module in self._layers.values()]
        try:
            with trace:
                yield trace
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def watch(self, layers: Collection[str] | None, seen: Seen) -> Iterator[Callable[[torch.Tensor], object]]:
        handles = []

        def hook(name: str) -> Callable[..., None]:
            return lambda _module, _inputs, output: seen(name, output)

        try:
            for name in self._layers if layers is None else layers:
                handles.append(self._layers[name].register_forward_hook(hook(name)))
            yield self.root
        finally:
            for handle in handles:
                handle.remove()


def closest_names(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The candidates that look most like ``name`` (for "did you mean" hints)."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not close:  # e.g. a prefix such as "block3" still deserves a hint
        close = [c for c in candidates if c.startswith(name)][:n]
    return close


def resolve_layer(name: str, native: list[str], aliases: Mapping[str, str], model_name: str) -> str:
    """Map a user's layer name (native or alias, with an optional ``#call``) to the native name;
    raise with suggestions if unknown."""
    if name in aliases:
        return aliases[name]
    base, call = split_call(name)
    if base in aliases:
        return call_name(aliases[base], call)
    if base in native:
        return call_name(base, call)
    hint = closest_names(name, list(aliases) + native)
    suggestion = f"closest: {', '.join(hint)}" if hint else "no similar names"
    raise UnknownLayerError(
        f"unknown layer {name!r} of {model_name} ({suggestion}); "
        f"`filterviz layers {model_name}` lists them all"
    )
