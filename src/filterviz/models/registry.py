"""``load_model``: one entry point for every model source (see ``sources``: each source says which
names it takes; the first registered source that matches a name loads it).

Built in, a model is named by one of:
- a torchvision classification model name (``vgg16``, ``resnet50``...) or the embedded default;
- ``timm:NAME`` (extra ``[timm]``) or ``keras:NAME`` (extra ``[keras]``, ``keras.applications``);
- a file: ``.onnx`` (extra ``[onnx]``), ``.keras``/``.h5`` (extra ``[keras]``), or a PyTorch file
  (TorchScript; a state dict with ``arch``; a pickled whole model with ``trust_pickle``);
- or it is a ``torch.nn.Module`` with an ``InputSpec``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import FilterVizError, ModelFileError, UnknownModelError
from ..layers import closest_names
from ..layouts import Layout, as_layout
from .loaded import LoadedModel
from .sources import FileSource, LoadRequest, PrefixSource, model_sources
# Each of these modules registers its sources, in the order they are asked: names, prefixes, files.
from .sources import embedded, torchvision_zoo, timm_zoo, keras_models, onnx_files, torch_files  # noqa: F401
from .spec import InputSpec
from .weights import load_weights_file

DEFAULT_MODEL = embedded.NAME


def known_models() -> list[str]:
    """Every model name ``load_model`` accepts without a prefix: the embedded default, then torchvision's
    (and those of any source registered with names of its own)."""
    return [name for source in model_sources() for name in source.names()]


def describe_sources() -> str:
    """The sources other than model names, one per line with the extra each needs (``filterviz models``)."""
    lines = ["Other sources:"]
    for source in model_sources():
        if source.names():
            continue
        extra = f" (pip install 'filterviz[{source.extra}]')" if source.extra else ""
        lines.append(f"  {source.usage:<18} {source.description}{extra}")
    return "\n".join(lines)


def supported_files() -> str:
    """The model files the registered sources read, for messages."""
    return "; ".join(f"{source.usage} ({source.description})" for source in model_sources()
                     if isinstance(source, FileSource))


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


def _looks_like_file(model: str) -> bool:
    suffixes = {suffix for source in model_sources() if isinstance(source, FileSource) for suffix in source.suffixes}
    return Path(model).exists() or "/" in model or os.sep in model or Path(model).suffix.lower() in suffixes


def _check_file(model: str) -> None:
    path = Path(model)
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise ModelFileError(f"model file {model!r}: {what}; give a model name (`filterviz models`) or a file: "
                             f"{supported_files()}")


def _load_named(text: str, request: LoadRequest) -> tuple[LoadedModel, bool]:
    """The model the first matching source loads, and whether that source read a file."""
    for source in model_sources():
        if source.matches(text):
            if source.reads_files:
                _check_file(text)
            return source.load(text, request), source.reads_files
    if _looks_like_file(text):
        _check_file(text)
        suffix = Path(text).suffix.lower()
        raise ModelFileError(f"unsupported model file type {suffix or '(no suffix)'!r} of {text!r}; "
                             f"supported: {supported_files()}")
    hint = closest_names(text.strip().lower(), known_models())
    close = f" (closest: {', '.join(hint)})" if hint else f" (for example {embedded.NAME}, vgg16, resnet50)"
    prefixes = ", ".join(source.usage for source in model_sources() if isinstance(source, PrefixSource))
    raise UnknownModelError(f"unknown model {text!r}{close}; `filterviz models` lists the names and the other "
                            f"sources ({prefixes}, model files)")


def load_model(
    model: str | os.PathLike[str] | nn.Module = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    *,
    spec: InputSpec | None = None,
    preprocess: str | None = None,
    name: str | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    progress: bool = False,
    download_timeout: float = 5.0,
    load_weights: bool = True,
    layouts: Mapping[str, Layout | str] | None = None,
) -> LoadedModel:
    """Load a model from any source (see the module docstring) or wrap an ``nn.Module``.

    ``weights``: for named models, a weights enum name (``"IMAGENET1K_V1"``), a local checkpoint
    path, or ``"random"``; ``None`` takes the pretrained default (for ``vgg16``, the original VGG
    weights ``IMAGENET1K_FEATURES``). ``spec`` is required with an ``nn.Module`` and overrides a named
    model's input spec; for a model file, whose layout and size come from the file, it gives the value
    range and channel order. ``preprocess`` names a preset (``raw``, ``unit``, ``tf``, ``caffe``,
    ``imagenet``) for the value range and channel order. ``arch`` names the architecture of a state dict
    file; ``trust_pickle`` allows loading a pickled whole model, which runs code from the file.

    The input spec is that of the chosen weights, whether or not they are loaded: random weights get
    the spec of the weights a name gets by default (for ``vgg16``, ``IMAGENET1K_FEATURES``'s).
    ``load_weights=False`` builds a named model's architecture with random parameters but the spec,
    categories and aliases of the chosen weights, reading and downloading nothing (``source`` says
    "architecture only"); a model file is always loaded whole, as its layers come from it.

    ``layouts`` says how to read layer outputs whose layout filterviz cannot tell (or should read
    otherwise): ``{"blocks.0.attn.q_norm": "nchw", "head_pre": "tokens:1"}``, by layer name (or alias,
    with ``#N`` for one call) and layout (``nchw``, ``nhwc``, ``tokens[:PREFIX]``, ``vector``, or a
    ``Layout``).
    """
    target = resolve_device(device)  # checked first: a bad device should not wait for a download
    if preprocess is not None:
        InputSpec.preset(preprocess)  # a bad name fails before any loading
    download = {"progress": progress, "download_timeout": download_timeout}
    if isinstance(model, nn.Module) and type(model).__module__.startswith("keras"):
        from .sources.keras_models import wrap_module

        loaded = wrap_module(model, spec, name)
    elif isinstance(model, nn.Module):
        if spec is None:
            raise FilterVizError("an nn.Module needs spec=InputSpec(...) to say what input it expects")
        label = name or type(model).__name__
        if weights is not None and load_weights:
            load_weights_file(model, weights, label)
        loaded = LoadedModel(label, model, spec, source=f"user module, weights {weights}" if weights and load_weights else "user module")
    else:
        text = os.fspath(model)
        request = LoadRequest(weights, spec, arch, trust_pickle, progress, download_timeout, load_weights)
        loaded, from_file = _load_named(text, request)
        if from_file:
            spec = None  # already merged with the file's geometry
        if spec is not None:
            loaded.spec = spec
        if name is not None:
            loaded.name = name
        # How another process (a Ray worker) loads the same model: from the same name or file.
        loaded.origin = functools.partial(
            load_model, text, weights, "auto", spec=spec, preprocess=preprocess, name=name, arch=arch,
            trust_pickle=trust_pickle, download_timeout=download_timeout, load_weights=load_weights,
            layouts=layouts)
    if preprocess is not None:
        loaded.spec = loaded.spec.with_preset(preprocess)
    if layouts:
        given = {str(layer): as_layout(value) for layer, value in layouts.items()}
        for layer in given:
            loaded.resolve(layer)  # an unknown name fails now, with suggestions
        loaded.layouts = {**loaded.layouts, **given}
    loaded.module.to(target)
    return loaded
