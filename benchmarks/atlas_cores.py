"""Atlas cores benchmark: one process of all threads against N processes of cores/N threads each.

Builds the same atlas once per configuration WORKERSxTHREADS, each in a fresh folder, and times the
whole build (for processes: their start and the model's shipping too). ``1xT`` is the local executor
(today's default: this process, T threads); ``WxT`` with W > 1 is ``--executor processes --workers W
--threads T``. Default atlas: the embedded EfficientNet-Lite0 (no download), the classic recipe at
150 px, the first 32 filters of 8 layers from the stem to the head (256 filters, 16 tasks of 16
filters, the atlas's default chunk). Default configurations: from ``os.cpu_count()`` (on 16 CPUs,
1x16,2x8,4x4,8x2,16x1). Writes OUT.md and OUT.json: workers, threads, seconds, filters/s, speedup
against the first configuration, with the CPU's name and count. Not part of the tests:

    python benchmarks/atlas_cores.py                      # about 2-3 minutes on 16 cores
    python benchmarks/atlas_cores.py --configs 1x2,2x1 --filters 8 --out benchmarks/results/atlas_cores_2core

Thread counts change the last bits of deep layers' pictures, so only configurations of the same
threads give the same bytes (tests/test_atlas_processes.py checks processes against local). Which
executor an atlas uses by default is set in src/filterviz/atlas/executors.py (``DEFAULT_EXECUTOR``,
``default_workers``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import filterviz
from filterviz.atlas import LocalExecutor, ProcessExecutor, build_atlas
from filterviz.atlas.executors import DEFAULT_EXECUTOR, cpu_count, default_workers
from filterviz.device import resolve_precision
from filterviz.memory import free_memory, readable

LAYERS = "stem.act,blocks.3,blocks.5,blocks.8,blocks.10,blocks.12,blocks.15,head.act"


def default_configs(cpus: int) -> list[tuple[int, int]]:
    """One process of all CPUs' threads, then 2, 4, 8... processes sharing them, and one per CPU."""
    workers = [w for w in (2 ** k for k in range(cpus.bit_length())) if cpus % w == 0 and w < cpus] + [cpus]
    return [(w, cpus // w) for w in workers]


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for part in text.split(","):
        workers, _, threads = part.strip().lower().partition("x")
        if not (workers.isdigit() and threads.isdigit() and int(workers) > 0 and int(threads) > 0):
            raise SystemExit(f"--configs: {part!r} is not WORKERSxTHREADS, e.g. 4x4")
        configs.append((int(workers), int(threads)))
    return configs


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> float | None:
    """The machine's load average over the last minute (None where it is not known)."""
    try:
        return round(os.getloadavg()[0], 1)
    except (AttributeError, OSError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-lite0", help="model name or file (default: the embedded one)")
    parser.add_argument("--layers", default=LAYERS, help=f"comma-separated layers (default {LAYERS})")
    parser.add_argument("--filters", type=int, default=32, help="the first N filters of each layer (default 32)")
    parser.add_argument("--size", type=int, default=150, help="image side in pixels (default 150)")
    parser.add_argument("--chunk-size", type=int, default=16, help="filters per task (default 16, the atlas's)")
    parser.add_argument("--precision", default="auto", help="fp32, bf16... (default auto: the atlas's default)")
    parser.add_argument("--configs", help="WORKERSxTHREADS,... (default from os.cpu_count(), e.g. "
                                          "1x16,2x8,4x4,8x2,16x1 on 16 CPUs); 1xT runs with the local executor")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/atlas_cores"),
                        help="writes OUT.md and OUT.json (default benchmarks/results/atlas_cores)")
    args = parser.parse_args()
    cpus = cpu_count()  # the CPUs this process may use (taskset, containers), not the machine's
    configs = parse_configs(args.configs) if args.configs else default_configs(cpus)
    layers = [name.strip() for name in args.layers.split(",")]
    model = filterviz.load_model(args.model, device="cpu")
    # The atlas alone on this machine: its workers share 60% of the free memory (the default budget,
    # a quarter of it, is for a process that shares the machine).
    budget = int(free_memory(torch.device("cpu")) * 0.6)
    # The precision auto chooses on this CPU (bf16 where it has AMX), the same for every configuration.
    precision = resolve_precision(args.precision, model.device)
    options = dict(layers=layers, filters=range(args.filters), recipe="classic", size=args.size, seed=0,
                   chunk_size=args.chunk_size, max_memory=budget, precision=precision)
    rows = []
    load_before = _load()
    with tempfile.TemporaryDirectory() as temp:
        for number, (workers, threads) in enumerate(configs):
            executor = LocalExecutor() if workers == 1 else ProcessExecutor(workers)
            started = time.perf_counter()
            summary = build_atlas(model, Path(temp) / f"{number}-{workers}x{threads}", executor=executor,
                                  threads=threads, **options)
            seconds = time.perf_counter() - started
            rows.append({"workers": workers, "threads": threads,
                         "executor": "local" if workers == 1 else "processes", "seconds": round(seconds, 2),
                         "filters": summary.rendered, "filters_per_s": round(summary.rendered / seconds, 3)})
            print(f"{workers:3d} x {threads:<3d} {rows[-1]['executor']:9s} {seconds:7.1f} s  "
                  f"{rows[-1]['filters_per_s']:6.2f} filters/s", flush=True)
    for row in rows:
        row["speedup"] = round(rows[0]["seconds"] / row["seconds"], 2)
    best = max(rows, key=lambda row: row["filters_per_s"])
    result = {"cpu": cpu_name(), "cpus": cpus, "cpus_usable": cpu_count(), "torch": torch.__version__,
              "torch_default_threads": torch.get_num_threads(), "python": platform.python_version(),
              "model": model.name, "layers": layers, "filters_per_layer": args.filters, "size": args.size,
              "recipe": "classic", "precision": precision, "chunk_size": args.chunk_size, "filters": rows[0]["filters"],
              "memory_budget": readable(budget), "default_executor": DEFAULT_EXECUTOR,
              "default_workers": default_workers(cpu_count()), "fastest": f"{best['workers']}x{best['threads']}",
              "load_average_before": load_before, "load_average_after": _load(), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Atlas of {model.name}: {result['filters']} filters ({len(layers)} layers x {args.filters}, classic "
             f"recipe, {args.size} px, {precision}, tasks of {args.chunk_size}), on {result['cpu']}, {cpus} CPUs "
             f"({result['cpus_usable']} usable; torch {torch.__version__}, {torch.get_num_threads()} threads by "
             "default). Each build in a fresh folder, timed whole (the processes' start included). Load "
             f"average (1 min) {load_before} before, {result['load_average_after']} after: other work on the "
             "machine slows many threads of one process most.", "",
             "| workers | threads | executor | seconds | filters/s | speedup |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['threads']} | {r['executor']} | {r['seconds']:.1f} | {r['filters_per_s']:.2f} "
              f"| {r['speedup']:.2f} |" for r in rows]
    lines += ["", f"Fastest: {result['fastest']}. Default executor today: {DEFAULT_EXECUTOR} "
                  "(src/filterviz/atlas/executors.py: DEFAULT_EXECUTOR, default_workers)."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
