"""The web app of ``filterviz serve`` (Starlette): the page, its script and style, the HTTP API under
``/api``, live updates of a job as server-sent events, and, with an atlas, the atlas's own files.

Safety, in one place:
- Host: bound to a loopback address, requests must name a loopback host (a DNS-rebinding page cannot
  reach the API under another name).
- POST: an ``Origin`` (when the client sends one: every browser does) must be the server's own, and a
  cross-site ``Sec-Fetch-Site`` is refused; a render's body must be JSON. GET never changes anything.
- Files: only the server's page, script and style sheet, jobs' pictures (from memory), and an atlas's
  own files (its pages, pictures and style sheet, read without following any link); nothing else on
  disk is ever served. Models come only from ``ModelStore`` (names, or files named at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..catalog import DEFAULT_MODEL
from ..errors import FilterVizError
from ..models.loaded import LoadedModel
from ..objectives import objective_help, term_syntax
from ..pages import render_page, style_sheet
from ..recipes import RECIPES
from .cache import DEFAULT_CACHE, ResultCache
from .jobs import FINISHED, Job, JobQueue, QueueFull
from .models import ModelStore
from .requests import Limits, read_request

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PAGE = "index.html"  # the page's path from the site root, for base.html's relative links
HEARTBEAT = 15.0  # seconds between keep-alive comments on a quiet event stream
POLL = 0.05  # seconds between looks at a job that an event stream follows
# An atlas's files that the server shows: its pages, pictures and style sheet, in its own folders.
_ATLAS_FILE = re.compile(r"(index\.html|style\.css|(img|layers|filters|examples)/[^\x00\\]+\.(html|png|jpg|css))")
_FILTER_PAGE = re.compile(r"filters/(?P<slug>[^/]+)/(?P<k>\d+)\.html")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8765`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Server:
    """What the routes share: the models, the queue, the limits, the atlas folder."""

    def __init__(self, models: ModelStore, queue: JobQueue, limits: Limits, atlas: Path | None,
                 loopback_only: bool) -> None:
        self.models, self.queue, self.limits, self.atlas = models, queue, limits, atlas
        self.loopback_only = loopback_only

    # -- checks ------------------------------------------------------------------------------------
    def host_problem(self, request: Request) -> str | None:
        host = _host_name(request.headers.get("host", ""))
        if self.loopback_only and not _loopback(host):
            return (f"this server answers only to 127.0.0.1 or localhost, not {host!r} (start it with --host to "
                    "serve other names)")
        return None

    def origin_problem(self, request: Request) -> str | None:
        """Why a POST must be refused as coming from another site, or None."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            return "a request from another site is refused"
        origin = request.headers.get("origin")
        if origin is None:  # not a browser (curl, scripts): nothing to forge
            return None
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != own:
            return f"a request from origin {origin!r} is refused; only this server's own page ({own}) may post"
        return None

    def job(self, request: Request) -> Job:
        job = self.queue.get(request.path_params["job"])
        if job is None:
            raise HTTPException(404, "no such job (jobs are kept in memory while the server runs)")
        return job


def _server(request: Request) -> Server:
    return request.app.state.server  # type: ignore[no-any-return]


# -- the page -----------------------------------------------------------------------------------------
async def page(request: Request) -> Response:
    server = _server(request)
    config = {"models": server.models.names(), "model": server.models.default, "recipes": _recipes(),
              "limits": vars(server.limits), "terms": term_syntax(), "atlas": server.atlas is not None}
    text = render_page("serve.html", title="filterviz serve", page=PAGE, config=config, help=objective_help(),
                       atlas=server.atlas is not None)
    return HTMLResponse(text)


async def style(request: Request) -> Response:
    return Response(style_sheet(), media_type="text/css")


async def script(request: Request) -> Response:
    text = resources.files("filterviz").joinpath("templates", "serve.js").read_text(encoding="utf-8")
    return Response(text, media_type="text/javascript")


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


def _recipes() -> dict[str, dict[str, Any]]:
    """Each preset's fields as JSON values, and which of them its parameterization reads not."""
    return {name: {"fields": json.loads(json.dumps(recipe.fields())), "unused": sorted(recipe.unused_fields())}
            for name, recipe in RECIPES.items()}


