"""``load_model``: one entry point for every model source.

A model is named by one of:
- a torchvision classification model name (``vgg16``, ``resnet50``...) or the embedded default;
- ``timm:NAME`` (extra ``[timm]``) or ``keras:NAME`` (extra ``[keras]``, ``keras.applications``);
- a file: ``.onnx`` (extra ``[onnx]``), ``.keras``/``.h5`` (extra ``[keras]``), or a PyTorch file
  (TorchScript; a state dict with ``arch``; a pickled whole model with ``trust_pickle``);
- or it is a ``torch.nn.Module`` with an ``InputSpec``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import FilterVizError, ModelFileError, UnknownModelError
from ..layers import closest_names
from .loaded import LoadedModel
from .sources import embedded
from .sources.torchvision_zoo import load_torchvision, torchvision_model_names
from .spec import InputSpec
from .weights import PickledObjectsError, load_weights_file, read_state_dict

DEFAULT_MODEL = embedded.NAME
TIMM_PREFIX = "timm:"
KERAS_PREFIX = "keras:"
ONNX_SUFFIXES = (".onnx",)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TORCH_SUFFIXES = (".pt", ".pth", ".pts", ".ts", ".torchscript", ".ckpt", ".bin", ".tar", ".safetensors")
SUPPORTED_FILES = (".onnx (ONNX), .keras/.h5 (Keras), .pt/.pth/.ts (TorchScript; a state dict with --arch; "
                   "a pickled model with --trust-pickle)")


def known_models() -> list[str]:
    """Every model name ``load_model`` accepts without a prefix: the embedded default, then torchvision's."""
    return [embedded.NAME, *torchvision_model_names()]


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


def _canonical(name: str) -> str:
    lowered = name.strip().lower()
    return embedded.NAME if lowered.replace("_", "-") == embedded.NAME else lowered


def is_model_file(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` names a model file rather than a model by name."""
    text = os.fspath(model)
    if text.lower().startswith((TIMM_PREFIX, KERAS_PREFIX)) or _canonical(text) in known_models():
        return False
    return _is_file_name(text)


def _is_file_name(model: str) -> bool:
    suffix = Path(model).suffix.lower()
    return (Path(model).exists() or "/" in model or os.sep in model
            or suffix in ONNX_SUFFIXES + KERAS_SUFFIXES + TORCH_SUFFIXES)


def _load_torch_file(path: Path, weights: object, spec: InputSpec | None, arch: str | None,
                     trust_pickle: bool, **download: object) -> LoadedModel:
    from .sources import torch_files

    if torch_files.is_torchscript(path):
        return torch_files.load_torchscript(path, spec)
    if arch is not None:
        loaded = load_model(arch, weights=path, spec=spec, device="cpu", **download)  # type: ignore[arg-type]
        loaded.name = f"{arch} ({path.name})"
        return loaded
    try:
        read_state_dict(path)
    except PickledObjectsError:
        if trust_pickle:
            return torch_files.load_pickled(path, spec)
        raise ModelFileError(
            f"{str(path)!r} holds a pickled model, and unpickling runs code from the file: pass --trust-pickle "
            "(trust_pickle=True) only if you trust its source, or save it as TorchScript or a state dict"
        ) from None
    raise ModelFileError(f"{str(path)!r} holds weights only (a state dict); say which architecture they belong "
                         "to with --arch NAME (a torchvision name, or timm:NAME)")


def _load_file(model: str, weights: object, spec: InputSpec | None, arch: str | None, trust_pickle: bool,
               **download: object) -> LoadedModel:
    path = Path(model)
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise ModelFileError(f"model file {model!r}: {what}; give a model name (`filterviz models`) or a file: "
                             f"{SUPPORTED_FILES}")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from .sources.onnx_files import load_onnx

        loaded = load_onnx(path, spec)
        if weights is not None:
            raise FilterVizError("an ONNX file carries its own weights; drop --weights")
        return loaded
    if suffix in KERAS_SUFFIXES:
        from .sources.keras_models import load_file

        return load_file(path, weights, spec)  # type: ignore[arg-type]
    if suffix in TORCH_SUFFIXES:
        if weights is not None and arch is None:
            raise FilterVizError(f"--weights goes with a model name or --arch; {path.name} is a model file")
        return _load_torch_file(path, weights, spec, arch, trust_pickle, **download)
    raise ModelFileError(f"unsupported model file type {suffix or '(no suffix)'!r} of {model!r}; "
                         f"supported: {SUPPORTED_FILES}")


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
        key = _canonical(text)
        if key.startswith(TIMM_PREFIX):
            from .sources.timm_zoo import load_timm

            loaded = load_timm(text.strip()[len(TIMM_PREFIX):], weights, load_weights=load_weights,
                               download_timeout=download_timeout)
        elif key.startswith(KERAS_PREFIX):
            from .sources.keras_models import load_application

            loaded = load_application(text.strip()[len(KERAS_PREFIX):], weights, load_weights=load_weights,
                                      download_timeout=download_timeout)
        elif key == embedded.NAME:
            loaded = embedded.load_embedded(weights, load_weights=load_weights)
        elif key in torchvision_model_names():
            loaded = load_torchvision(key, weights, load_weights=load_weights, **download)  # type: ignore[arg-type]
        elif _is_file_name(text):
            loaded = _load_file(text, weights, spec, arch, trust_pickle, **download)
            spec = None  # already merged with the file's geometry
        else:
            hint = closest_names(key, known_models())
            close = f" (closest: {', '.join(hint)})" if hint else f" (for example {embedded.NAME}, vgg16, resnet50)"
            raise UnknownModelError(
                f"unknown model {text!r}{close}; `filterviz models` lists the names and the other sources "
                "(timm:NAME, keras:NAME, model files)"
            )
        if spec is not None:
            loaded.spec = spec
        if name is not None:
            loaded.name = name
        # How another process (a Ray worker) loads the same model: from the same name or file.
        loaded.origin = functools.partial(
            load_model, text, weights, "auto", spec=spec, preprocess=preprocess, name=name, arch=arch,
            trust_pickle=trust_pickle, download_timeout=download_timeout, load_weights=load_weights)
    if preprocess is not None:
        loaded.spec = loaded.spec.with_preset(preprocess)
    loaded.module.to(target)
    return loaded
