"""The ``filterviz`` command: parses its arguments (``arguments``), calls the Python API, prints.

Every user error is a FilterVizError, printed here as one line on stderr with exit status 2.

This module and the parser import no torch: ``--help``, ``recipes``, ``models`` and usage errors (a bad
option, a bad objective) answer without it. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import build_parser, check_inputs, parse_filters, parse_layer_list, parse_layouts, recipe_from_args
from .catalog import DEFAULT_MODEL, PARAMETERIZATIONS
from .errors import FilterVizError, FilterVizWarning
from .layouts import layout_syntax
from .recipes import RECIPES, get_recipe, render_size

if TYPE_CHECKING:
    from .models.loaded import LoadedModel


def _say(message: str) -> None:
    print(f"filterviz: {message}", file=sys.stderr)


def _load(args: argparse.Namespace, load_weights: bool = True) -> LoadedModel:
    """The model the command line names, with its options; ``load_weights=False``: its architecture
    with the spec of the chosen weights, none read or downloaded."""
    from .models.registry import load_model

    model = load_model(args.model, args.weights, args.device, preprocess=args.preprocess, channels=args.channels,
                       arch=args.arch, trust_pickle=args.trust_pickle, progress=not args.quiet,
                       load_weights=load_weights, layouts=parse_layouts(args.layout))
    model.max_memory = getattr(args, "max_memory", None)  # every run of it, checks included, keeps to it
    return model


def _cmd_layers(args: argparse.Namespace) -> None:
    # Layer names and shapes do not depend on the weights: list them offline too, with the spec of the
    # weights chosen, as a render with the same options uses it.
    check_inputs(args)
    model = _load(args, load_weights=False)
    infos = model.layers(args.size)
    rows = [(info.name, info.kind + (f" (call {info.name.rpartition('#')[2]} of {info.calls})" if "#" in info.name
                                     else f" (call 1 of {info.calls})" if info.calls > 1 else ""),
             info.output, ", ".join(info.aliases))
            for info in infos]
    print(f"input: {model.spec.describe()}")
    header = ("layer", "kind", f"output@{args.size or model.spec.default_size}", "aliases")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    unknown = [info.name for info in infos if info.channels is None]
    if unknown and not args.quiet:
        example = unknown[0]
        _say(f"{len(unknown)} layer{'s' * (len(unknown) > 1)} marked ? give outputs whose axes filterviz cannot tell "
             f"apart (shown whole, for one image); to render one, say how to read it: --layout {example}=KIND, KIND one "
             f"of {', '.join(layout_syntax())}")


def _cmd_render(args: argparse.Namespace) -> None:
    from .objectives import channel, parse_objective

    book = args.layer is not None and not args.objective  # the book's command: LAYER FILTER
    if args.objective and args.layer is not None:
        raise FilterVizError("give either LAYER FILTER or --objective, not both")
    if not args.objective and (args.layer is None or args.filter is None):
        raise FilterVizError("say what to render: LAYER FILTER, or --objective (e.g. channel:LAYER:K or class:207)")
    chosen = [channel(args.layer, args.filter)] if book else [parse_objective(text) for text in args.objective]
    _check_start(args, chosen)
    # The objectives read (and checked) without torch; what follows imports it.
    from .ascent import render
    from .outputs import TILES_PER_ROW, array_files, check_tiles, copy_keys, output_files, save_render, with_copies
    from .plan import check_filters

    objectives = with_copies(chosen, args.copies, args.diversity, args.diversity_weight)
    recipe = recipe_from_args(args)
    if args.importance is not None and not PARAMETERIZATIONS.get(recipe.parameterization).importance:
        raise FilterVizError(f"--importance writes maco's importance map, and recipe {recipe.name} uses "
                             f"{recipe.parameterization}; add --recipe maco (or --parameterization maco), or leave "
                             "--importance out")
    outputs = output_files(args.output, objectives, args.copies, args.importance)
    recording = _recording(args, outputs, per_row=TILES_PER_ROW, margin=5)
    check_inputs(args)
    _check_photo(args)
    model = _load(args)
    side = render_size(recipe.replace(size=args.size) if args.size else recipe, model.spec.fixed_size)
    if len(outputs) == 1:
        check_tiles(args.output, len(objectives), side, hint="render fewer images, write one file each with "
                    "-o NAME_{name}.png, or use a smaller --size", beside_start=args.side_by_side)
    if book:  # the filter index first, in the book's words
        check_filters([args.filter], model.layer_info(args.layer, side).channels, args.layer, model.name)
    arrays = array_files(outputs, model.spec.channels, args.show_channels)  # checked before any work
    result = render(model, objectives, recipe, size=args.size, seed=args.seed, precision=args.precision,
                    max_memory=args.max_memory, keys=copy_keys(args.filter, args.copies) if book else None,
                    progress=not args.quiet, start=args.start, **recording.options)
    save_render(result, outputs, args.importance, args.show_channels, beside=args.side_by_side)
    recording.save()
    if args.quiet:
        return
    if book:
        _say(f"wrote {args.output}{_arrays_note(arrays)}{recording.note} (filter {args.filter} of {args.layer}: mean activation "
             f"{result.start_score[0]:.3g} -> {result.score[0]:.3g}{_precision_note(result.precision)})")
    else:
        scores = ", ".join(f"{o.name}: {a:.3g} -> {b:.3g}" for o, a, b in
                           zip(result.objectives[:4], result.start_score, result.score))
        more = f" and {len(objectives) - 4} more" if len(objectives) > 4 else ""
        _say(f"wrote {', '.join(outputs[:2])}{' ...' if len(outputs) > 2 else ''}{_arrays_note(arrays)}{recording.note} "
             f"({scores}{more}{_precision_note(result.precision)})")


class _Recording:
    """``--record N``: the render's callback options, and the animation written after the pictures."""

    def __init__(self, target: Path | None, every: int, shown: Sequence[int] | None, per_row: int, margin: int) -> None:
        from .animation import Recorder

        self.target = target
        self.recorder = Recorder(shown, per_row, margin) if target is not None else None
        self.options = {} if self.recorder is None else {"callback": self.recorder, "callback_every": every}

    def save(self) -> None:
        if self.recorder is not None and self.target is not None:
            self.recorder.save(self.target)

    @property
    def note(self) -> str:
        return "" if self.target is None else f" and {self.target} ({len(self.recorder.frames)} frames)"


