"""Models: loading by name or module, input specs, and the loaded-model object.

The names below are imported the first time they are used (PEP 562): the sources' declarations, and
``InputSpec``, import no torch; ``load_model`` and ``LoadedModel`` do.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_MODEL", "FileSource", "InputSpec", "LoadRequest", "LoadedModel", "ModelSource", "PrefixSource",
           "describe_sources",
           "known_models", "load_model", "model_sources", "register_source", "resolve_device", "supported_files"]

_HOMES = {
    "DEFAULT_MODEL": "..catalog",
    "LoadedModel": ".loaded",
    "load_model": ".registry", "resolve_device": ".registry", "supported_files": ".registry",
    "describe_sources": ".sources", "known_models": ".sources", "FileSource": ".sources", "LoadRequest": ".sources",
    "ModelSource": ".sources", "PrefixSource": ".sources", "model_sources": ".sources", "register_source": ".sources",
    "InputSpec": ".spec",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
