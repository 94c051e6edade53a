"""The atlas in worker processes of this machine (``ProcessExecutor``, ``--executor processes``): the
same bytes as the local executor with the same threads, through Ctrl-C, a worker that dies and a
caller killed with SIGKILL, with no process left behind; its options and errors on the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from filterviz.atlas import LocalExecutor, ProcessExecutor, build_atlas, executors
from filterviz.atlas.executors import cpu_count, default_workers
from filterviz.cli import main
from filterviz.errors import FilterVizError

from conftest import TinyNet, tiny_model
from test_atlas import _units_done, site_files


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie, waiting to be reaped, has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (its workers, and multiprocessing's resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _gone(pids: list[int], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(pid) for pid in pids)


class Interrupting(ProcessExecutor):
    """Stops the caller at its first result: Ctrl-C, or a worker killed (SIGKILL) under it."""

    def __init__(self, workers: int, how: str) -> None:
        super().__init__(workers)
        self.how = how
        self.pids: list[int] = []

    def run(self, model, tasks, settings):
        for result in super().run(model, tasks, settings):
            if self.how == "ctrl-c":
                self.pids = [process.pid for process in self._pool._processes.values()]
                yield result
                raise KeyboardInterrupt
            if self.how == "kill":
                self.pids = [process.pid for process in self._pool._processes.values()]
                assert len(self.pids) == 2
                os.kill(self.pids[0], signal.SIGKILL)
                self.how = "killed"
            yield result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_processes_equal_local_through_ctrl_c_and_a_dead_worker(tmp_path):
    model = tiny_model()  # a module of the tests: pickled, and unpickled by each worker
    options = dict(size=16, steps=150, chunk_size=1, threads=1, layers=["features.1", "features.6"])
    build_atlas(model, tmp_path / "local", executor=LocalExecutor(), **options)
    out = tmp_path / "processes"
    # Ctrl-C in the caller: it stops at once, with the workers, keeping the task it finished.
    executor = Interrupting(1, "ctrl-c")
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        build_atlas(model, out, executor=executor, **options)
    assert executor._pool is None and len(executor.pids) == 1 and _gone(executor.pids, 5)
    assert _units_done(out) == 1 and time.monotonic() - started < 60
    # A worker that dies fails the atlas in one line; the others stop too.
    executor = Interrupting(2, "kill")
    with pytest.raises(FilterVizError) as failed:
        build_atlas(model, out, executor=executor, **options)
    message = str(failed.value)
    assert executor.how == "killed" and "a worker process died" in message and "run again" in message
    assert len(message.splitlines()) == 1 and _gone(executor.pids, 5)
    done = _units_done(out)
    assert 2 <= done < 12
    # Run again: it does what is left, and the site is the local one, byte for byte.
    summary = build_atlas(model, out, executor=ProcessExecutor(2), **options)
    assert (summary.rendered, summary.units) == (12 - done, 12)
    assert site_files(out) == site_files(tmp_path / "local")


def _command(model_file: Path, out: Path, *extra: str) -> list[str]:
    return ["atlas", str(model_file), "--out", str(out), "--size", "32", "--steps", "80", "--chunk-size", "1",
            "--threads", "1", "-q", *extra]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cli_processes_equal_local_after_kill_9_and_leave_no_process(tmp_path):
    # TorchScript cannot be pickled: each worker loads the model from its file.
    model_file = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 32, 32)), str(model_file))
    local, resumed = tmp_path / "local", tmp_path / "resumed"
    assert main(_command(model_file, local, "--executor", "local")) == 0
    process = subprocess.Popen([sys.executable, "-m", "filterviz", *_command(model_file, resumed, "--workers", "2")])
    deadline = time.monotonic() + 180
    while _units_done(resumed) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the atlas finished before it could be killed; give it more work"
    workers = _children(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(workers) >= 2 and _gone(workers), "worker processes outlived their atlas"
    killed_at = _units_done(resumed)
    assert 3 <= killed_at < 18
    assert main(_command(model_file, resumed, "--executor", "processes", "--workers", "2")) == 0
    assert site_files(resumed) == site_files(local)


def test_cli_workers_options(tmp_path, capsys, monkeypatch):
    model_file = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 16, 16)), str(model_file))
    out = tmp_path / "site"
    for extra, message in [(["--workers", "2", "--executor", "local"], "--workers goes with --executor processes"),
                           (["--workers", "2", "--executor", "ray"], "--workers goes with --executor processes"),
                           (["--workers", "2", "--device", "cuda"], "renders on this machine's CPUs, not on cuda")]:
        code = main(["atlas", str(model_file), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    # Those usage errors come before torch is imported, as the command line's others do.
    check = ("import sys; from filterviz.cli import main; "
             f"code = main(['atlas', 'm.pt', '--out', {str(out)!r}, '--workers', '2', '--executor', 'local']); "
             "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.stdout.split() == ["2", "False"], done.stderr
    # --workers alone means processes; --executor processes alone, default_workers of them; the threads
    # default to the CPUs over the workers.
    seen = []
    monkeypatch.setattr("filterviz.atlas.build_atlas", lambda model, out, executor, threads, **_: seen.append(
        (type(executor).__name__, getattr(executor, "workers", None), threads, model.device.type)))
    for extra in (["--workers", "3"], ["--executor", "processes"], [], ["--executor", "processes", "--threads", "5"]):
        assert main(["atlas", str(model_file), "--out", str(out), "-q", *extra]) == 0
    workers = default_workers(cpu_count())
    assert seen == [("ProcessExecutor", 3, None, "cpu"), ("ProcessExecutor", workers, None, "cpu"),
                    ("LocalExecutor", None, None, "cpu"), ("ProcessExecutor", workers, 5, "cpu")]
    assert ProcessExecutor(3).default_threads == max(1, cpu_count() // 3)
    # The default is set in one place: with "processes" there, an atlas that names no executor uses them.
    monkeypatch.setattr(executors, "DEFAULT_EXECUTOR", "processes")
    assert main(["atlas", str(model_file), "--out", str(out), "-q"]) == 0
    assert seen[-1] == ("ProcessExecutor", workers, None, "cpu")
    assert isinstance(executors.default_executor(torch.device("cpu")), ProcessExecutor)
    assert isinstance(executors.default_executor(torch.device("cuda")), LocalExecutor)  # GPUs render here


def test_processes_check_before_starting_any(tmp_path):
    with pytest.raises(FilterVizError, match="needs 1 or more workers"):
        build_atlas(tiny_model(), tmp_path / "none", size=16, steps=1, executor=ProcessExecutor(0))
    assert not (tmp_path / "none").exists()
    # The workers share the memory budget: a task that fits it alone may not fit a worker's share.
    options = dict(size=16, steps=1, layers=["features.6"], max_memory=2 ** 20)
    build_atlas(tiny_model(), tmp_path / "local", **options)
    with pytest.raises(FilterVizError, match="each of 1000 worker processes renders within 1/1000 of the memory"):
        build_atlas(tiny_model(), tmp_path / "shared", executor=ProcessExecutor(1000), **options)
