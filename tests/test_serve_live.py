"""filterviz serve on a real uvicorn (127.0.0.1, a free port): 20 clients at once, each starting a job and
following it live, all get their own picture (the one ``render`` makes alone), none lost; and README's
curl examples work as written against it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

import filterviz  # noqa: E402
from filterviz.image import png_bytes, show_channels  # noqa: E402
from filterviz.recipes import get_recipe  # noqa: E402
from filterviz.serve import Limits, create_app, open_socket  # noqa: E402

from conftest import tiny_model  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


@contextmanager
def live_server(app):
    """The app on uvicorn in a thread, on 127.0.0.1 and a free port; yields its base URL."""
    sock = open_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def follow(base: str, body: dict) -> tuple[dict, list[dict], bytes]:
    """What one client does: start a job, read its event stream to the end, download its picture."""
    with httpx.Client(base_url=base, timeout=60) as client:
        job = client.post("/api/render", json=body)
        assert job.status_code == 202, job.text
        events = []
        with client.stream("GET", f"/api/jobs/{job.json()['id']}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        final = events[-1]
        picture = client.get(final["image_url"]).content if final["image_url"] else b""
        return final, events, picture


def test_twenty_clients_following_live_jobs_all_get_their_pictures(tmp_path):
    model = tiny_model()
    layers = {"features.1": 4, "features.3": 6, "features.6": 8}
    objectives = [f"channel:{layer}:{k}" for layer, count in layers.items() for k in range(count)][:17]
    objectives += ["class:1", "class:3 - 0.1*tv", objectives[0]]  # 20, one of them twice
    settings = {"size": 16, "steps": 30, "seed": 0}
    app = create_app([model], cache=tmp_path / "cache", registry=False, device="cpu", precision="fp32",
                     limits=Limits(max_batch=8))
    with live_server(app) as base, ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda text: follow(base, {"model": "tiny", "objective": text, **settings}),
                                objectives))
    queue = app.state.server.queue
    assert len(results) == 20
    recipe = get_recipe("classic", size=16, steps=30)
    for text, (final, events, picture) in zip(objectives, results):
        assert final["state"] == "done" and final["objective"] == text, final
        key = int(text.rsplit(":", 1)[1]) if text.startswith("channel") else 0
        alone = filterviz.render(model, [text], recipe, seed=0, keys=[key], precision="fp32")
        assert picture == png_bytes(show_channels(alone.images)[0]), text
        assert [e["version"] for e in events] == sorted({e["version"] for e in events})  # in order, none twice
    assert sum(queue.batches) <= 19 and max(queue.batches) > 1  # batched, and the repeated one computed once


def _readme_curls() -> list[str]:
    section = re.search(r"^### filterviz serve[^\n]*\n(.*?)^##", README.read_text(), flags=re.S | re.M).group(1)
    blocks = re.findall(r"^```(?:sh|bash)?\n(.*?)^```", section, flags=re.S | re.M)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(blocks))
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_work_as_written(tmp_path):
    """Each curl line of README's serve section, against a server of the embedded model on another port
    (and with sizes and steps made small), does what README says: JSON answers, a PNG at the end."""
    commands = _readme_curls()
    assert len(commands) >= 4, commands
    app = create_app(cache=tmp_path / "cache", device="cpu")
    job_id = None
    with live_server(app) as base:
        for command in commands:
            command = command.replace("http://127.0.0.1:8765", base)
            command = re.sub(r'"size": \d+', '"size": 32', re.sub(r'"steps": \d+', '"steps": 3', command))
            if "$JOB" in command:
                assert job_id is not None, "a job is started before it is asked about"
                if "/events" in command:
                    deadline = time.monotonic() + 60
                    while httpx.get(f"{base}/api/jobs/{job_id}").json()["state"] not in ("done", "failed"):
                        assert time.monotonic() < deadline
                        time.sleep(0.05)
                command = command.replace("$JOB", job_id)
            words = shlex.split(command)
            done = subprocess.run(words, cwd=tmp_path, capture_output=True, timeout=120)
            assert done.returncode == 0, (command, done.stderr)
            if "-o" in words:
                target = tmp_path / words[words.index("-o") + 1]
                assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", command
            elif "/events" in command:
                assert b"event: job" in done.stdout and b'"state": "done"' in done.stdout, command
            else:
                answer = json.loads(done.stdout)
                assert isinstance(answer, dict) and answer.get("error") is None, (command, answer)
                if "/api/render" in command:
                    job_id = answer["id"]
    assert job_id is not None
