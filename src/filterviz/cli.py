"""The ``filterviz`` command: a thin layer over the Python API.

Every user error is a FilterVizError, printed here as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from . import __version__
from .book import GRID_FILTERS, run_demo
from .errors import FilterVizError, FilterVizWarning
from .image import check_folder_writable, check_image_size, check_path, check_writable, make_grid, save_image
from .models import DEFAULT_MODEL, describe_sources, known_models, load_model
from .models.sources.torch_files import SUFFIXES as TORCH_SUFFIXES
from .models.spec import PRESETS
from .ascent import FilterRender, Render, render, render_filters
from .plan import check_filters
from .objectives import Objective, channel, diversity, objective_help, parse_objective
from .execution import PRECISIONS
from .params import PARAMETERIZATIONS
from .transforms import TRANSFORMS
from .recipes import MAX_SIDE, RECIPES, Recipe, field_registry, get_recipe


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the message and where to get help), exit status 2, and
    a command's options may come anywhere: before, between or after its positionals."""

    _intermixing = False

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        # Plain argparse takes positionals in runs between options, and fills render's optional LAYER
        # FILTER with nothing from the first run (`render vgg11 --weights random features.1 0` would
        # leave "features.1 0" unrecognized). Each command's parser (the one without subcommands, which
        # intermixed parsing cannot take) reads all options first, then all positionals.
        if self._subparsers is not None or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _say(message: str) -> None:
    print(f"filterviz: {message}", file=sys.stderr)


# An index or a range FIRST-LAST, of ASCII digits (int() alone would also take "1_000" and "٣"); a
# hundred digits is more than any layer has, and int() refuses numbers of thousands of digits.
_FILTER_PART = re.compile(r"\s*([0-9]{1,100})\s*(?:-\s*([0-9]{1,100})\s*)?", re.ASCII)


def parse_filters(text: str) -> list[range]:
    """Parse a filter list such as ``0-63`` or ``0,5,9-12`` into ranges (never expanded here, so a
    huge range costs nothing before it is checked against the layer). An empty part (``""``,
    ``0,``), a range without an end (``0-``) or a backwards one (``3-1``) is refused, never skipped."""
    ranges: list[range] = []
    for part in text.split(","):
        match = _FILTER_PART.fullmatch(part)
        start = int(match[1]) if match else 0
        stop = int(match[2]) if match and match[2] else start
        if match is None or stop < start:
            why = ("it is empty" if not text.strip() else "a part is empty" if not part.strip()
                   else f"range {start}-{stop} runs backwards (write {stop}-{start})" if match
                   else f"{_quote(part.strip())} is not an index or a range FIRST-LAST")
            raise FilterVizError(f"cannot read filters {_quote(text)}: {why}; use a list of indices and ranges such "
                                 "as 0-63 or 0,5,9-12")
        ranges.append(range(start, stop + 1))
    return ranges


