"""Recipes: every choice of a rendering method as plain data, with named presets.

A ``Recipe`` says how the image is represented (parameterization), how it is changed at each step
(transforms), what else is penalized (regularizers), how it is optimized, and how it is turned into
a picture. Presets: ``classic`` (the book, unchanged), ``lucid`` (Olah et al. 2017's defaults),
``maco`` (Fel et al. 2023) and ``lucid-original`` (Lucid's original settings: 128 px, 512 steps).
Every field can be overridden: ``RECIPES["lucid"].replace(steps=256)``, or ``--recipe lucid --steps
256`` on the command line.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

# Recipes are read by the command line's parser and `filterviz recipes`: they import no torch (the
# registries' names come from the catalog; transforms are imported when a recipe has any to make).
from .catalog import DEPROCESS, OPTIMIZERS, PARAMETERIZATIONS, parameterization_fields
from .errors import FilterVizError
from .plugins import Registry

if TYPE_CHECKING:
    from .transforms import Compose

# More steps than anyone waits for: a typo (or a wrong unit) caught before hours of work.
MAX_STEPS = 1_000_000
# The largest image side: a square of it is about as large a picture as Pillow opens again (it refuses
# more pixels as a decompression bomb), and far beyond what any model is rendered at.
MAX_SIDE = 8192


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# How each field's type is named in a message.
_TYPE_WORDS = {"int": "an integer", "int | None": "an integer or None", "float": "a number", "bool": "True or False",
               "str": "text", "str | None": "text or None", "tuple[float, ...]": "a tuple of numbers",
               "tuple[float, float] | None": "a pair of numbers or None", "tuple[str, ...]": "a tuple of texts"}


def _field(default: Any, help: str, registry: Registry[Any] | None = None) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with its help text (shown by ``filterviz render --help``) and, for a field that
    names a registered part, the registry of its choices."""
    return field(default=default, metadata={"help": help, "registry": registry})


def field_registry(name: str) -> Registry[Any] | None:
    """The registry whose names a recipe field takes (parameterization, optimizer, deprocess), or None."""
    return {item.name: item.metadata.get("registry") for item in fields(Recipe)}.get(name)


