"""The atlas manifest: what has been rendered and computed, in SQLite, one transaction per step.

A row is written only after the files it names are complete on disk, so after a crash at any moment
the manifest never claims a file that is missing or stale. Every row carries the fingerprint of what
produced it (model, recipe, seed...); a row with another fingerprint is work to redo. The ``files``
table names every file the atlas may have written, recorded before it is written: only those are ever
removed. A damaged manifest (a truncated file, other bytes) is a ``ManifestError`` that says how to
recover: ``set_aside`` moves it away, so that the atlas can start afresh.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError
from .files import set_aside_path, sqlite_files

SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    layer TEXT NOT NULL, filter INTEGER NOT NULL, fingerprint TEXT NOT NULL, file TEXT NOT NULL,
    bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, start_score REAL NOT NULL, score REAL NOT NULL,
    dead INTEGER NOT NULL, PRIMARY KEY (layer, filter));
CREATE TABLE IF NOT EXISTS examples (
    layer TEXT NOT NULL, filter INTEGER NOT NULL, rank INTEGER NOT NULL, image TEXT NOT NULL,
    value REAL NOT NULL, top INTEGER NOT NULL, left INTEGER NOT NULL, side INTEGER NOT NULL,
    file TEXT NOT NULL, PRIMARY KEY (layer, filter, rank));
CREATE TABLE IF NOT EXISTS example_layers (layer TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '', folder TEXT NOT NULL DEFAULT '', images INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS scan (fingerprint TEXT PRIMARY KEY, next_image INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (file TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS site (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trust (
    layer TEXT NOT NULL, filter INTEGER NOT NULL, fingerprint TEXT NOT NULL, score REAL NOT NULL,
    plausibility REAL NOT NULL, path TEXT NOT NULL, PRIMARY KEY (layer, filter));
CREATE TABLE IF NOT EXISTS trust_layers (layer TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, frechet REAL,
    note TEXT NOT NULL DEFAULT '', pictures INTEGER NOT NULL DEFAULT 0, images INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS activation_data (layer TEXT NOT NULL, kind TEXT NOT NULL, fingerprint TEXT NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (layer, kind));
CREATE TABLE IF NOT EXISTS cells (
    layer TEXT NOT NULL, cell INTEGER NOT NULL, fingerprint TEXT NOT NULL, file TEXT NOT NULL,
    bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, start_score REAL NOT NULL, score REAL NOT NULL,
    dead INTEGER NOT NULL, PRIMARY KEY (layer, cell));
CREATE TABLE IF NOT EXISTS links (page TEXT PRIMARY KEY, label TEXT NOT NULL);
"""
# An activation atlas (``activations``) shares its folder's manifest with an atlas: its steps' results
# (``activation_data``: the samples of a dataset pass, by layer, and a pass in progress; the layout),
# its rendered cells (``cells``, rows as ``units``'), and the pages an atlas's index links to (``links``).
# Columns added to example_layers since its first version: what its examples depend on, apart from the
# images themselves (so that a run without --images can tell whether they still hold), and their folder.
_EXAMPLE_COLUMNS = {"settings": "TEXT NOT NULL DEFAULT ''", "folder": "TEXT NOT NULL DEFAULT ''",
                    "images": "INTEGER NOT NULL DEFAULT 0"}
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
# (units, dataset images) -> the files written for them that no row names: see Manifest.__init__.
EarlierFiles = Callable[[list[tuple[str, int]], list[str]], Iterable[str]]


class ManifestError(OutputError):
    """A manifest that SQLite cannot read: truncated, overwritten, or not a manifest at all."""


