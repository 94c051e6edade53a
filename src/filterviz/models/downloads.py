"""Downloading weights: a quick reachability check, and atomic, verified downloads with a timeout.

Offline, or when a host goes silent, these give up within seconds instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from ..errors import WeightsUnavailableError


def unreachable_reason(url: str, timeout: float) -> str | None:
    """None if a TCP connection to the URL's host (or its proxy) opens within ``timeout``; else why not.

    The attempt runs in a daemon thread so that even a name lookup that hangs cannot hold us longer.
    """
    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    target = urlparse(proxy) if proxy else parsed
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    outcome: dict[str, object] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    error = outcome.get("error")
    if error is None:
        return f"no answer from {host} within {timeout:g} s"
    return f"{host} is unreachable: {getattr(error, 'strerror', None) or error}"


class DownloadFailedError(WeightsUnavailableError):
    """A download that could not be completed: the host refused, went silent, or the connection broke."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot download {url}: {reason}")
        self.reason = reason


def download(url: str, file: Path, *, timeout: float, progress: bool = False) -> None:
    """Download ``url`` into ``file`` atomically, giving up if the server is silent for ``timeout`` s.

    As torch.hub does, a file name of the form ``name-<hex>.pth`` must match the start of the
    content's SHA-256. Any failure raises WeightsUnavailableError (DownloadFailedError when the transfer fails) and leaves
    no file behind.
    """
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.{os.getpid()}.part")
    expected = re.search(r"-([a-f0-9]{6,})\.", file.name)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out, tqdm(
            total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
            desc=f"downloading {file.name}", disable=None if progress else True, leave=False,
        ) as bar:
            digest = hashlib.sha256()
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise WeightsUnavailableError(
                f"the download of {url} is corrupt (its SHA-256 does not start with {expected.group(1)}); try again"
            )
        os.replace(partial, file)
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise DownloadFailedError(url, str(reason)) from None
    finally:
        partial.unlink(missing_ok=True)


def weights_unavailable(weights: str, cache: str, where: Path | str, url: str, reason: str,
                        put: str | None = None) -> WeightsUnavailableError:
    """The one-line error every source gives for pretrained weights that are neither cached nor downloadable.

    ``weights`` names them, ``cache`` names the cache and ``where`` is the full path looked up there;
    ``put`` says how to put a fetched copy into that cache (default: as the file ``where``). Nothing is
    shortened: a cut path or URL cannot be copied.
    """
    put = put or f"put it at {where}"
    return WeightsUnavailableError(
        f"{weights} weights are not in the {cache} cache ({where}) and cannot be downloaded from {url} ({reason}); "
        f"fetch that file where it can be reached and give it with --weights PATH or {put}, "
        "or use --weights random for untrained weights"
    )
