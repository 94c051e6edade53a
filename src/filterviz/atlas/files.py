"""Files inside an atlas folder, written, read and removed without ever following a symbolic link.

An atlas writes and deletes only below its folder (``--out``, which may itself be a link). A symbolic
link below it, on the way to a file the atlas writes or removes, is refused, never followed and never
replaced: following it would write or delete outside the atlas, and replacing it would silently undo
what whoever made it wanted. ``check_tree`` refuses such a link before a run writes anything;
``write_file`` refuses it again at each write, and ``remove_file`` skips it, for a link made meanwhile.

Where each file of an atlas lives is said here and nowhere else: its pages, images, dataset examples,
style sheet and manifest, as paths relative to the atlas folder, and the links between pages.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import OutputError
from ..image import write_atomic
from ..pages import relative_href

INDEX = "index.html"
STYLE_SHEET = "style.css"
MANIFEST = "manifest.sqlite"
_SQLITE_TAILS = ("", "-wal", "-shm")  # the database, and SQLite's write-ahead log and shared memory beside it
MANIFEST_FILES = tuple(MANIFEST + tail for tail in _SQLITE_TAILS)
_IMAGES, _LAYERS, _FILTERS, _EXAMPLES = "img", "layers", "filters", "examples"
ACTIVATIONS = "activations"  # the activation atlases of the folder (see ``activations``), one folder per layer
OWN_FOLDERS = (_IMAGES, _LAYERS, _FILTERS, _EXAMPLES, ACTIVATIONS)  # everything below them is the atlas's to manage
OWN_FILES = (INDEX, STYLE_SHEET)
# ``write_atomic``'s temporary files: "." + the file's name + mkstemp's 8 random characters + ".part".
PART = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.part")


# -- where each file lives (paths relative to the atlas folder, with "/") -------------------------------


def layer_page(slug: str) -> str:
    """The page of the layer whose files are under ``slug`` (see ``selection.layer_slug``)."""
    return f"{_LAYERS}/{slug}.html"


def filter_page(slug: str, index: int) -> str:
    """The page of filter ``index`` of a layer."""
    return f"{_FILTERS}/{slug}/{index}.html"


def filter_image(slug: str, index: int) -> str:
    """The rendered picture of filter ``index`` of a layer."""
    return f"{_IMAGES}/{slug}/{index}.png"


def example_crop(slug: str, index: int, rank: int) -> str:
    """The crop of filter ``index``'s ``rank``-th dataset example."""
    return f"{_EXAMPLES}/{slug}/{index}-{rank}.png"


def source_image(relative: str) -> str:
    """Where a dataset image's small copy is, by its path in the dataset folder."""
    return f"{_EXAMPLES}/images/{hashlib.sha1(relative.encode()).hexdigest()[:16]}.jpg"


# An activation atlas's files: its own style sheet (its pages use the shared one of ``filterviz.pages``,
# which the atlas's own pages do not use yet), and by layer, its page, and each cell's page, picture
# and dataset patches.


def activation_style_sheet() -> str:
    return f"{ACTIVATIONS}/{STYLE_SHEET}"


def activation_page(slug: str) -> str:
    """The page of the activation atlas of the layer whose files are under ``slug``."""
    return f"{ACTIVATIONS}/{slug}/{INDEX}"


def cell_page(slug: str, cell: int) -> str:
    return f"{ACTIVATIONS}/{slug}/cells/{cell}.html"


def cell_image(slug: str, cell: int) -> str:
    return f"{ACTIVATIONS}/{slug}/img/{cell}.png"


def cell_patch(slug: str, image: str, box: tuple[int, int, int]) -> str:
    """A dataset patch: the square ``box`` (top, left, side) of the image at ``image`` (its path in the
    dataset folder), one file however many cells show it."""
    key = hashlib.sha1(f"{image}\0{box[0]},{box[1]},{box[2]}".encode()).hexdigest()[:16]
    return f"{ACTIVATIONS}/{slug}/patches/{key}.png"


def activation_files(slug: str | None = None) -> str:
    """The prefix of the files of one layer's activation atlas (None: of every activation atlas)."""
    return f"{ACTIVATIONS}/" if slug is None else f"{ACTIVATIONS}/{slug}/"


href = relative_href  # a link between two atlas files (the one rule for every site filterviz writes)


def index_path(root: Path) -> Path:
    """The atlas's front page."""
    return root / INDEX


def manifest_path(root: Path) -> Path:
    """The atlas's manifest (see ``manifest.Manifest``)."""
    return root / MANIFEST


def sqlite_files(database: Path) -> list[str]:
    """A SQLite database's file and the -wal and -shm files that SQLite keeps beside it."""
    return [f"{database}{tail}" for tail in _SQLITE_TAILS]


def set_aside_path(database: Path, number: int) -> Path:
    """Where a damaged manifest is moved to: ``NAME.corrupt-N``."""
    return Path(f"{database}.corrupt-{number}")


