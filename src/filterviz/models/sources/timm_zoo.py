"""timm models by name (``timm:resnet50``), with the preprocessing of their pretrained config.

Pretrained weights come through timm (the Hugging Face hub and its cache); a local checkpoint
(``.pth``, ``.safetensors``) or ``"random"`` can be given instead.
"""

from __future__ import annotations

import os
from types import ModuleType

from ...errors import UnknownModelError, WeightsUnavailableError, first_line
from ...layers import closest_names
from ..loaded import LoadedModel
from ..downloads import unreachable_reason
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS, load_weights_file
from . import imagenet_categories, require

PREFIX = "timm:"


def _timm() -> ModuleType:
    return require("timm", "timm", "timm models")


def spec_of(module: object) -> InputSpec:
    """The input spec from a timm model's pretrained config (mean/std, size, fixed size)."""
    timm = _timm()
    config = timm.data.resolve_data_config({}, model=module)
    size = int(config["input_size"][1])
    pretrained = getattr(module, "pretrained_cfg", {}) or {}
    fixed = (size, int(config["input_size"][2])) if pretrained.get("fixed_input_size") else None
    smallest = pretrained.get("min_input_size")
    return InputSpec.from_unit_range(tuple(config["mean"]), tuple(config["std"]), default_size=size,
                                     fixed_size=fixed, min_size=int(smallest[1]) if smallest else None)


def _pretrained(timm: ModuleType, name: str, timeout: float) -> object:
    """The pretrained model, from the hub's cache when the hub cannot be reached (checked first, so an
    offline machine gets an answer within ``timeout`` instead of the hub's retries)."""
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id if timm.models.get_pretrained_cfg(name) else None
    overlay = None
    from huggingface_hub import constants as hub_constants

    reason = unreachable_reason(hub_constants.ENDPOINT, timeout)
    if reason and hub_id:
        from huggingface_hub import try_to_load_from_cache

        cached = [try_to_load_from_cache(hub_id, file) for file in ("model.safetensors", "pytorch_model.bin")]
        found = next((path for path in cached if isinstance(path, str)), None)
        if found is None:
            raise WeightsUnavailableError(
                f"pretrained weights of timm:{name} are not in the Hugging Face cache and cannot be downloaded "
                f"({reason}); give a local checkpoint with --weights PATH, or --weights random"
            )
        overlay = {"file": found}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as exc:  # hub and file errors have many types; all mean the weights are not here
        raise WeightsUnavailableError(
            f"cannot load the pretrained weights of timm:{name} ({first_line(exc, 120)}); "
            "give a local checkpoint with --weights PATH, or --weights random"
        ) from None


def load_timm(name: str, weights: str | os.PathLike[str] | None, *, download_timeout: float = 5.0
              ) -> LoadedModel:
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
        module = _pretrained(timm, name, download_timeout)
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
