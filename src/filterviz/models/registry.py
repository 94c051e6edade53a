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
from .sources import FileSource, LoadRequest, PrefixSource, describe_sources, known_models, model_sources  # noqa: F401
# Each of these modules registers its sources, in the order they are asked: names, prefixes, files.
from .sources import (embedded, torchvision_zoo, timm_zoo, hf, open_clip_zoo, keras_models, onnx_files,  # noqa: F401
                      torch_files)
from .spec import InputSpec, input_geometry
from .weights import load_weights_file

DEFAULT_MODEL = embedded.NAME


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


def first_conv(module: nn.Module) -> tuple[str, int] | None:
    """The first 2-D convolution among ``module``'s submodules (in the order they were made, as
    ``named_modules`` gives them; a TorchScript module's by their class name) and the channels it takes
    (``in_channels``, its weight's axis 1 times its groups); None where it has none."""
    for name, sub in module.named_modules():
        kind = getattr(sub, "original_name", None) if isinstance(sub, torch.jit.ScriptModule) else None
        if not (isinstance(sub, nn.Conv2d) or kind == "Conv2d"):
            continue
        weight = getattr(sub, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 4 and not isinstance(weight, nn.UninitializedParameter):
            return name, int(weight.shape[1]) * int(getattr(sub, "groups", 1))
    return None


def _runs_with(module: nn.Module, spec: InputSpec, channels: int) -> bool:
    """Whether ``module`` runs on a blank batch of one image of ``channels`` channels at the spec's size."""
    height, width = spec.fixed_size or (spec.default_size, spec.default_size)
    shape = (1, channels, height, width) if spec.layout == "NCHW" else (1, height, width, channels)
    tensor = next(iter(module.parameters()), None)
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    try:
        with torch.no_grad():
            module(torch.zeros(shape, dtype=dtype, device=tensor.device if tensor is not None else "cpu"))
    except Exception:  # noqa: BLE001 - whatever stops it, it does not run so
        return False
    return True


def input_channels(module: nn.Module, spec: InputSpec) -> tuple[int, str] | None:
    """How many channels ``module`` takes, and what says so (its first convolution), where that is
    known: the first convolution's ``in_channels`` when it agrees with ``spec``, or when the model runs
    on images of that many channels (a convolution made before the one that reads the image, in an RGB
    model, then says nothing); None where no convolution tells."""
    inputs = getattr(module, "inputs", None) if type(module).__module__.startswith("keras") else None
    if inputs:  # a Keras model declares its input's shape
        declared = input_geometry(tuple(inputs[0].shape), ambiguous_layout="NHWC").get("channels")
        return (int(declared), f"its input has {declared}") if declared else None  # type: ignore[call-overload]
    found = first_conv(module)
    if found is None:
        return None
    name, channels = found
    if channels == spec.channels or _runs_with(module, spec, channels):
        return channels, f"its first convolution{f' {name!r}' if name else ''} takes {channels}"
    return None


def _settle_channels(loaded: LoadedModel, channels: int | None, given_spec: bool, what: str = "") -> None:
    """Make ``loaded.spec``'s channel count the model's: the one its first convolution takes (see
    ``input_channels``), else ``channels`` (``--channels``), else the spec's. A count that the model, its
    spec or ``channels`` contradict is a one-line error, never a broadcast; a spec that filterviz made
    (not ``given_spec``) follows the model where its values are the same on every channel."""
    spec = loaded.spec
    known = input_channels(loaded.module, spec)
    if channels is not None and known is not None and known[0] != channels:
        raise FilterVizError(f"--channels {channels} (channels={channels}) does not fit {loaded.name}: "
                             f"{known[1]}; use --channels {known[0]}, or leave it out")
    if channels is not None and given_spec and channels != spec.channels:
        raise FilterVizError(f"channels={channels} does not fit the input spec, which has {spec.channels}; give "
                             "one of them, or the same count in both")
    target = channels if channels is not None else known[0] if known is not None else spec.channels
    if target == spec.channels:
        return
    if given_spec:  # known is set: a given channel count that differs from the spec's was refused above
        raise FilterVizError(f"the input spec is for {spec.channel_words()} ({spec.channels} channel"
                             f"{'s' * (spec.channels != 1)}), and {loaded.name} takes {target} "
                             f"({known[1] if known else 'channels='}); give InputSpec(channels={target}, ...) "
                             "with the model's values")
    loaded.spec = spec.with_channels(target, what=what or f"the input spec of {loaded.name}")


def load_model(
    model: str | os.PathLike[str] | nn.Module = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    *,
    spec: InputSpec | None = None,
    preprocess: str | None = None,
    channels: int | None = None,
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

    ``channels`` is how many channels the model's input has (``--channels``), where the model does not
    say it itself: a model file's declared input shape or its first convolution's ``in_channels`` says
    it (and an nn.Module given with ``preprocess`` instead of ``spec`` gets that count). A count that
    contradicts the model, ``spec`` or ``preprocess`` (``imagenet`` and ``caffe`` are for RGB) is a
    one-line error, never broadcast.

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
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
        raise FilterVizError(f"channels must be a whole number, 1 or more, not {channels!r}")
    given_spec = spec is not None
    if isinstance(model, nn.Module) and type(model).__module__.startswith("keras"):
        from .sources.keras_models import wrap_module

        loaded = wrap_module(model, spec, name)
    elif isinstance(model, nn.Module):
        if spec is None and preprocess is None:
            raise FilterVizError("an nn.Module needs spec=InputSpec(...) to say what input it expects (or "
                                 "preprocess='raw', 'unit' or 'tf' for those values on its own channels)")
        spec = spec if spec is not None else InputSpec.preset(preprocess)  # type: ignore[arg-type]
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
            channels=channels, layouts=layouts)
    _settle_channels(loaded, channels, given_spec, f"preprocessing {preprocess!r}" if preprocess else "")
    if preprocess is not None:
        loaded.spec = loaded.spec.with_preset(preprocess)
    if layouts:
        given = {str(layer): as_layout(value) for layer, value in layouts.items()}
        for layer in given:
            loaded.resolve(layer)  # an unknown name fails now, with suggestions
        loaded.layouts = {**loaded.layouts, **given}
    loaded.module.to(target)
    return loaded
