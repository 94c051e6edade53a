"""Models: loading by name or module, input specs, and the loaded-model object."""

from .loaded import LoadedModel
from .registry import DEFAULT_MODEL, known_models, load_model, resolve_device
from .spec import InputSpec

__all__ = ["DEFAULT_MODEL", "InputSpec", "LoadedModel", "known_models", "load_model", "resolve_device"]
