"""torchvision classification models, with the preprocessing their weights enums carry.

Pretrained weights come from the torch hub cache when the file is there; otherwise they are
downloaded into it from torchvision's URL. When the download host cannot be reached (offline), or
goes silent, this gives up within seconds with a WeightsUnavailableError instead of hanging.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tv_models
from torch import nn
from ...errors import WeightsError, first_line
from ..aliases import aliases_for
from ..downloads import DownloadFailedError, download, unreachable_reason, weights_unavailable
from ..loaded import LoadedModel
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS, check_weights_file, load_weights_file
from . import LoadRequest, ModelSource, register_source

# The weights a name gets when none are asked for. VGG16's "features" weights are the original VGG
# weights with the original input standardization, as Keras's VGG16 uses; otherwise torchvision's DEFAULT.
PREFERRED_WEIGHTS = {"vgg16": "IMAGENET1K_FEATURES"}


def torchvision_model_names() -> list[str]:
    """Names of torchvision's image classification models."""
    return sorted(tv_models.list_models(module=tv_models))


def _own_size(module: nn.Module, spec: InputSpec) -> InputSpec:
    """The spec, with the one input size a model takes where it declares one: torchvision's vision
    transformers check that images are exactly their ``image_size``."""
    size = getattr(module, "image_size", None)
    if isinstance(module, tv_models.VisionTransformer) and isinstance(size, int):
        return replace(spec, fixed_size=(size, size), default_size=size)
    return spec


def _spec_of(weights: Enum) -> InputSpec:
    transforms = weights.transforms()
    size = getattr(transforms, "crop_size", [224])
    return InputSpec.from_unit_range(
        tuple(transforms.mean), tuple(transforms.std), default_size=int(size[0])
    )


@dataclass(frozen=True)
class WeightsChoice:
    """What a ``weights`` value asks of a torchvision model, worked out without loading anything.

    ``enum``: pretrained weights to load (None for a local file or random weights); ``file``: a local
    checkpoint to load; ``reference``: the weights whose input spec applies.
    """

    enum: Enum | None
    file: Path | None
    reference: Enum

    @property
    def random(self) -> bool:
        """Whether no weights are loaded at all."""
        return self.enum is None and self.file is None

    @property
    def spec(self) -> InputSpec:
        """The input spec of these weights: the one place a torchvision model's spec comes from."""
        return _spec_of(self.reference)

    @property
    def categories(self) -> tuple[str, ...] | None:
        """The class names of these weights (None for random weights, whose classes mean nothing)."""
        return None if self.random else tuple(self.reference.meta.get("categories") or ()) or None


def choose_weights(name: str, weights: str | os.PathLike[str] | None) -> WeightsChoice:
    """Resolve ``weights`` for torchvision model ``name``: None (the preferred weights), a weights enum
    name, a local checkpoint path, or ``"random"``. Raises WeightsError for a name or file that is not
    there; reads no file and downloads nothing."""
    enum_class = tv_models.get_model_weights(name)
    preferred = enum_class[PREFERRED_WEIGHTS.get(name, "DEFAULT")]
    text = None if weights is None or isinstance(weights, os.PathLike) else str(weights)
    if text is not None and text.lower() == RANDOM_WEIGHTS:
        # Random weights get the preferred weights' spec, the one a render with no --weights uses,
        # so that untrained and trained pictures of a model are made from the same input.
        return WeightsChoice(None, None, preferred)
    if weights is None:
        return WeightsChoice(preferred, None, preferred)
    # A weights name wins over a file of the same name; anything else that looks like a path is one.
    enum = enum_class.__members__.get(text.split(".")[-1]) if text is not None else None  # "VGG16_Weights.X" too
    if enum is not None:
        return WeightsChoice(enum, None, enum)
    if text is not None and not _looks_like_path(text):
        raise _unknown_weights(name, text)
    path = check_weights_file(weights)
    # A local copy of a torchvision file keeps its name; then its preprocessing is known exactly.
    # Any other checkpoint was most likely trained with torchvision's standard (DEFAULT) transforms.
    matching = [w for w in enum_class if _file_name(w) == path.name]
    return WeightsChoice(None, path, matching[0] if matching else enum_class.DEFAULT)


