"""Models: loading by name or module, input specs, and the loaded-model object."""

from .loaded import LoadedModel
from .registry import DEFAULT_MODEL, describe_sources, known_models, load_model, resolve_device, supported_files
from .sources import FileSource, LoadRequest, ModelSource, PrefixSource, model_sources, register_source
from .spec import InputSpec

__all__ = ["DEFAULT_MODEL", "FileSource", "InputSpec", "LoadRequest", "LoadedModel", "ModelSource", "PrefixSource",
           "describe_sources",
           "known_models", "load_model", "model_sources", "register_source", "resolve_device", "supported_files"]
