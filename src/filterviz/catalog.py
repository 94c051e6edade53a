"""What the command line shows and checks, known without importing torch (or numpy).

``filterviz --help``, ``recipes`` and ``models``, and every usage error, answer from here in a fraction
of the time torch takes to import; a command imports torch when it needs a model.

- The registries of the kinds of part whose modules need torch or numpy (parameterizations, optimizers,
  transforms, deprocess modes), each with its built-in parts *declared*: the module that registers
  the part, and the facts the command line reads of it (see ``plugins.Registry.declare``). Each kind's
  module re-exports its registry, and its classes register themselves there as before: adding a part is
  still one class plus one registration. Objective terms and layouts need no declarations: their
  modules import no torch.
- The model sources that ``filterviz models`` lists, declared the same way (``SOURCES``), with
  torchvision's model names.
- A few names: precisions, the default model, PyTorch model file suffixes.

Every declared fact is what the part itself says (tests/test_lazy_imports.py checks each one).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .plugins import Registry

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# The precision of render, grid and atlas; the book's demo and generate_pattern keep fp32, as the book.
DEFAULT_PRECISION = "auto"
DEFAULT_MODEL = "efficientnet-lite0"  # the embedded model (models/sources/embedded.py)
TORCH_SUFFIXES = (".pt", ".pth", ".pts", ".ts", ".torchscript", ".ckpt", ".bin", ".tar", ".safetensors")


def _base(module: str, name: str) -> type:
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _subclass_of(module: str, name: str) -> Callable[[object], bool]:
    """A registry's check: a subclass of ``module.name`` (imported when a part is registered, not before)."""
    return lambda part: isinstance(part, type) and issubclass(part, _base(module, name))


def _instance_of(module: str, name: str) -> Callable[[object], bool]:
    return lambda part: isinstance(part, _base(module, name))


# -- parts -----------------------------------------------------------------------------------------
PARAMETERIZATIONS: Registry[Any] = Registry(
    "parameterization", "filterviz.parameterizations", _subclass_of("filterviz.params", "Parameterization"),
    "a Parameterization subclass")
PARAMETERIZATIONS.declare("pixel", "filterviz.params", name="pixel", recipe_fields=(), importance=False)
PARAMETERIZATIONS.declare("fourier", "filterviz.params", name="fourier", recipe_fields=("decorrelate", "init_std"),
                          importance=False)
PARAMETERIZATIONS.declare("maco", "filterviz.params", name="maco", recipe_fields=("spectrum",), importance=True)

OPTIMIZERS: Registry[Any] = Registry("optimizer", "filterviz.optimizers",
                                     _instance_of("filterviz.optimizers", "Optimizer"), "an Optimizer instance")
for _name in ("ascent", "adam", "nadam"):
    OPTIMIZERS.declare(_name, "filterviz.optimizers", name=_name)

TRANSFORMS: Registry[Any] = Registry("transform", "filterviz.transforms",
                                     _subclass_of("filterviz.transforms", "Transform"), "a Transform subclass")
for _name, _syntax in (("pad", "pad:PX"), ("jitter", "jitter:PX"), ("scale", "scale:F,F,..."),
                       ("rotate", "rotate:DEG,DEG,..."), ("crop", "crop:LOW,HIGH"), ("flip", "flip"),
                       ("noise", "noise:STD"), ("resize", "resize:PX")):
    TRANSFORMS.declare(_name, "filterviz.transforms", name=_name, syntax=_syntax)

DEPROCESS: Registry[Any] = Registry("deprocess mode", "filterviz.deprocess", _instance_of("filterviz.image", "Deprocess"),
                                    "a Deprocess instance")
for _name in ("book", "none", "stretch"):
    DEPROCESS.declare(_name, "filterviz.image", name=_name)


def parameterization_fields() -> dict[str, Any]:
    """Each recipe field that only some parameterizations read, with the names of those."""
    owners: dict[str, list[str]] = {}
    for name, kind in PARAMETERIZATIONS.entries().items():
        for field_name in kind.recipe_fields:
            owners.setdefault(field_name, []).append(name)
    return owners