def damaged(exc: BaseException) -> bool:
    """Whether an sqlite3 error says that the database file is damaged (not busy, not unwritable)."""
    return isinstance(exc, sqlite3.DatabaseError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DAMAGED


def damage_error(path: Path, detail: object) -> ManifestError:
    return ManifestError(f"the atlas manifest {str(path)!r} is damaged ({detail}); run again with --rebuild to set it "
                         "aside and start this atlas afresh (its pictures are rendered again; no file is deleted)")


def set_aside(path: Path) -> Path:
    """Move a manifest (and its -wal and -shm files) to the first free ``NAME.corrupt-N``; returns it."""
    number = 1
    while any(os.path.lexists(file) for file in sqlite_files(set_aside_path(path, number))):
        number += 1
    aside = set_aside_path(path, number)
    # Its -wal and -shm files go with it: a stale -wal beside a fresh manifest would be read into it.
    for file, moved in zip(sqlite_files(path), sqlite_files(aside)):
        if os.path.lexists(file):
            os.replace(file, moved)
    return aside


@dataclass(frozen=True)
class Unit:
    """One rendered filter, as the manifest records it."""

    layer: str
    filter: int
    fingerprint: str
    file: str
    bytes: int
    sha256: str
    start_score: float
    score: float
    dead: bool  # measured dead: the same value on every probe image
    stuck: bool = False  # its picture never left the start image (dead units are stuck too)


# How a unit's state is stored in the ``dead`` column.
_RENDERED, _DEAD, _STUCK = 0, 1, 2


@dataclass(frozen=True)
class Example:
    """One dataset example of a filter: the ``rank``-th most exciting image, its activation ``value``
    and the square crop (``top``, ``left``, ``side`` in the image's pixels) around where it peaked."""

    layer: str
    filter: int
    rank: int
    image: str
    value: float
    top: int
    left: int
    side: int
    file: str


@dataclass(frozen=True)
class ExampleSource:
    """Where a layer's stored examples came from: ``settings`` fingerprints all they depend on except
    the images (model, size, top-k, filters...), ``folder`` and ``images`` name the image folder and
    its image count; ``examples`` is how many are stored."""

    settings: str
    folder: str
    images: int
    examples: int


def read_site(path: str | Path) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    """What a manifest says of its site, read without writing to it (SQLite read-only): the values of
    ``Manifest.put_site`` and each rendered picture's file with its (layer, filter). Empty for a
    missing manifest, or one too old or damaged to say."""
    try:
        connection = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}, {}
    try:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        site = dict(connection.execute("SELECT key, value FROM site")) if "site" in tables else {}
        units = ({file: (layer, k) for layer, k, file in connection.execute("SELECT layer, filter, file FROM units")}
                 if "units" in tables else {})
        return site, units
    except sqlite3.Error:
        return {}, {}
    finally:
        connection.close()


@dataclass(frozen=True)
class TrustScore:
    """How far one filter's picture can be trusted (see ``filterviz.trust``): its path similarity
    ``score``, its ``plausibility``, and ``path``, the per-layer figures as JSON."""

    layer: str
    filter: int
    fingerprint: str
    score: float
    plausibility: float
    path: str


@dataclass(frozen=True)
class LayerTrust:
    """A layer's Fréchet distance of its ``pictures`` to ``images`` of the folder (None: not measured,
    ``note`` says why)."""

    layer: str
    fingerprint: str
    frechet: float | None
    note: str
    pictures: int
    images: int


