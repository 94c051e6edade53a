"""torchvision classification models, with the preprocessing their weights enums carry.

Pretrained weights come from the torch hub cache when the file is there; otherwise torchvision
downloads them. When the download host cannot be reached (offline), this gives up within seconds
with a WeightsUnavailableError instead of hanging.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import urllib.request
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tv_models

from ..errors import WeightsError, WeightsUnavailableError
from .aliases import aliases_for
from .loaded import LoadedModel
from .spec import InputSpec
from .weights import load_weights_file

# The weights a name gets when none are asked for. VGG16's "features" weights are the original VGG
# weights with the original input standardization, as Keras's VGG16 uses; otherwise torchvision's DEFAULT.
PREFERRED_WEIGHTS = {"vgg16": "IMAGENET1K_FEATURES"}
RANDOM_WEIGHTS = "random"


def torchvision_model_names() -> list[str]:
    """Names of torchvision's image classification models."""
    return sorted(tv_models.list_models(module=tv_models))


def _spec_of(weights: Enum) -> InputSpec:
    transforms = weights.transforms()
    size = getattr(transforms, "crop_size", [224])
    return InputSpec.from_unit_range(
        tuple(transforms.mean), tuple(transforms.std), default_size=int(size[0])
    )


def _weights_enum(name: str, weights: str | None) -> Enum:
    enum_class = tv_models.get_model_weights(name)
    choice = weights or PREFERRED_WEIGHTS.get(name, "DEFAULT")
    choice = choice.split(".")[-1]  # accept "VGG16_Weights.IMAGENET1K_V1" too
    try:
        return enum_class[choice]
    except KeyError:
        valid = ", ".join(member.name for member in enum_class)
        raise WeightsError(
            f"unknown weights {weights!r} for {name}; use one of {valid}, 'random', or a checkpoint file path"
        ) from None


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or "/" in weights or Path(weights).suffix in {".pth", ".pt", ".ckpt", ".bin"} or Path(weights).exists()


def cached_file(weights: Enum) -> Path:
    """Where torch.hub keeps (or would keep) the file of a weights enum."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def unreachable_reason(url: str, timeout: float) -> str | None:
    """None if a TCP connection to the URL's host (or its proxy) opens within ``timeout``; else why not.

    The attempt runs in a daemon thread so that even a name lookup that hangs cannot hold us longer.
    """
    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    target = urlparse(proxy) if proxy else parsed
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    outcome: dict[str, object] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    error = outcome.get("error")
    if error is None:
        return f"no answer from {host} within {timeout:g} s"
    return f"{host} is unreachable: {getattr(error, 'strerror', None) or error}"


def load_torchvision(
    name: str, weights: str | os.PathLike[str] | None, *, progress: bool = False, download_timeout: float = 5.0
) -> LoadedModel:
    """Build torchvision model ``name`` with pretrained weights (enum name), a local file, or 'random'."""
    aliases = aliases_for(name)
    if weights is not None and (isinstance(weights, os.PathLike) or _looks_like_path(str(weights))):
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
    if weights is not None and str(weights).lower() == RANDOM_WEIGHTS:
        reference = tv_models.get_model_weights(name).DEFAULT
        module = tv_models.get_model(name, weights=None)
        return LoadedModel(name, module, _spec_of(reference), aliases, None, source="random weights")

    enum = _weights_enum(name, weights)
    file = cached_file(enum)
    if not file.exists():
        reason = unreachable_reason(enum.url, download_timeout)
        if reason:
            raise WeightsUnavailableError(
                f"{enum} weights are not in the torch cache ({file}) and cannot be downloaded ({reason}); "
                f"give a local checkpoint with --weights PATH"
            )
    try:
        module = tv_models.get_model(name, weights=enum, progress=progress)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise WeightsError(
            f"cannot load {enum} from {file} ({str(exc).splitlines()[0][:120]}); delete the file to download it again"
        ) from None
    categories = tuple(enum.meta.get("categories") or ()) or None
    return LoadedModel(name, module, _spec_of(enum), aliases, categories, source=f"torchvision {enum}")