# -- model sources ---------------------------------------------------------------------------------
# torchvision's classification models (``torchvision.models.list_models(module=torchvision.models)``,
# sorted) in the torchvision release TORCHVISION_RELEASE; with another release installed, they are
# asked of torchvision itself.
TORCHVISION_RELEASE = "0.29"
TORCHVISION_NAMES = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121", "densenet161",
    "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l",
    "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mnasnet0_75",
    "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_16gf",
    "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf",
    "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf", "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf",
    "regnet_y_800mf", "regnet_y_8gf", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
    "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t",
    "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)


def torchvision_release() -> str | None:
    """The installed torchvision's MAJOR.MINOR (``0.29``), read from its metadata; None without it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return ".".join(version("torchvision").split("+")[0].split(".")[:2])
    except PackageNotFoundError:
        return None


def torchvision_names() -> list[str]:
    """torchvision's classification model names, as ``torchvision_zoo.torchvision_model_names`` gives
    them, without importing torchvision where the installed release is the one listed here."""
    if torchvision_release() == TORCHVISION_RELEASE:
        return list(TORCHVISION_NAMES)
    from .models.sources.torchvision_zoo import torchvision_model_names

    return torchvision_model_names()


@dataclass(frozen=True)
class DeclaredSource:
    """A built-in model source as ``filterviz models`` shows it before its module is imported: the
    module and class that define it, and what the class says (``usage``, ``description``, ``extra``,
    and the names it knows without a prefix, or the function that lists them)."""

    module: str
    qualname: str
    usage: str
    description: str
    extra: str | None = None
    known: Sequence[str] | Callable[[], Sequence[str]] = ()

    def names(self) -> Sequence[str]:
        return self.known() if callable(self.known) else self.known

    def declares(self, source: object) -> bool:
        """Whether ``source`` is the instance this declares."""
        return type(source).__module__ == self.module and type(source).__qualname__ == self.qualname


# In the order they are asked: names, prefixes, files.
SOURCES = (
    DeclaredSource("filterviz.models.sources.embedded", "EmbeddedSource", DEFAULT_MODEL,
                   "EfficientNet-Lite0 with ImageNet weights, embedded: works offline (the default)",
                   known=(DEFAULT_MODEL,)),
    DeclaredSource("filterviz.models.sources.torchvision_zoo", "TorchvisionSource", "vgg16, resnet50, ...",
                   "torchvision's classification models, with their weights enums' preprocessing",
                   known=torchvision_names),
    DeclaredSource("filterviz.models.sources.timm_zoo", "TimmSource", "timm:NAME", "any timm model, e.g. timm:resnet50",
                   "timm"),
    DeclaredSource("filterviz.models.sources.hf", "HFSource", "hf:NAME",
                   "a Hugging Face transformers image model, e.g. hf:google/vit-base-patch16-224, or a folder", "hf"),
    DeclaredSource("filterviz.models.sources.open_clip_zoo", "OpenClipSource", "open_clip:ARCH/TAG",
                   "a CLIP image tower, e.g. open_clip:ViT-B-32/openai (with text: objectives)", "clip"),
    DeclaredSource("filterviz.models.sources.keras_models", "KerasApplicationSource", "keras:NAME",
                   "a keras.applications model as in the book, e.g. keras:VGG16; keras:VGG16+top keeps the classifier",
                   "keras"),
    DeclaredSource("filterviz.models.sources.keras_models", "KerasFileSource", "PATH.keras, .h5",
                   "a saved Keras model", "keras"),
    DeclaredSource("filterviz.models.sources.onnx_files", "OnnxFileSource", "PATH.onnx", "an ONNX file", "onnx"),
    DeclaredSource("filterviz.models.sources.torch_files", "TorchFileSource", "PATH.pt, .pth",
                   "TorchScript; a state dict with --arch NAME; a pickled model with --trust-pickle"),
)