class Manifest:
    """The SQLite manifest of one atlas folder."""

    def __init__(self, path: str | Path, earlier_files: EarlierFiles = lambda units, images: ()) -> None:
        """Open (or create) the manifest at ``path``. A damaged file is a ``ManifestError``.
        ``earlier_files(units, images)`` names the files (pages, image copies) that an atlas writes for
        its units (layer, filter) and dataset images besides those its rows name, to record them for a
        manifest of an earlier filterviz, which kept no list of files."""
        self.path = Path(path)
        self.connection = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        try:
            self.connection.execute("PRAGMA journal_mode=WAL")  # readers never see a half-done transaction
            self.connection.execute("PRAGMA synchronous=FULL")
            # A truncated file opens without complaint; only reading every page shows what is missing.
            problems = [row[0] for row in self.connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise damage_error(self.path, problems[0])
            self._upgrade(earlier_files)
            self.connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            self.connection.close()
            if damaged(exc):
                raise damage_error(self.path, exc) from None
            raise
        except BaseException:
            self.connection.close()
            raise

    def _tables(self) -> set[str]:
        return {name for (name,) in self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _upgrade(self, earlier_files: EarlierFiles) -> None:
        """Bring a manifest of an earlier filterviz to this schema, each step in one transaction."""
        tables = self._tables()
        if "units" in tables and "files" not in tables:
            # The files its rows name, and those written for them, are the atlas's: record them, so
            # that they can be removed when no longer shown.
            with self.transaction() as sql:
                sql.execute("CREATE TABLE files (file TEXT PRIMARY KEY)")
                sql.execute("INSERT OR IGNORE INTO files SELECT file FROM units")
                images: list[str] = []
                if "examples" in tables:
                    sql.execute("INSERT OR IGNORE INTO files SELECT file FROM examples")
                    images = [image for (image,) in sql.execute("SELECT DISTINCT image FROM examples")]
                units = [(layer, k) for layer, k in sql.execute("SELECT layer, filter FROM units")]
                sql.executemany("INSERT OR IGNORE INTO files VALUES (?)",
                                [(file,) for file in earlier_files(units, images)])
        if "example_layers" in tables:
            columns = {row[1] for row in self.connection.execute("PRAGMA table_info(example_layers)")}
            missing = [name for name in _EXAMPLE_COLUMNS if name not in columns]
            if missing:
                with self.transaction() as sql:
                    for name in missing:
                        sql.execute(f"ALTER TABLE example_layers ADD COLUMN {name} {_EXAMPLE_COLUMNS[name]}")

    def close(self) -> None:
        self.connection.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements inside happen together or, after a crash, not at all."""
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
        except BaseException:
            if self.connection.in_transaction:  # SQLite may have rolled back already
                self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def units(self) -> dict[tuple[str, int], Unit]:
        rows = self.connection.execute("SELECT * FROM units")
        return {(row[0], row[1]): Unit(*row[:8], row[8] == _DEAD, row[8] != _RENDERED) for row in rows}

    def put_units(self, units: Iterable[Unit]) -> None:
        with self.transaction() as sql:
            sql.executemany("INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(u.layer, u.filter, u.fingerprint, u.file, u.bytes, u.sha256, u.start_score,
                              u.score, _DEAD if u.dead else _STUCK if u.stuck else _RENDERED) for u in units])

    def forget_units(self, layer: str, filters: Sequence[int]) -> None:
        """Drop the rows of files about to be rewritten, so that no row ever vouches for a file that
        a later, interrupted write changed."""
        with self.transaction() as sql:
            sql.executemany("DELETE FROM units WHERE layer = ? AND filter = ?", [(layer, k) for k in filters])

    def forget_examples(self, layers: Sequence[str]) -> int:
        """Drop the examples of layers whose files are about to be rewritten (see ``forget_units``), or
        that no longer hold; returns how many examples were dropped."""
        dropped = 0
        with self.transaction() as sql:
            for layer in layers:
                dropped += sql.execute("DELETE FROM examples WHERE layer = ?", (layer,)).rowcount
                sql.execute("DELETE FROM example_layers WHERE layer = ?", (layer,))
        return dropped

    def forget_results(self) -> None:
        """Forget every rendered filter, dataset example and scan, but not the files written: a fresh
        start that can still remove the files of the atlas as it was."""
        with self.transaction() as sql:
            for table in ("units", "examples", "example_layers", "scan", "trust", "trust_layers"):
                sql.execute(f"DELETE FROM {table}")

    def examples(self, layer: str | None = None) -> list[Example]:
        query = "SELECT * FROM examples" + (" WHERE layer = ?" if layer else "") + " ORDER BY layer, filter, rank"
        return [Example(*row) for row in self.connection.execute(query, (layer,) if layer else ())]

    def example_fingerprints(self) -> dict[str, str]:
        return dict(self.connection.execute("SELECT layer, fingerprint FROM example_layers"))

    def example_sources(self) -> dict[str, ExampleSource]:
        """By layer: what its examples depend on apart from the images, and the folder they came from."""
        rows = self.connection.execute("SELECT layer, settings, folder, images, (SELECT COUNT(*) FROM examples "
                                       "WHERE examples.layer = example_layers.layer) FROM example_layers")
        return {row[0]: ExampleSource(*row[1:]) for row in rows}

    def describe_examples(self, sources: dict[str, tuple[str, str, int]]) -> None:
        """Record, by layer, (settings, folder name, image count) of examples already stored."""
        with self.transaction() as sql:
            sql.executemany("UPDATE example_layers SET settings = ?, folder = ?, images = ? WHERE layer = ?",
                            [(*source, layer) for layer, source in sources.items()])

    def put_examples(self, fingerprints: dict[str, str], examples: Sequence[Example], scan: str) -> None:
        """Replace the examples of the given layers, and drop the finished scan's checkpoint."""
        with self.transaction() as sql:
            for layer, fingerprint in fingerprints.items():
                sql.execute("DELETE FROM examples WHERE layer = ?", (layer,))
                sql.execute("INSERT OR REPLACE INTO example_layers (layer, fingerprint) VALUES (?, ?)",
                            (layer, fingerprint))
            sql.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(e.layer, e.filter, e.rank, e.image, e.value, e.top, e.left, e.side, e.file)
                             for e in examples])
            sql.execute("DELETE FROM scan WHERE fingerprint = ?", (scan,))

    def scan_checkpoint(self, fingerprint: str) -> tuple[int, bytes] | None:
        row = self.connection.execute("SELECT next_image, state FROM scan WHERE fingerprint = ?",
                                      (fingerprint,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put_scan_checkpoint(self, fingerprint: str, next_image: int, state: bytes) -> None:
        with self.transaction() as sql:
            sql.execute("DELETE FROM scan")  # only the scan in progress is worth resuming
            sql.execute("INSERT INTO scan VALUES (?, ?, ?)", (fingerprint, next_image, state))

    def keep_only(self, units: set[tuple[str, int]], example_layers: set[str]) -> tuple[int, int]:
        """Forget units and examples outside the atlas as now chosen; returns how many of each."""
        examples = 0
        with self.transaction() as sql:
            stale = [key for key in sql.execute("SELECT layer, filter FROM units") if tuple(key) not in units]
            sql.executemany("DELETE FROM units WHERE layer = ? AND filter = ?", stale)
            sql.executemany("DELETE FROM trust WHERE layer = ? AND filter = ?",
                            [key for key in sql.execute("SELECT layer, filter FROM trust") if tuple(key) not in units])
            for (layer,) in list(sql.execute("SELECT layer FROM example_layers")):
                if layer not in example_layers:
                    examples += sql.execute("DELETE FROM examples WHERE layer = ?", (layer,)).rowcount
                    sql.execute("DELETE FROM example_layers WHERE layer = ?", (layer,))
        return len(stale), examples

    def put_site(self, values: dict[str, str]) -> None:
        """Record what the site shows as a whole (its model's name, recipe, seed, size), so that a reader
        of the atlas (``filterviz serve --atlas``) can say which settings made it."""
        with self.transaction() as sql:
            sql.executemany("INSERT OR REPLACE INTO site VALUES (?, ?)", sorted(values.items()))

    def site(self) -> dict[str, str]:
        """What ``put_site`` recorded (empty for an atlas of an earlier filterviz)."""
        return dict(self.connection.execute("SELECT key, value FROM site"))


    def trust_scores(self) -> dict[tuple[str, int], TrustScore]:
        return {(row[0], row[1]): TrustScore(*row) for row in self.connection.execute("SELECT * FROM trust")}

    def trust_layers(self) -> dict[str, LayerTrust]:
        return {row[0]: LayerTrust(*row) for row in self.connection.execute("SELECT * FROM trust_layers")}

    def put_trust(self, scores: Iterable[TrustScore], layer: LayerTrust | None = None) -> None:
        """Record measured scores (and a layer's Fréchet distance) together: a run killed before this
        measures them again."""
        with self.transaction() as sql:
            sql.executemany("INSERT OR REPLACE INTO trust VALUES (?, ?, ?, ?, ?, ?)",
                            [(t.layer, t.filter, t.fingerprint, t.score, t.plausibility, t.path) for t in scores])
            if layer is not None:
                sql.execute("INSERT OR REPLACE INTO trust_layers VALUES (?, ?, ?, ?, ?, ?)",
                            (layer.layer, layer.fingerprint, layer.frechet, layer.note, layer.pictures, layer.images))

    def forget_trust(self, scores: Iterable[tuple[str, int]] = (), layers: Iterable[str] = ()) -> int:
        """Drop the scores of (layer, filter) pairs and the Fréchet distances of ``layers`` that no
        longer hold; returns how many scores were dropped."""
        with self.transaction() as sql:
            dropped = sum(sql.execute("DELETE FROM trust WHERE layer = ? AND filter = ?", key).rowcount
                          for key in scores)
            sql.executemany("DELETE FROM trust_layers WHERE layer = ?", [(layer,) for layer in layers])
        return dropped

    # -- an activation atlas's rows (see ``activations``) ------------------------------------------

    def activation_data(self, layer: str, kind: str, fingerprint: str) -> bytes | None:
        """The stored result of one step (``kind``) of ``layer``'s activation atlas, if it was made from
        what ``fingerprint`` says."""
        row = self.connection.execute("SELECT data FROM activation_data WHERE layer = ? AND kind = ? AND "
                                      "fingerprint = ?", (layer, kind, fingerprint)).fetchone()
        return None if row is None else bytes(row[0])

    def put_activation_data(self, layer: str, kind: str, fingerprint: str, data: bytes,
                            drop: Sequence[str] = ()) -> None:
        """Store a step's result, replacing the one before, and drop the ``drop`` kinds (a finished
        pass's checkpoint) in the same transaction."""
        with self.transaction() as sql:
            sql.execute("INSERT OR REPLACE INTO activation_data VALUES (?, ?, ?, ?)", (layer, kind, fingerprint, data))
            sql.executemany("DELETE FROM activation_data WHERE layer = ? AND kind = ?", [(layer, k) for k in drop])

    def cells(self, layer: str) -> dict[int, Unit]:
        """The rendered cells of ``layer``'s activation atlas, by cell number (``Unit.filter``)."""
        rows = self.connection.execute("SELECT * FROM cells WHERE layer = ?", (layer,))
        return {row[1]: Unit(*row[:8], row[8] == _DEAD, row[8] != _RENDERED) for row in rows}

    def put_cells(self, cells: Iterable[Unit]) -> None:
        with self.transaction() as sql:
            sql.executemany("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(u.layer, u.filter, u.fingerprint, u.file, u.bytes, u.sha256, u.start_score,
                              u.score, _DEAD if u.dead else _STUCK if u.stuck else _RENDERED) for u in cells])

    def forget_cells(self, layer: str, cells: Sequence[int], keep: bool = False) -> None:
        """Drop the rows of ``cells`` (files about to be rewritten; see ``forget_units``), or with
        ``keep`` every row of ``layer`` but theirs."""
        with self.transaction() as sql:
            if keep:
                stale = [(layer, cell) for (cell,) in sql.execute("SELECT cell FROM cells WHERE layer = ?", (layer,))
                         if cell not in set(cells)]
            else:
                stale = [(layer, cell) for cell in cells]
            sql.executemany("DELETE FROM cells WHERE layer = ? AND cell = ?", stale)

    def forget_activations(self, layer: str) -> None:
        """Forget everything of ``layer``'s activation atlas but the files it wrote: a fresh start."""
        with self.transaction() as sql:
            sql.execute("DELETE FROM activation_data WHERE layer = ?", (layer,))
            sql.execute("DELETE FROM cells WHERE layer = ?", (layer,))

    def links(self) -> dict[str, str]:
        """The pages, besides its own, that an atlas's index links to (an activation atlas's), with labels."""
        return dict(self.connection.execute("SELECT page, label FROM links ORDER BY page"))

    def put_link(self, page: str, label: str) -> None:
        with self.transaction() as sql:
            sql.execute("INSERT OR REPLACE INTO links VALUES (?, ?)", (page, label))

    def files(self) -> set[str]:
        """Every file (relative to the atlas) that the atlas may have written and not removed since."""
        return {file for (file,) in self.connection.execute("SELECT file FROM files")}

    def claim(self, files: Iterable[str]) -> None:
        """Record files about to be written, before they are: a run killed in between leaves none that
        a later run would not know to remove."""
        with self.transaction() as sql:
            sql.executemany("INSERT OR IGNORE INTO files VALUES (?)", [(file,) for file in files])

    def release(self, files: Iterable[str]) -> None:
        """Forget files that were removed."""
        with self.transaction() as sql:
            sql.executemany("DELETE FROM files WHERE file = ?", [(file,) for file in files])
