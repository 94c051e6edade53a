"""The server's disk cache of finished renders, named by their fingerprint (``fingerprints``): the PNG and
a small JSON record beside it (scores, curve, precision). A request whose fingerprint is here is answered
from it at once. Files are written atomically, the record last, so a cache entry is whole or absent.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..image import write_atomic

DEFAULT_CACHE = Path("~/.cache/filterviz/serve")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CachedRender:
    """One cached picture (PNG bytes) and what was recorded with it."""

    png: bytes
    record: dict[str, Any]


class ResultCache:
    """Finished renders under ``folder`` (created when missing): ``ab/abcdef...png`` and ``.json``."""

    def __init__(self, folder: str | os.PathLike[str] = DEFAULT_CACHE) -> None:
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the cache folder {str(self.folder)!r} ({exc.strerror or exc}); "
                              "give another with --cache DIR") from None
        if not os.access(self.folder, os.W_OK):
            raise OutputError(f"cannot write into the cache folder {str(self.folder)!r}; give another with --cache DIR")

    def _paths(self, fingerprint: str) -> tuple[Path, Path]:
        if not _FINGERPRINT.fullmatch(fingerprint):  # only our own hex names ever become paths
            raise ValueError(f"not a fingerprint: {fingerprint!r}")
        base = self.folder / fingerprint[:2] / fingerprint
        return base.with_suffix(".png"), base.with_suffix(".json")

    def get(self, fingerprint: str) -> CachedRender | None:
        """The cached render, or None (missing, or left half-written by an older crash)."""
        png, record = self._paths(fingerprint)
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            picture = png.read_bytes()
        except (OSError, ValueError):
            return None
        if data.get("bytes") != len(picture):
            return None
        return CachedRender(picture, data)

    def put(self, fingerprint: str, png: bytes, record: dict[str, Any]) -> None:
        """Store a render: the picture first, then its record (which vouches for the picture's length)."""
        picture, path = self._paths(fingerprint)
        picture.parent.mkdir(exist_ok=True)
        write_atomic(picture, png)
        write_atomic(path, json.dumps({**record, "bytes": len(png)}, sort_keys=True))
