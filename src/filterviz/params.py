"""Image parameterizations: how the optimized image is represented and initialized."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classic_start(size: int | tuple[int, int], keys: Sequence[int], seed: int | None = None) -> np.ndarray:
    """The book's start images: ``uniform(0, 1) * 20 + 128``, one per key, as (N, H, W, 3) float64.

    With a seed, image ``i`` comes from the seed and ``keys[i]`` alone (e.g. the filter index), so a
    filter starts from the same noise whether it is rendered alone or in any batch or grid.
    """
    height, width = (size, size) if isinstance(size, int) else size
    starts = np.empty((len(keys), height, width, 3))
    for i, key in enumerate(keys):
        rng = np.random.default_rng(None if seed is None else [seed, key])
        starts[i] = rng.random((height, width, 3)) * 20 + 128.0
    return starts
