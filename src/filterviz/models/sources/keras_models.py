"""Keras 3 models, run on Keras's torch backend, where every Keras layer is a ``torch.nn.Module``.

``keras:VGG16`` builds ``keras.applications.VGG16`` as the book does (``include_top=False``, any input
size); ``keras:VGG16+top`` keeps the classifier (and its fixed input size). A path to a ``.keras`` or
``.h5`` file loads a saved model. Layers are addressed by their Keras names; a Keras layer's output
includes its activation, as in Keras. Keras layers output (N, H, W, C); filterviz reads them as
(N, C, H, W) like every other model.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import numpy as np

from ...errors import FilterVizError, ModelFileError, UnknownModelError, WeightsError, WeightsUnavailableError
from ...errors import first_line
from ...layers import ModuleGraph, closest_names
from ..downloads import unreachable_reason, weights_unavailable
from ..loaded import LoadedModel
from ..spec import InputSpec, file_spec, input_geometry
from ..weights import RANDOM_WEIGHTS
from . import FileSource, LoadRequest, PrefixSource, imagenet_categories, register_source, require

PREFIX = "keras:"
TOP = "+top"
SUFFIXES = (".keras", ".h5", ".hdf5")


def _keras() -> ModuleType:
    # Keras picks its backend once, at import: ask for torch unless the user chose one already.
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = require("keras", "keras", "Keras models")
    if keras.backend.backend() != "torch":
        raise FilterVizError(
            f"Keras runs on its {keras.backend.backend()!r} backend here; filterviz needs the torch backend: "
            "set KERAS_BACKEND=torch before Keras is first imported"
        )
    return keras


def application_names() -> list[str]:
    """The model builders of ``keras.applications`` (VGG16, ResNet50, ...)."""
    keras = _keras()
    return sorted(n for n in dir(keras.applications) if n[0].isupper() and callable(getattr(keras.applications, n)))


def spec_from_preprocess(preprocess: object, **kwargs: object) -> InputSpec:
    """Read a Keras ``preprocess_input`` function as an InputSpec by applying it to probe pixels.

    Such functions are per-channel affine maps, possibly with the channels reversed (``caffe`` mode),
    so a black image and one image per lit channel determine them exactly.
    """
    probe = np.zeros((4, 1, 1, 3), dtype=np.float32)
    for channel in range(3):
        probe[channel + 1, 0, 0, channel] = 100.0
    out = np.asarray(preprocess(probe.copy()), dtype=np.float64).reshape(4, 3)
    offset, lit = out[0], out[1:] - out[0]  # lit[c_in, c_out]
    sources = np.abs(lit).argmax(axis=0)  # which input channel feeds each output channel
    if list(sources) == [0, 1, 2]:
        order = "RGB"
    elif list(sources) == [2, 1, 0]:
        order = "BGR"
    else:
        raise FilterVizError("the model's preprocess_input is not a per-channel affine map of RGB or BGR")
    scale = np.array([lit[sources[c], c] / 100.0 for c in range(3)])
    return InputSpec(mean=tuple(float(v) for v in -offset / scale),  # type: ignore[arg-type]
                     std=tuple(float(v) for v in 1.0 / scale), channel_order=order, **kwargs)  # type: ignore[arg-type]


def _flat_layers(model: object) -> Iterator[object]:
    """Every layer of a Keras model, descending into nested models."""
    for layer in model.layers:  # type: ignore[attr-defined]
        yield layer
        if hasattr(layer, "layers") and layer.layers:
            yield from _flat_layers(layer)


def _input_geometry(model: object) -> dict[str, object]:
    """Layout and sizes read off the model's input shape: (None, H, W, 3) or (None, 3, H, W)."""
    shape = tuple(model.inputs[0].shape)  # type: ignore[attr-defined]
    if len(shape) != 4:
        raise ModelFileError(f"filterviz needs a model that takes images (N, H, W, 3); this one takes {shape}")
    return input_geometry(shape, ambiguous_layout="NHWC")  # Keras's own default


