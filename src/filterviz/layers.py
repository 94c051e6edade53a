"""Layer lookup and the truncated forward pass.

A layer is any named sub-module of a model. Running "up to a layer" is done with a forward hook on it
that records its output and then ends the forward pass, so nothing after the layer is computed; the
hook is always removed when the context ends.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnknownLayerError


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: its name, kind, output channels and spatial size at a given input size.

    ``calls`` counts how often the module runs per forward pass; one that runs more than once is
    addressed at its first call.
    """

    name: str
    kind: str
    channels: int
    height: int | None
    width: int | None
    aliases: tuple[str, ...] = ()
    calls: int = 1

    @property
    def spatial(self) -> str:
        return "-" if self.height is None else f"{self.height}x{self.width}"


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the target layer's output is captured."""


@contextmanager
def truncated_forward(
    module: nn.Module, layer: str
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Yield a function that runs ``module`` on an input and returns ``layer``'s output.

    The forward pass ends at ``layer``: no module after it runs. The hook is removed on exit,
    whatever happens inside the context.
    """
    target = module.get_submodule(layer)
    captured: list[torch.Tensor] = []

    def stop_here(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured.append(output)
        raise _StopForward

    handle = target.register_forward_hook(stop_here)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        captured.clear()
        try:
            module(inputs)
        except _StopForward:
            return captured[0]
        raise UnknownLayerError(f"layer {layer!r} is never called by the model's forward pass; "
                                "choose a layer that the forward pass uses")

    try:
        yield run
    finally:
        handle.remove()


def probe_layers(module: nn.Module, inputs: torch.Tensor) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """Run one full forward pass and record, per named sub-module, (kind, output shape, call count)."""
    seen: dict[str, tuple[str, tuple[int, ...], int]] = {}
    handles = []

    def recorder(name: str) -> Callable[..., None]:
        def record(mod: nn.Module, _inputs: object, output: object) -> None:
            calls = seen[name][2] + 1 if name in seen else 1
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            seen[name] = (type(mod).__name__, seen[name][1] if name in seen else shape, calls)
        return record

    try:
        for name, sub in module.named_modules():
            if name:
                handles.append(sub.register_forward_hook(recorder(name)))
        with torch.no_grad():
            module(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def closest_names(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The candidates that look most like ``name`` (for "did you mean" hints)."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not close:  # e.g. a prefix such as "block3" still deserves a hint
        close = [c for c in candidates if c.startswith(name)][:n]
    return close


def resolve_layer(name: str, native: list[str], aliases: Mapping[str, str], model_name: str) -> str:
    """Map a user's layer name (native or alias) to the module path; raise with suggestions if unknown."""
    if name in aliases:
        return aliases[name]
    if name in native:
        return name
    hint = closest_names(name, list(aliases) + native)
    suggestion = f"closest: {', '.join(hint)}" if hint else "no similar names"
    raise UnknownLayerError(
        f"unknown layer {name!r} of {model_name} ({suggestion}); "
        f"`filterviz layers {model_name}` lists them all"
    )
