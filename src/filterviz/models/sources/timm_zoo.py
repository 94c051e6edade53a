"""timm models by name (``timm:resnet50``), with the preprocessing of their pretrained config.

Pretrained weights come through timm (the Hugging Face hub and its cache, or for a few models a URL
and the torch hub cache); a local checkpoint (``.pth``, ``.safetensors``) or ``"random"`` can be given
instead. Whatever the weights, the input spec is that of the name's pretrained config (its default tag
when the name has none), read without building or downloading anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

from ...errors import UnknownModelError, WeightsUnavailableError, first_line
from ...layers import closest_names
from ..downloads import unreachable_reason, weights_unavailable
from ..loaded import LoadedModel
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS, check_weights_file, load_weights_file
from . import imagenet_categories, require

PREFIX = "timm:"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repository, in order


def _timm() -> ModuleType:
    return require("timm", "timm", "timm models")


def _check_name(timm: ModuleType, name: str) -> None:
    if not timm.is_model(name):
        known = timm.list_models()
        hint = closest_names(name, known)
        raise UnknownModelError(
            f"unknown timm model {name!r}" + (f" (closest: {', '.join(hint)})" if hint else "")
            + f"; timm has {len(known)} models, see timm.list_models()"
        )


def _pretrained_cfg(timm: ModuleType, name: str) -> dict[str, object]:
    """The pretrained config of ``name`` (its default tag when it has none), as a dict; {} if none."""
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def spec_from_cfg(pretrained_cfg: dict[str, object]) -> InputSpec:
    """The input spec of a timm pretrained config: mean/std, size, fixed size, smallest size."""
    timm = _timm()
    config = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg)
    size = int(config["input_size"][1])
    fixed = (size, int(config["input_size"][2])) if pretrained_cfg.get("fixed_input_size") else None
    smallest = pretrained_cfg.get("min_input_size")
    return InputSpec.from_unit_range(tuple(config["mean"]), tuple(config["std"]), default_size=size,
                                     fixed_size=fixed, min_size=int(smallest[1]) if smallest else None)  # type: ignore[index]


def spec_for(name: str, weights: str | os.PathLike[str] | None = None) -> InputSpec:
    """The input spec a render of ``timm:name`` with ``weights`` uses, without building or loading anything.

    The same for every ``weights``: a local checkpoint or random weights of an architecture get its
    pretrained config's spec, as timm itself gives them.
    """
    timm = _timm()
    _check_name(timm, name)
    if weights is not None and str(weights).lower() != RANDOM_WEIGHTS:
        check_weights_file(weights)  # a choice that cannot be loaded has no spec to show
    return spec_from_cfg(_pretrained_cfg(timm, name))


def hub_cache() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (huggingface_hub reads it once, at
    import), so that the folder named in messages is the one searched."""
    from huggingface_hub import constants

    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _check_cached(name: str, cfg: dict[str, object], timeout: float) -> dict[str, object]:
    """Keyword arguments that make timm load the pretrained weights of ``name`` from a cache; or, when
    they are not cached and their host cannot be reached, the one-line WeightsUnavailableError (checked
    first, so an offline machine gets an answer within ``timeout`` instead of the hub's retries)."""
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    label = f"timm:{name} ({hub_id or os.path.basename(urlparse(str(url)).path)})"
    if hub_id:  # timm prefers the hub when a config names a hub repository
        from huggingface_hub import constants as hub_constants, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.file_download import repo_folder_name

        repo, _, revision = str(hub_id).partition("@")
        cache = hub_cache()
        files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HUB_FILES
        cached = [try_to_load_from_cache(repo, file, cache_dir=cache, revision=revision or None) for file in files]
        found = next((path for path in cached if isinstance(path, str)), None)
        if found is not None:
            return {"pretrained_cfg_overlay": {"file": found}}
        reason = unreachable_reason(hub_constants.ENDPOINT, timeout)
        if reason:
            folder = cache / repo_folder_name(repo_id=repo, repo_type="model")
            raise weights_unavailable(
                label, "Hugging Face hub", folder, hf_hub_url(repo, files[0], revision=revision or None), reason,
                put=f"copy the folder {folder.name} of a hub cache that has it into {cache}")
        return {"cache_dir": cache}
    if url:  # older configs: a URL, cached as torch.hub caches files
        import torch

        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(str(url)).path)
        if not file.exists():
            reason = unreachable_reason(str(url), timeout)
            if reason:
                raise weights_unavailable(label, "torch", file, str(url), reason)
    return {}


def load_timm(name: str, weights: str | os.PathLike[str] | None, *, load_weights: bool = True,
              download_timeout: float = 5.0) -> LoadedModel:
    """timm model ``name`` (without the ``timm:`` prefix): pretrained (None), a local file, or random.

    With ``load_weights=False`` the parameters stay random and nothing is read or downloaded, but the
    spec and categories are those of the chosen weights.
    """
    timm = _timm()
    spec = spec_for(name, weights)
    cfg = _pretrained_cfg(timm, name)
    random = weights is not None and str(weights).lower() == RANDOM_WEIGHTS
    if not load_weights:
        module = timm.create_model(name, pretrained=False)
        source = f"architecture only, spec of {cfg.get('hf_hub_id') or name}"
    elif weights is None:
        cached = _check_cached(name, cfg, download_timeout)
        try:
            module = timm.create_model(name, pretrained=True, **cached)
        except Exception as exc:  # hub and file errors have many types; all mean the weights are not here
            raise WeightsUnavailableError(
                f"cannot load the pretrained weights of timm:{name} ({first_line(exc)}); "
                "give a local checkpoint with --weights PATH, or use --weights random for untrained weights"
            ) from None
        source = f"timm {cfg.get('hf_hub_id') or name} (pretrained)"
    else:
        module = timm.create_model(name, pretrained=False)
        if not random:
            load_weights_file(module, weights, f"timm:{name}")
        source = "random weights" if random else f"local file {weights}"
    categories = None
    if getattr(module, "num_classes", 0) == 1000:
        categories = imagenet_categories()
    return LoadedModel(f"{PREFIX}{name}", module, spec, {}, categories, source=source)
