"""timm models by name (``timm:resnet50``), with the preprocessing of their pretrained config.

Pretrained weights come through timm (the Hugging Face hub and its cache); a local checkpoint
(``.pth``, ``.safetensors``) or ``"random"`` can be given instead.
"""

from __future__ import annotations

import os

from ...errors import UnknownModelError, WeightsUnavailableError, first_line
from ...layers import closest_names
from ..loaded import LoadedModel
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS, load_weights_file
from . import imagenet_categories, require

PREFIX = "timm:"


def _timm():  # noqa: ANN202
    return require("timm", "timm", "timm models")


def spec_of(module: object) -> InputSpec:
    """The input spec from a timm model's pretrained config (mean/std, size, fixed size)."""
    timm = _timm()
    config = timm.data.resolve_data_config({}, model=module)
    size = int(config["input_size"][1])
    pretrained = getattr(module, "pretrained_cfg", {}) or {}
    fixed = (size, int(config["input_size"][2])) if pretrained.get("fixed_input_size") else None
    return InputSpec.from_unit_range(tuple(config["mean"]), tuple(config["std"]), default_size=size,
                                     fixed_size=fixed)


def load_timm(name: str, weights: str | os.PathLike[str] | None) -> LoadedModel:
    """timm model ``name`` (without the ``timm:`` prefix): pretrained (None), a local file, or random."""
    timm = _timm()
    if not timm.is_model(name):
        known = timm.list_models()
        hint = closest_names(name, known)
        raise UnknownModelError(
            f"unknown timm model {name!r}" + (f" (closest: {', '.join(hint)})" if hint else "")
            + f"; timm has {len(known)} models, see timm.list_models()"
        )
    random = weights is not None and str(weights).lower() == RANDOM_WEIGHTS
    if weights is None:
        try:
            module = timm.create_model(name, pretrained=True)
        except Exception as exc:  # hub errors have many types; all mean the weights are not here
            raise WeightsUnavailableError(
                f"pretrained weights of timm:{name} are not in the cache and cannot be downloaded "
                f"({first_line(exc, 120)}); give a local checkpoint with --weights PATH, or --weights random"
            ) from None
        source = f"timm {module.pretrained_cfg.get('hf_hub_id') or name} (pretrained)"
    else:
        module = timm.create_model(name, pretrained=False)
        if not random:
            load_weights_file(module, weights, f"timm:{name}")
        source = "random weights" if random else f"local file {weights}"
    categories = None
    if getattr(module, "num_classes", 0) == 1000:
        categories = imagenet_categories()
    return LoadedModel(f"{PREFIX}{name}", module, spec_of(module), {}, categories, source=source)
