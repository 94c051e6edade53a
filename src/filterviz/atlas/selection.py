"""Which layers an atlas shows by default, and the names and file names it shows them by."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ..layers import NORM, LayerInfo, kind_names, split_call
from ..models.loaded import LoadedModel

_NORMS = kind_names(NORM)


@dataclass(frozen=True)
class AtlasLayer:
    """A layer in an atlas: shown by ``name`` (its alias when it has one), run by ``path``, its files
    under ``slug`` (safe in file names and URLs)."""

    name: str
    path: str
    kind: str
    channels: int
    height: int | None
    width: int | None
    slug: str


def _has_layers(module: nn.Module) -> bool:
    """Whether a module holds other layers (not counting a Keras layer's container of weights)."""
    return any(not isinstance(child, (nn.ParameterDict, nn.ParameterList)) for child in module.children())


def _is_conv(info: LayerInfo, module: nn.Module | None) -> bool:
    leaf = module is None or not _has_layers(module)
    return leaf and info.height is not None and "conv" in info.kind.lower()


def _blocks(modules: Mapping[str, nn.Module]) -> list[str]:
    """Items of a Sequential or ModuleList that contain convolutions, innermost only (ResNet's
    ``layer1.0``, EfficientNet's ``blocks.3``, ConvNeXt's ``stages.0.blocks.1``)."""
    found = []
    for name, module in modules.items():
        parent_name, _, item = name.rpartition(".")
        parent = modules.get(parent_name) if parent_name else None
        if (item.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList))
                and _has_layers(module)
                and any("conv" in type(m).__name__.lower() for m in module.modules())):
            found.append(name)
    return [name for name in found if not any(other.startswith(name + ".") for other in found)]


def default_layers(model: LoadedModel, size: int) -> list[str]:
    """Every convolution layer (each seen after its norm and activation, as Keras's ``Conv2D(...,
    activation=...)`` is), or for models built of blocks, every block's output plus the convolutions
    outside blocks (a stem, a head). Names are aliases where the model has them."""
    infos = model.layers(size)
    modules = model.graph.modules()
    blocks = set(_blocks(modules)) if all(isinstance(m, nn.Module) for m in modules.values()) else set()
    chosen: list[LayerInfo] = []
    for index, info in enumerate(infos):
        base, call = split_call(info.name)
        if call > 1 or info.height is None:
            continue
        if base in blocks:
            chosen.append(info)
        elif _is_conv(info, modules.get(base)) and not any(base.startswith(b + ".") for b in blocks):
            follow = index  # the conv's norm and activation, when they come right after it
            while (follow + 1 < len(infos)
                   and (infos[follow + 1].kind in _NORMS or (model.is_activation(infos[follow + 1].name)
                                                             and "conv" not in infos[follow + 1].kind.lower()))
                   and (infos[follow + 1].height, infos[follow + 1].channels) == (info.height, info.channels)):
                follow += 1
            chosen.append(infos[follow])
    return [info.aliases[0] if info.aliases else info.name for info in chosen]


def layer_slug(name: str) -> str:
    """A file and URL name for a layer, from its name alone (so it never depends on the other layers
    chosen): the name itself when it is already safe and lower-case, else a cleaned name plus a short
    hash of the name, so that distinct names never share files, even on case-insensitive disks."""
    cleaned = re.sub(r"[^a-z0-9_.-]", "_", name.lower()).strip(".") or "layer"
    if cleaned == name:
        return name
    return f"{cleaned}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def atlas_layers(model: LoadedModel, names: list[str], size: int) -> list[AtlasLayer]:
    """The named layers (aliases or paths) as AtlasLayers, in the order given; a layer named twice
    (by alias and by path) is shown once."""
    layers, paths = [], set()
    for name in names:
        info = model.layer_info(name, size)
        if info.name in paths:
            continue
        paths.add(info.name)
        layers.append(AtlasLayer(name, info.name, info.kind, info.channels, info.height, info.width,
                                 layer_slug(name)))
    return layers
