"""The models a server may use: the ones given when it started (names, files, loaded models), and the
names the registry knows. A browser names a model; it never gives a path, so nothing it sends can make
the server open a file.

Each model is loaded once, when a render first needs it, on the server's device. Listing layers and
checking a request need only the architecture (``load_model(..., load_weights=False)``: nothing read
or downloaded), kept apart from the rendering copy so that a check never waits for a render.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Sequence
from typing import Any

from ..catalog import DEFAULT_MODEL
from ..errors import FilterVizError, UnknownModelError
from ..fingerprints import model_fingerprint
from ..models.loaded import LoadedModel
from ..models.registry import load_model
from ..models.sources import known_models


class ModelStore:
    """Models by name: ``given`` first (the server's command line: names or files, or LoadedModel
    objects, known by their ``name``), then, with ``registry``, every name ``filterviz models`` lists."""

    def __init__(self, given: Sequence[str | os.PathLike[str] | LoadedModel] = (DEFAULT_MODEL,),
                 device: str = "auto", registry: bool = True) -> None:
        self.device = device
        self._objects: dict[str, LoadedModel] = {}
        self._given: list[str] = []
        for model in given:
            name = model.name if isinstance(model, LoadedModel) else os.fspath(model)
            if isinstance(model, LoadedModel):
                self._objects[name] = model
            if name not in self._given:
                self._given.append(name)
        self._registry = [name for name in known_models() if name not in self._given] if registry else []
        self._loaded: dict[str, LoadedModel] = {}
        self._shapes: dict[str, LoadedModel] = {}  # architecture only: for listings and checks
        self._fingerprints: dict[str, str] = {}
        self._layers: dict[tuple[str, int | None], dict[str, Any]] = {}
        self._lock = threading.Lock()  # guards the dictionaries; loading happens outside it
        self._name_locks: dict[str, threading.Lock] = {}

    @property
    def default(self) -> str:
        """The model a page shows first: the first one given."""
        return self._given[0] if self._given else self._registry[0]

    def names(self) -> list[str]:
        """Every model a request may name, the given ones first."""
        return [*self._given, *self._registry]

    def check(self, name: object) -> str:
        """``name`` if a request may use it; else a FilterVizError that lists what it may use."""
        if isinstance(name, str) and (name in self._given or name in self._registry):
            return name
        shown = ", ".join(self._given + self._registry[:3]) + (" ..." if len(self._registry) > 3 else "")
        raise UnknownModelError(f"model {name!r} is not one this server serves; use one of {shown} (GET /api/models "
                                "lists them; files are served only when named on the server's command line)")

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def load(self, name: str) -> LoadedModel:
        """The model, with its weights, on the server's device (loaded at the first call)."""
        name = self.check(name)
        with self._name_lock(name):
            if name not in self._loaded:
                self._loaded[name] = self._objects.get(name) or load_model(name, device=self.device)
            return self._loaded[name]

    def fingerprint(self, name: str) -> str:
        """The loaded model's fingerprint (``fingerprints.model_fingerprint``), computed once."""
        model = self.load(name)
        with self._name_lock(name):
            if name not in self._fingerprints:
                self._fingerprints[name] = model_fingerprint(model)
            return self._fingerprints[name]

    def known_fingerprint(self, name: str) -> str | None:
        """The fingerprint if the model was loaded already, else None (nothing is loaded to find it)."""
        return self._fingerprints.get(name)

    def shape(self, name: str) -> LoadedModel:
        """The model's architecture with the spec of its weights, on the CPU, for listings and checks:
        for a given object, a copy of it (a render may be using the object itself)."""
        name = self.check(name)
        with self._name_lock(name):
            if name not in self._shapes:
                given = self._objects.get(name)
                self._shapes[name] = (copy.deepcopy(given) if given is not None
                                      else load_model(name, device="cpu", load_weights=False))
            return self._shapes[name]

    def layers(self, name: str, size: int | None = None) -> dict[str, Any]:
        """What ``filterviz layers NAME --size SIZE`` shows, as data: the input spec and each layer's
        name, kind, calls, output, channels and aliases."""
        name = self.check(name)
        key = (name, size)
        if key not in self._layers:
            model = self.shape(name)
            with self._name_lock(name):
                infos = model.layers(size)
                listing = {"model": name, "input": model.spec.describe(), "size": size or model.spec.default_size,
                           "layers": [{"name": info.name, "kind": info.kind, "calls": info.calls,
                                       "output": info.output, "channels": info.channels,
                                       "aliases": list(info.aliases)} for info in infos]}
            self._layers[key] = listing
        return self._layers[key]

    def check_objective(self, name: str, objectives: Sequence[Any], recipe: Any) -> None:
        """Raise the error a render of ``objectives`` with ``recipe`` on this model would raise before its
        first step (an unknown layer, a filter out of range, a bad size), on the architecture alone."""
        from ..plan import check_render

        model = self.shape(name)
        with self._name_lock(name):
            check_render(model, list(objectives), recipe, batch_size=1, precision="fp32")


def describe_error(exc: BaseException) -> str:
    """An error's one line, as a page or the API shows it."""
    if isinstance(exc, FilterVizError):
        return str(exc)
    from ..errors import first_line

    return f"internal error ({type(exc).__name__}: {first_line(exc)})"
