"""Fingerprints of renders: what a rendered picture depends on, as one hash.

A picture depends on the model (architecture, weights, input spec, the layouts said), the recipe, the
seed, the precision and where it runs (device type, thread count), and on what it shows. The atlas
records these fingerprints in its manifest to tell done work from stale work, and ``filterviz serve``
names its disk cache by them, so that one rule decides when two renders are the same.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .models.loaded import LoadedModel
    from .recipes import Recipe


def model_fingerprint(model: LoadedModel) -> str:
    """Changes with the architecture, the weights, the input spec or the layouts the user said (not with
    the model's name)."""
    import torch

    digest = hashlib.sha256(repr(model.module).encode())
    digest.update(repr(model.spec).encode())
    if model.layouts:  # layouts said by the user (--layout) decide which unit a filter index is
        digest.update(repr(sorted((layer, repr(layout)) for layer, layout in model.layouts.items())).encode())
    for name, tensor in model.module.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def settings_hash(*parts: object) -> str:
    """One hash of JSON-able parts (anything else by its ``str``), in order."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def recipe_fields(recipe: Recipe) -> dict[str, Any]:
    """The recipe's fields that can change a pixel (its name cannot)."""
    fields = recipe.fields()
    fields.pop("name")
    return fields


def render_fingerprint(model: str, recipe: Recipe, seed: int, precision: str, threads: int | None,
                       device: torch.device, *what: object, model_dtype: torch.dtype | None = None) -> str:
    """The fingerprint of pictures rendered by the model of fingerprint ``model`` with ``recipe``,
    ``seed`` and ``precision`` (as asked: ``auto`` is resolved here, on ``device``) on ``threads`` CPU
    threads, of ``what`` (for the atlas, a layer and the filters rendered together); ``model_dtype`` is
    the type of the model's weights (default float32; autocast applies to float32 weights only)."""
    from .device import autocast_dtype

    import torch

    dtype = autocast_dtype(precision, device, torch.float32 if model_dtype is None else model_dtype)
    return settings_hash(model, recipe_fields(recipe), seed, precision, threads, str(dtype), device.type, *what)
