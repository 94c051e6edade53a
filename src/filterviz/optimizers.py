"""Optimizers: how each step changes the images' parameters, given the gradient of their scores.

An ``Optimizer`` is a registered part: a recipe names one (``optimizer="adam"``), ``render(optimizer=...)``
takes an instance (or a ``torch.optim.Optimizer`` class), ``register_optimizer`` adds one. Built in:
``ascent``, the book's step ``x += lr * g / (sqrt(mean(g**2)) + 1e-5)`` with the mean taken per image;
``adam`` and ``nadam``, PyTorch's, maximizing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .catalog import OPTIMIZERS  # declared without torch, for the command line
from .errors import FilterVizError

Step = Callable[[Sequence[torch.Tensor]], None]  # called with each parameter's gradient, once per step


class Optimizer:
    """A ``name``, the buffers it keeps per parameter (``moments``, for memory estimates), and
    ``start``, which returns the step function for a batch's parameters. Gradients point uphill: the
    step must increase the score."""

    name: str = ""
    moments: int = 0

    def start(self, parameters: list[torch.nn.Parameter], learning_rate: float) -> Step:
        raise NotImplementedError


class NormalizedAscent(Optimizer):
    """The book's gradient ascent: each image's gradient divided by its RMS, times the step."""

    name = "ascent"

    def start(self, parameters: list[torch.nn.Parameter], learning_rate: float) -> Step:
        @torch.no_grad()
        def step(grads: Sequence[torch.Tensor]) -> None:
            for parameter, grad in zip(parameters, grads):
                rms = grad.square().flatten(1).mean(dim=1).sqrt()  # per image: the first axis
                parameter += grad / (rms.view(-1, *[1] * (grad.ndim - 1)) + 1e-5) * learning_rate
        return step


class TorchOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` class, made to maximize: ``TorchOptimizer("sgd", torch.optim.SGD,
    momentum=0.9)``. ``moments``: the buffers it keeps per parameter (2 for Adam's)."""

    def __init__(self, name: str, kind: type[torch.optim.Optimizer], moments: int = 2, **options: Any) -> None:
        self.name = name
        self.kind = kind
        self.moments = moments
        self.options = options

    def start(self, parameters: list[torch.nn.Parameter], learning_rate: float) -> Step:
        optimizer = self.kind(parameters, lr=learning_rate, maximize=True, **self.options)

        def step(grads: Sequence[torch.Tensor]) -> None:
            with torch.no_grad():
                for parameter, grad in zip(parameters, grads):
                    parameter.grad = grad
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def __repr__(self) -> str:
        return f"TorchOptimizer({self.name!r}, {self.kind.__module__}.{self.kind.__qualname__})"


def register_optimizer(optimizer: Optimizer) -> Optimizer:
    """Add an optimizer under its ``name``."""
    return OPTIMIZERS.register(optimizer)


register_optimizer(NormalizedAscent())
# foreach: the same arithmetic, kernel for kernel, as the default single-tensor loop on a CPU (it is the
# default on a GPU), with fewer intermediate tensors: the same bytes, about 3x faster a step on a CPU.
# (NAdam's foreach form computes in another order and gives other bytes, so it keeps the default.)
register_optimizer(TorchOptimizer("adam", torch.optim.Adam, foreach=True))
register_optimizer(TorchOptimizer("nadam", torch.optim.NAdam))


def as_optimizer(optimizer: Optimizer | type[torch.optim.Optimizer] | str) -> Optimizer:
    """An optimizer from a registered name, an ``Optimizer``, or a ``torch.optim.Optimizer`` class."""
    if isinstance(optimizer, str):
        return OPTIMIZERS.get(optimizer)
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return TorchOptimizer(optimizer.__name__.lower(), optimizer)
    raise FilterVizError(f"optimizer must be a name ({', '.join(OPTIMIZERS)}), a filterviz Optimizer or a "
                         f"torch.optim.Optimizer class, not {type(optimizer).__name__}")
