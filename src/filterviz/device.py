"""How a render runs on its device: arithmetic precision and batch size under a memory budget.

None of this changes what is computed beyond rounding; it decides how fast, and how much memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .catalog import DEFAULT_PRECISION, PRECISIONS  # noqa: F401 - declared without torch, for the command line
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


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (and the system lets programs use them)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``auto`` means on a device: the precision, and why (shown to the user)."""

    precision: str
    reason: str


# bf16 must be this much faster than fp32 in the measurement to be chosen: near a tie, fp32 keeps more
# of the activation, and a margin keeps a remeasurement from flipping the choice.
BF16_MARGIN = 1.25


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "filterviz" / "precision.json"


def _machine_key() -> str:
    """This CPU, its flags, torch's version and the thread count: what a CPU measurement depends on."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in (platform.processor(), platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{name} | flags {digest} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def measure_cpu_bf16_speedup(repeats: int = 3) -> float:
    """fp32 time over bf16 time of a convolution's forward pass and input gradient (64 to 64 channels,
    56 px, batch 4: the middle of a typical convnet), the best of ``repeats`` each. About a second."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
    x = torch.randn(4, 64, 56, 56, generator=generator).contiguous(memory_format=torch.channels_last)

    def best(dtype: torch.dtype | None) -> float:
        times = []
        for _ in range(repeats + 1):  # the first run only warms up
            image = x.clone().requires_grad_(True)
            started = time.perf_counter()
            with autocast(torch.device("cpu"), dtype):
                out = conv(image)
            torch.autograd.grad(out.float().square().mean(), image)
            times.append(time.perf_counter() - started)
        return min(times[1:])

    return best(None) / best(torch.bfloat16)


def measured_cpu_precision() -> PrecisionChoice:
    """bf16 or fp32 for this CPU by a short measurement, made once per machine and cached in
    ``~/.cache/filterviz/precision.json`` (``$XDG_CACHE_HOME``), so a later run chooses the same."""
    file, key = _cache_file(), _machine_key()
    try:
        cached = json.loads(file.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    speedup = cached.get(key)
    if not isinstance(speedup, (int, float)):
        speedup = measure_cpu_bf16_speedup()
        cached[key] = round(speedup, 3)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            temporary = file.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(cached, indent=1))
            temporary.replace(file)
        except OSError:  # an unwritable cache costs a second per run, nothing else
            pass
    if speedup >= BF16_MARGIN:
        return PrecisionChoice("bf16", f"bf16 measured {speedup:.1f}x faster than fp32 on this CPU")
    return PrecisionChoice("fp32", f"bf16 measured {speedup:.1f}x the speed of fp32 on this CPU")


# Autocast changes the arithmetic of float32 weights only: a model kept in another type runs in it.
OWN_PRECISION = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


def choose_precision(precision: str, device: torch.device, model_dtype: torch.dtype = torch.float32) -> PrecisionChoice:
    """The concrete precision (fp32, bf16 or fp16) that ``precision`` means on ``device``, and why.

    ``auto`` is the fastest that keeps quality (bf16 keeps at least 95 % of fp32's activation: tested):
    fp32 on GPUs (on an H100, whose fp32 convolutions run on TF32 tensor cores, a lucid render ran
    1.25x slower in bf16 and a classic grid only 1.1x faster; fp16 without loss scaling can lose
    the gradient); on CPUs, bf16 where AMX tiles make it several times faster (a convolution's forward pass and input
    gradient measured 3.6-6.4x fp32's speed on an AMX Xeon), fp32 where there is no native bf16, and where only AVX512-BF16 is there (on one
    such AMD EPYC bf16 measured slower) a short measurement, cached per machine, decides.

    A model whose weights are not float32 (``model_dtype``) runs in its own type: ``auto`` (and ``fp32``,
    meaning no reduced arithmetic) says that type (``fp64``...); another reduced precision is refused,
    since autocast would leave such weights as they are and the option would do nothing.
    """
    own = OWN_PRECISION.get(model_dtype, str(model_dtype).removeprefix("torch."))
    if precision == own and precision not in PRECISIONS:  # a resolved precision, as an atlas passes on
        return PrecisionChoice(own, "the model's own type")
    if precision not in PRECISIONS:
        raise FilterVizError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if model_dtype != torch.float32:
        if precision in ("auto", "fp32", own):
            return PrecisionChoice(own, f"the model's weights are {own}")
        raise FilterVizError(f"--precision {precision} makes float32 weights compute in {precision}, and this model's "
                             f"weights are {own}; use --precision auto (it runs in {own}), or load the model in float32")
    if precision != "auto":
        return PrecisionChoice(precision, "asked for")
    kind = device.type
    if kind == "cuda":  # cuDNN runs fp32 convolutions on TF32 tensor cores where the GPU has them
        return PrecisionChoice("fp32", "on GPUs fp32 measured as fast as bf16")
    if kind == "cpu":
        if not cpu_supports_bf16():
            return PrecisionChoice("fp32", "this CPU has no native bf16")
        if cpu_has_amx():
            return PrecisionChoice("bf16", "this CPU has AMX")
        return measured_cpu_precision()
    return PrecisionChoice("fp32", f"{kind} devices run fp32")


def resolve_precision(precision: str, device: torch.device, model_dtype: torch.dtype = torch.float32) -> str:
    """``choose_precision``'s precision alone: fp32, bf16 or fp16 (or the type of a model not in float32)."""
    return choose_precision(precision, device, model_dtype).precision


def autocast_dtype(precision: str, device: torch.device, model_dtype: torch.dtype = torch.float32) -> torch.dtype | None:
    """The autocast type for ``precision`` on ``device`` (None: the model's own type, fp32 for most);
    ``auto`` as ``choose_precision`` decides. Asking for a precision the device cannot do, or one autocast
    would not apply to the model's weights, is an error, not a silent fallback."""
    precision = resolve_precision(precision, device, model_dtype)
    kind = device.type
    if precision == "fp32" or model_dtype != torch.float32:
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
