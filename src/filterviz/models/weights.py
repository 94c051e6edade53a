"""Reading weights files, with one-line errors for files that are missing, unreadable or do not fit."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError

RANDOM_WEIGHTS = "random"  # the ``weights`` value that asks for untrained, randomly initialized weights


class PickledObjectsError(WeightsError):
    """A checkpoint that holds pickled Python objects (such as a whole model), not only tensors."""


def check_weights_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, if it names a file; checked before anything is built, and by every reader."""
    file = Path(path)
    if not file.exists():
        raise WeightsError(f"weights file {str(file)!r} does not exist; give the path of a PyTorch checkpoint (.pth)")
    if file.is_dir():
        raise WeightsError(f"weights path {str(file)!r} is a folder; give the path of a PyTorch checkpoint file (.pth)")
    return file


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from a PyTorch checkpoint file without running any code stored in it.

    Checkpoints that wrap the weights (``{"state_dict": ...}`` or ``{"model": ...}``) are unwrapped.
    """
    file = check_weights_file(path)
    if file.suffix == ".safetensors":
        return _read_safetensors(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {str(file)!r}: {exc.strerror or exc}") from None
    except Exception as exc:  # pickle and zip errors: not a checkpoint, or one that holds code
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise PickledObjectsError(
                f"weights file {str(file)!r} holds pickled Python objects ({found.group(1)}), not only tensors, "
                f"and filterviz never runs code from a file; save model.state_dict() and give that file"
            ) from None
        raise WeightsError(
            f"cannot read weights file {str(file)!r}: it is not a PyTorch checkpoint; give a file written by "
            f"torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {str(file)!r} holds no state dict (a mapping of names to tensors)")
    return state


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"reading {str(file)!r} needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise WeightsError(f"cannot read weights file {str(file)!r}: not a safetensors file ({exc})") from None


def load_weights_file(module: nn.Module, path: str | os.PathLike[str], model_name: str) -> None:
    """Load a checkpoint file into ``module``; every key and shape must match the architecture."""
    state = read_state_dict(path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})")
        raise WeightsError(
            f"weights file {str(path)!r} does not fit {model_name}: {'; '.join(problems)}; "
            f"give a checkpoint saved from {model_name}"
        )
    module.load_state_dict(state)
