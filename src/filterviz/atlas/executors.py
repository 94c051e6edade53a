"""Executors: where an atlas's render tasks run. ``LocalExecutor`` runs them here, one after another;
``RayExecutor`` spreads them over a Ray cluster. Either way a task is a chunk of filters of one layer,
rendered as one batch, and comes back as PNG bytes: only the caller writes files.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..ascent import render_filters
from ..errors import FilterVizError, FilterVizWarning, first_line
from ..device import deterministic
from ..image import png_bytes, show_channels
from ..models.loaded import LoadedModel
from ..recipes import Recipe


@dataclass(frozen=True)
class RenderTask:
    """Filters of one layer (its path) to render as one batch."""

    layer: str
    filters: tuple[int, ...]


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
    """Render one task's filters (keys are the filter indices, so each image depends on its seed and
    filter alone)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(settings.threads or threads)
        # The atlas counts and marks dead and stuck filters itself: no warning per filter.
        with deterministic(model.device), warnings.catch_warnings():
            warnings.simplefilter("ignore", FilterVizWarning)
            result = render_filters(model, task.layer, list(task.filters), seed=settings.seed, recipe=settings.recipe,
                                    precision=settings.precision, batch_size=len(task.filters))
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


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds, not after Ray's long retries, when a cluster address does not answer."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise FilterVizError(f"cannot read Ray address {address!r}; use HOST:PORT, ray://HOST:10001 or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise FilterVizError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start one there "
                             "with `ray start --head`, or leave out --address to run Ray on this machine") from None


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
            _check_reachable(self.address)
            # Setting RAY_BACKEND_LOG_LEVEL would itself print a line ("Set ray log level from
            # environment variable"); Ray's C++ parts log to files, its Python logger only errors.
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
            local = self.address == "local" or (self.address is None and not os.environ.get("RAY_ADDRESS"))
            if local:
                options["_node_ip_address"] = LOOPBACK
            options.update(self.init_options)
            try:
                with _single_machine(ray) if local else contextlib.nullcontext():
                    ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise FilterVizError(f"cannot reach the Ray cluster at {self.address}: {first_line(exc)}; "
                                     "start one with `ray start --head`") from None
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
                        raise FilterVizError(
                            f"rendering filters {task.filters[0]}-{task.filters[-1]} of {task.layer} failed on Ray: "
                            f"{_last_line(exc)}") from None
                    yield result
        finally:
            for reference in pending:  # left over when the caller stopped early
                ray.cancel(reference, force=True)
