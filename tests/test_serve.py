"""filterviz serve's API and queue (Starlette's TestClient; the tiny model): each job's picture is the one
``render`` makes alone, batched or not; the cache answers a repeated request at once under the atlas's
fingerprint rule; bad requests are one-line JSON 4xx errors, checked before anything is queued; a
failing job fails alone; only the server's own files and its atlas's are ever served."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

import filterviz  # noqa: E402
from filterviz.fingerprints import model_fingerprint, render_fingerprint, settings_hash  # noqa: E402
from filterviz.image import png_bytes, show_channels  # noqa: E402
from filterviz.objectives import TERMS, Term, parse_objective  # noqa: E402
from filterviz.recipes import get_recipe  # noqa: E402
from filterviz.serve import Limits, create_app  # noqa: E402
from filterviz.serve.cache import ResultCache  # noqa: E402
from filterviz.serve.jobs import FINISHED, JobQueue, objective_identity  # noqa: E402
from filterviz.serve.models import ModelStore  # noqa: E402
from filterviz.serve.requests import RenderRequest  # noqa: E402

from conftest import tiny_model  # noqa: E402

BASE = "http://127.0.0.1:8765"
SMALL = {"size": 16, "steps": 6}


def reference(model, objective: str, seed: int = 0, key: int = 0, recipe: str = "classic", **fields) -> bytes:
    """The PNG that ``render`` makes of one objective alone, as the server encodes it."""
    result = filterviz.render(model, [objective], get_recipe(recipe, **{**SMALL, **fields}), seed=seed, keys=[key],
                              precision="fp32")
    return png_bytes(show_channels(result.images)[0])


def wait(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/jobs/{job_id}").json()
        if state["state"] in FINISHED:
            return state
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {state}")


@pytest.fixture
def app(tmp_path):
    return create_app([tiny_model()], cache=tmp_path / "cache", registry=False, device="cpu", precision="fp32",
                      limits=Limits(max_size=64, max_steps=50, max_queue=16))


@pytest.fixture
def client(app):
    with TestClient(app, base_url=BASE) as client:
        yield client


def test_a_job_is_the_render_of_its_objective_and_a_repeat_comes_from_the_cache(client, tmp_path):
    body = {"model": "tiny", "objective": "channel:features.3:2", "seed": 3, **SMALL}
    answer = client.post("/api/render", json=body)
    assert answer.status_code == 202 and answer.headers["location"] == f"/api/jobs/{answer.json()['id']}"
    state = wait(client, answer.json()["id"])
    assert state["state"] == "done" and not state["cached"] and state["key"] == 2  # the filter, as `render M L K`
    picture = client.get(state["image_url"]).content
    assert picture == reference(tiny_model(), "channel:features.3:2", seed=3, key=2)
    # The curve: one point per preview, the last at the last step; the final score is the render's.
    assert [step for step, _ in state["curve"]] == list(range(1, 7))
    assert state["score"] > state["start_score"]
    # The same request again: done at once, from the disk cache, under the atlas's fingerprint rule.
    again = client.post("/api/render", json=body).json()
    assert again["state"] == "done" and again["cached"]
    assert client.get(again["image_url"]).content == picture
    model = tiny_model()
    objective = parse_objective("channel:features.3:2")
    expected = render_fingerprint(model_fingerprint(model), get_recipe("classic", **SMALL), 3, "fp32",
                                  torch.get_num_threads(), torch.device("cpu"), "serve", objective_identity(objective), 2)
    assert (tmp_path / "cache" / expected[:2] / f"{expected}.png").read_bytes() == picture
    # A download is the same bytes, offered as a file.
    download = client.get(state["image_url"], params={"download": 1})
    assert download.content == picture and "attachment" in download.headers["content-disposition"]


def test_the_atlas_fingerprints_are_unchanged(tiny):
    """render_fingerprint is the atlas's old formula, so that existing atlases stay done."""
    recipe = get_recipe("lucid")
    fields = recipe.fields()
    fields.pop("name")
    model = model_fingerprint(tiny)
    old = settings_hash(model, fields, 0, "fp32", 2, "None", "cpu", "features.1", (0, 1))
    assert render_fingerprint(model, recipe, 0, "fp32", 2, torch.device("cpu"), "features.1", (0, 1)) == old


