"""How a render runs on its device: arithmetic precision and batch size under a memory budget.

None of this changes what is computed beyond rounding; it decides how fast, and how much memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

from .errors import FilterVizError
from .models.loaded import LoadedModel

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# Images per batch before any memory cap. On a CPU a larger batch falls out of the caches and is
# slower per image (measured: benchmarks/speed.py); on a GPU batching is where the speed is.
DEVICE_BATCH = {"cpu": 4, "cuda": 256, "mps": 64}
MEMORY_SHARE = {"cpu": 0.25, "cuda": 0.5, "mps": 0.25}  # of the free memory, when no budget is given


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type for ``precision`` on ``device`` (None: full fp32).

    ``auto`` picks bf16 on CPUs with native bf16 and on GPUs that have it (else fp16 on GPUs), and fp32
    elsewhere. Asking for a precision the device cannot do is an error, not a silent fallback.
    """
    if precision not in PRECISIONS:
        raise FilterVizError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    kind = device.type
    if precision == "fp32":
        return None
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if kind == "cpu" and cpu_supports_bf16() else None
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


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (for a CPU, the memory available to new processes)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def saved_bytes_per_image(model: LoadedModel, forward: Callable[[torch.Tensor], object], size: int,
                          dtype: torch.dtype | None) -> int:
    """Bytes that one image's ``forward(pixels)`` keeps for the backward pass (measured)."""
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    pixels = torch.full((1, 3, size, size), 128.0, dtype=model.dtype, device=model.device, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(model.device, dtype):
        forward(pixels)
    return total[0]


def _readable(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def auto_batch_size(model: LoadedModel, forward: Callable[[torch.Tensor], object], size: int, views: int,
                    max_memory: int | None, dtype: torch.dtype | None) -> int:
    """Images per batch: the device's batch, capped so that a batch's saved activations (times 1.5 for
    what the backward pass holds besides) fit in ``max_memory`` bytes (default: a share of free memory)."""
    kind = model.device.type
    cap = DEVICE_BATCH.get(kind, 8)
    budget = max_memory if max_memory is not None else int(free_memory(model.device) * MEMORY_SHARE.get(kind, 0.25))
    per_image = 1.5 * views * max(saved_bytes_per_image(model, forward, size, dtype), 1)
    fits = int(budget // per_image)
    if fits < 1:
        raise FilterVizError(f"one image needs about {_readable(per_image)}, more than the memory budget of "
                             f"{_readable(budget)}; use a smaller --size or a larger --max-memory")
    return min(cap, fits)
