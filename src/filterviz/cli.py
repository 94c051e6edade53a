"""The ``filterviz`` command: a thin layer over the Python API.

Every user error is a FilterVizError, printed here as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__
from .book import GRID_FILTERS, run_demo
from .errors import FilterVizError
from .image import check_writable, make_grid, save_image
from .models import DEFAULT_MODEL, known_models, load_model
from .models.registry import is_model_file
from .models.spec import PRESETS
from .render import FilterRender, check_filters, render_filters


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the message and where to get help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _say(message: str) -> None:
    print(f"filterviz: {message}", file=sys.stderr)


def parse_filters(text: str) -> list[range]:
    """Parse a filter list such as ``0-63`` or ``0,5,9-12`` into ranges (never expanded here, so a
    huge range costs nothing before it is checked against the layer)."""
    ranges: list[range] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            start, stop = int(first), int(last) if last else int(first)
            if start < 0 or stop < start:
                raise ValueError
            ranges.append(range(start, stop + 1))
    except ValueError:
        raise FilterVizError(f"cannot read filters {text!r}; use a list of indices and ranges such as 0-63 or 0,5,9-12") from None
    return ranges


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


def _warn_dead(render: FilterRender, consequence: str) -> None:
    for filter_index, dead in zip(render.filters, render.dead):
        if dead:
            _say(f"warning: filter {filter_index} of {render.layer} is dead: its gradient stayed zero at every "
                 f"step, so nothing could be rendered; {consequence}")


OTHER_SOURCES = """\
Other sources:
  timm:NAME          any timm model, e.g. timm:resnet50 (pip install 'filterviz[timm]')
  keras:NAME         a keras.applications model as in the book, e.g. keras:VGG16; keras:VGG16+top keeps
                     the classifier (pip install 'filterviz[keras]')
  PATH.onnx          an ONNX file (pip install 'filterviz[onnx]')
  PATH.keras, .h5    a saved Keras model (pip install 'filterviz[keras]')
  PATH.pt, .pth      TorchScript; a state dict with --arch NAME; a pickled model with --trust-pickle"""


def _load(args: argparse.Namespace, weights: str | None = None) -> object:
    """The model the command line names, with its options."""
    return load_model(args.model, weights if weights is not None else args.weights, args.device,
                      preprocess=args.preprocess, arch=args.arch, trust_pickle=args.trust_pickle,
                      progress=not args.quiet)


def _cmd_models(args: argparse.Namespace) -> None:
    for name in known_models():
        print(name + ("  (embedded default, works offline)" if name == DEFAULT_MODEL else ""))
    print()
    print(OTHER_SOURCES)


def _cmd_layers(args: argparse.Namespace) -> None:
    # Layer names and shapes do not depend on the weights: list them offline too.
    needs_weights = args.weights is not None or is_model_file(args.model)
    model = _load(args, None if needs_weights else "random")
    rows = [(info.name, info.kind + (f" (call {info.name.rpartition('#')[2]} of {info.calls})" if "#" in info.name
                                     else f" (call 1 of {info.calls})" if info.calls > 1 else ""),
             str(info.channels), info.spatial, ", ".join(info.aliases))
            for info in model.layers(args.size)]
    print(f"input: {model.spec.describe()}")
    header = ("layer", "kind", "channels", f"size@{args.size or model.spec.default_size}", "aliases")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _cmd_render(args: argparse.Namespace) -> None:
    check_writable(args.output)
    model = _load(args)
    render = render_filters(model, args.layer, [args.filter], size=args.size, steps=args.steps, step=args.step,
                            seed=args.seed, progress=not args.quiet)
    _warn_dead(render, f"{args.output} shows only the start noise")
    save_image(render.images[0], args.output)
    if not args.quiet:
        _say(f"wrote {args.output} (filter {args.filter} of {args.layer}: mean activation "
             f"{render.start_activation[0]:.3g} -> {render.activation[0]:.3g})")


def _cmd_grid(args: argparse.Namespace) -> None:
    check_writable(args.output)
    ranges = parse_filters(args.filters) if args.filters else None
    model = _load(args)
    channels = model.layer_info(args.layer, args.size).channels
    if ranges is None:  # the book's first 64, or all of a smaller layer
        ranges = [range(min(GRID_FILTERS, channels))]
    for indices in ranges:
        check_filters(indices, channels, args.layer, model.name)
    filters = [index for indices in ranges for index in indices]
    render = render_filters(model, args.layer, filters, size=args.size, steps=args.steps, step=args.step,
                            seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    _warn_dead(render, "its tile is crossed out")
    save_image(make_grid(render.images, per_row=args.per_row, margin=args.margin, crossed=render.dead), args.output)
    if not args.quiet:
        _say(f"wrote {args.output} ({len(filters)} filters of {args.layer})")


def _cmd_demo(args: argparse.Namespace) -> None:
    model = _load(args) if args.model else None
    figures = run_demo(args.output, model, weights=args.weights, seed=args.seed, device=args.device,
                       progress=not args.quiet, notify=_say)
    for figure in figures:
        _warn_dead(figure.render, f"it is crossed out in {figure.path}" if len(figure.render.filters) > 1
                   else f"{figure.path} shows only the start noise")
    if not args.quiet:
        model = figures[0].render.model
        _say(f"wrote {', '.join(str(f.path) for f in figures)} with {model}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="filterviz", description="See what a convolutional network has learned.")
    parser.add_argument("--version", action="version", version=f"filterviz {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    common.add_argument("--weights", help="weights enum name (IMAGENET1K_V1), local checkpoint file, or 'random'")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
    common.add_argument("--preprocess", choices=list(PRESETS),
                        help="the model's input values: raw (RGB 0..255), unit (0..1), tf (-1..1), caffe (BGR minus "
                             "the mean pixel) or imagenet (mean/std); default: what the model's source says, "
                             "raw for model files")
    common.add_argument("--arch", help="architecture of a state-dict model file (a torchvision name or timm:NAME)")
    common.add_argument("--trust-pickle", action="store_true",
                        help="allow a pickled whole-model file; unpickling runs code from it")

    ascent = _Parser(add_help=False)
    ascent.add_argument("--steps", type=int, default=40, help="ascent steps (default 40)")
    ascent.add_argument("--step", type=float, default=1.0, help="step size (default 1.0)")
    ascent.add_argument("--seed", type=_seed, help="seed of the start noise; same seed, same bytes")

    models = commands.add_parser("models", help="list the known model names")
    models.set_defaults(run=_cmd_models)

    layers = commands.add_parser("layers", parents=[common], help="list a model's layers")
    layers.add_argument("model", help=f"model name or file, e.g. {DEFAULT_MODEL}, vgg16, timm:resnet50, "
                                      "keras:VGG16, model.onnx (see `filterviz models`)")
    layers.add_argument("--size", type=_positive, help="input size for the spatial sizes shown")
    layers.set_defaults(run=_cmd_layers)

    render = commands.add_parser("render", parents=[common, ascent], help="render one filter")
    render.add_argument("model")
    render.add_argument("layer", help="layer name, e.g. block3_conv1 (see `filterviz layers MODEL`)")
    render.add_argument("filter", type=int, help="filter (channel) index")
    render.add_argument("-o", "--output", required=True, help="image file to write (.png)")
    render.add_argument("--size", type=_positive,
                        help="image side in pixels (default 150, or the model's fixed input size)")
    render.set_defaults(run=_cmd_render)

    grid = commands.add_parser("grid", parents=[common, ascent], help="render filters of a layer as a grid")
    grid.add_argument("model")
    grid.add_argument("layer")
    grid.add_argument("--filters", help="indices and ranges, e.g. 0-63 or 0,5,9-12 (default: the first 64)")
    grid.add_argument("-o", "--output", required=True, help="image file to write (.png)")
    grid.add_argument("--size", type=_positive, default=64, help="tile side in pixels (default 64, as the book)")
    grid.add_argument("--per-row", type=_positive, default=8, help="tiles per row (default 8)")
    grid.add_argument("--margin", type=_non_negative, default=5, help="pixels between tiles (default 5)")
    grid.add_argument("--batch-size", type=_positive, help="filters rendered together (default: by device)")
    grid.set_defaults(run=_cmd_grid)

    demo = commands.add_parser("demo", parents=[common], help="the book's figures: vggconv1..4.png and a grid")
    demo.add_argument("-o", "--output", default="out", help="folder to write into (default out)")
    demo.add_argument("--seed", type=_seed, help="seed of the start noise")
    demo.add_argument("--model", help="model to use (default: vgg16, or the embedded model when its weights are missing)")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for any user error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors, --help and --version
        return int(exc.code or 0)
    try:
        args.run(args)
    except FilterVizError as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted; every file written so far is complete (none is left half-written)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