def _quote(text: str, limit: int = 60) -> str:
    """A value as quoted in a message, shortened in the middle if long, so the message stays one line."""
    return repr(text if len(text) <= limit else text[:limit // 2] + "..." + text[-limit // 2:])


def _int_at_least(minimum: int, label: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``; ``label`` names it in usage errors."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError
        return value

    parse.__name__ = label  # argparse says "invalid <label> value"
    return parse


_seed = _int_at_least(0, "non-negative integer seed")
_positive = _int_at_least(1, "positive integer")
_non_negative = _int_at_least(0, "non-negative integer")


def _side(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_SIDE:
        raise ValueError
    return value


_side.__name__ = f"image side (1 to {MAX_SIDE} px)"

# Copies share one batch with a diversity term, and each is an image to write: a few dozen is a lot.
MAX_COPIES = 1000


def _copies(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_COPIES:
        raise ValueError
    return value


_copies.__name__ = f"number of copies (1 to {MAX_COPIES})"


def _text(label: str) -> Callable[[str], str]:
    """An argparse type: text that is not empty nor only spaces (an unset shell variable, most often),
    which would otherwise mean the default, or the current folder."""

    def parse(text: str) -> str:
        if not text.strip():
            raise ValueError
        return text

    parse.__name__ = label
    return parse


_name = _text("name (not empty)")
_path = _text("path (not empty)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError
    return value


_finite.__name__ = "finite number"


def _non_negative_number(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise ValueError
    return value


_non_negative_number.__name__ = "non-negative number"


def _numbers(text: str) -> tuple[float, ...]:
    # An empty part ("", "1,,2", "1,") is a mistake, not a number to skip; "none" is the empty list,
    # to switch off a preset's scales or angles.
    if text.strip().lower() == "none":
        return ()
    return tuple(_finite(part) for part in text.split(","))


_numbers.__name__ = "comma-separated list of numbers (or none)"


def _pair(text: str) -> tuple[float, float]:
    values = tuple(_finite(part) for part in text.split(","))
    if len(values) != 2:
        raise ValueError
    return values  # type: ignore[return-value]


_pair.__name__ = "pair of numbers LOW,HIGH"


def _bytes(text: str) -> int:
    units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = units.get(text[-1:], 1)
    value = float(text[:-1] if text[-1:] in units else text)
    if not math.isfinite(value) or value * factor < 1:
        raise ValueError
    return int(value * factor)


_bytes.__name__ = "memory size (such as 2G or 512M)"

# How each recipe field is read from the command line, by its annotation.
_FIELD_TYPES: dict[str, Callable[[str], object]] = {
    "int": _non_negative, "int | None": _side, "float": _finite, "str | None": _path,
    "tuple[float, ...]": _numbers, "tuple[float, float] | None": _pair,
}
# Fields with options of their own: --steps, --size, and --step (the book's name for the learning rate).
_OWN_OPTIONS = {"name", "steps", "size", "learning_rate"}


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe", "a preset, and any of its fields to override "
                                      "(`filterviz recipes` shows them all)")
    group.add_argument("--recipe", choices=list(RECIPES), default="classic", help="preset (default classic, the book)")
    for item in fields(Recipe):
        if item.name in _OWN_OPTIONS:
            continue
        flag = "--" + item.name.replace("_", "-")
        help_text = item.metadata.get("help", "")
        if item.name == "extra_transforms":  # one transform per option, added to the recipe's own
            forms = ", ".join(kind.syntax or kind.name for kind in TRANSFORMS.parts().values())
            group.add_argument("--transform", dest="extra_transforms", action="append", metavar="NAME[:ARGS]",
                               help=f"add a transform after the recipe's own, before --view-size (repeatable): {forms}")
            continue
        if item.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        registry = field_registry(item.name)
        if registry is not None:
            group.add_argument(flag, choices=registry.names(), default=None, help=help_text)
        else:
            group.add_argument(flag, type=_FIELD_TYPES[str(item.type)], default=None, help=help_text)


def _recipe(args: argparse.Namespace) -> Recipe:
    overrides = {item.name: getattr(args, item.name, None) for item in fields(Recipe) if item.name != "name"}
    overrides["learning_rate"] = args.step
    if args.extra_transforms:
        overrides["extra_transforms"] = get_recipe(args.recipe).extra_transforms + tuple(args.extra_transforms)
    return get_recipe(args.recipe, **overrides)  # refuses a field that the parameterization would ignore


def _load(args: argparse.Namespace, weights: str | None = None, load_weights: bool = True) -> object:
    """The model the command line names, with its options; ``load_weights=False``: its architecture
    with the spec of the chosen weights, none read or downloaded."""
    model = load_model(args.model, weights if weights is not None else args.weights, args.device,
                       preprocess=args.preprocess, arch=args.arch, trust_pickle=args.trust_pickle,
                       progress=not args.quiet, load_weights=load_weights)
    model.max_memory = getattr(args, "max_memory", None)  # every run of it, checks included, keeps to it
    return model


def _check_inputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an input path that no file can have here (too long a name or path, a
    NUL character), which the system would otherwise answer with an OSError deep inside a loader, and
    the options of PyTorch model files given with another model, which would be ignored. Whether a
    file exists and is what it should be is for each loader to say."""
    for option, what in (("model", "model"), ("weights", "weights"), ("images", "--images"),
                         ("spectrum", "--spectrum")):
        value = getattr(args, option, None)
        if value is not None:
            check_path(value, what)
    model = getattr(args, "model", None)
    torch_file = model is not None and Path(model).suffix.lower() in TORCH_SUFFIXES
    for flag, given in (("--arch", args.arch is not None), ("--trust-pickle", args.trust_pickle)):
        if given and not torch_file:
            raise FilterVizError(f"{flag} goes with a PyTorch model file ({', '.join(TORCH_SUFFIXES[:3])}...), "
                                 f"and {_quote(model) if model else 'the default model'} is not one; leave {flag} out")


def _cmd_models(args: argparse.Namespace) -> None:
    for name in known_models():
        print(name + ("  (embedded default, works offline)" if name == DEFAULT_MODEL else ""))
    print()
    print(describe_sources())


def _cmd_layers(args: argparse.Namespace) -> None:
    # Layer names and shapes do not depend on the weights: list them offline too, with the spec of the
    # weights chosen, as a render with the same options uses it.
    _check_inputs(args)
    model = _load(args, load_weights=False)
    rows = [(info.name, info.kind + (f" (call {info.name.rpartition('#')[2]} of {info.calls})" if "#" in info.name
                                     else f" (call 1 of {info.calls})" if info.calls > 1 else ""),
             str(info.channels), info.spatial, ", ".join(info.aliases))
            for info in model.layers(args.size)]
    print(f"input: {model.spec.describe()}")
    header = ("layer", "kind", "channels", f"size@{args.size or model.spec.default_size}", "aliases")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _objectives(args: argparse.Namespace) -> list[Objective]:
    if args.objective:
        if args.layer is not None:
            raise FilterVizError("give either LAYER FILTER or --objective, not both")
        chosen = [parse_objective(text) for text in args.objective]
    elif args.layer is None or args.filter is None:
        raise FilterVizError("say what to render: LAYER FILTER, or --objective (e.g. channel:LAYER:K or class:207)")
    else:
        chosen = [channel(args.layer, args.filter)]
    if args.diversity is not None:
        if args.copies < 2:  # a diversity term compares an image with its copies: alone, it adds nothing
            raise FilterVizError(f"--diversity makes copies of an objective differ; add --copies 2 or more "
                                 f"(it has {args.copies})")
        weight = 3.0 if args.diversity_weight is None else args.diversity_weight
        chosen = [objective + weight * diversity(args.diversity) for objective in chosen]
    elif args.diversity_weight is not None:
        raise FilterVizError("--diversity-weight goes with --diversity LAYER (and --copies 2 or more)")
    return [objective for objective in chosen for _ in range(args.copies)]


def _outputs(args: argparse.Namespace, objectives: Sequence[Objective]) -> list[str]:
    """The files that render writes: one, or one per image where ``-o`` holds ``{name}``; refused before
    any work where one cannot be written, or two images would go to one file (the second would replace
    the first), or the importance map to an image's file."""
    if "{name}" not in args.output:
        outputs = [args.output]
    else:
        outputs = [args.output.replace("{name}", o.slug + (f"_{i % args.copies}" if args.copies > 1 else ""))
                   for i, o in enumerate(objectives)]
    for output in outputs + ([args.importance] if args.importance is not None else []):
        check_writable(output)
    written: dict[str, str] = {}  # file (as the system would find it) -> what goes there
    named = [(output, f"{objectives[i].name!r}" + (f" (copy {i % args.copies})" if args.copies > 1 else ""))
             for i, output in enumerate(outputs)] if len(outputs) > 1 else [(outputs[0], "the image")]
    if args.importance is not None:
        named.append((args.importance, "the importance map"))
    for output, what in named:
        key = os.path.normcase(os.path.realpath(output))
        if key in written:
            fix = ("give --importance a file of its own" if what == "the importance map" else
                   "give each objective once" if args.copies == 1 and "{name}" in args.output else
                   "give each its own file (-o with {name} names one per objective)")
            raise FilterVizError(f"{written[key]} and {what} would both be written to {_quote(output, 80)}, the "
                                 f"second replacing the first; {fix}")
        written[key] = what
    return outputs


def _cmd_render(args: argparse.Namespace) -> None:
    objectives = _objectives(args)
    recipe = _recipe(args)
    if args.importance is not None and not PARAMETERIZATIONS.get(recipe.parameterization).importance:
        raise FilterVizError(f"--importance writes maco's importance map, and recipe {recipe.name} uses "
                             f"{recipe.parameterization}; add --recipe maco (or --parameterization maco), or leave "
                             "--importance out")
    outputs = _outputs(args, objectives)
    per_file = "{name}" in args.output
    _check_inputs(args)
    model = _load(args)
    side = args.size or recipe.size or (model.spec.fixed_size or (150,))[0]
    if not per_file:  # several images are tiled, 8 to a row, with 5 px between them
        rows, columns = -(-len(objectives) // 8), min(len(objectives), 8)
        check_image_size(args.output, columns * side + (columns - 1) * 5, rows * side + (rows - 1) * 5,
                         "render fewer images, write one file each with -o NAME_{name}.png, or use a smaller --size")
    if args.layer is not None and not args.objective:  # the book's command: check the filter index first
        check_filters([args.filter], model.layer_info(args.layer, side).channels, args.layer, model.name)
    result = render(model, objectives, recipe, size=args.size, seed=args.seed, precision=args.precision,
                    max_memory=args.max_memory,
                    # The book's command keeps filter k's start noise; copies get starts of their own.
                    keys=[args.filter + copy * 2 ** 32 for copy in range(args.copies)]
                    if args.layer is not None and not args.objective else None,
                    progress=not args.quiet)
    book = args.layer is not None and not args.objective
    images = result.images
    if per_file:
        for image, output in zip(images, outputs):
            save_image(image, output)
    else:
        save_image(images[0] if len(images) == 1 else make_grid(images, per_row=min(len(images), 8)), args.output)
    if args.importance is not None and result.importance is not None:
        save_image(_importance_image(result), args.importance)
    if not args.quiet and book:
        _say(f"wrote {args.output} (filter {args.filter} of {args.layer}: mean activation "
             f"{result.start_score[0]:.3g} -> {result.score[0]:.3g})")
    elif not args.quiet:
        scores = ", ".join(f"{o.name}: {a:.3g} -> {b:.3g}" for o, a, b in
                           zip(result.objectives[:4], result.start_score, result.score))
        more = f" and {len(objectives) - 4} more" if len(objectives) > 4 else ""
        _say(f"wrote {', '.join(outputs[:2])}{' ...' if len(outputs) > 2 else ''} ({scores}{more})")


def _importance_image(result: Render) -> object:
    """MACO's importance maps as gray pictures (brighter: more important), one tile per image."""
    import numpy as np

    maps = result.importance
    scaled = maps / (maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1) + 1e-12)
    tiles = (np.repeat(scaled[..., None], 3, axis=3) * 255).astype(np.uint8)
    return tiles[0] if len(tiles) == 1 else make_grid(tiles, per_row=min(len(tiles), 8))


def _cmd_recipes(args: argparse.Namespace) -> None:
    for index, (name, recipe) in enumerate(RECIPES.items()):
        if args.name and name != args.name:
            continue
        print(("\n" if index and not args.name else "") + f"[{name}]")
        print(recipe.describe())


def _check_grid_size(args: argparse.Namespace, count: int) -> None:
    """Refuse a grid too large to write or open (a huge --margin, or many large tiles), before any work."""
    rows, columns = -(-count // args.per_row), min(args.per_row, count)
    check_image_size(args.output, columns * args.size + (columns - 1) * args.margin,
                     rows * args.size + (rows - 1) * args.margin,
                     "use a smaller --margin, --size or --per-row, or fewer --filters")


def _cmd_grid(args: argparse.Namespace) -> None:
    check_writable(args.output)
    ranges = parse_filters(args.filters) if args.filters is not None else None
    recipe = _recipe(args)
    _check_inputs(args)
    model = _load(args)
    channels = model.layer_info(args.layer, args.size).channels
    if ranges is None:  # the book's first 64, or all of a smaller layer
        ranges = [range(min(GRID_FILTERS, channels))]
    for indices in ranges:
        check_filters(indices, channels, args.layer, model.name)
    filters = [index for indices in ranges for index in indices]
    _check_grid_size(args, len(filters))  # after the filters' check, which says what is wrong with a huge range
    render = render_filters(model, args.layer, filters, size=args.size, steps=args.steps, learning_rate=args.step,
                            seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
                            recipe=recipe, precision=args.precision, max_memory=args.max_memory)
    save_image(make_grid(render.images, per_row=args.per_row, margin=args.margin, crossed=render.stuck), args.output)
    if not args.quiet:
        _say(f"wrote {args.output} ({len(filters)} filters of {args.layer})")


def _cmd_atlas(args: argparse.Namespace) -> None:
    from .atlas import LocalExecutor, RayExecutor, build_atlas
    from .atlas.build import check_atlas_folder

    if args.executor != "ray" and (args.address is not None or args.gpus_per_task):
        raise FilterVizError("--address and --gpus-per-task go with --executor ray")
    if args.top_k is not None and args.images is None:
        raise FilterVizError("--top-k says how many of the --images FOLDER to show per filter; add --images FOLDER, "
                             "or leave --top-k out")
    recipe = _recipe(args)
    layers = [name.strip() for text in args.layers or [] for name in text.split(",")]
    if args.layers is not None and not all(layers):  # "" or "a,,b" would quietly mean fewer (or all) layers
        given = ",".join(args.layers)
        raise FilterVizError(f"--layers {_quote(given)} holds an empty name; give layer names separated by commas, "
                             "e.g. --layers features.1,features.6 (or leave --layers out for the default layers)")
    filters = parse_filters(args.filters) if args.filters is not None else None  # ranges, clipped per layer
    check_folder_writable(args.out, "an atlas")
    check_atlas_folder(Path(args.out))
    _check_inputs(args)
    executor = (RayExecutor(args.address, gpus_per_task=args.gpus_per_task) if args.executor == "ray"
                else LocalExecutor())
    if args.executor == "ray":
        from .models.sources import require

        require("ray", "ray", "atlases with --executor ray")  # before the model is loaded
    model = _load(args)
    summary = build_atlas(model, args.out, layers=layers or None, filters=filters, recipe=recipe,
                          seed=0 if args.seed is None else args.seed, images=args.images,
                          top_k=8 if args.top_k is None else args.top_k,
                          executor=executor, chunk_size=args.chunk_size, precision=args.precision, threads=args.threads,
                          progress=not args.quiet, rebuild=args.rebuild, size=args.size, max_memory=args.max_memory)
    if not args.quiet:
        _say(str(summary))


def _cmd_demo(args: argparse.Namespace) -> None:
    check_folder_writable(args.output, "figures")
    _check_inputs(args)
    model = _load(args) if args.model is not None else None
    figures = run_demo(args.output, model, weights=args.weights, seed=args.seed, device=args.device,
                       progress=not args.quiet)
    if not args.quiet:
        model = figures[0].render.model
        _say(f"wrote {', '.join(str(f.path) for f in figures)} with {model}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="filterviz", description="See what a convolutional network has learned.")
    parser.add_argument("--version", action="version", version=f"filterviz {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--device", type=_name, default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    common.add_argument("--weights", type=_path,
                        help="weights enum name (IMAGENET1K_V1), local checkpoint file, or 'random'")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
    common.add_argument("--preprocess", choices=list(PRESETS),
                        help="the model's input values: raw (RGB 0..255), unit (0..1), tf (-1..1), caffe (BGR minus "
                             "the mean pixel) or imagenet (mean/std); default: what the model's source says, "
                             "raw for model files")
    common.add_argument("--arch", type=_name, help="architecture of a state-dict model file (a torchvision name or timm:NAME)")
    common.add_argument("--trust-pickle", action="store_true",
                        help="allow a pickled whole-model file; unpickling runs code from it")

    optimize = _Parser(add_help=False)  # what every rendering command takes
    optimize.add_argument("--steps", type=int, help="ascent steps (default: the recipe's; 40 for classic)")
    optimize.add_argument("--step", "--learning-rate", "--lr", type=_finite, dest="step",
                        help="step size or learning rate (default: the recipe's; 1.0 for classic)")
    optimize.add_argument("--seed", type=_seed, help="seed of the start noise; same seed, same bytes")
    optimize.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="arithmetic: fp32 (default), bf16 (CPUs with AVX512-BF16/AMX, GPUs), fp16 (GPUs), "
                             "or auto (bf16 or fp16 on GPUs; fp32 on CPUs, where bf16 measured slower)")
    ascent = _Parser(add_help=False, parents=[optimize])
    ascent.add_argument("--max-memory", type=_bytes, metavar="SIZE",
                        help="memory a batch may use, e.g. 2G or 512M (default: a safe share of free memory)")

    models = commands.add_parser("models", help="list the known model names")
    models.set_defaults(run=_cmd_models)

    layers = commands.add_parser("layers", parents=[common], help="list a model's layers")
    layers.add_argument("model", type=_path, help=f"model name or file, e.g. {DEFAULT_MODEL}, vgg16, timm:resnet50, "
                                      "keras:VGG16, model.onnx (see `filterviz models`)")
    layers.add_argument("--size", type=_side, help="input size for the spatial sizes shown")
    layers.add_argument("--max-memory", type=_bytes, metavar="SIZE",
                        help="memory the model may use at --size, e.g. 2G (default: a safe share of free memory)")
    layers.set_defaults(run=_cmd_layers)

    render = commands.add_parser(
        "render", parents=[common, ascent], help="render a filter, or any objectives",
        description="Render one filter (the book's command) or any objectives, with any recipe.",
        epilog=objective_help())
    render.add_argument("model", type=_path)
    render.add_argument("layer", nargs="?", type=_name, help="layer name, e.g. block3_conv1 (see `filterviz layers MODEL`)")
    render.add_argument("filter", nargs="?", type=int, help="filter (channel) index")
    render.add_argument("--objective", action="append", metavar="EXPR",
                        help="what to maximize instead of LAYER FILTER (repeatable: one image each)")
    render.add_argument("--copies", type=_copies, default=1, help="images per objective (default 1)")
    render.add_argument("--diversity", metavar="LAYER", type=_name, help="add a diversity term at LAYER (with --copies)")
    render.add_argument("--diversity-weight", type=_finite,
                        help="its weight, in the objective's units (default 3; layers with large activations "
                             "need more, see README)")
    render.add_argument("-o", "--output", type=_path, required=True,
                        help="image file to write (.png); several images are tiled, unless the name holds "
                             "{name}, which becomes each objective's name")
    render.add_argument("--size", type=_side,
                        help="image side in pixels (default: the recipe's, else 150 or the model's fixed size)")
    render.add_argument("--importance", metavar="PNG", type=_path, help="maco: also write the importance map here")
    _add_recipe_options(render)
    render.set_defaults(run=_cmd_render)

    recipes = commands.add_parser("recipes", help="show the recipe presets and all their fields")
    recipes.add_argument("name", nargs="?", choices=list(RECIPES))
    recipes.set_defaults(run=_cmd_recipes)

    grid = commands.add_parser("grid", parents=[common, ascent], help="render filters of a layer as a grid")
    grid.add_argument("model", type=_path)
    grid.add_argument("layer", type=_name)
    grid.add_argument("--filters", help="indices and ranges, e.g. 0-63 or 0,5,9-12 (default: the first 64)")
    grid.add_argument("-o", "--output", type=_path, required=True, help="image file to write (.png)")
    grid.add_argument("--size", type=_side, default=64, help="tile side in pixels (default 64, as the book)")
    grid.add_argument("--per-row", type=_positive, default=8, help="tiles per row (default 8)")
    grid.add_argument("--margin", type=_non_negative, default=5, help="pixels between tiles (default 5)")
    grid.add_argument("--batch-size", type=_positive, help="filters rendered together (default: by device)")
    _add_recipe_options(grid)
    grid.set_defaults(run=_cmd_grid)

    atlas = commands.add_parser(
        "atlas", parents=[common, ascent], help="a browsable site of every filter of a model",
        description="Render every filter of a model's layers into a static site (index, a page per layer and per "
                    "filter), with the dataset images that excite each filter most. Running the same command "
                    "again continues an interrupted atlas; a changed option redoes only what it changes.")
    atlas.add_argument("model", type=_path)
    atlas.add_argument("-o", "--out", type=_path, required=True, help="folder to write the site into")
    atlas.add_argument("--layers", action="append", metavar="NAMES",
                       help="comma-separated layers (default: every conv layer, or every block's output)")
    atlas.add_argument("--filters", help="only these filters of each layer, e.g. 0-15 (default: all)")
    atlas.add_argument("--size", type=_side,
                       help="image side in pixels (default: the recipe's, else 150 or the model's fixed size)")
    atlas.add_argument("--images", metavar="FOLDER", type=_path, help="show each filter's top images from this folder")
    atlas.add_argument("--top-k", type=_positive, help="with --images: examples per filter (default 8)")
    atlas.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="where renders run: here (default) or on a Ray cluster (pip install 'filterviz[ray]')")
    atlas.add_argument("--address", type=_name, help="with --executor ray: the cluster's address, e.g. auto or "
                                         "ray://HOST:10001 (default: start Ray on this machine)")
    atlas.add_argument("--gpus-per-task", type=_non_negative_number, default=0,
                       help="with --executor ray: GPUs per render task (fractions share a GPU)")
    atlas.add_argument("--threads", type=_positive,
                       help="CPU threads per render task, here and on Ray workers (default: this machine's)")
    atlas.add_argument("--chunk-size", type=_positive, default=16,
                       help="filters rendered together as one task and batch (default 16)")
    atlas.add_argument("--rebuild", action="store_true",
                       help="start the atlas afresh: render everything again, setting a damaged manifest aside as "
                            "manifest.sqlite.corrupt-N (no file is deleted that the atlas did not write)")
    _add_recipe_options(atlas)
    atlas.set_defaults(run=_cmd_atlas)

    demo = commands.add_parser("demo", parents=[common], help="the book's figures: vggconv1..4.png and a grid")
    demo.add_argument("-o", "--output", type=_path, default="out", help="folder to write into (default out)")
    demo.add_argument("--seed", type=_seed, help="seed of the start noise")
    demo.add_argument("--model", type=_path, help="model to use (default: vgg16, or the embedded model when its weights are missing)")
    demo.set_defaults(run=_cmd_demo)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], *rest: object, **kwargs: object) -> None:
    """filterviz's own warnings (dead units, fallbacks) as one ``filterviz: warning:`` line each."""
    if issubclass(category, FilterVizWarning):
        _say(f"warning: {message}")
    else:
        warnings._showwarning_orig(message, category, *rest, **kwargs)  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for any user error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors, --help and --version
        return int(exc.code or 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", FilterVizWarning)
            warnings.showwarning = _show_warning
            args.run(args)
            sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit
    except FilterVizError as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted; every file written so far is complete (none is left half-written)")
        return 130
    except BrokenPipeError:
        # The reader went away (`filterviz layers vgg16 | head -1`): stop quietly, as other command-line
        # tools do, with the status of a process ended by SIGPIPE. Python's own flush at exit would
        # fail again and complain, so stdout goes to /dev/null from here on.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # no real file behind stdout (a test's capture)
            pass
        return 128 + 13
    return 0


if __name__ == "__main__":
    sys.exit(main())