def wrap(model: object, name: str, spec: InputSpec, source: str, categories: tuple[str, ...] | None = None
         ) -> LoadedModel:
    """A built Keras model as a LoadedModel, its layers addressed by their Keras names."""
    layers = {layer.name: layer for layer in _flat_layers(model) if type(layer).__name__ != "InputLayer"}
    channels_last = frozenset(n for n, layer in layers.items()
                              if getattr(layer, "data_format", "channels_last") == "channels_last")
    return LoadedModel(name, model, spec, {}, categories, source=source,  # type: ignore[arg-type]
                       graph=ModuleGraph(model, layers), channels_last=channels_last)  # type: ignore[arg-type]


def _keras_home() -> str:
    """Keras's cache folder: KERAS_HOME as it is now (Keras reads it once, at import), else Keras's own."""
    if os.environ.get("KERAS_HOME"):
        return os.environ["KERAS_HOME"]
    try:
        from keras.src.backend import config
    except ImportError:  # another Keras layout: its documented default
        return os.path.join(os.path.expanduser("~"), ".keras")
    return config.keras_home()


@contextlib.contextmanager
def _cached_or_reachable(label: str, timeout: float
                         ) -> Iterator[dict[str, Callable[[str], WeightsUnavailableError]]]:
    """While a keras.applications builder runs: a weights file that is neither in the Keras cache nor
    downloadable raises the shared one-line WeightsUnavailableError, naming the file's full path and URL,
    at once; Keras itself would print a download line and fail with an error of its own. Downloads that
    do start are bounded by ``timeout`` per read, as Keras sets none. Yields a dict whose ``"failed"``,
    once a download starts, makes that error for a reason, should the download fail."""
    try:
        from keras.src.utils import file_utils
    except ImportError:  # another Keras layout: its own errors, still caught by load_application
        file_utils = None
    real = getattr(file_utils, "get_file", None)

    def get_file(fname: str | None = None, origin: str | None = None, *args: object, cache_subdir: str = "datasets",
                 cache_dir: str | None = None, **kwargs: object) -> str:
        # Where Keras keeps the file (its get_file's own rule, unwritable home included), passed on
        # explicitly so that the folder looked up is the one named in the message.
        cache_dir = cache_dir or _keras_home()
        base = os.path.expanduser(cache_dir)
        with contextlib.suppress(OSError):  # Keras makes its home at import; one named later, here
            os.makedirs(base, exist_ok=True)
        if not os.access(base, os.W_OK):
            base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
        target = Path(base) / cache_subdir / (fname or os.path.basename(urlsplit(origin or "").path))
        if origin and not target.exists():
            reason = unreachable_reason(origin, timeout)
            if reason:
                raise weights_unavailable(label, "Keras", target, origin, reason)
            downloads["failed"] = lambda why: weights_unavailable(label, "Keras", target, origin, why)
        return real(fname, origin, *args, cache_subdir=cache_subdir, cache_dir=cache_dir, **kwargs)

    downloads: dict[str, Callable[[str], WeightsUnavailableError]] = {}
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    if real is not None:
        file_utils.get_file = get_file
    try:
        yield downloads
    finally:
        socket.setdefaulttimeout(previous)
        if real is not None:
            file_utils.get_file = real


def _application(name: str) -> tuple[Callable[..., object], str, bool]:
    """The builder of ``keras.applications`` model ``name`` (``VGG16`` or ``VGG16+top``), its base name,
    and whether the classifier is kept."""
    keras = _keras()
    base, top = (name[: -len(TOP)], True) if name.endswith(TOP) else (name, False)
    known = application_names()
    if base not in known:
        hint = closest_names(base, known)
        raise UnknownModelError(f"unknown Keras application {base!r}" + (f" (closest: {', '.join(hint)})" if hint
                                else "") + f"; keras.applications has {', '.join(known[:6])}, ...")
    return getattr(keras.applications, base), base, top


def _preprocess_of(builder: Callable[..., object]) -> Callable[..., object]:
    """The application's ``preprocess_input``: the one place a Keras application's value range comes from."""
    return importlib.import_module(builder.__module__).preprocess_input  # type: ignore[no-any-return]


def _spec(builder: Callable[..., object], model: object) -> InputSpec:
    return spec_from_preprocess(_preprocess_of(builder), **_input_geometry(model))


def _check_weights(weights: str | os.PathLike[str] | None) -> bool:
    """Whether ``weights`` asks for random weights; a weights file must exist."""
    random = weights is not None and str(weights).lower() == RANDOM_WEIGHTS
    if weights is not None and not random and not Path(weights).is_file():
        raise WeightsError(f"weights file {str(weights)!r} does not exist; give a Keras weights file (.h5), "
                           "'random', or nothing for the ImageNet weights")
    return random