def spec_for(name: str, weights: str | os.PathLike[str] | None = None) -> InputSpec:
    """The input spec a render of ``name`` with ``weights`` uses, without loading any weights."""
    return choose_weights(name, weights).spec


def _unknown_weights(name: str, weights: str) -> WeightsError:
    valid = ", ".join(member.name for member in tv_models.get_model_weights(name))
    return WeightsError(
        f"unknown weights {weights!r} for {name}: no such file, nor a weights name; "
        f"use one of {valid}, 'random', or a checkpoint file path"
    )


def _looks_like_path(weights: str) -> bool:
    suffixes = {".pth", ".pt", ".ckpt", ".bin", ".tar"}
    return os.sep in weights or "/" in weights or Path(weights).suffix in suffixes or Path(weights).exists()


def _file_name(weights: Enum) -> str:
    return os.path.basename(urlparse(weights.url).path)


def cached_file(weights: Enum) -> Path:
    """Where torch.hub keeps (or would keep) the file of a weights enum."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _file_name(weights)


def _architecture(name: str) -> torch.nn.Module:
    with warnings.catch_warnings():  # GoogLeNet and Inception warn about their random initialization
        warnings.simplefilter("ignore", FutureWarning)
        return tv_models.get_model(name, weights=None)


def load_torchvision(
    name: str, weights: str | os.PathLike[str] | None, *, load_weights: bool = True, progress: bool = False,
    download_timeout: float = 5.0,
) -> LoadedModel:
    """Build torchvision model ``name`` with pretrained weights (enum name), a local file, or 'random'.

    With ``load_weights=False`` the parameters stay random and nothing is read or downloaded, but the
    spec, categories and aliases are those of the chosen weights.
    """
    choice = choose_weights(name, weights)
    aliases = aliases_for(name)
    if not load_weights:
        module = _architecture(name)
        return LoadedModel(name, module, _own_size(module, choice.spec), aliases, choice.categories,
                           source=f"architecture only, spec of {choice.reference}")
    if choice.random:
        module = _architecture(name)
        return LoadedModel(name, module, _own_size(module, choice.spec), aliases, None, source="random weights")
    if choice.file is not None:
        module = _architecture(name)
        load_weights_file(module, choice.file, name)
        return LoadedModel(name, module, _own_size(module, choice.spec), aliases, choice.categories,
                           source=f"local file {choice.file} (input standardization of {choice.reference})")
    enum = choice.enum
    file = cached_file(enum)
    if not file.exists():
        reason = unreachable_reason(enum.url, download_timeout)
        if reason:
            raise weights_unavailable(str(enum), "torch", file, enum.url, reason)
        try:
            download(enum.url, file, timeout=download_timeout, progress=progress)
        except DownloadFailedError as exc:  # reachable, yet the transfer failed: the same message
            raise weights_unavailable(str(enum), "torch", file, enum.url, exc.reason) from None
    try:
        module = tv_models.get_model(name, weights=enum, progress=progress)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise WeightsError(
            f"cannot load {enum} from {file} ({first_line(exc)}); delete the file to download it again"
        ) from None
    return LoadedModel(name, module, _own_size(module, choice.spec), aliases, choice.categories,
                       source=f"torchvision {enum}")


class TorchvisionSource(ModelSource):
    """torchvision's classification models by name (``vgg16``, ``resnet50``...)."""

    usage = "vgg16, resnet50, ..."
    description = "torchvision's classification models, with their weights enums' preprocessing"

    def matches(self, model: str) -> bool:
        return model.strip().lower() in self.names()

    def names(self) -> list[str]:
        return torchvision_model_names()

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        return load_torchvision(model.strip().lower(), request.weights, load_weights=request.load_weights,
                                progress=request.progress, download_timeout=request.download_timeout)


register_source(TorchvisionSource(), builtin=True)
