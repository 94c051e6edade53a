"""Executors: where an atlas's render tasks run. ``LocalExecutor`` runs them here, one after another;
``ProcessExecutor`` in worker processes of this machine, several at once; ``RayExecutor`` spreads them
over a Ray cluster. Either way a task is a chunk of filters of one layer (or, for an activation atlas,
a chunk of directions in its channel space), rendered as one batch, and comes back as PNG bytes: only
the caller writes files.

Which executor an atlas uses when none is named (``filterviz atlas`` without ``--executor`` or
``--workers``, ``build_atlas`` without ``executor=``) is decided here, in one place:
``DEFAULT_EXECUTOR`` and ``default_workers`` (measured with ``benchmarks/atlas_cores.py``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..ascent import render, render_filters
from ..errors import FilterVizError, FilterVizWarning, first_line
from ..device import deterministic
from ..image import png_bytes, show_channels
from ..memory import memory_budget
from ..models.loaded import LoadedModel
from ..objectives import Objective, channel, direction
from ..recipes import Recipe


@dataclass(frozen=True)
class RenderTask:
    """Filters of one layer (its path) to render as one batch; or, with ``directions`` (one vector in
    the layer's channel space per key of ``filters``), those directions, each the objective of the
    image keyed by its number in ``filters`` (an activation atlas's cells)."""

    layer: str
    filters: tuple[int, ...]
    directions: tuple[tuple[float, ...], ...] = ()

    def objectives(self) -> list[Objective]:
        """What each image of the task maximizes: a channel of the layer, or a direction in it."""
        if self.directions:
            return [direction(self.layer, vector) for vector in self.directions]
        return [channel(self.layer, k) for k in self.filters]


@dataclass(frozen=True)
class RenderSettings:
    """What every task renders with. The batch of a task is always the task's filters, and it runs on
    ``threads`` CPU threads wherever it runs (on a CPU, the thread count changes how sums are split,
    and so the last bits of deep layers' results), so a result never depends on where it ran."""

    recipe: Recipe
    seed: int
    precision: str = "fp32"
    threads: int | None = None  # None: as many as the process has


@dataclass(frozen=True)
class TaskResult:
    task: RenderTask
    pngs: tuple[bytes, ...]
    start_scores: tuple[float, ...]
    scores: tuple[float, ...]
    dead: tuple[bool, ...]
    stuck: tuple[bool, ...] = ()


def run_task(model: LoadedModel, task: RenderTask, settings: RenderSettings) -> TaskResult:
    """Render one task's filters or directions (keys are the filter indices, or the directions' keys,
    so each image depends on its seed and key alone)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(settings.threads or threads)
        # The atlas counts and marks dead and stuck filters itself: no warning per filter.
        with deterministic(model.device), warnings.catch_warnings():
            warnings.simplefilter("ignore", FilterVizWarning)
            if task.directions:
                result = render(model, task.objectives(), settings.recipe, seed=settings.seed,
                                keys=list(task.filters), precision=settings.precision, batch_size=len(task.filters))
            else:
                result = render_filters(model, task.layer, list(task.filters), seed=settings.seed,
                                        recipe=settings.recipe, precision=settings.precision,
                                        batch_size=len(task.filters))
    finally:
        torch.set_num_threads(threads)
    # Pictures as filterviz shows them: gray for one channel, the first three of more (see show_channels).
    return TaskResult(task, tuple(png_bytes(image) for image in show_channels(result.images)),
                      tuple(float(s) for s in result.start_score), tuple(float(s) for s in result.score),
                      tuple(bool(d) for d in result.dead), tuple(bool(s) for s in result.stuck))


class Executor(Protocol):
    """Runs render tasks and yields their results as they finish (in any order). ``open()`` is called
    before any file is written (check the cluster there), ``close()`` at the end, whatever happened;
    ``retried`` says which tasks had to run again (their worker or node died), for the atlas's summary."""

    retried: list[RenderTask]

    def open(self) -> None:
        ...

    def close(self) -> None:
        ...

    def run(self, model: LoadedModel, tasks: Sequence[RenderTask], settings: RenderSettings) -> Iterator[TaskResult]:
        ...


class LocalExecutor:
    """Runs the tasks in this process, in order."""

    def __init__(self) -> None:
        self.retried: list[RenderTask] = []  # a task that fails here fails the atlas: never run again

    def open(self) -> None:
        """Nothing to start: tasks run in this process."""

    def close(self) -> None:
        """Nothing to stop."""

    def run(self, model: LoadedModel, tasks: Sequence[RenderTask], settings: RenderSettings) -> Iterator[TaskResult]:
        for task in tasks:
            yield run_task(model, task, settings)


# What an atlas on a CPU runs on when none is named: "local" (LocalExecutor, in this process) or
# "processes" (ProcessExecutor of default_workers(cpu_count()) processes); a model on a GPU renders
# here. The one place to change the default (the --executor help in arguments.py says it too);
# measure with benchmarks/atlas_cores.py.
DEFAULT_EXECUTOR = "local"


def default_workers(cpu_count: int) -> int:
    """Worker processes of a ``ProcessExecutor`` when their number is not given (``--executor processes``
    without ``--workers``, or the default executor when ``DEFAULT_EXECUTOR`` is "processes"), on a
    machine of ``cpu_count`` CPUs; each renders on ``cpu_count // workers`` threads by default. (The
    ``--workers`` help in arguments.py says it.)"""
    return max(1, cpu_count // 2)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, else the machine's): what the workers share."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_executor_name(device: torch.device) -> str:
    """The executor of an atlas that names none, for a model on ``device``: ``DEFAULT_EXECUTOR`` on a
    CPU; on a GPU, "local" (worker processes render on CPUs)."""
    return DEFAULT_EXECUTOR if device.type == "cpu" else "local"


def default_executor(device: torch.device) -> Executor:
    """The executor of an atlas that names none, for a model on ``device`` (see ``DEFAULT_EXECUTOR``)."""
    if default_executor_name(device) == "processes":
        return ProcessExecutor(default_workers(cpu_count()))
    return LocalExecutor()


# A worker process of a ProcessExecutor: its model (or why it could not load it), loaded once.
_process_model: LoadedModel | BaseException | None = None


def _start_process(shipped: bytes, parent: int) -> None:
    """A worker process's start (the pool's initializer): leave Ctrl-C to the caller, which stops the
    workers itself; end when the caller is gone (even killed with SIGKILL, which leaves no chance to
    stop us); load the model it was sent, once. A model that fails to load fails each task, in one line."""
    global _process_model
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU workers: a model loaded by name stays off the GPU

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="filterviz-parent-watch", daemon=True).start()
    try:
        model, origin, max_memory = pickle.loads(shipped)
        if model is None:
            model = origin()
        model.module.to("cpu")
        model.max_memory = max_memory
        _process_model = model
    except Exception as exc:  # noqa: BLE001 - said by each task, in one line
        _process_model = FilterVizError(f"a worker process could not load the model: {first_line(exc)}")


def _run_in_process(task: RenderTask, settings: RenderSettings) -> TaskResult:
    """What a worker process runs for a task: its model renders it (``run_task``)."""
    if not isinstance(_process_model, LoadedModel):
        raise _process_model or FilterVizError("a worker process has no model")
    return run_task(_process_model, task, settings)


class ProcessExecutor:
    """Runs tasks in ``workers`` processes of this machine, several at once: for a multi-core CPU, where
    processes of a few threads each keep more cores busy than one process of many threads. Each task
    renders on the settings' threads (``build_atlas``'s default for this executor: ``default_threads``,
    the CPUs over the workers, at least 1), so the bytes are those of ``LocalExecutor`` with the same
    threads. Processes start with "spawn" (forking a process that runs torch threads is unsafe), so a
    script that builds an atlas with it does so under ``if __name__ == "__main__":``.

    The model is pickled once and loaded once by each worker (one that cannot be pickled, TorchScript,
    is loaded by each worker from its name or file); it must be on the CPU. The workers share the
    model's memory budget (each renders within ``1/workers`` of it, checked before any starts). Results
    come back as they finish, in any order. A worker that dies (killed, out of memory) fails the atlas
    with one line, nothing is run again; the filters finished so far are kept, and running again goes
    on from there. ``close()`` stops the workers, at once when tasks are left (Ctrl-C, an error); they
    end by themselves too when this process dies.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.retried: list[RenderTask] = []  # a dead worker fails the atlas: nothing runs again
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._futures: list[concurrent.futures.Future[TaskResult]] = []

    @property
    def default_threads(self) -> int:
        """Threads per task when ``build_atlas`` is given none: this machine's CPUs over the workers."""
        return max(1, cpu_count() // max(self.workers, 1))

    def open(self) -> None:
        """Check what can be checked before the model is at hand: the worker count and the start method."""
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise FilterVizError(f"a ProcessExecutor needs 1 or more workers, not {self.workers!r}")
        if "spawn" not in multiprocessing.get_all_start_methods():
            raise FilterVizError("this Python cannot start worker processes (no 'spawn' start method); "
                                 "use the local executor")
        executable = _spawn_executable()
        if not executable or not os.path.exists(executable):
            raise FilterVizError(f"cannot start worker processes: no Python interpreter at {executable!r}; "
                                 "use the local executor")

    def _ship(self, model: LoadedModel, share: int) -> bytes:
        """The model as the workers load it, pickled once: itself, else how to load it again."""
        try:
            return pickle.dumps((model, None, share), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            if model.origin is None:
                raise FilterVizError(f"model {model.name} cannot be sent to worker processes ({first_line(exc)}); "
                                     "load it from a name or a file so that workers can load it too, or use "
                                     "the local executor") from None
            try:
                return pickle.dumps((None, model.origin, share), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as again:  # noqa: BLE001
                raise FilterVizError(f"model {model.name} cannot be sent to worker processes "
                                     f"({first_line(again)}); use the local executor") from None

    def _check_share(self, model: LoadedModel, tasks: Sequence[RenderTask], settings: RenderSettings,
                     share: int) -> None:
        """Each layer's largest task fits a worker's share of the memory budget; else one line, now."""
        from ..plan import check_render

        largest: dict[str, RenderTask] = {}
        for task in tasks:
            if task.layer not in largest or len(task.filters) > len(largest[task.layer].filters):
                largest[task.layer] = task
        for layer, task in largest.items():
            count = len(task.filters)
            try:
                check_render(model, task.objectives()[:1] * count, settings.recipe,
                             batch_size=count, precision=settings.precision, max_memory=share,
                             batch_option="--chunk-size")
            except FilterVizError as exc:
                raise type(exc)(f"each of {self.workers} worker processes renders within 1/{self.workers} of the "
                                f"memory budget: {exc} (or use fewer --workers)") from None

    def _check_pickles(self, settings: RenderSettings) -> None:
        try:
            pickle.dumps(settings)
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            raise FilterVizError(f"the recipe cannot be sent to worker processes ({first_line(exc)}); give its "
                                 "parts by name or as importable classes, or use the local executor") from None

    def run(self, model: LoadedModel, tasks: Sequence[RenderTask], settings: RenderSettings) -> Iterator[TaskResult]:
        self.open()
        if model.device.type != "cpu":
            raise FilterVizError(f"worker processes render on this machine's CPUs, and model {model.name} is on "
                                 f"{model.device}; use the local executor for a GPU")
        if not tasks:
            return
        self._check_pickles(settings)
        share = memory_budget(model.device, model.max_memory) // self.workers
        self._check_share(model, tasks, settings, share)
        shipped = self._ship(model, share)
        self.close()  # a pool left from an earlier run
        self._pool = concurrent.futures.ProcessPoolExecutor(
            min(self.workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_process, initargs=(shipped, os.getpid()))
        finished = 0
        try:
            futures = [self._pool.submit(_run_in_process, task, settings) for task in tasks]
            self._futures = futures
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                finished += 1
                yield result
        except concurrent.futures.process.BrokenProcessPool as exc:
            # Its cause, where one was found (a result that could not be read back): its last line.
            said = [line.strip() for line in str(exc.__cause__ or "").splitlines() if line.strip().strip('"')]
            cause = f" ({said[-1][:160]})" if said else ""
            raise FilterVizError(
                f"a worker process died{cause} after {finished} of {len(tasks)} tasks (killed, or out of memory? "
                "fewer --workers or a smaller --chunk-size use less); what was finished is kept: run again to "
                "go on") from None
        finally:
            for future in self._futures:
                future.cancel()  # left over when the caller stopped early; close() stops the running ones

    def close(self) -> None:
        """Stop the workers: at once when tasks were left unfinished (the caller stopped early: Ctrl-C,
        an error), else once they are idle. No worker outlives this."""
        pool, self._pool = self._pool, None
        futures, self._futures = self._futures, []
        if pool is None:
            return
        if any(not future.done() for future in futures):
            processes = list((getattr(pool, "_processes", None) or {}).values())
            for process in processes:
                if process.is_alive():
                    process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _spawn_executable() -> str:
    """The interpreter that "spawn" starts worker processes with."""
    from multiprocessing import spawn

    return spawn.get_executable()


# A Ray worker keeps the models it was sent, by object id, for the tasks that follow.
_worker_models: dict[str, LoadedModel] = {}
# What a Ray worker runs for a task: (boxed model reference, task, settings) -> its result.
WorkerTask = Callable[[list[Any], RenderTask, RenderSettings], TaskResult]


def run_worker_task(boxed_model: list[Any], task: RenderTask, settings: RenderSettings) -> TaskResult:
    """What a Ray worker runs for a task (``RayExecutor``'s default ``worker_task``): the model, from
    the reference in ``boxed_model`` (fetched once per worker, then kept), renders the task."""
    import ray

    from ..models.registry import resolve_device

    reference = boxed_model[0]  # boxed, so that Ray hands over the reference, not a fresh copy per task
    key = reference.hex()
    if key not in _worker_models:
        shipped = ray.get(reference)
        model = shipped if isinstance(shipped, LoadedModel) else shipped()
        model.module.to(resolve_device("auto"))
        _worker_models.clear()
        _worker_models[key] = model
    return run_task(_worker_models[key], task, settings)


def _check_reachable(address: str | None, timeout: float = 5.0, given_as: str = "--address") -> None:
    """Fail in seconds, not after Ray's long retries, when a cluster address does not answer;
    ``given_as`` says where the address came from."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise FilterVizError(f"cannot read Ray address {address!r}; use HOST:PORT, ray://HOST:10001 or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise FilterVizError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start one there "
                             f"with `ray start --head`, or leave out {given_as} to run Ray on this machine") from None


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _single_machine(ray: Any) -> Iterator[None]:
    """While Ray starts here: a single-machine Ray, whose node address stays 127.0.0.1.

    Ray turns a node address of 127.0.0.1 into the machine's network address unless it was built for
    a single machine (its RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 setting, read once when Ray is imported);
    with that address, its GCS, raylet and workers listen on every interface, unauthenticated.
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if before is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before is not None:
            constants.ENABLE_RAY_CLUSTER = before


def _last_line(exc: BaseException) -> str:
    """A Ray error's last line: the original exception, not Ray's header."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


class RayExecutor:
    """Runs tasks on a Ray cluster: ``address`` of a running cluster (``"auto"``, ``"ray://host:10001"``),
    or None to start Ray on this machine, listening on 127.0.0.1 only (Ray has no authentication), with
    no dashboard and no log lines of its own on the terminal (its errors still reach us). A task whose
    worker dies is run again, up to ``max_retries`` times. Each task reserves ``cpus_per_task`` CPUs
    (default: the threads it renders with, at most a node's CPUs). The model travels by Ray's object
    store; one that cannot be pickled (TorchScript) is loaded by each worker from its name or file
    instead, which must then be reachable from every node. ``worker_task(boxed model reference, task,
    settings) -> TaskResult`` is what a worker runs for each task (default ``run_worker_task``; a
    replacement, such as one that wraps it, must be a function Ray can send to the workers).
    """

    def __init__(self, address: str | None = None, *, max_retries: int = 3, cpus_per_task: float | None = None,
                 gpus_per_task: float = 0, init_options: dict[str, Any] | None = None,
                 worker_task: WorkerTask = run_worker_task) -> None:
        self.address = address
        self.worker_task = worker_task
        self.max_retries = max_retries
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.init_options = init_options or {}
        self._started = False
        self._nodes: list[dict[str, float]] = []
        self.retried: list[RenderTask] = []

    def _ship(self, ray: Any, model: LoadedModel) -> Any:
        try:
            return ray.put(model)
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            if model.origin is None:
                raise FilterVizError(f"model {model.name} cannot be sent to Ray workers ({first_line(exc)}); "
                                     "load it from a name or a file so that workers can load it too") from None
            return ray.put(model.origin)

    def open(self) -> None:
        """Connect to the cluster (or start Ray here) and check that it can run the tasks; called by
        ``build_atlas`` before it writes anything, so that a bad address leaves no folder behind."""
        from ..models.sources import require

        ray = require("ray", "ray", "atlases with --executor ray")
        if not ray.is_initialized():
            # RAY_ADDRESS stands for a missing address, so it is checked too.
            target = self.address or os.environ.get("RAY_ADDRESS") or None
            _check_reachable(target, given_as="--address" if self.address else "RAY_ADDRESS")
            # Setting RAY_BACKEND_LOG_LEVEL would itself print a line ("Set ray log level from
            # environment variable"); Ray's C++ parts log to files, its Python logger only errors.
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
            local = self.address == "local" or (self.address is None and not os.environ.get("RAY_ADDRESS"))
            if local:
                options["_node_ip_address"] = LOOPBACK
            options.update(self.init_options)
            # "local" always starts a new Ray here. Given None, Ray would instead join whatever cluster its
            # /tmp/ray/ray_current_cluster names: one started by `ray start` (maybe listening on the
            # network), or one long dead whose file a killed process left behind.
            address = "local" if local else self.address
            try:
                with _single_machine(ray) if local else contextlib.nullcontext():
                    ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                ray.shutdown()  # what a failed start left running would be joined by the next start
                if local:
                    raise FilterVizError(f"cannot start Ray on this machine: {first_line(exc)}; start one with "
                                         "`ray start --head` and give its --address") from None
                raise FilterVizError(f"cannot reach the Ray cluster at {target}: "
                                     f"{first_line(exc)}; start one with `ray start --head`") from None
            self._started = True
            node = ray.util.get_node_ip_address()
            if local and options["_node_ip_address"] == LOOPBACK and node != LOOPBACK:
                self.close()  # it would listen on the network: never, without the user asking
                raise FilterVizError(f"Ray started on {node}, where other machines could reach it, not on {LOOPBACK}; "
                                     "with this Ray version, start Ray yourself and give its --address")
        self._nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        if self.gpus_per_task > max([node.get("GPU", 0) for node in self._nodes] + [0]):
            self.close()
            raise FilterVizError(f"no node of the Ray cluster has {self.gpus_per_task:g} GPUs for a task; "
                                 "lower --gpus-per-task or add GPU nodes")

    def close(self) -> None:
        """Shut Ray down if ``open`` started it."""
        if getattr(self, "_started", False):
            import ray

            ray.shutdown()
            self._started = False

    def run(self, model: LoadedModel, tasks: Sequence[RenderTask], settings: RenderSettings) -> Iterator[TaskResult]:
        import ray

        if not ray.is_initialized() or not self._nodes:
            self.open()  # the caller should ``close()`` when done
        pending: dict[Any, RenderTask] = {}
        try:
            cpus = self.cpus_per_task if self.cpus_per_task is not None else settings.threads or 1
            # A task that asks for more CPUs than any node has would wait forever: ask at most for that.
            cpus = min(cpus, max([node.get("CPU", 0) for node in self._nodes] + [1]))
            # Tasks are run again here rather than by Ray's own retries, so that the atlas can say which.
            remote = ray.remote(max_retries=0, num_cpus=cpus, num_gpus=self.gpus_per_task)(self.worker_task)
            boxed = [self._ship(ray, model)]
            pending = {remote.remote(boxed, task, settings): task for task in tasks}
            attempts = {task: 1 for task in tasks}
            self.retried = []
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for reference in done:
                    task = pending.pop(reference)
                    try:
                        result = ray.get(reference)
                    except ray.exceptions.RayError as exc:
                        lost = not isinstance(exc, ray.exceptions.RayTaskError)  # a worker or node died
                        if lost and attempts[task] <= self.max_retries:
                            attempts[task] += 1
                            self.retried.append(task)
                            pending[remote.remote(boxed, task, settings)] = task
                            continue
                        what = "cells" if task.directions else "filters"
                        raise FilterVizError(
                            f"rendering {what} {task.filters[0]}-{task.filters[-1]} of {task.layer} failed on Ray: "
                            f"{_last_line(exc)}") from None
                    yield result
        finally:
            for reference in pending:  # left over when the caller stopped early
                ray.cancel(reference, force=True)
