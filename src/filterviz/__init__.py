"""filterviz: see what a convolutional network has learned.

Synthesizes the input images that most excite a model's filters, by gradient ascent on the image.

>>> import filterviz
>>> model = filterviz.load_model("efficientnet-lite0")
>>> image = filterviz.generate_pattern(model, "blocks.3.depthwise.act", 0, seed=0)  # (150, 150, 3) uint8
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import FilterVizError, FilterVizWarning, RenderCancelled

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "Deprocess",
    "Optimizer",
    "Parameterization",
    "Term",
    "TorchOptimizer",
    "Transform",
    "build_activation_atlas",
    "register_deprocess",
    "register_optimizer",
    "register_parameterization",
    "register_term",
    "register_transform",
    "transforms",
    "FileSource",
    "LoadRequest",
    "ModelSource",
    "PrefixSource",
    "FilterRender",
    "FilterVizError",
    "FilterVizWarning",
    "RenderCancelled",
    "Objective",
    "RECIPES",
    "Recipe",
    "Render",
    "InputSpec",
    "LayerInfo",
    "Layout",
    "register_layout",
    "LoadedModel",
    "book_layers",
    "deprocess_image",
    "generate_pattern",
    "known_models",
    "load_model",
    "get_recipe",
    "make_grid",
    "model_sources",
    "objectives",
    "parse_objective",
    "render",
    "register_source",
    "render_filters",
    "run_demo",
    "save_image",
    "show_channels",
    "show",
    "Recorder",
    "save_animation",
    "side_by_side",
    "PathBaseline",
    "PathSimilarity",
    "frechet_distance",
    "path_baseline",
    "path_layers",
    "path_similarity",
    "plausibility",
]

# Where each public name is defined. It is imported the first time it is used (PEP 562): importing
# filterviz, or its command line (filterviz.cli), imports no torch until something needs it.
_HOMES = {
    "objectives": None, "transforms": None,  # modules
    "book_layers": "book", "generate_pattern": "book", "run_demo": "book",
    "Deprocess": "image", "deprocess_image": "image", "make_grid": "image", "register_deprocess": "image",
    "save_image": "image", "show_channels": "image", "side_by_side": "image",
    "LayerInfo": "layers",
    "Layout": "layouts", "register_layout": "layouts",
    "DEFAULT_MODEL": "catalog",
    "FileSource": "models.sources", "LoadRequest": "models.sources", "ModelSource": "models.sources",
    "PrefixSource": "models.sources", "known_models": "models.sources", "model_sources": "models.sources",
    "register_source": "models.sources",
    "InputSpec": "models.spec", "LoadedModel": "models.loaded", "load_model": "models.registry",
    "Objective": "objectives", "Term": "objectives", "parse_objective": "objectives", "register_term": "objectives",
    "Optimizer": "optimizers", "TorchOptimizer": "optimizers", "register_optimizer": "optimizers",
    "Parameterization": "params", "register_parameterization": "params",
    "RECIPES": "recipes", "Recipe": "recipes", "get_recipe": "recipes",
    "Transform": "transforms", "register_transform": "transforms",
    "show": "notebook", "Recorder": "animation", "save_animation": "animation",
    "FilterRender": "ascent", "Render": "ascent", "render": "ascent", "render_filters": "ascent",
    "PathBaseline": "trust", "PathSimilarity": "trust", "frechet_distance": "trust", "path_baseline": "trust",
    "path_layers": "trust", "path_similarity": "trust", "plausibility": "trust",
    "build_activation_atlas": "atlas.activation_build",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        home = _HOMES[name]
        module = importlib.import_module(f"{__name__}.{home or name}")
        value = module if home is None else getattr(module, name)
    elif not name.startswith("__"):  # a submodule (filterviz.book, filterviz.plan), as once imported here
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
