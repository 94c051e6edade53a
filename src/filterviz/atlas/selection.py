"""Which layers an atlas shows by default, and the names and file names it shows them by."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ..layers import ACTIVATION, NORM, LayerInfo, kind_names, module_classes, split_call
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


def _innermost(found: list[str]) -> list[str]:
    return [name for name in found if not any(other.startswith(name + ".") for other in found)]


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
    return _innermost(found)


def _transformer_blocks(modules: Mapping[str, nn.Module], conv_blocks: set[str]) -> list[str]:
    """Items of a Sequential or ModuleList without convolutions that hold a linear layer and an
    activation: the blocks of a vision transformer (timm's ``blocks.3``, torchvision's
    ``encoder.layers.encoder_layer_3``, Swin's ``layers.2.blocks.1``), innermost only."""
    activations = module_classes(ACTIVATION)
    found = []
    for name, module in modules.items():
        parent_name, _, _ = name.rpartition(".")
        parent = modules.get(parent_name) if parent_name else None
        if (isinstance(parent, (nn.Sequential, nn.ModuleList)) and _has_layers(module)
                and not any(name == block or name.startswith(block + ".") or block.startswith(name + ".")
                            for block in conv_blocks)
                and not any("conv" in type(m).__name__.lower() for m in module.modules())
                and any(isinstance(m, nn.Linear) for m in module.modules())
                and any(isinstance(m, activations) for m in module.modules())):
            found.append(name)
    return _innermost(found)


def _hidden_activation(model: LoadedModel, infos: list[LayerInfo], block: str) -> LayerInfo | None:
    """A transformer block's MLP hidden activation: the widest activation inside it whose layout is
    known and has positions (the first of the widest), never the attention's internals."""
    inside = [info for info in infos if info.name.startswith(block + ".") and split_call(info.name)[1] == 1
              and info.height is not None and info.layout is not None and info.layout.known
              and model.is_activation(info.name)]
    if not inside:
        return None
    widest = max(info.channels or 0 for info in inside)
    return next(info for info in inside if info.channels == widest)


def default_layers(model: LoadedModel, size: int) -> list[str]:
    """Every convolution layer (each seen after its norm and activation, as Keras's ``Conv2D(...,
    activation=...)`` is), or for models built of blocks, every block's output plus the convolutions
    outside blocks (a stem, a head); for the blocks of a vision transformer (no convolutions in them),
    each block's MLP hidden activation (``blocks.N.mlp.act``), not the attention's internals. Names are
    aliases where the model has them."""
    infos = model.layers(size)
    modules = model.graph.modules()
    plain = all(isinstance(m, nn.Module) for m in modules.values())
    blocks = set(_blocks(modules)) if plain else set()
    hidden = {}
    for block in (_transformer_blocks(modules, blocks) if plain else []):
        found = _hidden_activation(model, infos, block)
        if found is not None:
            hidden[found.name] = block
    inside = blocks | set(hidden.values())
    chosen: list[LayerInfo] = []
    for index, info in enumerate(infos):
        base, call = split_call(info.name)
        if call > 1 or info.height is None:
            continue
        if base in blocks or info.name in hidden:
            chosen.append(info)
        elif _is_conv(info, modules.get(base)) and not any(base.startswith(b + ".") for b in inside):
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