def _queue(tmp_path, *models, max_batch: int = 8) -> JobQueue:
    store = ModelStore(list(models) or [tiny_model()], registry=False, device="cpu")
    return JobQueue(store, ResultCache(tmp_path / "cache"), Limits(max_batch=max_batch), precision="fp32")


def _request(objective: str, seed: int = 0, **fields) -> tuple[RenderRequest, object]:
    return (RenderRequest("tiny", objective, get_recipe("classic", **{**SMALL, **fields}), seed),
            parse_objective(objective))


def _finish(queue: JobQueue, jobs, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(job.finished for job in jobs):
        assert time.monotonic() < deadline, [job.snapshot() for job in jobs]
        time.sleep(0.02)


def test_waiting_jobs_that_can_share_a_render_are_batched_and_each_is_its_render_alone(tmp_path):
    queue = _queue(tmp_path)
    texts = ["channel:features.3:1", "channel:features.5:4", "class:2 - 0.1*tv", "channel:features.3:1"]
    jobs = [queue.submit(*_request(text)) for text in texts]
    other_seed = queue.submit(*_request("channel:features.3:1", seed=1))
    queue.start()
    try:
        _finish(queue, [*jobs, other_seed])
    finally:
        queue.stop()
    # One render for the four same-settings jobs (the repeated objective computed once), one for the other seed.
    assert queue.batches == [3, 1]
    model = tiny_model()
    for job, text in zip(jobs, texts):
        key = int(text.rsplit(":", 1)[1]) if text.startswith("channel") else 0
        assert job.state == "done" and job.png == reference(model, text, key=key), text
    assert other_seed.png == reference(model, "channel:features.3:1", seed=1, key=1)
    assert other_seed.png != jobs[0].png


@dataclass(frozen=True)
class Boom(Term):
    """A term that fails while scoring: a job that passes every check and still fails."""

    layer: str = "<image>"
    syntax: ClassVar[tuple[str, ...]] = ("boom",)

    @classmethod
    def parse(cls, kind: str, args: str) -> "Boom":
        return cls()

    def score(self, data, rows):
        raise RuntimeError("boom at scoring")

    def label(self) -> str:
        return "boom"


@pytest.fixture
def boom(monkeypatch):
    monkeypatch.setattr(TERMS, "_parts", dict(TERMS._parts))
    TERMS.register(Boom)


def test_a_failing_job_fails_alone_with_its_error_and_the_queue_goes_on(tmp_path, boom):
    queue = _queue(tmp_path)
    good, bad = queue.submit(*_request("channel:features.3:0")), queue.submit(*_request("boom"))
    queue.start()
    try:
        _finish(queue, [good, bad])
        later = queue.submit(*_request("channel:features.5:1"))
        _finish(queue, [later])
    finally:
        queue.stop()
    assert queue.batches[0] == 2  # they were batched, and the batch failed
    assert good.state == "done" and good.png == reference(tiny_model(), "channel:features.3:0")
    assert bad.state == "failed" and bad.error == "internal error (RuntimeError: boom at scoring)"
    assert bad.png is None and later.state == "done"


def test_cancel_a_waiting_and_a_running_job(tmp_path):
    queue = _queue(tmp_path)
    long = queue.submit(*_request("channel:features.3:0", steps=100000, size=16))
    waiting = queue.submit(*_request("channel:features.3:0", seed=5))
    assert queue.cancel(waiting.id).state == "cancelled"
    queue.start()
    try:
        deadline = time.monotonic() + 30
        while long.step < 5:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        queue.cancel(long.id)
        after = queue.submit(*_request("channel:features.3:3"))
        _finish(queue, [after])
    finally:
        queue.stop()
    assert long.state == "cancelled" and long.png is None and long.step < 100000
    assert waiting.step == 0 and queue.batches == [1, 1]  # the cancelled waiting job never ran
    assert after.state == "done"


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"model": "/etc/passwd", "objective": "class:1"}, 400, r"model '/etc/passwd' is not one this server serves"),
    ({"model": "../tiny.onnx", "objective": "class:1"}, 400, r"is not one this server serves"),
    ({"model": "tiny", "objective": "direction:features.3:/etc/x.npy"}, 400, r"reads a file on the server"),
    ({"model": "tiny", "objective": "0.5*direction:features.3:x.npy"}, 400, r"reads a file on the server"),
    ({"model": "tiny", "objective": "channel:nope:1"}, 400, r"unknown layer 'nope' of tiny"),
    ({"model": "tiny", "objective": "channel:features.3:9"}, 400, r"channel 9 is out of range .* use 0-5"),
    ({"model": "tiny", "objective": "chanel:features.3:1"}, 400, r"cannot read objective term"),
    ({"model": "tiny", "objective": ""}, 400, r"objective must be text"),
    ({"model": "tiny", "objective": "class:1", "size": 65}, 400, r"size must be a whole number from 1 to 64"),
    ({"model": "tiny", "objective": "class:1", "steps": 51}, 400, r"steps must be a whole number from 1 to 50"),
    ({"model": "tiny", "objective": "class:1", "steps": "5"}, 400, r"steps must be a whole number"),
    ({"model": "tiny", "objective": "class:1", "recipe": "lucid"}, 400, r"size 224 \(recipe lucid's\) is over"),
    ({"model": "tiny", "objective": "class:1", "recipe": "maco", "size": 32, "fields": {"spectrum": "/etc"}}, 400,
     r"spectrum names a file on the server"),
    ({"model": "tiny", "objective": "class:1", "fields": {"views": 9}}, 400, r"views 9 is over this server's limit"),
    ({"model": "tiny", "objective": "class:1", "fields": {"learning_rate": -1}}, 400, r"learning_rate must be more"),
    ({"model": "tiny", "objective": "class:1", "fields": {"bogus": 1}}, 400, r"unknown recipe field\(s\) 'bogus'"),
    ({"model": "tiny", "objective": "class:1", "batch": 3}, 400, r"unknown key\(s\) 'batch'"),
    (["class:1"], 400, r"the body must be a JSON object"),
])
def test_bad_requests_are_one_line_json_errors_and_queue_nothing(client, app, body, status, message):
    import re

    answer = client.post("/api/render", json=body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert "\n" not in error and re.search(message, error), error
    assert app.state.server.queue.waiting() == 0 and not app.state.server.queue._jobs


def test_bodies_other_than_json_and_unknown_jobs(client):
    assert client.post("/api/render", content="objective=class:1",
                       headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    assert client.post("/api/render", content="{", headers={"Content-Type": "application/json"}).status_code == 400
    for path in ("/api/jobs/nope", "/api/jobs/nope/image.png", "/api/jobs/nope/events"):
        answer = client.get(path)
        assert answer.status_code == 404 and "no such job" in answer.json()["error"]
    assert client.get("/api/layers", params={"model": "vgg16"}).status_code == 400  # not served: registry off
    assert client.get("/api/layers", params={"model": "tiny", "size": "0"}).status_code == 400


def test_no_state_changes_on_get_and_posts_from_other_origins_are_refused(client, app):
    body = {"model": "tiny", "objective": "class:1", **SMALL}
    assert client.get("/api/render").status_code == 405
    refused = client.post("/api/render", json=body, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403 and "origin 'http://evil.example' is refused" in refused.json()["error"]
    assert client.post("/api/render", json=body, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert app.state.server.queue.waiting() == 0 and not app.state.server.queue._jobs
    # A name other than this machine's (DNS rebinding) is refused, even for GET.
    assert client.get("/api/models", headers={"Host": "evil.example:8765"}).status_code == 403
    own = client.post("/api/render", json=body, headers={"Origin": BASE})
    assert own.status_code == 202
    job = own.json()["id"]
    assert client.get(f"/api/jobs/{job}/cancel").status_code == 405
    assert client.post(f"/api/jobs/{job}/cancel", headers={"Origin": "http://evil.example"}).status_code == 403
    wait(client, job)


def test_the_event_stream_follows_a_job_to_its_end(client):
    job = client.post("/api/render", json={"model": "tiny", "objective": "channel:features.5:3", **SMALL}).json()
    events = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    versions = [event["version"] for event in events]
    assert versions == sorted(set(versions)) and events[-1]["state"] == "done"
    assert events[-1] == client.get(f"/api/jobs/{job['id']}").json()


def test_the_page_script_style_and_layers(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="serve.js"' in page.text and 'href="style.css"' in page.text
    config = json.loads(page.text.split('<script id="config" type="application/json">')[1].split("</script>")[0])
    assert config["models"] == ["tiny"] and "classic" in config["recipes"]
    assert client.get("/serve.js").headers["content-type"].startswith("text/javascript")
    assert "filterviz serve" in client.get("/style.css").text
    listing = client.get("/api/layers", params={"model": "tiny"}).json()
    model = tiny_model()
    assert [layer["name"] for layer in listing["layers"]] == [info.name for info in model.layers()]
    assert listing["input"] == model.spec.describe()


# -- the atlas ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    from filterviz.atlas import build_atlas

    folder = tmp_path_factory.mktemp("served") / "atlas"
    build_atlas(tiny_model(), folder, layers=["features.3"], filters=[range(2)], recipe="classic", seed=4, size=16,
                steps=2, progress=False)
    return folder


def test_the_atlas_is_served_with_a_link_to_render_each_filter_again(tmp_path, atlas):
    app = create_app([tiny_model()], atlas=atlas, cache=tmp_path / "cache", registry=False, device="cpu")
    with TestClient(app, base_url=BASE) as client:
        index = client.get("/atlas/index.html")
        assert index.status_code == 200 and index.content == (atlas / "index.html").read_bytes()
        assert client.get("/atlas/").content == index.content
        picture = client.get("/atlas/img/features.3/1.png")
        assert picture.content == (atlas / "img/features.3/1.png").read_bytes()
        page = client.get("/atlas/filters/features.3/1.html").text
        on_disk = (atlas / "filters/features.3/1.html").read_text()
        assert on_disk.count("Render again") == 0 and page.count("Render again with other settings") == 1
        link = page.split('<p class="serve-again"><a href="')[1].split('"')[0]
        assert link == "/?layer=features.3&amp;filter=1&amp;model=tiny&amp;recipe=classic&amp;seed=4&amp;size=16&amp;steps=2"
        assert page.replace(page[page.index('<p class="serve-again">'):page.index("</body>")], "") == on_disk


@pytest.mark.parametrize("path", [
    "/atlas/../../etc/passwd", "/atlas/%2e%2e/%2e%2e/etc/passwd", "/atlas/img/..%2f..%2fmanifest.sqlite",
    "/atlas/manifest.sqlite", "/atlas/img/features.3/outside.png", "/atlas/img/linked/0.png",
    "/atlas/img/features.3/..%5c..%5cmanifest.sqlite", "/atlas/filters/features.3/%00.html", "/atlas/secret.html",
    "/atlas//etc/passwd", "/atlas/img//etc/passwd.png",
])
def test_no_file_outside_the_atlas_nor_through_a_link_is_served(tmp_path, atlas, path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    (atlas / "secret.html").write_text("not the atlas's")
    os.symlink(secret, atlas / "img" / "features.3" / "outside.png")
    os.symlink(atlas / "img" / "features.3", atlas / "img" / "linked")
    try:
        app = create_app([tiny_model()], atlas=atlas, cache=tmp_path / "cache", registry=False, device="cpu")
        with TestClient(app, base_url=BASE) as client:
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert b"secret" not in answer.content and b"SQLite" not in answer.content
    finally:
        for name in ("img/features.3/outside.png", "img/linked", "secret.html"):
            (atlas / name).unlink()


def test_server_limits_are_checked():
    with pytest.raises(filterviz.FilterVizError, match="server limit max_size must be a whole number"):
        Limits(max_size=0)
