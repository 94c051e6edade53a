"""The server's one queue of render jobs, on its one device, for every open page and API client.

One worker thread takes the oldest waiting job and, with it, every waiting job that can share its
render (same model, recipe, size, steps and seed; up to ``Limits.max_batch``): they run as one
``render()`` call with one objective each. A job's picture depends only on its seed and its key, never
on its batch-mates (``render``'s design), so batching changes nothing but speed. While it runs, each
job keeps its latest picture and its objective's curve (``render``'s callback, every few steps).

A finished picture is stored in the disk cache (``cache``) under its render fingerprint (the atlas's
rule, ``fingerprints.render_fingerprint``); a job whose fingerprint is there is done at once.

A job fails alone: when a batch fails, each of its jobs is run again by itself, so only the one at
fault fails, with its error's one line; the worker goes on with the next jobs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..ascent import render
from ..device import deterministic
from ..errors import FilterVizError, FilterVizWarning, RenderCancelled
from ..fastpath import single_channels
from ..fingerprints import render_fingerprint
from ..image import png_bytes, show_channels
from ..objectives import Objective
from ..recipes import render_size
from .cache import ResultCache
from .models import ModelStore, describe_error
from .requests import Limits, RenderRequest, json_number

log = logging.getLogger("filterviz.serve")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
PREVIEWS = 25  # pictures a render shows while it runs (one every steps/25 steps)
KEEP_FINISHED = 1000  # finished jobs kept for their pages and PNGs; older ones are forgotten


class QueueFull(Exception):
    """More jobs are waiting than the server takes (``Limits.max_queue``)."""


def job_key(objective: Objective) -> int:
    """The key of a job's start image and random transforms (with its seed): the filter index for one
    channel (``channel:LAYER:K``), as ``filterviz render MODEL LAYER K`` and the atlas use, else 0, as
    ``filterviz render --objective`` uses for its first objective."""
    selection = single_channels([objective])
    return selection[1][0] if selection else 0


def objective_identity(objective: Objective) -> list[tuple[float, str]]:
    """What the objective computes, for fingerprints: each term (its full repr) with its exact weight."""
    return sorted((repr(term), weight) for weight, term in objective.terms)  # type: ignore[misc]


class Job:
    """One requested picture: its state, progress, curve and, when done, its PNG. Changed by the worker,
    read by the pages; ``version`` grows with every change (what the live updates follow)."""

    def __init__(self, request: RenderRequest, objective: Objective) -> None:
        self.id = uuid.uuid4().hex
        self.request, self.objective = request, objective
        self.key = job_key(objective)
        self.state = QUEUED
        self.step = 0
        self.curve: list[tuple[int, float | None]] = []
        self.start_score: float | None = None
        self.score: float | None = None
        self.error: str | None = None
        self.notes: list[str] = []
        self.cached = False
        self.fingerprint: str | None = None
        self.png: bytes | None = None
        self.precision: str | None = None
        self.created = time.time()
        self.version = 0
        self._preview: np.ndarray | None = None
        self._preview_png: tuple[int, bytes] | None = None
        self._lock = threading.Lock()

    @property
    def steps(self) -> int:
        return self.request.recipe.steps

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def _changed(self) -> None:
        self.version += 1

    def progress(self, step: int, picture: np.ndarray, score: float) -> None:
        """A step's picture (H, W, C uint8) and score, from the render's callback."""
        with self._lock:
            if self.finished:
                return
            self.state, self.step = RUNNING, step
            self._preview = picture
            self.curve.append((step, json_number(score)))
            self._changed()

    def start(self) -> None:
        """The job's render begins (again, after its batch failed: from step 0)."""
        with self._lock:
            if not self.finished:
                self.state, self.step, self.curve, self._preview = RUNNING, 0, [], None
                self._changed()

    def finish(self, png: bytes, record: dict[str, Any], cached: bool) -> None:
        with self._lock:
            if self.finished:
                return
            self.state, self.png, self.cached = DONE, png, cached
            self.step = self.steps
            self.start_score, self.score = record.get("start_score"), record.get("score")
            self.curve = [tuple(point) for point in record.get("curve", self.curve)]  # type: ignore[misc]
            self.notes = list(record.get("notes", []))
            self.precision = record.get("precision")
            self._preview = None
            self._changed()

    def fail(self, message: str) -> None:
        with self._lock:
            if self.finished:
                return
            self.state, self.error = FAILED, message
            self._changed()

    def cancel(self) -> bool:
        """Mark the job cancelled (its render stops when no job in its batch still wants it); False if it
        had finished already."""
        with self._lock:
            if self.finished:
                return False
            self.state = CANCELLED
            self._preview = None
            self._changed()
            return True

    def preview_png(self) -> bytes | None:
        """The latest picture as PNG (the final one once done), encoded once per change."""
        with self._lock:
            if self.png is not None:
                return self.png
            if self._preview is None:
                return None
            if self._preview_png is None or self._preview_png[0] != self.version:
                self._preview_png = (self.version, png_bytes(show_channels(self._preview[None])[0]))
            return self._preview_png[1]

    def snapshot(self) -> dict[str, Any]:
        """The job as the API shows it (JSON-able)."""
        with self._lock:
            base = f"/api/jobs/{self.id}"
            recipe = self.request.recipe
            return {
                "id": self.id, "state": self.state, "version": self.version, "model": self.request.model,
                "objective": self.request.objective, "recipe": recipe.name, "size": recipe.size,
                "steps": recipe.steps, "seed": self.request.seed, "key": self.key, "step": self.step,
                "progress": self.step / recipe.steps if recipe.steps else 1.0,
                "curve": [list(point) for point in self.curve], "start_score": self.start_score,
                "score": self.score, "cached": self.cached, "error": self.error, "notes": list(self.notes),
                "precision": self.precision,
                "preview_url": (f"{base}/preview.png?v={self.version}"
                                if self._preview is not None or self.png is not None else None),
                "image_url": f"{base}/image.png" if self.png is not None else None,
                "url": base,
            }


