"""filterviz: see what a convolutional network has learned.

Synthesizes the input images that most excite a model's filters, by gradient ascent on the image.

>>> import filterviz
>>> model = filterviz.load_model("efficientnet-lite0")
>>> image = filterviz.generate_pattern(model, "blocks.3.depthwise.act", 0, seed=0)  # (150, 150, 3) uint8
"""

from . import objectives
from .book import book_layers, generate_pattern, run_demo
from .errors import FilterVizError, FilterVizWarning
from .image import deprocess_image, make_grid, save_image
from .layers import LayerInfo
from .models import (DEFAULT_MODEL, FileSource, InputSpec, LoadedModel, LoadRequest, ModelSource, PrefixSource,
                     known_models, load_model, model_sources, register_source)
from .objectives import Objective, parse_objective
from .recipes import RECIPES, Recipe, get_recipe
from .ascent import FilterRender, Render, render, render_filters

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "FileSource",
    "LoadRequest",
    "ModelSource",
    "PrefixSource",
    "FilterRender",
    "FilterVizError",
    "FilterVizWarning",
    "Objective",
    "RECIPES",
    "Recipe",
    "Render",
    "InputSpec",
    "LayerInfo",
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
]
