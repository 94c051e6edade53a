"""CLIP image towers through open_clip (``open_clip:ViT-B-32/openai``, extra ``[clip]``).

The model is the image tower, whose output is the image embedding; its text tower and tokenizer stay
beside it, so that a ``text:`` objective can score the cosine similarity of the image's embedding with
a text's. Pretrained weights are read from the Hugging Face cache when they are there, downloaded by
open_clip when the hub can be reached, and otherwise refused in one line; ``--weights random`` or a
checkpoint file can be given instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ...errors import FilterVizError, UnknownModelError, WeightsUnavailableError, first_line
from ...layers import closest_names
from ..downloads import unreachable_reason
from ..loaded import LoadedModel
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS, check_weights_file
from . import LoadRequest, PrefixSource, register_source, require

PREFIX = "open_clip:"
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # how open_clip names hub files


def _open_clip() -> ModuleType:
    return require("open_clip", "clip", "open_clip models")


@dataclass(eq=False)
class ClipModel(LoadedModel):
    """A CLIP image tower, with the text tower that embeds texts in the same space (``embed_text``)."""

    clip: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)

    def embed_text(self, text: str) -> torch.Tensor:
        """The text's embedding, (D,), in the space of the image tower's output."""
        with torch.no_grad():
            tokens = self.tokenizer([text])
            return self.clip.encode_text(tokens).double()[0]


def _split(name: str) -> tuple[str, str | None]:
    arch, _, tag = name.strip().partition("/")
    return arch, tag or None


def _cached_file(open_clip: ModuleType, arch: str, tag: str) -> str | None:
    """The pretrained file of ``arch``/``tag`` in the Hugging Face cache, if it is there."""
    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    repo = str(cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for file in HUB_FILES:
        found = try_to_load_from_cache(repo, file)
        if isinstance(found, str):
            return found
    return None


def load_open_clip(name: str, request: LoadRequest) -> ClipModel:
    """``ARCH/TAG`` (pretrained), or ``ARCH`` with ``weights`` random or a checkpoint file."""
    open_clip = _open_clip()
    arch, tag = _split(name)
    if arch not in open_clip.list_models():
        hint = closest_names(arch, open_clip.list_models())
        raise UnknownModelError(f"unknown open_clip model {arch!r}" + (f" (closest: {', '.join(hint)})" if hint else "")
                                + "; see open_clip.list_models()")
    weights = request.weights
    random = weights is not None and str(weights).lower() == RANDOM_WEIGHTS
    if weights is not None and tag is not None:
        raise FilterVizError(f"open_clip:{name} names its pretrained weights ({tag}); leave --weights out, or name "
                             f"the architecture alone (open_clip:{arch}) with --weights")
    if weights is None and tag is None:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise FilterVizError(f"open_clip:{arch} needs its pretrained weights named, e.g. open_clip:{arch}/"
                             f"{tags[0] if tags else 'TAG'}, or --weights random or a checkpoint file")
    if random or not request.load_weights:
        pretrained, source = None, "random weights" if random else "architecture only"
    elif weights is not None:
        check_weights_file(weights)
        pretrained, source = os.fspath(weights), f"local file {weights}"
    else:
        assert tag is not None
        if tag not in open_clip.list_pretrained_tags_by_model(arch):
            raise UnknownModelError(f"open_clip has no weights {tag!r} for {arch}; use one of "
                                    f"{', '.join(open_clip.list_pretrained_tags_by_model(arch))}")
        pretrained = _cached_file(open_clip, arch, tag)
        if pretrained is None:
            from huggingface_hub import constants

            reason = unreachable_reason(constants.ENDPOINT, request.download_timeout)
            if reason:
                raise WeightsUnavailableError(f"the weights of open_clip:{arch}/{tag} are not in the Hugging Face "
                                              f"cache and the hub cannot be reached ({reason}); download them once "
                                              "where it is reachable, or give a checkpoint file with --weights")
            pretrained = tag
        source = f"open_clip {arch}/{tag}"
    try:
        clip = open_clip.create_model(arch, pretrained=pretrained)
    except Exception as exc:  # open_clip's loading errors have many types
        raise WeightsUnavailableError(f"cannot load open_clip:{name} ({first_line(exc)})") from None
    clip.eval()
    for parameter in clip.parameters():
        parameter.requires_grad_(False)
    config = open_clip.get_model_preprocess_cfg(clip)
    size = config.get("size", 224)
    side = int(size[0] if isinstance(size, (tuple, list)) else size)
    spec = request.spec or InputSpec.from_unit_range(tuple(config["mean"]), tuple(config["std"]), default_size=side,
                                                     fixed_size=(side, side))
    visual: nn.Module = clip.visual
    return ClipModel(f"{PREFIX}{name.strip()}", visual, spec, source=source, clip=clip,
                     tokenizer=open_clip.get_tokenizer(arch))


class OpenClipSource(PrefixSource):
    """open_clip's CLIP models as ``open_clip:ARCH/TAG``: the image tower, with its text tower beside it."""

    prefix = PREFIX
    usage = "open_clip:ARCH/TAG"
    description = "a CLIP image tower, e.g. open_clip:ViT-B-32/openai (with text: objectives)"
    extra = "clip"

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        return load_open_clip(self.strip(model), request)


register_source(OpenClipSource(), builtin=True)

__all__ = ["ClipModel", "OpenClipSource", "load_open_clip"]