class JobQueue:
    """The queue and its worker thread (``start``/``stop``); ``submit``, ``get`` and ``cancel`` are safe
    from any thread."""

    def __init__(self, models: ModelStore, cache: ResultCache, limits: Limits = Limits(),
                 precision: str = "auto") -> None:
        self.models, self.cache, self.limits, self.precision = models, cache, limits, precision
        self._jobs: dict[str, Job] = {}
        self._waiting: list[Job] = []
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches: list[int] = []  # the size of each render run, for tests and logs

    # -- any thread ----------------------------------------------------------------------------------
    def submit(self, request: RenderRequest, objective: Objective) -> Job:
        """Queue a job (or answer it from the cache at once, when its model's fingerprint is known)."""
        job = Job(request, objective)
        with self._condition:
            if len(self._waiting) >= self.limits.max_queue:
                raise QueueFull(f"{len(self._waiting)} jobs are waiting, this server's limit; try again when some "
                                "have finished")
            self._remember(job)
        model_fingerprint = self.models.known_fingerprint(request.model)
        if model_fingerprint is not None and self._from_cache(job, model_fingerprint):
            return job
        with self._condition:
            self._waiting.append(job)
            self._condition.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._condition:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        with self._condition:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job in self._waiting:
                self._waiting.remove(job)
        job.cancel()
        return job

    def waiting(self) -> int:
        with self._condition:
            return len(self._waiting)

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        if len(self._jobs) > KEEP_FINISHED + self.limits.max_queue:
            old = [j for j in self._jobs.values() if j.finished][: len(self._jobs) - KEEP_FINISHED]
            for item in old:
                del self._jobs[item.id]

    # -- the worker ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="filterviz-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; a render in progress stops at its next preview."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        with self._condition:
            while not self._waiting and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            first = self._waiting[0]
            batch = [first]
            if not first.objective.batchwise:  # a diversity term reads its batch-mates: it runs alone
                batch += [job for job in self._waiting[1:] if job.request.batch_key == first.request.batch_key
                          and not job.objective.batchwise][: self.limits.max_batch - 1]
            for job in batch:
                self._waiting.remove(job)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - the worker outlives any job
                log.exception("render batch failed")
                for job in batch:
                    job.fail(describe_error(exc))

    def _fingerprint(self, job: Job, model_fingerprint: str) -> str:
        model = self.models.load(job.request.model)
        return render_fingerprint(model_fingerprint, job.request.recipe, job.request.seed, self.precision,
                                  torch.get_num_threads(), model.device, "serve", objective_identity(job.objective),
                                  job.key, model_dtype=model.dtype)

    def _from_cache(self, job: Job, model_fingerprint: str) -> bool:
        job.fingerprint = self._fingerprint(job, model_fingerprint)
        hit = self.cache.get(job.fingerprint)
        if hit is None:
            return False
        job.finish(hit.png, hit.record, cached=True)
        return True

    def _run(self, batch: list[Job]) -> None:
        live = [job for job in batch if not job.finished]
        if not live:
            return
        try:
            model_fingerprint = self.models.fingerprint(live[0].request.model)  # loads the model
        except Exception as exc:  # noqa: BLE001 - a model that cannot load fails its jobs, in one line
            for job in live:
                job.fail(describe_error(exc))
            return
        # Identical requests (same fingerprint) share one picture; cached ones are done at once.
        groups: dict[str, list[Job]] = {}
        for job in live:
            if not self._from_cache(job, model_fingerprint):
                groups.setdefault(job.fingerprint or "", []).append(job)
        if groups:
            self._render(list(groups.values()))

    def _render(self, groups: Sequence[list[Job]]) -> None:
        """Render one picture per group of identical jobs, as one batch; when the batch fails, each group
        alone, so that only a failing one fails."""
        leaders = [group[0] for group in groups]
        request = leaders[0].request
        model = self.models.load(request.model)
        everyone = [job for group in groups for job in group]
        for job in everyone:
            job.start()
        every = max(1, request.recipe.steps // PREVIEWS)
        curves: list[list[tuple[int, float | None]]] = [[] for _ in groups]

        def watch(step: int, images: np.ndarray, scores: np.ndarray) -> bool:
            for row, group in enumerate(groups):
                curves[row].append((step, json_number(float(scores[row]))))
                for job in group:
                    job.progress(step, images[row], float(scores[row]))
            # Go on while anyone still wants a picture of this batch (and the server is not stopping).
            return not self._stopping and not all(job.finished for job in everyone)

        self.batches.append(len(groups))
        try:
            with deterministic(model.device), warnings.catch_warnings():
                warnings.simplefilter("ignore", FilterVizWarning)  # each job says it itself: stuck, dead
                result = render(model, [job.objective for job in leaders], request.recipe, seed=request.seed,
                                keys=[job.key for job in leaders], batch_size=len(leaders), precision=self.precision,
                                callback=watch, callback_every=every)
        except RenderCancelled:
            for job in everyone:
                job.cancel()
            return
        except Exception as exc:  # noqa: BLE001 - a job's error is said on its page, the server goes on
            if len(groups) > 1:
                for group in groups:
                    self._render([group])
                return
            if not isinstance(exc, FilterVizError):  # not a user's mistake: keep the traceback in the log
                log.warning("render failed: %s", describe_error(exc), exc_info=exc)
            for job in everyone:
                job.fail(describe_error(exc))
            return
        side = render_size(request.recipe, model.spec.fixed_size)
        pictures = show_channels(result.images)
        for row, group in enumerate(groups):
            png = png_bytes(pictures[row])
            notes = _notes(bool(result.stuck[row]), bool(result.dead[row]))
            curve = curves[row]
            record = {"model": request.model, "objective": group[0].request.objective, "size": side,
                      "start_score": json_number(result.start_score[row]), "score": json_number(result.score[row]),
                      "curve": curve, "notes": notes, "precision": result.precision}
            if group[0].fingerprint:
                try:
                    self.cache.put(group[0].fingerprint, png, record)
                except OSError as exc:  # a full disk costs the cache, not the picture
                    log.warning("could not cache a render: %s", exc)
            for job in group:
                job.finish(png, record, cached=False)


def _notes(stuck: bool, dead: bool) -> list[str]:
    """What a job's page says about a picture that never left its start image."""
    if dead:
        return ["this unit is dead: it takes the same value on every probe image (natural photos and strong "
                "noise), so no picture can show it"]
    if stuck:
        return ["the picture never left its start image (the gradient stayed zero); a recipe with escape steps "
                "(lucid, maco) or another seed may render it"]
    return []