def _recording(args: argparse.Namespace, outputs: Sequence[str], per_row: int, margin: int) -> _Recording:
    """What ``--record``/``--animation`` ask for, checked before any work."""
    from .animation import check_animation_path
    from .image import check_writable

    if args.record is None:
        if args.animation is not None:
            raise FilterVizError("--animation says where --record writes the animation; add --record N (a frame "
                                 "every N steps), or leave --animation out")
        return _Recording(None, 1, None, per_row, margin)
    if args.animation is None and (len(outputs) > 1 or "{name}" in args.output):
        raise FilterVizError("several pictures are recorded as one animation: name it with --animation FILE.webp")
    target = Path(args.animation) if args.animation is not None else Path(outputs[0]).with_suffix(".webp")
    check_animation_path(target)
    check_writable(target)
    if any(Path(output).resolve() == target.resolve() for output in outputs):
        raise FilterVizError(f"--animation {target} is also the picture's file; give the animation another name")
    return _Recording(target, args.record, args.show_channels, per_row, margin)


def _check_start(args: argparse.Namespace, objectives: Sequence[object]) -> None:
    """``--side-by-side`` needs ``--start``, and so do objectives that compare with the start photo."""
    from .starts import require_start

    if args.side_by_side and args.start is None:
        raise FilterVizError("--side-by-side shows the start photo beside the result; add --start PHOTO, or leave "
                             "--side-by-side out")
    require_start(objectives, args.start is not None)


def _check_photo(args: argparse.Namespace) -> None:
    """The start photo, by its header, before the model is loaded."""
    if args.start is not None:
        from .starts import check_photo

        check_photo(args.start)


def _precision_note(precision: str) -> str:
    """Said after the scores when a render ran in other than fp32 (``auto`` chose it, or it was asked)."""
    return "" if precision == "fp32" else f"; in {precision}"