def spec_for(name: str, weights: str | os.PathLike[str] | None = None) -> InputSpec:
    """The input spec a render of ``keras:name`` with ``weights`` uses: the application's
    ``preprocess_input`` (whatever the weights), with the layout and sizes of its architecture, which is
    built for that without any weights."""
    builder, _, top = _application(name)
    _check_weights(weights)
    return _spec(builder, builder(weights=None, include_top=top))


def load_application(name: str, weights: str | os.PathLike[str] | None, *, load_weights: bool = True,
                     download_timeout: float = 5.0) -> LoadedModel:
    """``keras.applications`` model ``name`` (``VGG16``, or ``VGG16+top`` with the classifier).

    With ``load_weights=False`` the parameters stay random and nothing is read or downloaded, but the
    spec and categories are those of the chosen weights.
    """
    builder, base, top = _application(name)
    random = _check_weights(weights)
    choice = None if random or not load_weights else ("imagenet" if weights is None else str(weights))
    try:
        with _cached_or_reachable(f"keras:{name} ImageNet", download_timeout) as downloads:
            model = builder(weights=choice, include_top=top)
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # Keras reports download and file errors with assorted types
        if "failed" in downloads:  # a download that started: the shared message, with Keras's reason
            why = re.sub(r"^URL fetch failure on \S+: (?:None -- )?", "", first_line(exc, 1000))  # the URL is said
            raise downloads["failed"](why[:160]) from None
        if weights is None:
            raise WeightsUnavailableError(
                f"cannot load the ImageNet weights of keras:{base} ({first_line(exc)}); give a local weights "
                "file with --weights PATH, or use --weights random for untrained weights"
            ) from None
        raise WeightsError(f"cannot load weights {str(weights)!r} into keras:{name}: {first_line(exc)}") from None
    categories = imagenet_categories() if top else None
    if not load_weights:
        source = f"architecture only, spec of {builder.__module__}.preprocess_input"
    else:
        source = "random weights" if random else ("Keras ImageNet weights" if weights is None else f"weights {weights}")
    return wrap(model, f"{PREFIX}{name}", _spec(builder, model), source, categories)


def wrap_module(model: object, spec: InputSpec | None, name: str | None) -> LoadedModel:
    """A Keras model built in Python; ``spec`` gives its preprocessing (default: raw pixels)."""
    return wrap(model, name or getattr(model, "name", "keras model"), file_spec(spec, **_input_geometry(model)),
                "Keras model")


def load_file(path: Path, weights: str | os.PathLike[str] | None, spec: InputSpec | None) -> LoadedModel:
    """A saved Keras model (``.keras``, ``.h5``); ``spec`` gives its preprocessing (default: raw pixels)."""
    keras = _keras()
    try:
        model = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # zip, HDF5 and config errors
        raise ModelFileError(f"cannot load {str(path)!r} as a Keras model ({first_line(exc, 120)}); "
                             f"give a file written by model.save() ({', '.join(SUFFIXES)})") from None
    if weights is not None:
        try:
            model.load_weights(str(weights))
        except Exception as exc:
            raise WeightsError(f"cannot load weights {str(weights)!r} into {path.name}: {first_line(exc)}") from None
    return wrap(model, path.name, file_spec(spec, **_input_geometry(model)), f"Keras file {path}")


class KerasApplicationSource(PrefixSource):
    """``keras.applications`` models as ``keras:NAME`` (``keras:VGG16+top`` keeps the classifier)."""

    prefix = PREFIX
    usage = "keras:NAME"
    description = "a keras.applications model as in the book, e.g. keras:VGG16; keras:VGG16+top keeps the classifier"
    extra = "keras"

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        return load_application(self.strip(model), request.weights, load_weights=request.load_weights,
                                download_timeout=request.download_timeout)


class KerasFileSource(FileSource):
    """Saved Keras models (``.keras``, ``.h5``)."""

    suffixes = SUFFIXES
    usage = "PATH.keras, .h5"
    description = "a saved Keras model"
    extra = "keras"

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        return load_file(Path(model), request.weights, request.spec)


register_source(KerasApplicationSource(), builtin=True)
register_source(KerasFileSource(), builtin=True)
