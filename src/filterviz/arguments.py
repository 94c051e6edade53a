"""The ``filterviz`` command line's arguments: the parser, the types of its values, and the checks of
how options go together. Reading them is all this module does; ``cli`` runs the commands.

Nothing here imports torch (nor numpy): the parser's choices and checks come from the catalog and from
modules that import neither, so that help and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from . import __version__
from .catalog import DEFAULT_MODEL, DEFAULT_PRECISION, PRECISIONS, TORCH_SUFFIXES, TRANSFORMS
from .errors import FilterVizError
from .layouts import layout_syntax, parse_layout
from .models.spec import PRESETS
from .objectives import objective_help
from .recipes import BEST_RECIPE, MAX_SIDE, RECIPES, Recipe, field_registry, get_recipe


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

# Hyperspectral sensors have a few hundred bands; more is a typing mistake, and would fill the memory.
MAX_CHANNELS = 1024


def _channels(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_CHANNELS:
        raise ValueError
    return value


_channels.__name__ = f"channel count (1 to {MAX_CHANNELS})"


def _channel_list(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(","))  # an empty part is a mistake, not a channel to skip
    if not all(0 <= value < MAX_CHANNELS for value in values):
        raise ValueError
    return values


_channel_list.__name__ = "list of channel indices (one, or three such as 3,2,1)"


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


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {_quote(text)}: use 0 to 65535 (0: any free port)")
    return int(text)


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
# Fields with options of their own: --steps, --size, and --learning-rate (also --lr, and --step, the book's word).
_OWN_OPTIONS = {"name", "steps", "size", "learning_rate"}


def _add_executor_options(parser: argparse.ArgumentParser, what: str) -> None:
    """Where an atlas's renders run, and in what chunks (``what``: what a chunk is made of)."""
    parser.add_argument("--executor", choices=["local", "processes", "ray"],
                        help="where renders run: here (default), in --workers processes of this machine, or on a Ray "
                             "cluster (pip install 'filterviz[ray]')")
    parser.add_argument("--workers", type=_positive,
                        help="processes rendering at once, each on --threads threads (implies --executor processes; "
                             "default half this machine's CPUs)")
    parser.add_argument("--address", type=_name, help="with --executor ray: the cluster's address, e.g. auto or "
                                          "ray://HOST:10001 (default: start Ray on this machine)")
    parser.add_argument("--gpus-per-task", type=_non_negative_number, default=0,
                        help="with --executor ray: GPUs per render task (fractions share a GPU)")
    parser.add_argument("--threads", type=_positive,
                        help="CPU threads per render task, here, in each process and on Ray workers (default: this "
                             "machine's; with --executor processes, its CPUs over --workers)")
    parser.add_argument("--chunk-size", type=_positive, default=16,
                        help=f"{what} rendered together as one task and batch (default 16)")


def _add_recipe_options(parser: argparse.ArgumentParser, default: str = "classic") -> None:
    group = parser.add_argument_group("recipe", "a preset, and any of its fields to override "
                                      "(`filterviz recipes` shows them all)")
    group.add_argument("--recipe", choices=list(RECIPES), default=default,
                       help="preset (default classic, the book)" if default == "classic" else f"preset (default {default})")
    for item in fields(Recipe):
        if item.name in _OWN_OPTIONS:
            continue
        flag = "--" + item.name.replace("_", "-")
        help_text = item.metadata.get("help", "")
        if item.name == "extra_transforms":  # one transform per option, added to the recipe's own
            forms = ", ".join(kind.syntax or kind.name for kind in TRANSFORMS.entries().values())
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


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe the command line names: a preset with its fields overridden."""
    overrides = {item.name: getattr(args, item.name, None) for item in fields(Recipe) if item.name != "name"}
    if args.extra_transforms:
        overrides["extra_transforms"] = get_recipe(args.recipe).extra_transforms + tuple(args.extra_transforms)
    return get_recipe(args.recipe, **overrides)  # refuses a field that the parameterization would ignore



def check_inputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an input path that no file can have here (too long a name or path, a
    NUL character), which the system would otherwise answer with an OSError deep inside a loader, and
    the options of PyTorch model files given with another model, which would be ignored. Whether a
    file exists and is what it should be is for each loader to say."""
    from .image import check_path  # numpy: imported by a command, not by the parser

    for option, what in (("model", "model"), ("weights", "weights"), ("images", "--images"),
                         ("spectrum", "--spectrum"), ("start", "--start")):
        value = getattr(args, option, None)
        if value is not None:
            check_path(value, what)
    model = getattr(args, "model", None)
    torch_file = model is not None and Path(model).suffix.lower() in TORCH_SUFFIXES
    for flag, given in (("--arch", args.arch is not None), ("--trust-pickle", args.trust_pickle)):
        if given and not torch_file:
            raise FilterVizError(f"{flag} goes with a PyTorch model file ({', '.join(TORCH_SUFFIXES[:3])}...), "
                                 f"and {_quote(model) if model else 'the default model'} is not one; leave {flag} out")



