"""How a render runs on its device: arithmetic precision and batch size under a memory budget.

None of this changes what is computed beyond rounding; it decides how fast, and how much memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .catalog import PRECISIONS  # declared without torch, for the command line
from .errors import FilterVizError, MemoryBudgetError
from .memory import MEMORY_SHARE, free_memory, memory_budget, readable  # noqa: F401 - re-exported
from .models.loaded import LoadedModel

# Images per batch before any memory cap. On a GPU batching is where the speed is. On a CPU a batch
# whose saved activations outgrow the caches is slower per image (VGG16 block3_conv1 at 150 px, 43 MiB
# per image: 1.97 s per filter alone, 2.31 s in fours, 2.73 s in eights), while small ones gain from
# batching (block1_conv1: 0.074 s per filter alone, 0.038 s in eights); so a CPU batch holds about
# CPU_WORKING_SET of saved activations.
DEVICE_BATCH = {"cpu": 64, "cuda": 256, "mps": 64}
CPU_WORKING_SET = 48 * 2 ** 20
# Sides at which a forward pass is measured before its need is scaled to a larger side: small enough
# to cost little on any model, large enough that a stride-32 network still has 2x2 positions.
PROBE_SIDES = (64, 128)


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type for ``precision`` on ``device`` (None: full fp32).

    ``auto`` picks bf16 on GPUs that have it, else fp16, and fp32 on CPUs: measured on an AVX512-BF16
    CPU with torch 2.14, a bf16 ascent step (forward and backward) is slower than fp32, whether by
    autocast or with bf16 weights (benchmarks/speed.py). Asking for a precision the device cannot do
    is an error, not a silent fallback.
    """
    if precision not in PRECISIONS:
        raise FilterVizError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    kind = device.type
    if precision == "fp32":
        return None
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if precision == "fp16" and kind != "cuda":
        raise FilterVizError("fp16 is for GPUs; on this device use --precision bf16 or fp32")
    if precision == "bf16" and kind == "cpu" and not cpu_supports_bf16():
        raise FilterVizError("this CPU has no native bf16 arithmetic (AVX512-BF16 or AMX); use --precision fp32")
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise FilterVizError("this GPU has no bf16 arithmetic; use --precision fp16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device`` (nothing for None)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def channels_last(module: torch.nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Keep ``module``'s 4-D weights channels-last inside the context (restored after); yields whether
    it is on. Convolutions in that layout run faster on CPUs (VGG16 block3_conv1 step at 150 px:
    0.039 s against 0.046 s) and on GPUs with tensor cores."""
    if not enabled:
        yield False
        return
    try:
        module.to(memory_format=torch.channels_last)
    except (RuntimeError, TypeError, AttributeError):  # e.g. TorchScript modules
        yield False
        return
    try:
        yield True
    finally:
        module.to(memory_format=torch.contiguous_format)


def saved_bytes_per_image(model: LoadedModel, forward: Callable[[torch.Tensor], object], size: int,
                          dtype: torch.dtype | None) -> int:
    """Bytes that one image's ``forward(pixels)`` keeps for the backward pass (measured by running it)."""
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    pixels = torch.full((1, model.spec.channels, size, size), 128.0, dtype=model.dtype, device=model.device,
                        requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(model.device, dtype):
        forward(pixels)
    return total[0]


@dataclass(frozen=True)
class SavedBytes:
    """What one image keeps for the backward pass, as a function of its side: measured at ``low`` and
    ``high`` px (the same side when measured once) and extrapolated linearly in the pixel count, as
    activations grow with H*W. ``measured`` is False when no probe side could run (the model takes
    only sizes beyond its probes): then only the input is counted."""

    low: int
    low_bytes: int
    high: int
    high_bytes: int
    measured: bool = True

    def at(self, side: int) -> int:
        """The estimate for one image of ``side`` px."""
        if side <= self.low or self.low == self.high:
            reference, amount = (self.low, self.low_bytes) if side <= self.low else (self.high, self.high_bytes)
            return int(amount * side * side / (reference * reference))
        slope = max(self.high_bytes - self.low_bytes, 0) / (self.high ** 2 - self.low ** 2)
        return int(self.low_bytes + slope * (side * side - self.low ** 2))


def measure_saved_bytes(model: LoadedModel, forward: Callable[[torch.Tensor], object], side: int,
                        dtype: torch.dtype | None) -> SavedBytes:
    """What one image of ``side`` px keeps for the backward pass, without running anything large: a
    side up to PROBE_SIDES[-1] is measured as it is; a larger one at two probe sides (doubled while
    the model cannot run at them, up to twice its own size) and extrapolated."""
    if side <= PROBE_SIDES[-1]:
        amount = saved_bytes_per_image(model, forward, side, dtype)
        return SavedBytes(side, amount, side, amount)
    low, high = PROBE_SIDES
    limit = max(2 * model.spec.default_size, PROBE_SIDES[-1])
    while high < side and high <= limit:
        try:
            return SavedBytes(low, saved_bytes_per_image(model, forward, low, dtype),
                              high, saved_bytes_per_image(model, forward, high, dtype))
        except (RuntimeError, ValueError, AssertionError):  # too small for this model: probe larger
            low, high = high, 2 * high
    if side <= limit:  # a side near the model's own is cheap to measure as it is
        amount = saved_bytes_per_image(model, forward, side, dtype)
        return SavedBytes(side, amount, side, amount)
    pixels = model.spec.channels * side * side * torch.empty((), dtype=model.dtype).element_size()
    return SavedBytes(side, pixels, side, pixels, measured=False)


_readable = readable  # the name earlier code used


def auto_batch_size(model: LoadedModel, forward: Callable[[torch.Tensor], object], size: int, views: int,
                    max_memory: int | None, dtype: torch.dtype | None, together: int = 1, extra: int = 0,
                    saved: SavedBytes | None = None) -> int:
    """Images per batch: the device's batch (on a CPU, as many as keep CPU_WORKING_SET), capped so that a
    batch's saved activations (times 1.5 for what the backward pass holds besides, plus ``extra`` bytes
    per image: the image's own parameters and transforms) fit in ``max_memory`` bytes (default: a share
    of free memory). ``together`` images must fit in one batch (copies that read each other): if they
    cannot, that is an error. ``saved`` is the measurement if already made (see
    ``measure_saved_bytes``; nothing large is run to make it)."""
    kind = model.device.type
    saved = saved or measure_saved_bytes(model, forward, size, dtype)
    activations = max(saved.at(size), 1) * views
    cap = DEVICE_BATCH.get(kind, 8)
    if kind == "cpu":
        cap = max(1, min(cap, CPU_WORKING_SET // activations))
    budget = memory_budget(model.device, max_memory)
    per_image = 1.5 * activations + extra
    fits = int(budget // per_image)
    if fits < 1:
        raise MemoryBudgetError(f"one image needs about {readable(per_image)}, more than the memory budget of "
                                f"{readable(budget)}; use a smaller --size or a larger --max-memory")
    if fits < together:
        raise MemoryBudgetError(f"{together} copies that are compared with each other (a diversity term) must share "
                                f"one batch, which needs about {readable(per_image * together)}, more than the "
                                f"memory budget of {readable(budget)}; use at most {fits} --copies, a smaller --size "
                                "or a larger --max-memory")
    return min(cap, fits)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """On CUDA, deterministic kernels inside (cuDNN and cuBLAS choose the same algorithms on every run,
    so the same work gives the same bytes); the previous settings come back after. Nothing changes on
    other devices, whose kernels are deterministic for a given thread count."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op without such a kernel warns, not fails
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
