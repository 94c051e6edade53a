"""Memory budgets: how much a run may use, and how a need is told to people.

Every estimate in filterviz is made from a small probe and scaled, never by running at the size
asked for, so that a size too large for the machine is refused before it allocates anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from .errors import MemoryBudgetError

MEMORY_SHARE = {"cpu": 0.25, "cuda": 0.5, "mps": 0.25}  # of the free memory, when no budget is given


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


def memory_budget(device: torch.device, max_memory: int | None) -> int:
    """The bytes a run may use on ``device``: ``max_memory``, else a safe share of the free memory."""
    if max_memory is not None:
        return int(max_memory)
    return int(free_memory(device) * MEMORY_SHARE.get(device.type, 0.25))


def readable(size: float) -> str:
    """A byte count for people: ``512 bytes``, ``1.5 MiB``, ``120 GiB``, ``2.4 TiB`` (binary units, as
    ``--max-memory 2G`` reads them)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            if unit == "bytes":
                return f"{size:.0f} bytes"
            return f"{size:.0f} {unit}" if size >= 100 else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.0f} PiB"  # pragma: no cover - the loop always returns


def option_size(size: float) -> str:
    """A byte count as a ``--max-memory`` value, rounded up: ``130G``, ``600M``."""
    for unit, factor in (("T", 2 ** 40), ("G", 2 ** 30), ("M", 2 ** 20), ("K", 2 ** 10)):
        if size >= factor:
            return f"{math.ceil(size / factor)}{unit}"
    return f"{math.ceil(max(size, 1))}"


def budget_words(budget: int, max_memory: int | None, device: torch.device) -> str:
    """How a message compares a need with the budget: ``more than the memory budget of 5.8 GiB (a
    quarter of the free memory)``."""
    if max_memory is not None:
        return f"more than the memory budget of {readable(budget)} (--max-memory)"
    share = MEMORY_SHARE.get(device.type, 0.25)
    part = {0.25: "a quarter", 0.5: "half"}.get(share, f"{share:.0%}")
    return f"more than the memory budget of {readable(budget)} ({part} of the free memory)"


def more_memory(need: float, device: torch.device) -> str:
    """The ``--max-memory`` advice for a need: the value that fits it, when this device has that much
    free; else that it has not (so that nobody is told to ask for memory the machine lacks)."""
    free = free_memory(device)
    if need <= free:
        return f"--max-memory {option_size(need)}"
    return f"a machine with more than {readable(need)} free (this one has {readable(free)})"


def article(number: int) -> str:
    """``a`` or ``an`` before a number as it is read aloud: an 8, an 11, an 18000, a 150."""
    digits = str(number)
    spoken_an = digits[0] == "8" or (digits[:2] in ("11", "18") and len(digits) % 3 == 2)
    return "an" if spoken_an else "a"


def largest(fits: Callable[[int], bool], high: int, low: int = 1) -> int | None:
    """The largest value in ``low..high`` for which ``fits`` holds (``fits`` must be monotone: true up to
    a point, false after), or None if even ``low`` does not fit. Bisection: arithmetic only."""
    if not fits(low):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return high if fits(high) else low


__all__ = ["MEMORY_SHARE", "MemoryBudgetError", "article", "budget_words", "free_memory", "largest", "memory_budget",
           "more_memory", "option_size", "readable"]
