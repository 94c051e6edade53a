"""A render request, as the API takes it (``POST /api/render``'s JSON body), read and checked before
anything is queued: its model, objective, recipe with changed fields, size, steps and seed, within the
server's limits. Each problem is one ``FilterVizError`` line that says what would be right.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from ..errors import FilterVizError
from ..objectives import Objective, parse_objective
from ..recipes import RECIPES, Recipe, get_recipe

# What a body may hold; ``fields`` changes recipe fields (as ``filterviz recipes`` lists them).
KEYS = ("model", "objective", "recipe", "size", "steps", "seed", "fields")
MAX_OBJECTIVE = 2000  # characters: far more than any objective anyone writes
MAX_SEED = 2 ** 63 - 1
# Fields a browser may not set: they name files on the server (a MACO spectrum from a path).
PATH_FIELDS = ("spectrum",)
# Objective terms that read a file on the server (direction:LAYER:FILE.npy), refused before parsing,
# which would read it.
_FILE_TERMS = re.compile(r"(?<![\w.<>#-])direction\s*:")


@dataclass(frozen=True)
class Limits:
    """What one request may ask (checked with a JSON 400 error naming the limit) and how much the
    server takes on: ``max_batch`` jobs rendered together in one batch, ``max_queue`` jobs waiting."""

    max_size: int = 512
    max_steps: int = 1024
    max_views: int = 8
    max_batch: int = 8
    max_queue: int = 64

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FilterVizError(f"server limit {item.name} must be a whole number, 1 or more, not {value!r}")


@dataclass(frozen=True)
class RenderRequest:
    """One picture to render: ``objective`` (its text, checked) on ``model`` with ``recipe`` (size and
    steps set) from ``seed``."""

    model: str
    objective: str
    recipe: Recipe
    seed: int

    @property
    def batch_key(self) -> tuple[str, Recipe, int]:
        """Requests with the same key can share one render (a batch), each with its own objective."""
        return self.model, self.recipe, self.seed


def _whole(body: dict[str, Any], key: str, low: int, high: int, default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FilterVizError(f"{key} must be a whole number from {low} to {high} (this server's limit), "
                             f"not {value!r}")
    return value


def read_objective(text: Any) -> Objective:
    """The objective of a request's text, refused in one line where it is not text, too long, or reads a
    file on the server."""
    if not isinstance(text, str) or not text.strip():
        raise FilterVizError("objective must be text such as channel:LAYER:K or class:207 (see filterviz's "
                             "objective syntax)")
    if len(text) > MAX_OBJECTIVE:
        raise FilterVizError(f"objective is {len(text)} characters; this server reads at most {MAX_OBJECTIVE}")
    if _FILE_TERMS.search(text):
        raise FilterVizError("direction:LAYER:FILE.npy reads a file on the server, which the server never does "
                             "for a request; use channel:, neuron:, layer: or class: terms (or the command line)")
    return parse_objective(text)


def read_request(body: Any, models: Any, limits: Limits) -> tuple[RenderRequest, Objective]:
    """The request in ``body`` (a decoded JSON object) and its objective; ``models`` says which model
    names may be used (``ModelStore.check``)."""
    if not isinstance(body, dict):
        raise FilterVizError("the body must be a JSON object such as {\"model\": \"efficientnet-lite0\", "
                             "\"objective\": \"channel:stem.act:0\"}")
    unknown = sorted(set(body) - set(KEYS))
    if unknown:
        raise FilterVizError(f"unknown key(s) {', '.join(map(repr, unknown))}; a request may hold {', '.join(KEYS)}")
    model = models.check(body.get("model", models.default))
    objective = read_objective(body.get("objective"))
    name = body.get("recipe", "classic")
    if not isinstance(name, str) or name not in RECIPES:
        raise FilterVizError(f"recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    changes = body.get("fields") or {}
    if not isinstance(changes, dict):
        raise FilterVizError("fields must be a JSON object of recipe fields, e.g. {\"learning_rate\": 0.1}")
    known = {item.name for item in fields(Recipe)} - {"name", "size", "steps"}
    bad = sorted(set(changes) - known)
    if bad:
        raise FilterVizError(f"unknown recipe field(s) {', '.join(map(repr, bad))} (size and steps are keys of "
                             f"their own); fields: {', '.join(sorted(known))}")
    refused = [key for key in PATH_FIELDS if changes.get(key) is not None]
    if refused:
        raise FilterVizError(f"{refused[0]} names a file on the server, which a request may not; leave it out "
                             "(the packaged natural spectrum is used)")
    size = _whole(body, "size", 1, limits.max_size, None)
    steps = _whole(body, "steps", 1, limits.max_steps, None)
    seed = _whole(body, "seed", 0, MAX_SEED, 0)
    if seed is None:
        raise FilterVizError("seed must be a whole number (the same seed renders the same picture)")
    recipe = get_recipe(name, **changes, size=size, steps=steps)
    if recipe.size is not None and recipe.size > limits.max_size:
        raise FilterVizError(f"size {recipe.size} (recipe {name}'s) is over this server's limit of {limits.max_size} "
                             "px; give a smaller size")
    if recipe.steps > limits.max_steps:
        raise FilterVizError(f"steps {recipe.steps} (recipe {name}'s) is over this server's limit of "
                             f"{limits.max_steps}; give fewer steps")
    if recipe.views > limits.max_views:
        raise FilterVizError(f"views {recipe.views} is over this server's limit of {limits.max_views}")
    for key in ("view_size", "pad"):
        value = getattr(recipe, key)
        if value is not None and value > limits.max_size:
            raise FilterVizError(f"{key} {value} is over this server's limit of {limits.max_size} px")
    return RenderRequest(model, str(body["objective"]).strip(), recipe, seed), objective


def json_number(value: float) -> float | None:
    """A float as JSON can carry it: NaN and infinities become null."""
    return float(value) if math.isfinite(value) else None
