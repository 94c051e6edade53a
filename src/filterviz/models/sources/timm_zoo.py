"""timm models by name (``timm:resnet50``), with the preprocessing of their pretrained config.

Pretrained weights come through timm (the Hugging Face hub and its cache, or for a few models a URL
and the torch hub cache); a local checkpoint (``.pth``, ``.safetensors``) or ``"random"`` can be given
instead. Whatever the weights, the input spec is that of the name's pretrained config (its default tag
when the name has none), read without building or downloading anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

from ...errors import UnknownModelError, WeightsUnavailableError, first_line
from ...layers import closest_names
from ..downloads import unreachable_reason, weights_unavailable
from ..loaded import LoadedModel
from ..spec import InputSpec
from ..weights import RANDOM_WEIGHTS, check_weights_file, load_weights_file
from . import LoadRequest, PrefixSource, imagenet_categories, register_source, require

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


@dataclass(frozen=True)
class _Place:
    """Where timm looks for the pretrained weights of a name, and how to tell it what was found."""

    label: str  # which weights, for messages
    cache: str  # the cache's name
    where: Path  # the full path looked up
    url: str  # where they are downloaded from
    host: str  # the URL whose host must be reachable for a download
    cached: bool
    create: dict[str, object] = field(default_factory=dict)  # keyword arguments for timm.create_model
    put: str | None = None  # how to put a fetched copy into the cache, when not as the file ``where``

    def unavailable(self, reason: str) -> WeightsUnavailableError:
        return weights_unavailable(self.label, self.cache, self.where, self.url, reason, put=self.put)


def _place(name: str, cfg: dict[str, object]) -> _Place | None:
    """Where the pretrained weights of ``name`` are cached, or would be (None: its config names none)."""
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub_id:  # timm prefers the hub when a config names a hub repository
        from huggingface_hub import constants as hub_constants, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.file_download import repo_folder_name

        repo, _, revision = str(hub_id).partition("@")
        cache = hub_cache()
        folder = cache / repo_folder_name(repo_id=repo, repo_type="model")
        files = (str(cfg["hf_hub_filename"]),) if cfg.get("hf_hub_filename") else HUB_FILES
        cached = [try_to_load_from_cache(repo, file, cache_dir=cache, revision=revision or None) for file in files]
        found = next((path for path in cached if isinstance(path, str)), None)
        # Found: timm reads that file without asking the hub; else it downloads into the same cache.
        create = {"pretrained_cfg_overlay": {"file": found}} if found else {"cache_dir": cache}
        return _Place(f"timm:{name} ({hub_id})", "Hugging Face hub", folder,
                      hf_hub_url(repo, files[0], revision=revision or None), hub_constants.ENDPOINT, found is not None,
                      create, put=f"copy the folder {folder.name} of a hub cache that has it into {cache}")
    if url:  # older configs: a URL, cached as torch.hub caches files
        import torch

        file_name = os.path.basename(urlparse(str(url)).path)
        file = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        return _Place(f"timm:{name} ({file_name})", "torch", file, str(url), str(url), file.exists())
    return None


def _pretrained(timm: ModuleType, name: str, cfg: dict[str, object], timeout: float) -> object:
    """The pretrained model. Weights that are not cached while their host cannot be reached raise the
    shared one-line WeightsUnavailableError, checked first, so that an offline machine gets an answer
    within ``timeout`` instead of the hub's retries."""
    place = _place(name, cfg)
    if place is not None and not place.cached:
        reason = unreachable_reason(place.host, timeout)
        if reason:
            raise place.unavailable(reason)
    try:
        return timm.create_model(name, pretrained=True, **(place.create if place else {}))
    except Exception as exc:  # hub and file errors have many types; all mean the weights are not here
        if place is not None and not place.cached:
            raise place.unavailable(first_line(exc)) from None
        where = f" from {place.where}" if place else ""
        raise WeightsUnavailableError(
            f"cannot load the pretrained weights of timm:{name}{where} ({first_line(exc)}); give a local "
            "checkpoint with --weights PATH, or use --weights random for untrained weights"
        ) from None


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
        module = _pretrained(timm, name, cfg, download_timeout)
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


class TimmSource(PrefixSource):
    """timm's models as ``timm:NAME``."""

    prefix = PREFIX
    usage = "timm:NAME"
    description = "any timm model, e.g. timm:resnet50"
    extra = "timm"

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        return load_timm(self.strip(model), request.weights, load_weights=request.load_weights,
                         download_timeout=request.download_timeout)


register_source(TimmSource(), builtin=True)