def _layout_pair(text: str) -> tuple[str, str]:
    """``--layout LAYER=KIND``: a layer and a layout name (checked here; the layer when the model loads)."""
    layer, equals, kind = text.rpartition("=")
    if not equals or not layer.strip() or not kind.strip():
        raise argparse.ArgumentTypeError(f"give LAYER=KIND, KIND one of {', '.join(layout_syntax())}; not {_quote(text)}")
    try:
        parse_layout(kind)
    except FilterVizError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return layer.strip(), kind.strip()


def parse_layouts(pairs: Sequence[tuple[str, str]] | None) -> dict[str, str]:
    """``--layout`` options as {layer: layout}; a layer given two different layouts is refused."""
    layouts: dict[str, str] = {}
    for layer, kind in pairs or ():
        if layouts.get(layer, kind) != kind:
            raise FilterVizError(f"--layout gives layer {layer} two layouts, {layouts[layer]} and {kind}; give one")
        layouts[layer] = kind
    return layouts


def parse_layer_list(texts: Sequence[str] | None) -> list[str] | None:
    """``--layers`` options (each comma-separated) as one list of names; None when none was given. An
    empty name ("" or "a,,b") is refused: it would quietly mean fewer (or all) layers."""
    if texts is None:
        return None
    layers = [name.strip() for text in texts for name in text.split(",")]
    if not all(layers):
        raise FilterVizError(f"--layers {_quote(','.join(texts))} holds an empty name; give layer names separated by "
                             "commas, e.g. --layers features.1,features.6 (or leave --layers out for the default "
                             "layers)")
    return layers


def _add_record_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--record", type=_positive, metavar="N",
                         help="also write the optimization as an animation, a frame every N steps (see --animation)")
    command.add_argument("--animation", type=_path, metavar="FILE",
                         help="where --record writes it: .webp (lossless) or .gif (default: -o's name with .webp)")