def _arrays_note(arrays: Sequence[Path]) -> str:
    """What the closing message says of the .npy files of every channel, when there are any."""
    if not arrays:
        return ""
    return f", every channel in {arrays[0]}{' ...' if len(arrays) > 1 else ''}"


def _cmd_recipes(args: argparse.Namespace) -> None:
    for index, (name, recipe) in enumerate(RECIPES.items()):
        if args.name and name != args.name:
            continue
        print(("\n" if index and not args.name else "") + f"[{name}]")
        print(recipe.describe())


def _cmd_grid(args: argparse.Namespace) -> None:
    from .ascent import render_filters
    from .book import GRID_FILTERS
    from .image import check_writable, make_grid, save_array, save_image, show_channels
    from .outputs import array_files, beside_start, check_tiles
    from .plan import check_filters

    check_writable(args.output)
    recording = _recording(args, [args.output], per_row=args.per_row, margin=args.margin)
    ranges = parse_filters(args.filters) if args.filters is not None else None
    recipe = recipe_from_args(args)
    _check_start(args, [])
    check_inputs(args)
    _check_photo(args)
    model = _load(args)
    channels = model.layer_info(args.layer, args.size).channels
    if ranges is None:  # the book's first 64, or all of a smaller layer
        ranges = [range(min(GRID_FILTERS, channels))]
    for indices in ranges:
        check_filters(indices, channels, args.layer, model.name)
    filters = [index for indices in ranges for index in indices]
    # after the filters' check, which says what is wrong with a huge range
    check_tiles(args.output, len(filters), args.size, args.per_row, args.margin,
                "use a smaller --margin, --size or --per-row, or fewer --filters", beside_start=args.side_by_side)
    arrays = array_files([args.output], model.spec.channels, args.show_channels)
    render = render_filters(model, args.layer, filters, size=args.size, steps=args.steps, learning_rate=args.learning_rate,
                            seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
                            recipe=recipe, precision=args.precision, max_memory=args.max_memory, start=args.start,
                            **recording.options)
    picture = make_grid(show_channels(render.images, args.show_channels), per_row=args.per_row, margin=args.margin,
                        crossed=render.stuck)
    save_image(beside_start(render, picture, args.show_channels) if args.side_by_side else picture, args.output)
    for array in arrays:  # every channel, where the picture shows some
        save_array(render.pixels, array)
    recording.save()
    if not args.quiet:
        _say(f"wrote {args.output}{_arrays_note(arrays)}{recording.note} ({len(filters)} filters of {args.layer}"
             f"{_precision_note(render.precision)})")


def _check_executor_options(args: argparse.Namespace) -> None:
    """An atlas's executor options, as they go together (usage errors come before torch): --workers N
    means --executor processes, which renders on the CPUs; --address and --gpus-per-task go with ray."""
    if args.workers is not None:
        if args.executor not in (None, "processes"):
            raise FilterVizError(f"--workers goes with --executor processes, not --executor {args.executor}")
        args.executor = "processes"
    if args.executor == "processes":
        if args.device not in ("auto", "cpu"):
            raise FilterVizError(f"--executor processes renders on this machine's CPUs, not on {args.device}; "
                                 "leave out --device, or use --executor local")
        args.device = "cpu"
    from .atlas.executors import default_executor_name
    from .models.registry import resolve_device

    args.executor = args.executor or default_executor_name(resolve_device(args.device))
    if args.executor != "ray" and (args.address is not None or args.gpus_per_task):
        raise FilterVizError("--address and --gpus-per-task go with --executor ray")


def _executor(args: argparse.Namespace) -> object:
    """The executor the options name (``_check_executor_options`` first); Ray's extra is checked here,
    before the model is loaded."""
    from .atlas import LocalExecutor, ProcessExecutor, RayExecutor
    from .atlas.executors import cpu_count, default_workers

    executor = (RayExecutor(args.address, gpus_per_task=args.gpus_per_task) if args.executor == "ray"
                else ProcessExecutor(args.workers or default_workers(cpu_count())) if args.executor == "processes"
                else LocalExecutor())
    if args.executor == "ray":
        from .models.sources import require

        require("ray", "ray", "atlases with --executor ray")  # before the model is loaded
    return executor


