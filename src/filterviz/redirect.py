"""Redirected gradients through switched-off ReLUs: how a render escapes a flat start.

A ReLU-like unit that is off everywhere on the start image passes no gradient, so an image whose
target lies behind such units cannot move at all: its picture stays the start image, although the
unit responds to other inputs. Redirection (Olah et al. 2017, Lucid's redirected ReLU) lets the
gradient through a switched-off unit where it would switch it on (upwards below the lower bend,
downwards above the upper one), but only for the images (batch rows) through which nothing passed
the ordinary way, and only while a render's first steps run. Once the image has moved, the
ordinary gradient takes over; an image with an ordinary gradient is never changed by it.

Only ``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardtanh`` and ``nn.Hardswish`` modules have a flat region to
redirect; a function called inside another module's ``forward`` (``F.relu``) is not reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .layers import FLAT, module_classes

_REDIRECTED = module_classes(FLAT)  # compared by exact type; nn.ReLU6 is a Hardtanh


class _Redirected(torch.autograd.Function):
    """A ReLU-like function whose backward redirects the gradient of rows through which none passed.

    ``kind`` is ``relu``, ``hardtanh`` (bends at ``low`` and ``high``) or ``hardswish`` (flat below -3).
    The ordinary gradient is computed by ATen's own backward kernels, so rows that have one get exactly
    the bytes an unchanged module would give.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str, low: float, high: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.kind, ctx.low, ctx.high = kind, low, high
        if kind == "relu":
            return torch.relu(x)
        if kind == "hardtanh":
            return torch.nn.functional.hardtanh(x, low, high)
        return torch.nn.functional.hardswish(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if ctx.kind == "relu":
            ordinary = torch.ops.aten.threshold_backward(grad, torch.relu(x), 0)
        elif ctx.kind == "hardtanh":
            ordinary = torch.ops.aten.hardtanh_backward(grad, x, ctx.low, ctx.high)
        else:
            ordinary = torch.ops.aten.hardswish_backward(grad, x)
        blocked = _all_zero_rows(ordinary)  # rows through which no gradient passed
        if not bool(blocked.any()):
            return ordinary, None, None, None
        # Let the gradient through where it would switch the unit on: upwards (a positive gradient of
        # the score to maximize) below the lower bend, downwards above the upper bend, as is inside.
        below, above = x <= ctx.low, x >= ctx.high
        passes = ~(below & (grad < 0)) & ~(above & (grad > 0))
        redirected = torch.where(passes, grad, torch.zeros_like(grad))
        shape = (-1,) + (1,) * (grad.ndim - 1)
        return torch.where(blocked.view(shape), redirected, ordinary), None, None, None


def _all_zero_rows(x: torch.Tensor) -> torch.Tensor:
    """Whether each row (first axis) of ``x`` is all zeros: ``x.reshape(N, -1).eq(0).all(1)``, with the
    same answer for every value (a NaN is not zero, -0 is), read in the tensor's memory order (a
    channels-last gradient is not copied into channels-first order) and as the largest magnitude (one
    vectorized pass, where comparing makes a tensor of booleans and reduces it)."""
    if x.ndim <= 1:
        x = x.reshape(-1, 1)
    if x.numel() == 0:  # no values: nothing passed
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1).abs().amax(dim=1) == 0


def _bends(module: nn.Module) -> tuple[str, float, float]:
    if isinstance(module, nn.Hardswish):
        return "hardswish", -3.0, float("inf")
    if isinstance(module, nn.Hardtanh):
        return "hardtanh", float(module.min_val), float(module.max_val)
    return "relu", 0.0, float("inf")


class Redirection:
    """Switches redirection on and off for the modules it was installed on (see ``redirected``)."""

    def __init__(self) -> None:
        self.active = False
        self.modules = 0  # how many modules redirect; 0: this model has none that can


@contextmanager
def redirected(module: nn.Module) -> Iterator[Redirection]:
    """Inside, every ReLU-like submodule of ``module`` redirects its gradient while ``active`` is set.

    Each module's ``forward`` is replaced on the instance and restored on exit, so nothing stays
    attached. TorchScript modules cannot be changed and are left as they are.
    """
    state = Redirection()
    patched: list[tuple[nn.Module, object]] = []  # (module, a forward set on the instance before, or None)

    def wrap(target: nn.Module) -> None:
        kind, low, high = _bends(target)
        ordinary = target.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if state.active and x.requires_grad:
                return _Redirected.apply(x, kind, low, high)
            return ordinary(x)

        patched.append((target, target.__dict__.get("forward")))
        target.forward = forward  # type: ignore[method-assign]

    try:
        for submodule in module.modules():
            if type(submodule) in _REDIRECTED and not isinstance(submodule, torch.jit.ScriptModule):
                wrap(submodule)
        state.modules = len(patched)
        yield state
    finally:
        for target, before in patched:
            if before is None:
                del target.forward
            else:
                target.forward = before  # type: ignore[method-assign]
