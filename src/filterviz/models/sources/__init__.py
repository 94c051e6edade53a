"""Model sources: one module per place a model can come from."""

from __future__ import annotations

import importlib
from types import ModuleType

from ...errors import MissingExtraError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} need {module}, which is not installed ({exc.msg if hasattr(exc, 'msg') else exc}); "
            f"install it with: pip install 'filterviz[{extra}]'"
        ) from None


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in class-index order (shipped with torchvision)."""
    from torchvision.models import VGG16_Weights

    return tuple(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
