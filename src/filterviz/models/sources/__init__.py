"""Model sources: one module per place a model can come from, each with one ``ModelSource`` class and
its registration; ``load_model`` asks the registered sources in turn.

This module imports no torch: filterviz's own sources are declared in ``catalog.SOURCES``, so that
``filterviz models`` lists them without importing their modules; ``model_sources`` imports them all.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

from ...catalog import SOURCES, DeclaredSource
from ...errors import FilterVizError, MissingExtraError
from ..spec import InputSpec

if TYPE_CHECKING:
    from ..loaded import LoadedModel


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} need {module}, which is not installed ({exc.msg if hasattr(exc, 'msg') else exc}); "
            f"install it with: pip install 'filterviz[{extra}]'"
        ) from None


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in class-index order (shipped with torchvision)."""
    from torchvision.models import VGG16_Weights

    return tuple(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass(frozen=True)
class LoadRequest:
    """What ``load_model`` was asked besides the model's name: the options a source may use."""

    weights: str | os.PathLike[str] | None = None
    spec: InputSpec | None = None
    arch: str | None = None
    trust_pickle: bool = False
    progress: bool = False
    download_timeout: float = 5.0
    load_weights: bool = True


class ModelSource:
    """A place models come from. A subclass says how users name its models (``usage``, shown by
    ``filterviz models`` with ``description`` and the pip ``extra`` it needs), which names it takes
    (``matches``), the names it knows without a prefix (``names``), and how it loads one (``load``).
    Register an instance with ``filterviz.register_source``, or through the ``filterviz.sources`` entry
    point group; sources are asked in order (a user's before filterviz's own), and the first that
    matches loads the model."""

    usage: ClassVar[str] = ""
    description: ClassVar[str] = ""
    extra: ClassVar[str | None] = None
    # A file's own geometry (layout, fixed size) wins over a spec given by the caller; only the value
    # range and channel order of that spec are applied, by the source itself.
    reads_files: ClassVar[bool] = False

    def matches(self, model: str) -> bool:
        raise NotImplementedError

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        raise NotImplementedError

    def names(self) -> Sequence[str]:
        """Model names this source knows without a prefix (for ``filterviz models`` and suggestions)."""
        return ()


class PrefixSource(ModelSource):
    """A source whose models are named ``PREFIX:NAME``."""

    prefix: ClassVar[str] = ""

    def matches(self, model: str) -> bool:
        return model.strip().lower().startswith(self.prefix)

    def strip(self, model: str) -> str:
        """The name without the prefix."""
        return model.strip()[len(self.prefix):]


class FileSource(ModelSource):
    """A source of model files, recognized by their suffixes; ``load`` is only called for a file that exists."""

    suffixes: ClassVar[tuple[str, ...]] = ()
    reads_files = True

    def matches(self, model: str) -> bool:
        return Path(model).suffix.lower() in self.suffixes


_builtin: list[ModelSource] = []
_added: list[ModelSource] = []
_entry_points_read = False
ENTRY_POINT_GROUP = "filterviz.sources"


def register_source(source: ModelSource, *, builtin: bool = False) -> ModelSource:
    """Add a model source; it is asked before filterviz's own ones (``builtin`` is for those)."""
    if not isinstance(source, ModelSource):
        raise FilterVizError(f"a model source must be a filterviz.ModelSource instance, not {type(source).__name__}")
    target = _builtin if builtin else _added
    if all(type(existing) is not type(source) for existing in target):
        target.insert(0, source) if not builtin else target.append(source)
    return source


def _read_entry_points() -> None:
    """Register installed plugins' sources (once)."""
    global _entry_points_read
    if not _entry_points_read:
        _entry_points_read = True
        from importlib.metadata import entry_points

        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = point.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break filterviz
                raise FilterVizError(f"the model source plugin {point.name!r} ({point.value}) cannot be loaded: "
                                     f"{exc}; reinstall or uninstall the package that provides it") from None
            register_source(loaded() if isinstance(loaded, type) else loaded)


def _builtin_entries() -> list[ModelSource | DeclaredSource]:
    """filterviz's own sources in their declared order: each registered one, else its declaration; a
    built-in source registered without a declaration comes after them."""
    declared = [next((s for s in _builtin if d.declares(s)), d) for d in SOURCES]
    return [*declared, *(s for s in _builtin if not any(d.declares(s) for d in SOURCES))]


def model_sources() -> list[ModelSource]:
    """Every registered source, in the order they are asked (installed plugins' ones are read once;
    filterviz's own modules are imported)."""
    _read_entry_points()
    for declaration in SOURCES:
        importlib.import_module(declaration.module)  # registers its sources
    return [*_added, *_builtin_entries()]  # type: ignore[list-item]


def source_entries() -> list[ModelSource | DeclaredSource]:
    """Every source as ``model_sources`` gives them, but a built-in one whose module is not imported yet
    is its declaration, which answers ``names()``, ``usage``, ``description`` and ``extra`` alike."""
    _read_entry_points()
    return [*_added, *_builtin_entries()]


def known_models() -> list[str]:
    """Every model name ``load_model`` accepts without a prefix: the embedded default, then torchvision's
    (and those of any source registered with names of its own)."""
    return [name for source in source_entries() for name in source.names()]


def describe_sources() -> str:
    """The sources other than model names, one per line with the extra each needs (``filterviz models``)."""
    lines = ["Other sources:"]
    for source in source_entries():
        if source.names():
            continue
        extra = f" (pip install 'filterviz[{source.extra}]')" if source.extra else ""
        lines.append(f"  {source.usage:<18} {source.description}{extra}")
    return "\n".join(lines)