def _add_start_options(parser: argparse.ArgumentParser, what: str, output: str) -> None:
    """``--start PHOTO`` and ``--side-by-side``: a render that begins from a photo, shown beside it."""
    parser.add_argument("--start", metavar="PHOTO", type=_path,
                        help=f"start {what} from this photo instead of noise (its middle square at the render's "
                             "size): feature accentuation; caricature:LAYER and close:LAYER|pixels compare with it")
    parser.add_argument("--side-by-side", action="store_true",
                        help=f"with --start: write the photo and {output} side by side, in one PNG (-o)")


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
    common.add_argument("--channels", type=_channels, metavar="N",
                        help="the model's input channels (1 gray, 3 RGB, 4 or more bands), where the model does "
                             "not say it itself (a model file's input shape or first convolution says it; a "
                             "different count is refused)")
    common.add_argument("--arch", type=_name, help="architecture of a state-dict model file (a torchvision name or timm:NAME)")
    common.add_argument("--trust-pickle", action="store_true",
                        help="allow a pickled whole-model file; unpickling runs code from it")
    common.add_argument("--layout", action="append", type=_layout_pair, metavar="LAYER=KIND",
                        help="how to read a layer's output where filterviz cannot tell (`filterviz layers` marks "
                             f"those with ?), or reads it otherwise: KIND is {', '.join(layout_syntax())} "
                             "(PREFIX: tokens before the patches, the first a class token); repeatable")

    optimize = _Parser(add_help=False)  # what every rendering command takes
    optimize.add_argument("--steps", type=int, help="ascent steps (default: the recipe's; 40 for classic)")
    optimize.add_argument("--learning-rate", "--lr", "--step", type=_finite, dest="learning_rate",
                        help="the learning rate: the book's step size, or the optimizer's rate; --lr and --step "
                             "(the book's word) are the same option (default: the recipe's; 1.0 for classic)")
    optimize.add_argument("--seed", type=_seed, help="seed of the start noise; same seed, same bytes")
    optimize.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="arithmetic: auto (default: the fastest that keeps quality here: bf16 on CPUs with "
                             "AMX, measured once on CPUs with AVX512-BF16 only, else fp32, GPUs included), fp32, "
                             "bf16 (CPUs with AVX512-BF16/AMX, GPUs) or fp16 (GPUs); demo keeps fp32, as the book")
    ascent = _Parser(add_help=False, parents=[optimize])
    ascent.add_argument("--max-memory", type=_bytes, metavar="SIZE",
                        help="memory a batch may use, e.g. 2G or 512M (default: a safe share of free memory)")

    commands.add_parser("models", help="list the known model names")

    layers = commands.add_parser("layers", parents=[common], help="list a model's layers")
    layers.add_argument("model", type=_path, help=f"model name or file, e.g. {DEFAULT_MODEL}, vgg16, timm:resnet50, "
                                      "keras:VGG16, model.onnx (see `filterviz models`)")
    layers.add_argument("--size", type=_side, help="input size for the spatial sizes shown")
    layers.add_argument("--max-memory", type=_bytes, metavar="SIZE",
                        help="memory the model may use at --size, e.g. 2G (default: a safe share of free memory)")

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
    _add_start_options(render, "the image", "the image")
    render.add_argument("--show-channels", type=_channel_list, metavar="I,J,K",
                        help="a model of more than 3 channels: the 3 shown as red, green, blue (default the first "
                             "three), or one shown as gray; every channel goes to a .npy of the image's name")
    _add_recipe_options(render)

    recipes = commands.add_parser("recipes", help="show the recipe presets and all their fields")
    recipes.add_argument("name", nargs="?", choices=list(RECIPES))

    grid = commands.add_parser("grid", parents=[common, ascent], help="render filters of a layer as a grid")
    grid.add_argument("model", type=_path)
    grid.add_argument("layer", type=_name)
    grid.add_argument("--filters", help="indices and ranges, e.g. 0-63 or 0,5,9-12 (default: the first 64)")
    grid.add_argument("-o", "--output", type=_path, required=True, help="image file to write (.png)")
    grid.add_argument("--size", type=_side, default=64, help="tile side in pixels (default 64, as the book)")
    grid.add_argument("--per-row", type=_positive, default=8, help="tiles per row (default 8)")
    grid.add_argument("--margin", type=_non_negative, default=5, help="pixels between tiles (default 5)")
    grid.add_argument("--batch-size", type=_positive, help="filters rendered together (default: by device)")
    _add_start_options(grid, "every filter", "the grid")
    grid.add_argument("--show-channels", type=_channel_list, metavar="I,J,K",
                      help="a model of more than 3 channels: the 3 shown as red, green, blue (default the first "
                           "three), or one shown as gray; every channel goes to a .npy of the grid's name")
    _add_recipe_options(grid)
    for command in (render, grid):
        _add_record_options(command)

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
    _add_executor_options(atlas, "filters")
    atlas.add_argument("--rebuild", action="store_true",
                       help="start the atlas afresh: render everything again, setting a damaged manifest aside as "
                            "manifest.sqlite.corrupt-N (no file is deleted that the atlas did not write)")
    _add_recipe_options(atlas)

    activation = commands.add_parser(
        "activation-atlas", parents=[common, ascent], help="an activation atlas of a layer (Carter et al. 2019)",
        description="Sample a layer's activation vectors from a folder of images, lay them out with UMAP (pip install "
                    "'filterviz[umap]'), bin them into a grid and render each cell's average as a direction, with the "
                    "classes it supports and the dataset patches that fell into it: a static page in an atlas folder, "
                    "linked from the index of an atlas there. Running the same command again continues an "
                    "interrupted one; a changed option redoes only what it changes.")
    activation.add_argument("model", type=_path)
    activation.add_argument("layer", type=_name, help="layer name, e.g. blocks.9 (see `filterviz layers MODEL`)")
    activation.add_argument("--images", metavar="FOLDER", type=_path, required=True,
                            help="the images to sample activations from")
    activation.add_argument("-o", "--out", type=_path, required=True,
                            help="atlas folder to write into (new, empty, or an atlas's)")
    activation.add_argument("--grid", type=_positive, default=20, help="cells a side of the grid (default 20)")
    activation.add_argument("--samples", type=_positive, default=100_000,
                            help="activation vectors to sample, spread over the images at random positions, at most "
                                 "every position of each (default 100000)")
    activation.add_argument("--min-samples", type=_positive, default=3,
                            help="samples a cell needs to be shown (default 3)")
    activation.add_argument("--patches", type=_positive, default=8,
                            help="dataset patches shown per cell, those most like its average (default 8)")
    activation.add_argument("--size", type=_side, help="picture side in pixels (default 96)")
    activation.add_argument("--scan-size", type=_side,
                            help="side the images are seen at when sampling (default: the model's own, e.g. 224)")
    _add_executor_options(activation, "cells")
    activation.add_argument("--rebuild", action="store_true",
                            help="start this layer's activation atlas afresh (setting a damaged manifest aside as "
                                 "manifest.sqlite.corrupt-N)")
    _add_recipe_options(activation, default="lucid")

    demo = commands.add_parser("demo", parents=[common], help="the book's figures: vggconv1..4.png and a grid")
    demo.add_argument("-o", "--output", type=_path, default="out", help="folder to write into (default out)")
    demo.add_argument("--seed", type=_seed, help="seed of the start noise")
    demo.add_argument("--model", type=_path, help="model to use (default: vgg16, or the embedded model when its weights are missing)")
    demo.add_argument("--beside", default=BEST_RECIPE, metavar="RECIPE",
                      help=f"recipe of the same figures shown beside the book's, in OUTPUT/RECIPE/ and "
                           f"OUTPUT/side_by_side.png (default {BEST_RECIPE}: the most recognizable pictures per "
                           "second); none: the book's figures alone")
    serve = commands.add_parser(
        "serve", help="a local web app: pick a unit, watch it render, download it",
        description="A local web app (and an HTTP API under /api) that renders while you watch: pick a model, a "
                    "unit or objective and a recipe, and watch the picture form. Jobs from every page share one "
                    "queue and are batched together where they can be; finished pictures are cached on disk.")
    serve.add_argument("model", nargs="*", type=_path,
                       help=f"models it serves besides the names `filterviz models` lists: names or model files "
                            f"(the only files it opens; default {DEFAULT_MODEL})")
    serve.add_argument("--atlas", metavar="DIR", type=_path,
                       help="also serve this atlas (read-only), each filter page with a link to render it again")
    serve.add_argument("--port", type=_port, default=8765, help="port to listen on (default 8765; 0: any free one)")
    serve.add_argument("--host", type=_name, default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only; any other is reachable by "
                            "others, with no login)")
    serve.add_argument("--cache", metavar="DIR", type=_path, default="~/.cache/filterviz/serve",
                       help="folder of finished pictures, by fingerprint (default ~/.cache/filterviz/serve)")
    serve.add_argument("--device", type=_name, default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    serve.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                       help="arithmetic of every render, as render's --precision (default auto)")
    serve.add_argument("--max-size", type=_side, default=512, help="largest image side a request may ask (default 512)")
    serve.add_argument("--max-steps", type=_positive, default=1024, help="most steps a request may ask (default 1024)")
    serve.add_argument("--max-batch", type=_positive, default=8, help="most jobs rendered together (default 8)")
    serve.add_argument("--max-queue", type=_positive, default=64, help="most jobs waiting (default 64)")
    serve.add_argument("--quiet", "-q", action="store_true", help="no message when it starts")
    return parser


