"""Hugging Face transformers image models by name (``hf:google/vit-base-patch16-224``) or by a local
folder written with ``save_pretrained`` (``hf:path/to/folder``).

The model's image processor gives its input spec (mean, std, size); the local cache is used first, so
a model downloaded once works offline. Pretrained weights come from the hub (``--weights random``
builds the architecture from its config alone). Layer names are the model's own module names
(``vit.layers.5.mlp.fc1``); the model's output is its logits, or for a model without a head, its
pooled output.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ...errors import FilterVizError, UnknownModelError, WeightsUnavailableError, first_line
from ...layers import ModuleGraph
from ..downloads import unreachable_reason
from ..loaded import LoadedModel
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS
from . import LoadRequest, PrefixSource, register_source, require

PREFIX = "hf:"
OUTPUTS = ("logits", "image_embeds", "pooler_output", "last_hidden_state")  # what a model's output is, in order


def _transformers() -> ModuleType:
    return require("transformers", "hf", "Hugging Face models")


class HFImageModel(nn.Module):
    """A transformers image model as a module from pixels to one tensor: its logits, else its
    embedding or pooled output, else its last hidden state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixels)
        if isinstance(output, torch.Tensor):
            return output
        for key in OUTPUTS:
            value = getattr(output, key, None)
            if isinstance(value, torch.Tensor):
                return value
        raise FilterVizError(f"the model gave {type(output).__name__} without any of {', '.join(OUTPUTS)}")


def _where(repo: str) -> str:
    return f"folder {repo!r}" if Path(repo).is_dir() else f"hub model {repo!r}"


def _from(loader: Any, repo: str, timeout: float, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(repo)``: from the local cache (or folder) first; from the hub only when
    its host answers within ``timeout``, so that an offline machine gets one line, not retries."""
    try:
        return loader.from_pretrained(repo, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_error:
        if Path(repo).is_dir():
            raise UnknownModelError(f"cannot read the {what} of {_where(repo)} ({first_line(cached_error)}); "
                                    "give a folder written by save_pretrained") from None
    from huggingface_hub import constants

    reason = unreachable_reason(constants.ENDPOINT, timeout)
    if reason:
        raise WeightsUnavailableError(f"the {what} of hf:{repo} is not in the Hugging Face cache and the hub cannot "
                                      f"be reached ({reason}); download it once where the hub is reachable, or copy "
                                      "its cache folder here") from None
    try:
        return loader.from_pretrained(repo, **kwargs)
    except OSError as exc:
        raise UnknownModelError(f"cannot load the {what} of hf:{repo} ({first_line(exc)}); check the name on the "
                                "hub, e.g. hf:google/vit-base-patch16-224") from None


def _spec(transformers: ModuleType, repo: str, config: Any, timeout: float) -> tuple[InputSpec, str]:
    """The input spec from the model's image processor (mean, std, size); without one, ImageNet's
    mean and std at the config's image size, and a note that says so."""
    try:
        processor = _from(transformers.AutoImageProcessor, repo, timeout, "image processor")
    except (UnknownModelError, WeightsUnavailableError):
        processor = None
    size = getattr(config, "image_size", None) or 224
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    if processor is None or getattr(processor, "image_mean", None) is None:
        return InputSpec.preset("imagenet", default_size=size), " (no image processor: ImageNet's mean and std)"
    shape = getattr(processor, "size", None) or {}
    side = int(shape.get("height") or shape.get("shortest_edge") or size) if isinstance(shape, dict) else size
    # The processor computes (x * rescale - mean) / std from 0..255 pixels, which is the unit-range
    # convention with mean and std divided by 255 * rescale (rescale 1 when it does not rescale).
    rescale = float(getattr(processor, "rescale_factor", 1 / 255)) if getattr(processor, "do_rescale", True) else 1.0
    scale = 255 * rescale
    mean = tuple(m / scale for m in processor.image_mean)
    std = tuple(s / scale for s in processor.image_std)
    spec = InputSpec.from_unit_range(mean, std, default_size=side)
    return spec, ""


def _takes_other_sizes(module: nn.Module, side: int, channels: int) -> bool:
    """Whether the model runs at a side other than its own (measured: a model with fixed position
    embeddings refuses)."""
    other = side + 32
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, other, other))
    except Exception:  # noqa: BLE001 - any refusal means: only its own size
        return False
    return True


def load_hf(repo: str, request: LoadRequest) -> LoadedModel:
    """A transformers image model: pretrained (weights None), or its architecture with random weights."""
    transformers = _transformers()
    repo = repo.strip()
    if not repo:
        raise UnknownModelError("hf: needs a model name or folder, e.g. hf:google/vit-base-patch16-224")
    weights = request.weights
    random = weights is not None and str(weights).lower() == RANDOM_WEIGHTS
    if weights is not None and not random:
        raise FilterVizError(f"hf: models take their weights from the hub or their folder; give --weights random "
                             f"or leave --weights out, not {os.fspath(weights)!r}")
    timeout = request.download_timeout
    config = _from(transformers.AutoConfig, repo, timeout, "config")
    heads = [name for name in (getattr(config, "architectures", None) or []) if name.endswith("ForImageClassification")]
    loader = transformers.AutoModelForImageClassification if heads else transformers.AutoModel
    if random or not request.load_weights:
        model = loader.from_config(config)
        source = "random weights" if random else "architecture only"
    else:
        model = _from(loader, repo, timeout, "weights")
        source = f"Hugging Face {repo}"
    model.eval()
    wrapped = HFImageModel(model).eval()
    spec, note = request.spec, ""
    if spec is None:
        spec, note = _spec(transformers, repo, config, timeout)
    channels = int(getattr(config, "num_channels", 3) or 3)
    if not _takes_other_sizes(wrapped, spec.default_size, channels):
        from dataclasses import replace

        spec = replace(spec, fixed_size=(spec.default_size, spec.default_size))
    labels = getattr(config, "id2label", None) or {}
    categories = None
    if labels and not all(str(v).startswith("LABEL_") for v in labels.values()):
        categories = tuple(str(labels[i]) for i in sorted(labels))
    graph = ModuleGraph(wrapped, {name: module for name, module in model.named_modules() if name})
    return LoadedModel(f"{PREFIX}{repo}", wrapped, spec, {}, categories, source=source + note, graph=graph)


class HFSource(PrefixSource):
    """Hugging Face transformers image models as ``hf:NAME`` (a hub name or a local folder)."""

    prefix = PREFIX
    usage = "hf:NAME"
    description = "a Hugging Face transformers image model, e.g. hf:google/vit-base-patch16-224, or a folder"
    extra = "hf"

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        return load_hf(self.strip(model), request)


register_source(HFSource(), builtin=True)
