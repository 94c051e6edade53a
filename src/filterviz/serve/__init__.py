"""``filterviz serve``: a local web app that renders while you watch.

``run_server`` starts it (what the command line calls); ``create_app`` makes the Starlette app alone,
for tests or another ASGI server. The app is ``app.py`` (routes, safety checks), the queue of render
jobs ``jobs.py`` (batching, progress, the disk cache of ``cache.py``), requests and limits
``requests.py``, and the models it may use ``models.py``. Starlette and uvicorn are the optional extra
``serve``: without them, one line says how to install it.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..catalog import DEFAULT_MODEL
from ..errors import FilterVizError, FilterVizWarning
from .requests import Limits

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..models.loaded import LoadedModel

__all__ = ["Limits", "create_app", "open_socket", "run_server"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _require() -> None:
    from ..models.sources import require

    require("starlette", "serve", "filterviz serve")
    require("uvicorn", "serve", "filterviz serve")


def create_app(models: Sequence[str | os.PathLike[str] | LoadedModel] = (DEFAULT_MODEL,), **options: Any) -> Starlette:
    """The Starlette app of ``filterviz serve`` (see ``app.create_app`` for the options)."""
    _require()
    from .app import create_app as make_app

    return make_app(models, **options)


def open_socket(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port), or one line saying why not."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise FilterVizError(f"--host {host!r} is not an address of this machine ({exc.strerror}); use "
                             f"{DEFAULT_HOST} (the default) or an address of one of its interfaces") from None
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "use another --port (0: any free one)" if exc.errno in (98, 48) else "use another --host or --port"
        raise FilterVizError(f"cannot listen on {host} port {port} ({exc.strerror or exc}); {hint}") from None
    return sock


def run_server(models: Sequence[str | os.PathLike[str] | LoadedModel] = (DEFAULT_MODEL,), *,
               host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               say: Callable[[str], None] = lambda text: print(text, file=sys.stderr), **options: Any) -> None:
    """Serve the app on ``host``:``port`` until interrupted. Binding anything but a loopback address
    warns (a FilterVizWarning) that anyone who can reach the port can use this machine. ``options`` are
    ``app.create_app``'s (``atlas``, ``cache``, ``device``, ``limits``, ``precision``, ``registry``)."""
    _require()
    import uvicorn

    from .app import _loopback

    app = create_app(models, host=host, **options)  # checked (atlas, cache folder) before the port is taken
    if not _loopback(host):
        warnings.warn(f"serving on {host}: anyone who can reach port {port} of this machine can use it (render on "
                      "its CPU or GPU, read its atlas); there is no login. Leave --host out to serve this machine "
                      "alone", FilterVizWarning, stacklevel=2)
    sock = open_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    say(f"filterviz: serving on http://{shown}:{bound}/ (Ctrl-C stops it)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
