"""torchvision classification models, with the preprocessing their weights enums carry.

Pretrained weights come from the torch hub cache when the file is there; otherwise they are
downloaded into it from torchvision's URL. When the download host cannot be reached (offline), or
goes silent, this gives up within seconds with a WeightsUnavailableError instead of hanging.
"""

from __future__ import annotations

import os
import pickle
import warnings
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tv_models
from ...errors import WeightsError, WeightsUnavailableError, first_line
from ..aliases import aliases_for
from ..downloads import download, unreachable_reason
from ..loaded import LoadedModel
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS, load_weights_file

# The weights a name gets when none are asked for. VGG16's "features" weights are the original VGG
# weights with the original input standardization, as Keras's VGG16 uses; otherwise torchvision's DEFAULT.
PREFERRED_WEIGHTS = {"vgg16": "IMAGENET1K_FEATURES"}


def torchvision_model_names() -> list[str]:
    """Names of torchvision's image classification models."""
    return sorted(tv_models.list_models(module=tv_models))


def _spec_of(weights: Enum) -> InputSpec:
    transforms = weights.transforms()
    size = getattr(transforms, "crop_size", [224])
    return InputSpec.from_unit_range(
        tuple(transforms.mean), tuple(transforms.std), default_size=int(size[0])
    )


def _weights_enum(name: str, weights: str | None) -> Enum | None:
    """The weights enum member ``weights`` names (None: the preferred one), or None if it names none."""
    enum_class = tv_models.get_model_weights(name)
    choice = (weights or PREFERRED_WEIGHTS.get(name, "DEFAULT")).split(".")[-1]  # "VGG16_Weights.X" too
    return enum_class.__members__.get(choice)


def _unknown_weights(name: str, weights: str) -> WeightsError:
    valid = ", ".join(member.name for member in tv_models.get_model_weights(name))
    return WeightsError(
        f"unknown weights {weights!r} for {name}: no such file, nor a weights name; "
        f"use one of {valid}, 'random', or a checkpoint file path"
    )


def _looks_like_path(weights: str) -> bool:
    suffixes = {".pth", ".pt", ".ckpt", ".bin", ".tar"}
    return os.sep in weights or "/" in weights or Path(weights).suffix in suffixes or Path(weights).exists()


def cached_file(weights: Enum) -> Path:
    """Where torch.hub keeps (or would keep) the file of a weights enum."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_torchvision(
    name: str, weights: str | os.PathLike[str] | None, *, progress: bool = False, download_timeout: float = 5.0
) -> LoadedModel:
    """Build torchvision model ``name`` with pretrained weights (enum name), a local file, or 'random'."""
    aliases = aliases_for(name)
    text = None if weights is None or isinstance(weights, os.PathLike) else str(weights)
    if text is not None and text.lower() == RANDOM_WEIGHTS:
        reference = tv_models.get_model_weights(name).DEFAULT
        with warnings.catch_warnings():  # GoogLeNet and Inception warn about their random initialization
            warnings.simplefilter("ignore", FutureWarning)
            module = tv_models.get_model(name, weights=None)
        return LoadedModel(name, module, _spec_of(reference), aliases, None, source="random weights")
    # A weights name wins over a file of the same name; anything else that looks like a path is one.
    enum = _weights_enum(name, text) if weights is None or text is not None else None
    if enum is None:
        if text is not None and not _looks_like_path(text):
            raise _unknown_weights(name, text)
        path = Path(weights)
        # A local copy of a torchvision file keeps its name; then its preprocessing is known exactly.
        enum_class = tv_models.get_model_weights(name)
        matching = [w for w in enum_class if os.path.basename(urlparse(w.url).path) == path.name]
        reference = matching[0] if matching else enum_class.DEFAULT
        module = tv_models.get_model(name, weights=None)
        load_weights_file(module, path, name)
        return LoadedModel(
            name, module, _spec_of(reference), aliases, tuple(reference.meta.get("categories") or ()) or None,
            source=f"local file {path} (input standardization of {reference})",
        )

    file = cached_file(enum)
    if not file.exists():
        reason = unreachable_reason(enum.url, download_timeout)
        if reason:
            raise WeightsUnavailableError(
                f"{enum} weights are not in the torch cache ({file}) and cannot be downloaded ({reason}); "
                f"give a local checkpoint with --weights PATH"
            )
        download(enum.url, file, timeout=download_timeout, progress=progress)
    try:
        module = tv_models.get_model(name, weights=enum, progress=progress)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise WeightsError(
            f"cannot load {enum} from {file} ({first_line(exc)}); delete the file to download it again"
        ) from None
    categories = tuple(enum.meta.get("categories") or ()) or None
    return LoadedModel(name, module, _spec_of(enum), aliases, categories, source=f"torchvision {enum}")