# -- the API ------------------------------------------------------------------------------------------
async def api_models(request: Request) -> Response:
    server = _server(request)
    return JSONResponse({"models": server.models.names(), "default": server.models.default})


async def api_recipes(request: Request) -> Response:
    return JSONResponse({"recipes": _recipes()})


async def api_layers(request: Request) -> Response:
    server = _server(request)
    model = request.query_params.get("model", server.models.default)
    size_text = request.query_params.get("size")
    try:
        size = None
        if size_text is not None:
            if not size_text.isdigit() or not 1 <= int(size_text) <= server.limits.max_size:
                raise FilterVizError(f"size must be a whole number from 1 to {server.limits.max_size}, not "
                                     f"{size_text!r}")
            size = int(size_text)
        listing = await run_in_threadpool(server.models.layers, model, size)
    except FilterVizError as exc:
        return _error(400, str(exc))
    return JSONResponse(listing)


async def api_render(request: Request) -> Response:
    server = _server(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _error(415, "send the request as JSON (Content-Type: application/json)")
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        return _error(400, f"the body is not JSON ({exc})")
    try:
        render_request, objective = read_request(body, server.models, server.limits)
        await run_in_threadpool(server.models.check_objective, render_request.model, [objective],
                                render_request.recipe)
        job = server.queue.submit(render_request, objective)
    except FilterVizError as exc:
        return _error(400, str(exc))
    except QueueFull as exc:
        return _error(429, str(exc))
    return JSONResponse(job.snapshot(), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


async def api_job(request: Request) -> Response:
    return JSONResponse(_server(request).job(request).snapshot())


async def api_cancel(request: Request) -> Response:
    server = _server(request)
    job = server.job(request)
    server.queue.cancel(job.id)
    return JSONResponse(job.snapshot())


async def api_image(request: Request) -> Response:
    job = _server(request).job(request)
    if job.png is None:
        return _error(409, f"job {job.id} is {job.state}, and has no final picture"
                      + (f" ({job.error})" if job.error else ""))
    headers = {"Cache-Control": "no-store"}
    if request.query_params.get("download"):
        headers["Content-Disposition"] = f'attachment; filename="filterviz-{job.id[:8]}.png"'
    return Response(job.png, media_type="image/png", headers=headers)


async def api_preview(request: Request) -> Response:
    job = _server(request).job(request)
    data = job.preview_png()
    if data is None:
        return _error(409, f"job {job.id} has no picture yet ({job.state})")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


async def api_events(request: Request) -> Response:
    """The job's state as server-sent events (``event: job``, JSON data), one per change, until it is
    finished; a client that falls behind gets the latest state, never a stale one."""
    job = _server(request).job(request)

    async def stream() -> AsyncIterator[str]:
        seen, quiet = -1, 0.0
        while True:
            version = job.version
            if version != seen:
                seen, quiet = version, 0.0
                snapshot = job.snapshot()
                yield f"event: job\nid: {snapshot['version']}\ndata: {json.dumps(snapshot)}\n\n"
                if snapshot["state"] in FINISHED:
                    return
            elif quiet >= HEARTBEAT:
                quiet = 0.0
                yield ": waiting\n\n"
            await asyncio.sleep(POLL)
            quiet += POLL

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# -- the atlas ----------------------------------------------------------------------------------------
async def atlas_file(request: Request) -> Response:
    server = _server(request)
    if server.atlas is None:
        raise HTTPException(404, "this server was started without --atlas")
    relative = request.path_params.get("path", "") or "index.html"
    if not _ATLAS_FILE.fullmatch(relative) or any(part in ("", ".", "..") for part in relative.split("/")):
        raise HTTPException(404, "not a file of the atlas")
    from ..atlas.files import read_regular

    data = await run_in_threadpool(read_regular, server.atlas, relative)  # never through a link
    if data is None:
        raise HTTPException(404, "not a file of the atlas")
    suffix = relative.rsplit(".", 1)[1]
    media = {"html": "text/html; charset=utf-8", "png": "image/png", "jpg": "image/jpeg", "css": "text/css"}[suffix]
    if _FILTER_PAGE.fullmatch(relative):
        data = await run_in_threadpool(_with_render_link, server, relative, data)
    return Response(data, media_type=media)


def _with_render_link(server: Server, relative: str, page_bytes: bytes) -> bytes:
    """An atlas's filter page with a "render again with other settings" link to the server's page,
    filled in with the atlas's model, layer, filter, recipe, seed and size (from its manifest). An atlas
    whose manifest does not say its model (an earlier filterviz) gets the link with layer and filter only."""
    from ..atlas.files import filter_image, manifest_path
    from ..atlas.manifest import read_site

    assert server.atlas is not None
    match = _FILTER_PAGE.fullmatch(relative)
    assert match is not None
    site, units = read_site(manifest_path(server.atlas))
    unit = units.get(filter_image(match["slug"], int(match["k"])))
    if unit is None:
        return page_bytes
    query: dict[str, Any] = {"layer": unit[0], "filter": unit[1]}
    if "model" in site:
        query["model"] = site["model"]
        recipe = json.loads(site.get("recipe", "{}"))
        query.update({"recipe": recipe.get("name", ""), "seed": site.get("seed", ""), "size": site.get("size", ""),
                      "steps": recipe.get("steps", "")})
    link = render_page("serve/again.html", href="/?" + urlencode({k: v for k, v in query.items() if v != ""}),
                       known="model" in site)
    text = page_bytes.decode("utf-8")
    at = text.rfind("</body>")
    return (text[:at] + link + text[at:]).encode("utf-8") if at >= 0 else page_bytes


# -- the app ------------------------------------------------------------------------------------------
def create_app(models: Sequence[str | os.PathLike[str] | LoadedModel] = (DEFAULT_MODEL,), *,
               atlas: str | os.PathLike[str] | None = None, cache: str | os.PathLike[str] = DEFAULT_CACHE,
               device: str = "auto", limits: Limits = Limits(), precision: str = "auto", host: str = "127.0.0.1",
               registry: bool = True) -> Starlette:
    """The app of ``filterviz serve``: ``models`` (names, files, or LoadedModel objects) first, then every
    name the registry knows (``registry``); ``atlas``, an atlas folder to serve read-only with links to
    render its filters again; ``cache``, the folder of finished renders; ``host``, the address it is
    bound to (a loopback address: only loopback host names are answered)."""
    atlas_root = None
    if atlas is not None:
        atlas_root = Path(atlas).expanduser().resolve()
        if not (atlas_root / "index.html").is_file():
            raise FilterVizError(f"--atlas {str(atlas)!r} is not an atlas folder (it has no index.html); give the "
                                 "folder `filterviz atlas ... --out DIR` wrote")
    from ..device import autocast_dtype
    from ..models.registry import resolve_device

    autocast_dtype(precision, resolve_device(device))  # a device or precision this machine lacks: one line now
    store = ModelStore(models, device=device, registry=registry)
    for model in models:  # a missing file or unknown name is said now, not at the first request
        if not isinstance(model, LoadedModel):
            store.shape(os.fspath(model))
    queue = JobQueue(store, ResultCache(cache), limits, precision=precision)
    server = Server(store, queue, limits, atlas_root, _loopback(host))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.stop)

    routes = [
        Route("/", page), Route("/style.css", style), Route("/serve.js", script), Route("/favicon.ico", favicon),
        Route("/api/models", api_models), Route("/api/recipes", api_recipes), Route("/api/layers", api_layers),
        Route("/api/render", api_render, methods=["POST"]), Route("/api/jobs/{job}", api_job),
        Route("/api/jobs/{job}/cancel", api_cancel, methods=["POST"]),
        Route("/api/jobs/{job}/image.png", api_image), Route("/api/jobs/{job}/preview.png", api_preview),
        Route("/api/jobs/{job}/events", api_events),
        Route("/atlas/", atlas_file), Route("/atlas/{path:path}", atlas_file),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return _error(status, str(getattr(exc, "detail", exc)))

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error},
                    middleware=[Middleware(Guard, server=server)])
    app.state.server = server
    return app


class Guard:
    """Refuses, before any route: a request naming a host the server does not answer to, and a state-
    changing request (anything but GET and HEAD) from another origin (see the module's docstring)."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            problem = self.server.host_problem(request)
            if problem is None and scope["method"] not in ("GET", "HEAD"):
                problem = self.server.origin_problem(request)
            if problem is not None:
                await _error(403, problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