@dataclass(frozen=True)
class Recipe:
    """How to render; each field's help says what it does. ``transforms()`` builds the per-step transforms.

    The transforms run in this order: pad, jitter, scale, rotate, crop, flip, final jitter, noise,
    resize to ``view_size``. ``views`` transformed copies of each image are scored per step, and their
    mean score is what is maximized.
    """

    name: str = _field("custom", "the preset's name")
    parameterization: str = _field("pixel", "pixel (the book's) | fourier | maco, or a registered one",
                                   PARAMETERIZATIONS)
    decorrelate: bool = _field(True, "fourier: optimize in decorrelated color")
    init_std: float = _field(0.01, "fourier: std of the start spectrum")
    spectrum: str | None = _field(None, "maco: magnitude from a .npy or a folder of images (default: packaged)")
    size: int | None = _field(None, "image side in px (default: 150, or the model's fixed input size)")
    steps: int = _field(40, "optimization steps")
    optimizer: str = _field("ascent", "ascent: the book's x += lr * g / rms(g) | adam | nadam, or a registered one",
                            OPTIMIZERS)
    learning_rate: float = _field(1.0, "step size (the book's step) or the optimizer's learning rate")
    escape_steps: int = _field(0, "first steps in which an image with no gradient gets one through switched-off "
                                  "ReLUs (Lucid's redirected ReLU), to escape a flat start; 0: never, as the book")
    views: int = _field(1, "transformed copies of each image per step")
    pad: int = _field(0, "px of mid-gray around the image")
    jitter: int = _field(0, "random shift of 0..jitter px")
    scales: tuple[float, ...] = _field((), "zoom factors to draw from")
    angles: tuple[float, ...] = _field((), "rotations in degrees to draw from")
    crop: tuple[float, float] | None = _field(None, "random square box, as a fraction of the side (low, high)")
    flip: bool = _field(False, "random left-right mirror")
    final_jitter: int = _field(0, "a second, last random shift")
    noise: float = _field(0.0, "Gaussian noise std in pixel units")
    view_size: int | None = _field(None, "resize each view to this side before the model")
    extra_transforms: tuple[str, ...] = _field((), "registered transforms NAME[:ARGS] applied after the ones above, "
                                                   "before view_size (e.g. jitter:2)")
    tv: float = _field(0.0, "weight of the total-variation penalty (image in 0..1 units)")
    l1: float = _field(0.0, "weight of the L1 penalty (distance from mid-gray)")
    l2: float = _field(0.0, "weight of the L2 penalty (distance from mid-gray)")
    blur: float = _field(0.0, "weight of the blur penalty (difference from a blurred self)")
    deprocess: str = _field("book", "the picture: book (deprocess_image) | none (the pixels as they are) "
                                    "| stretch (1st-99th percentile to 0..255, as MACO shows its images)", DEPROCESS)


    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            *((getattr(self, name) in registry, f"{name} must be {_one_of(registry.names())}")
              for name, registry in (("parameterization", PARAMETERIZATIONS), ("optimizer", OPTIMIZERS),
                                     ("deprocess", DEPROCESS))),
            (0 <= self.steps <= MAX_STEPS, f"steps must be 0 to {MAX_STEPS}"),
            (0 <= self.escape_steps <= MAX_STEPS, f"escape_steps must be 0 to {MAX_STEPS}"),
            (self.views >= 1, "views must be 1 or more"),
            (math.isfinite(self.learning_rate), "learning_rate must be a finite number"),
            # 0 would leave the start image as it is, and a negative rate would minimize the objective
            # (negate the objective for that).
            (self.learning_rate > 0, "learning_rate must be more than 0"),
            (min(self.pad, self.jitter, self.final_jitter) >= 0, "pad and jitter must be 0 or more"),
            (self.size is None or 1 <= self.size <= MAX_SIDE, f"size must be 1 to {MAX_SIDE} px"),
            (self.view_size is None or 1 <= self.view_size <= MAX_SIDE, f"view_size must be 1 to {MAX_SIDE} px"),
            (self.crop is None or (len(self.crop) == 2 and 0 < self.crop[0] <= self.crop[1] <= 1),
             "crop must be 0 < low <= high <= 1"),
            (all(math.isfinite(s) and s > 0 for s in self.scales), "scales must be positive finite numbers"),
            (all(math.isfinite(a) for a in self.angles), "angles must be finite numbers (degrees)"),
            # Standard deviations and penalty weights: a negative one is a mistake (a negative penalty
            # would reward noise; to reward a regularizer, add it to the objective).
            (math.isfinite(self.init_std) and self.init_std >= 0, "init_std must be a finite number, 0 or more"),
            (math.isfinite(self.noise) and self.noise >= 0, "noise must be a finite number, 0 or more"),
            (all(math.isfinite(w) and w >= 0 for w in (self.tv, self.l1, self.l2, self.blur)),
             "tv, l1, l2 and blur must be finite numbers, 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise FilterVizError(f"recipe {self._shown_name}: {message}")
        if self.extra_transforms:  # read by the transforms' own module, which imports torch
            from .transforms import parse_transform

            for text in self.extra_transforms:
                try:
                    parse_transform(text)
                except FilterVizError as exc:
                    raise FilterVizError(f"recipe {self._shown_name}: {exc}") from None

    def check_sizes(self, size: int) -> None:
        """Refuse transforms that leave less than a pixel of a ``size`` px image, saying what would work:
        a jitter as large as the (padded) image, zoom factors or crop boxes that show less than a pixel
        of it, or shrink it below one."""
        padded = size + 2 * self.pad
        if self.jitter >= padded:
            raise FilterVizError(f"--jitter {self.jitter} leaves no image: it crops that many px off the "
                                 f"{_described(size, self.pad)}; use --jitter {padded - 1} or less, or a larger "
                                 "--size or --pad")
        side = padded - self.jitter
        if self.final_jitter >= side:
            raise FilterVizError(f"--final-jitter {self.final_jitter} leaves no image: the view is {side} px when it "
                                 f"comes ({_described(size, self.pad)}, less --jitter {self.jitter}); use "
                                 f"--final-jitter {side - 1} or less, or a larger --size")
        if self.scales and max(self.scales) > side:
            raise FilterVizError(f"--scales {max(self.scales):g} zooms into less than 1 px of the {side} px view; "
                                 f"use factors of {side} or less")
        if self.scales and min(self.scales) * side < 1:
            raise FilterVizError(f"--scales {min(self.scales):g} shrinks the {side} px view to less than 1 px; "
                                 f"use factors of {_at_least(1 / side)} or more")
        if self.crop is not None and self.crop[0] * side < 1:
            raise FilterVizError(f"--crop {self.crop[0]:g},{self.crop[1]:g} takes boxes of "
                                 f"{self.crop[0] * side:.2g} px "
                                 f"of the {side} px view, less than 1 px; use a smallest box (LOW) of "
                                 f"{_at_least(1 / side)} or more, or a larger --size")

    def _check_types(self) -> None:
        """Refuse a field of the wrong type (``steps="40"``, ``scales=1.1``) in one line, rather than let
        a comparison below fail with a TypeError; numbers of other types (numpy's) and lists for tuples
        are taken, as the plain Python values they stand for."""
        for item in fields(self):
            value = getattr(self, item.name)
            kind = str(item.type)
            if value is None and "None" in kind:
                continue
            if kind == "tuple[str, ...]" and isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
                value = tuple(value)
            elif (kind.startswith("tuple[float") and isinstance(value, (tuple, list))
                  and all(_is_number(v) for v in value)):
                value = tuple(float(v) for v in value)
            elif kind.startswith("int") and isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = int(value)
            elif kind == "float" and _is_number(value):
                value = float(value)
            elif not (kind == "bool" and isinstance(value, bool)
                      or kind in ("str", "str | None") and isinstance(value, str)):
                registry = item.metadata.get("registry")
                words = _one_of(registry.names()) if registry is not None else _TYPE_WORDS.get(kind, kind)
                raise FilterVizError(f"recipe {self._shown_name}: {item.name} must be {words}, not {value!r}")
            object.__setattr__(self, item.name, value)  # frozen: set once, here, as the plain value

    @property
    def _shown_name(self) -> str:
        """The name as a message shows it: as it is, or quoted when it holds line breaks or other controls."""
        return self.name if isinstance(self.name, str) and self.name.isprintable() else repr(self.name)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed (unknown names are an error, not ignored)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise FilterVizError(f"unknown recipe field(s) {', '.join(unknown)}; fields: {', '.join(sorted(known))}")
        return replace(self, **changes)

    @property
    def has_transforms(self) -> bool:
        return bool(self.views > 1 or self.pad or self.jitter or self.scales or self.angles or self.crop
                    or self.flip or self.final_jitter or self.noise or self.view_size or self.extra_transforms)

    def transforms(self) -> Compose:
        """The per-step transforms, in the documented order."""
        from .transforms import (Compose, Jitter, Noise, Pad, RandomCrop, RandomFlip, RandomRotate, RandomScale,
                                 Resize, parse_transform)

        steps = [Pad(self.pad), Jitter(self.jitter), RandomScale(self.scales), RandomRotate(self.angles)]
        if self.crop is not None:
            steps.append(RandomCrop(self.crop))
        if self.flip:
            steps.append(RandomFlip())
        steps += [Jitter(self.final_jitter), Noise(self.noise)]
        steps += [parse_transform(text) for text in self.extra_transforms]
        if self.view_size:
            steps.append(Resize(self.view_size))
        return Compose(steps)

    def fields(self) -> dict[str, Any]:
        """Every field by name, as recorded in an atlas (its pages and fingerprints); ``extra_transforms``
        only when it holds any, so that what was recorded before the field existed stays the same."""
        values = asdict(self)
        if not values["extra_transforms"]:
            del values["extra_transforms"]
        return values

    def unused_fields(self) -> set[str]:
        """Fields that only other parameterizations read (``init_std`` without fourier...)."""
        return {name for name, owners in parameterization_fields().items() if self.parameterization not in owners}

    def describe(self) -> str:
        """Every field that this recipe uses, one ``name = value`` per line (a parameterization's own
        fields appear only with that parameterization: ``init_std`` with fourier, ``spectrum`` with maco)."""
        unused = self.unused_fields()
        return "\n".join(f"{name} = {value!r}" for name, value in asdict(self).items() if name not in unused)


def _described(size: int, pad: int) -> str:
    """An image's side in words: ``8 px image`` or ``32 px padded image (--size 8, --pad 12)``."""
    if not pad:
        return f"{size} px image"
    return f"{size + 2 * pad} px padded image (--size {size}, --pad {pad})"


def _at_least(value: float) -> str:
    """``value`` rounded up to three significant digits, so that the advice itself passes the check."""
    text = f"{value:.3g}"
    while float(text) < value:
        value *= 1.0005
        text = f"{value:.3g}"
    return text


def _one_of(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


LUCID_SCALES = tuple(1 + (i - 5) / 50 for i in range(11))  # 0.9 ... 1.1
LUCID_ANGLES = tuple(float(a) for a in range(-10, 11)) + (0.0,) * 5

# The preset whose pictures an independent model recognizes most per second of rendering
# (benchmarks/quality.py --sweep): what the demo shows beside the book's figures.
BEST_RECIPE = "lucid"

RECIPES: dict[str, Recipe] = {
    # The book: gray noise, 40 RMS-normalized steps of 1 on the pixels, deprocessed for display.
    "classic": Recipe(name="classic"),
    # Lucid's recipe: a 1/f Fourier image in decorrelated color through a sigmoid, its standard
    # transforms (pad 12, jitter 8, scale 0.9-1.1, rotate -10..10 degrees, jitter 4) and Adam at 0.05;
    # for 16 steps an image without gradient gets one through switched-off ReLUs, as Lucid's renders do.
    # 224 px and 64 steps: the most recognizable pictures per second of the sweep (benchmarks/quality.py
    # --sweep: an independent model recognizes 91 % at 5.9 s per picture, against 68 % at Lucid's own
    # 128 px and 512 steps, which lucid-original keeps).
    "lucid": Recipe(name="lucid", parameterization="fourier", size=224, steps=64, optimizer="adam",
                    learning_rate=0.05, escape_steps=16, pad=12, jitter=8, scales=LUCID_SCALES, angles=LUCID_ANGLES,
                    final_jitter=4, deprocess="none"),
    # MACO: only the phase is optimized, the magnitude is natural photos'; each step scores two random
    # crops (half to all of the side, flipped at random, with noise) seen at 160 px; NAdam at 1.0;
    # shown with its 1st-99th percentiles stretched to the full range, as MACO shows its images.
    # 160 px and 128 steps: the sweep's most recognizable pictures per second (84 % at 10.7 s, against
    # 85 % at 224 px and 256 steps, 2.6 times the time).
    "maco": Recipe(name="maco", parameterization="maco", size=160, steps=128, optimizer="nadam",
                   learning_rate=1.0, escape_steps=16, views=2, crop=(0.5, 1.0), flip=True, noise=3.2, view_size=160,
                   deprocess="stretch"),
    # Lucid's original settings: lucid as Olah et al. 2017 made it (128 px, 512 steps), written out in
    # full so that it stays so whatever lucid's own defaults become.
    "lucid-original": Recipe(name="lucid-original", parameterization="fourier", size=128, steps=512,
                             optimizer="adam", learning_rate=0.05, escape_steps=16, pad=12, jitter=8,
                             scales=LUCID_SCALES, angles=LUCID_ANGLES, final_jitter=4, deprocess="none"),
}


def get_recipe(recipe: "Recipe | str", **overrides: Any) -> Recipe:
    """A preset by name (or a Recipe as is), with fields overridden (``None`` values are skipped). A field
    that the resulting parameterization does not read is refused rather than ignored."""
    if isinstance(recipe, str):
        try:
            recipe = RECIPES[recipe]
        except KeyError:
            raise FilterVizError(f"unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}") from None
    changes = {name: value for name, value in overrides.items() if value is not None}
    chosen = recipe.replace(**changes) if changes else recipe
    ignored = sorted(set(changes) & chosen.unused_fields())
    if ignored:
        name = ignored[0]
        owner = parameterization_fields()[name][0]
        preset = next((p.name for p in RECIPES.values() if p.parameterization == owner), None)
        flag = "--" + name.replace("_", "-")
        raise FilterVizError(f"{flag} goes with --parameterization {owner}; recipe {chosen._shown_name} uses "
                             f"{chosen.parameterization} (add --parameterization {owner}"
                             + (f", or --recipe {preset})" if preset else ")"))
    return chosen


def render_size(recipe: Recipe, fixed_size: tuple[int, int] | None) -> int:
    """The side a render has: the recipe's ``size``, else the model's fixed input size, else the book's 150."""
    if recipe.size is not None:
        return recipe.size
    return fixed_size[0] if fixed_size else BOOK_SIZE


BOOK_SIZE = 150  # px: the book's images


__all__ = ["BOOK_SIZE", "RECIPES", "Recipe", "get_recipe", "render_size"]