class LinkError(OutputError):
    """A symbolic link inside an atlas folder, where the atlas writes or removes files."""


def _link_error(root: Path, path: Path) -> LinkError:
    relative = path.relative_to(root).as_posix()
    return LinkError(f"cannot use atlas folder {str(root)!r}: '{relative}' is a symbolic link (to "
                     f"{os.readlink(path)!r}); an atlas writes and deletes only inside its folder, so replace the "
                     "link with a real folder or file, or give another --out")


def _parts(relative: str) -> list[str]:
    parts = relative.split("/")
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a plain relative path: {relative!r}")  # a bug, never a user's input
    return parts


def check_path(root: Path, relative: str) -> Path:
    """``root / relative``, after checking with lstat that neither a folder on the way below ``root``
    nor the file itself is a symbolic link (or a file where a folder should be)."""
    path = root
    parts = _parts(relative)
    for number, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            break  # nor is anything below it: write_file makes real folders
        if stat.S_ISLNK(mode):
            raise _link_error(root, path)
        if number < len(parts) - 1 and not stat.S_ISDIR(mode):
            raise OutputError(f"cannot write {str(root / relative)!r}: {str(path)!r} is not a folder")
    return root / relative


def write_file(root: Path, relative: str, data: bytes | str) -> None:
    """Write ``root / relative`` atomically, making its folders, never through a link (see module)."""
    target = check_path(root, relative)
    folder = root
    for part in _parts(relative)[:-1]:
        folder = folder / part
        try:
            folder.mkdir()
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):  # made a link or file since check_path
                raise _link_error(root, folder) if folder.is_symlink() else OutputError(
                    f"cannot write {str(target)!r}: {str(folder)!r} is not a folder") from None
        except OSError as exc:
            raise OutputError(f"cannot create folder {str(folder)!r}: {exc.strerror or exc}") from None
    write_atomic(target, data)


def regular_size(root: Path, relative: str) -> int | None:
    """The size of ``root / relative`` if it is a regular file reached without links, else None."""
    try:
        path = check_path(root, relative)
        status = os.lstat(path)
    except (OSError, OutputError):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def read_regular(root: Path, relative: str) -> bytes | None:
    """The bytes of ``root / relative`` if it is a regular file reached without links, else None."""
    if regular_size(root, relative) is None:
        return None
    try:
        with open(root / relative, "rb", opener=lambda path, flags: os.open(path, flags | os.O_NOFOLLOW)) as stream:
            return stream.read()
    except OSError:
        return None


def remove_file(root: Path, relative: str) -> bool:
    """Remove ``root / relative`` if it is a regular file reached without links; returns whether it is
    gone (False: a link is in the way, or something other than a file is there, and was left alone)."""
    try:
        path = check_path(root, relative)
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True
    except OutputError:
        return False
    if not stat.S_ISREG(mode):
        return False
    path.unlink(missing_ok=True)
    return True


def remove_empty_folders(root: Path, relative: str) -> None:
    """Remove the folders of ``root / relative`` that are now empty, deepest first (never ``root``,
    never a link)."""
    parts = _parts(relative)[:-1]
    while parts:
        folder = root.joinpath(*parts)
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return
            folder.rmdir()
        except OSError:  # not empty (or gone): so are the folders above it
            return
        parts.pop()


def _walk(root: Path, folder: str) -> Iterable[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) of everything under ``root / folder``, never entering a link."""
    try:
        with os.scandir(root / folder) as entries:
            found = list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in found:
        relative = f"{folder}/{entry.name}"
        yield relative, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root, relative)


def check_tree(root: Path, extra: Iterable[str] = ()) -> None:
    """Refuse, before anything is written, an atlas folder where one of the atlas's own files or
    folders (``OWN_FOLDERS``, ``OWN_FILES``, ``extra``), or anything inside those folders, is a link."""
    for name in (*OWN_FOLDERS, *OWN_FILES, *extra):
        if (root / name).is_symlink():
            raise _link_error(root, root / name)
    for folder in OWN_FOLDERS:
        for _, entry in _walk(root, folder):
            if entry.is_symlink():
                raise _link_error(root, Path(entry.path))


def part_leftovers(root: Path, names: set[str]) -> list[str]:
    """The temporary files that ``write_atomic`` left (a killed run) for any of ``names``, in the
    atlas's own folders and at its top; nothing else, whatever its name."""
    found = []
    candidates = [(entry.name, entry) for entry in os.scandir(root)]
    candidates += [(relative, entry) for folder in OWN_FOLDERS for relative, entry in _walk(root, folder)]
    for relative, entry in candidates:
        match = PART.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            folder = relative.rpartition("/")[0]
            if (f"{folder}/{match['name']}" if folder else match["name"]) in names:
                found.append(relative)
    return found
