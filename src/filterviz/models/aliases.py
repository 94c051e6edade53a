"""Layer-name tables that let a model be addressed by another framework's names.

Keras names VGG layers ``block{b}_conv{i}`` and ``block{b}_pool``. A Keras conv layer includes its
ReLU, so ``block{b}_conv{i}`` maps to the ReLU that follows the torchvision conv, not the conv itself.
The tables are generated from torchvision's own VGG configurations, so they follow its layer order.
"""

from __future__ import annotations

from collections.abc import Sequence

# torchvision.models.vgg.cfgs keys by depth.
_VGG_CFG_KEYS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def keras_vgg_aliases(
    cfg: Sequence[int | str], batch_norm: bool = False, prefix: str = "features"
) -> dict[str, str]:
    """Keras layer names -> torchvision module paths for a VGG ``features`` stack built from ``cfg``.

    ``cfg`` is a torchvision VGG config: channel counts for convs and ``"M"`` for max-pools. A conv
    takes two module slots (conv, ReLU), or three with batch norm (conv, BN, ReLU); a pool takes one.
    """
    slots = 3 if batch_norm else 2
    aliases: dict[str, str] = {}
    block, conv, index = 1, 0, 0
    for item in cfg:
        if item == "M":
            aliases[f"block{block}_pool"] = f"{prefix}.{index}"
            block, conv, index = block + 1, 0, index + 1
        else:
            conv += 1
            aliases[f"block{block}_conv{conv}"] = f"{prefix}.{index + slots - 1}"  # the ReLU after the conv
            index += slots
    return aliases


def vgg_configs() -> dict[str, tuple[list[int | str], bool]]:
    """torchvision's VGG models by name (``vgg11`` ... ``vgg19_bn``): their config and whether it has batch norm."""
    from torchvision.models.vgg import cfgs

    return {f"{name}{suffix}": (cfgs[key], suffix == "_bn")
            for name, key in _VGG_CFG_KEYS.items() for suffix in ("", "_bn")}


def aliases_for(model_name: str) -> dict[str, str]:
    """The alias table of a torchvision model name (empty when it has none)."""
    key = _VGG_CFG_KEYS.get(model_name.removesuffix("_bn"))
    if key is None:
        return {}
    from torchvision.models.vgg import cfgs

    return keras_vgg_aliases(cfgs[key], batch_norm=model_name.endswith("_bn"))