def _cmd_atlas(args: argparse.Namespace) -> None:
    _check_executor_options(args)
    from .atlas import build_atlas
    from .atlas.build import check_atlas_folder
    from .image import check_folder_writable

    if args.top_k is not None and args.images is None:
        raise FilterVizError("--top-k says how many of the --images FOLDER to show per filter; add --images FOLDER, "
                             "or leave --top-k out")
    recipe = recipe_from_args(args)
    layers = parse_layer_list(args.layers)
    filters = parse_filters(args.filters) if args.filters is not None else None  # ranges, clipped per layer
    check_folder_writable(args.out, "an atlas")
    check_atlas_folder(Path(args.out))
    check_inputs(args)
    executor = _executor(args)
    model = _load(args)
    summary = build_atlas(model, args.out, layers=layers, filters=filters, recipe=recipe,
                          seed=0 if args.seed is None else args.seed, images=args.images,
                          top_k=8 if args.top_k is None else args.top_k,
                          executor=executor, chunk_size=args.chunk_size, precision=args.precision, threads=args.threads,
                          progress=not args.quiet, rebuild=args.rebuild, size=args.size, max_memory=args.max_memory)
    if not args.quiet:
        _say(str(summary))


def _cmd_activation_atlas(args: argparse.Namespace) -> None:
    _check_executor_options(args)
    from .atlas import build_activation_atlas
    from .atlas.activations import check_umap
    from .atlas.build import check_atlas_folder
    from .image import check_folder_writable

    recipe = recipe_from_args(args)
    check_folder_writable(args.out, "an activation atlas")
    check_atlas_folder(Path(args.out))
    check_inputs(args)
    check_umap()  # before the model is loaded
    executor = _executor(args)
    model = _load(args)
    summary = build_activation_atlas(
        model, args.out, args.layer, images=args.images, grid=args.grid, samples=args.samples,
        min_samples=args.min_samples, patches=args.patches, recipe=recipe, seed=0 if args.seed is None else args.seed,
        scan_size=args.scan_size, executor=executor, chunk_size=args.chunk_size, precision=args.precision,
        threads=args.threads, progress=not args.quiet, rebuild=args.rebuild, max_memory=args.max_memory,
        **({"size": args.size} if args.size is not None else {}))
    if not args.quiet:
        _say(str(summary))


def _cmd_demo(args: argparse.Namespace) -> None:
    from .book import run_demo
    from .image import check_folder_writable

    check_folder_writable(args.output, "figures")
    check_inputs(args)
    beside = None if args.beside == "none" else args.beside
    if beside is not None:
        get_recipe(beside)  # before any model is loaded
    model = _load(args) if args.model is not None else None
    figures = run_demo(args.output, model, weights=args.weights, seed=args.seed, device=args.device,
                       progress=not args.quiet, best=beside)
    if not args.quiet:
        _say(f"wrote {', '.join(str(f.path) for f in figures)} with {figures[0].render.model}")


def _cmd_models(args: argparse.Namespace) -> None:
    from .models.sources import describe_sources, known_models  # their declarations: no torch

    for name in known_models():
        print(name + ("  (embedded default, works offline)" if name == DEFAULT_MODEL else ""))
    print()
    print(describe_sources())


def _cmd_serve(args: argparse.Namespace) -> None:
    from .serve import Limits, run_server

    limits = Limits(max_size=args.max_size, max_steps=args.max_steps, max_batch=args.max_batch,
                    max_queue=args.max_queue)
    run_server(args.model or [DEFAULT_MODEL], host=args.host, port=args.port, atlas=args.atlas, cache=args.cache,
               device=args.device, precision=args.precision, limits=limits,
               say=(lambda text: None) if args.quiet else lambda text: print(text, file=sys.stderr))


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "models": _cmd_models, "layers": _cmd_layers, "render": _cmd_render, "recipes": _cmd_recipes,
    "grid": _cmd_grid, "atlas": _cmd_atlas, "activation-atlas": _cmd_activation_atlas, "demo": _cmd_demo,
    "serve": _cmd_serve,
}


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
            COMMANDS[args.command](args)
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
