"""filterviz: see what a convolutional network has learned.

Synthesizes the input images that most excite a model's filters, by gradient ascent on the image.

>>> import filterviz
>>> model = filterviz.load_model("efficientnet-lite0")
>>> image = filterviz.generate_pattern(model, "blocks.3.depthwise.act", 0, seed=0)  # (150, 150, 3) uint8
"""

from . import objectives, transforms
from .book import book_layers, generate_pattern, run_demo
from .errors import FilterVizError, FilterVizWarning
from .image import Deprocess, deprocess_image, make_grid, register_deprocess, save_image, show_channels
from .layers import LayerInfo
from .layouts import Layout, register_layout
from .models import (DEFAULT_MODEL, FileSource, InputSpec, LoadedModel, LoadRequest, ModelSource, PrefixSource,
                     known_models, load_model, model_sources, register_source)
from .objectives import Objective, Term, parse_objective, register_term
from .optimizers import Optimizer, TorchOptimizer, register_optimizer
from .params import Parameterization, register_parameterization
from .recipes import RECIPES, Recipe, get_recipe
from .transforms import Transform, register_transform
from .ascent import FilterRender, Render, render, render_filters

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "Deprocess",
    "Optimizer",
    "Parameterization",
    "Term",
    "TorchOptimizer",
    "Transform",
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
]
