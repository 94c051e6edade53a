"""``load_model``: one entry point for every model source."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import FilterVizError, UnknownModelError
from ..layers import closest_names
from . import embedded
from .loaded import LoadedModel
from .spec import InputSpec
from .torchvision_zoo import load_torchvision, torchvision_model_names
from .weights import load_weights_file

DEFAULT_MODEL = embedded.NAME


def known_models() -> list[str]:
    """Every model name ``load_model`` accepts: the embedded default first, then torchvision's."""
    return [embedded.NAME, *torchvision_model_names()]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; other values are checked, not assumed."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        chosen = None
    if chosen is None or chosen.type not in {"cpu", "cuda", "mps"}:
        raise FilterVizError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FilterVizError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        if chosen.index is not None and chosen.index >= count:
            raise FilterVizError(f"device {device!r} does not exist: this machine has {count} CUDA device(s), "
                                 f"cuda:0-{count - 1}")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise FilterVizError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    return chosen


def _canonical(name: str) -> str:
    lowered = name.strip().lower()
    return embedded.NAME if lowered.replace("_", "-") == embedded.NAME else lowered


def load_model(
    model: str | nn.Module = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    *,
    spec: InputSpec | None = None,
    name: str | None = None,
    progress: bool = False,
    download_timeout: float = 5.0,
) -> LoadedModel:
    """Load a model by name (see ``known_models()``) or wrap an ``nn.Module``.

    ``weights``: for torchvision models, a weights enum name (``"IMAGENET1K_V1"``), a local checkpoint
    path, or ``"random"``; ``None`` takes the pretrained default (for ``vgg16``, the original VGG
    weights ``IMAGENET1K_FEATURES``). For the embedded model, ``None``, a local file or ``"random"``.
    ``spec`` is required with an ``nn.Module`` (whose ``weights``, if given, is a checkpoint file for
    it) and overrides a named model's input spec otherwise.
    """
    target = resolve_device(device)  # checked first: a bad device should not wait for a download
    if isinstance(model, nn.Module):
        if spec is None:
            raise FilterVizError("an nn.Module needs spec=InputSpec(...) to say what input it expects")
        label = name or type(model).__name__
        if weights is not None:
            load_weights_file(model, weights, label)
        loaded = LoadedModel(label, model, spec, source=f"user module, weights {weights}" if weights else "user module")
    else:
        key = _canonical(model)
        if key == embedded.NAME:
            loaded = embedded.load_embedded(weights)
        elif key in torchvision_model_names():
            loaded = load_torchvision(key, weights, progress=progress, download_timeout=download_timeout)
        else:
            hint = closest_names(key, known_models())
            close = f" (closest: {', '.join(hint)})" if hint else f" (for example {embedded.NAME}, vgg16, resnet50)"
            raise UnknownModelError(
                f"unknown model {model!r}{close}; `filterviz models` lists all {len(known_models())} known names"
            )
        if spec is not None:
            loaded.spec = spec
        if name is not None:
            loaded.name = name
    loaded.module.to(target)
    return loaded
