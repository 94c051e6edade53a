"""Image output: deprocess modes (pixels to a picture), grids of tiles, and atomic PNG writes."""

from __future__ import annotations

import errno
import io
import os
import secrets
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .catalog import DEPROCESS  # declared without numpy, for the command line
from .errors import OutputError, PathError, first_line


def deprocess_image(x: np.ndarray) -> np.ndarray:
    """The book's deprocessing: center, scale to std 0.1, shift to 0.5, clip to [0, 1], to uint8.

    Works on a copy; the input array is left as it was.
    """
    x = np.array(x, dtype=np.float64)
    x -= x.mean()
    x /= x.std() + 1e-5
    x *= 0.1
    x += 0.5
    x = np.clip(x, 0, 1)
    x *= 255
    return np.clip(x, 0, 255).astype("uint8")


def stretch_image(x: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Stretch an image's ``low``-``high`` percentile range to 0..255 (clipping the rest), to uint8."""
    x = np.asarray(x, dtype=np.float64)
    bottom, top = np.percentile(x, [low, high])
    scaled = (x - bottom) / max(top - bottom, 1e-12)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def as_is(x: np.ndarray) -> np.ndarray:
    """The pixels as they are, rounded and clipped to 0..255, to uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class Deprocess:
    """A deprocess mode: how an optimized image (H, W, C), pixel units (RGB, or the model's own C
    channels), becomes a uint8 picture of the same shape. A recipe's ``deprocess`` field names one;
    ``register_deprocess(Deprocess("name", function))`` adds one."""

    def __init__(self, name: str, function: Callable[[np.ndarray], np.ndarray], summary: str = "") -> None:
        self.name = name
        self.function = function
        self.summary = summary

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        picture = np.asarray(self.function(pixels))
        if picture.dtype != np.uint8 or picture.shape != np.shape(pixels):
            raise OutputError(f"deprocess mode {self.name!r} gave a {picture.dtype} array of shape {picture.shape}; "
                              f"it must give uint8 of the image's shape {np.shape(pixels)}")
        return picture

    def __repr__(self) -> str:
        return f"Deprocess({self.name!r})"


def register_deprocess(mode: Deprocess) -> Deprocess:
    """Add a deprocess mode under its ``name``."""
    return DEPROCESS.register(mode)


register_deprocess(Deprocess("book", deprocess_image, "the book's deprocess_image"))
register_deprocess(Deprocess("none", as_is, "the pixels as they are"))
register_deprocess(Deprocess("stretch", stretch_image, "1st-99th percentile to 0..255, as MACO shows its images"))


def default_shown(channels: int) -> tuple[int, ...]:
    """The channels a picture of a ``channels``-channel image shows unless told: RGB's three, one
    channel as gray, the first three of more than three (RGB + near-infrared: its RGB), and the first
    of two, as gray."""
    return tuple(range(3)) if channels >= 3 else (0,)


def check_shown(shown: Sequence[int], channels: int) -> tuple[int, ...]:
    """``shown`` (channel indices: one, shown as gray, or three, as red, green and blue) checked against
    an image of ``channels`` channels; a one-line error names what would be right."""
    shown = tuple(int(index) for index in shown)
    if len(shown) not in (1, 3):
        raise OutputError(f"--show-channels takes 1 channel (shown as gray) or 3 (shown as red, green, blue), not "
                          f"{len(shown)}: e.g. --show-channels {','.join(map(str, default_shown(max(channels, 3))))}")
    bad = [index for index in shown if not 0 <= index < channels]
    if bad:
        raise OutputError(f"--show-channels {','.join(map(str, shown))}: the image has {channels} channel"
                          f"{'s' * (channels != 1)}, 0-{channels - 1}; channel {bad[0]} is not one of them")
    return shown


def show_channels(images: np.ndarray, shown: Sequence[int] | None = None) -> np.ndarray:
    """Pictures (..., H, W, C) as a picture file shows them: ``shown`` channels (default
    ``default_shown``) in that order, as (..., H, W, 3) RGB, or one as (..., H, W) gray. An RGB picture
    with the default is returned as it is."""
    images = np.asarray(images)
    channels = images.shape[-1]
    shown = default_shown(channels) if shown is None else check_shown(shown, channels)
    if channels == 3 and shown == (0, 1, 2):
        return images
    return images[..., shown[0]] if len(shown) == 1 else images[..., list(shown)]


def make_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    per_row: int = 8,
    margin: int = 5,
    crossed: Sequence[bool] = (),
) -> np.ndarray:
    """Tile equally sized uint8 images, (H, W, 3) RGB or (H, W) gray, in reading order, ``per_row`` to a
    row, with black ``margin``-pixel gaps between tiles (none around the edge), as the book's 8x8
    figure. The grid has the tiles' channels.

    Tiles flagged in ``crossed`` get an X (red; on gray tiles, white edged with black), so that a filter
    that could not be rendered (a dead filter) is never mistaken for a picture.
    """
    images = [np.asarray(image) for image in images]
    if not images:
        raise ValueError("make_grid needs at least one image")
    height, width = images[0].shape[:2]
    rows = -(-len(images) // per_row)
    columns = min(per_row, len(images))
    grid = np.zeros((rows * height + (rows - 1) * margin, columns * width + (columns - 1) * margin,
                     *images[0].shape[2:]), np.uint8)
    for index, image in enumerate(images):
        top = (index // per_row) * (height + margin)
        left = (index % per_row) * (width + margin)
        tile = image.copy()
        if index < len(crossed) and crossed[index]:
            _cross_out(tile)
        grid[top:top + height, left:left + width] = tile
    return grid


SIDE_BY_SIDE_MARGIN = 5  # px of black between a photo and its result, as between a grid's tiles


def side_by_side(left: np.ndarray, right: np.ndarray, margin: int = SIDE_BY_SIDE_MARGIN) -> np.ndarray:
    """Two uint8 pictures in one, ``left`` then ``right``, ``margin`` black pixels apart: (H, W) gray or
    (H, W, C), both of the same channels; of different heights, each at the top, the rest black (a
    photo beside a grid of its filters)."""
    left, right = np.asarray(left), np.asarray(right)
    if left.shape[2:] != right.shape[2:] or left.ndim != right.ndim:
        raise ValueError(f"pictures of shapes {left.shape} and {right.shape} have different channels")
    height = max(left.shape[0], right.shape[0])
    picture = np.zeros((height, left.shape[1] + margin + right.shape[1], *left.shape[2:]), np.uint8)
    picture[:left.shape[0], :left.shape[1]] = left
    picture[:right.shape[0], left.shape[1] + margin:] = right
    return picture


def _cross_out(tile: np.ndarray) -> None:
    height, width = tile.shape[:2]
    rgb = tile.ndim == 3 and tile.shape[2] == 3
    steps = np.linspace(0, 1, 4 * max(height, width))
    for thickness in (-1, 1, 0):  # on gray, the middle line (drawn last) white, its edges black
        color = (255, 0, 0) if rgb else 255 * (thickness == 0)
        rows = np.clip((steps * (height - 1)).round().astype(int) + thickness, 0, height - 1)
        cols = (steps * (width - 1)).round().astype(int)
        tile[rows, cols] = color
        tile[rows, width - 1 - cols] = color


# Pillow's formats that can write an RGB picture, by suffix (found once, by writing a tiny one).
_WRITABLE: dict[str, str] = {}
# The widest and tallest picture some formats can hold (their headers store 16-bit or 14-bit sides).
_MAX_SIDE = {"JPEG": 65535, "MPO": 65535, "GIF": 65535, "TGA": 65535, "PCX": 65535, "SGI": 65535, "WEBP": 16383}
# ``write_atomic``'s temporary file is named "." + the name + "." + 8 random characters + ".part".
TEMP_NAME_EXTRA = len("..12345678.part")


def writable_types() -> dict[str, str]:
    """The file suffixes (``.png``...) of the image types that Pillow writes here, and their formats.

    Pillow knows more suffixes than it can write (``.psd`` it only reads; ``.xbm`` holds no color), so
    each format is tried once on a tiny RGB image: what works here, without a deprecation warning,
    is what is offered."""
    if not _WRITABLE:
        Image.init()
        for suffix, name in sorted(Image.registered_extensions().items()):
            if name not in Image.SAVE:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    Image.new("RGB", (2, 2)).save(io.BytesIO(), format=name)
            except Exception:  # noqa: BLE001 - any failure means: not offered
                continue
            _WRITABLE[suffix] = name
    return _WRITABLE


def _offered_types() -> list[str]:
    """One suffix for each type Pillow writes, other than PNG, the most common first (for messages)."""
    by_format: dict[str, str] = {}
    for suffix, name in writable_types().items():
        if name != "PNG" and (name not in by_format or suffix in _COMMON or suffix == "." + name.lower()):
            if by_format.get(name) not in _COMMON:
                by_format[name] = suffix
    return sorted(by_format.values(), key=lambda suffix: (_COMMON.index(suffix) if suffix in _COMMON else len(_COMMON),
                                                          suffix))


_COMMON = (".jpg", ".webp", ".tif", ".bmp", ".gif", ".jp2")


def quote_path(path: str | os.PathLike[str], limit: int = 80) -> str:
    """A path as quoted in a message: a long one shortened in the middle, so that the message stays
    readable on one line."""
    text = os.fsdecode(path)
    return repr(text if len(text) <= limit else text[:limit // 2] + "..." + text[-limit // 2:])


def _limit(folder: str, name: str, default: int) -> int:
    """A file system limit (``PC_NAME_MAX``, ``PC_PATH_MAX``) at ``folder``, or ``default`` where the
    system does not say."""
    try:
        value = os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):
        return default
    return value if value and value > 0 else default


def _existing_folder(path: str) -> str:
    """The nearest folder on the way to ``path`` that exists (``path`` itself, if it is one)."""
    current = os.path.abspath(path)
    while not os.path.isdir(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    return current


def check_path(path: str | os.PathLike[str], what: str, extra: int = 0) -> str:
    """Refuse a path that no file can have here: empty, holding a NUL character, with a name longer
    than the file system allows (``extra`` bytes more are added to the last name: room for a
    temporary file's), or longer as a whole than the system takes. ``what`` says what it is for, as
    "cannot use {what} ...". Returns the path as text."""
    try:
        text = os.fsdecode(path)
    except TypeError:
        raise PathError(f"cannot use {what} {path!r}: it is not a path") from None
    if not text:
        raise PathError(f"cannot use {what} '': the path is empty; give a file or folder name")
    if "\0" in text:
        raise PathError(f"cannot use {what} {quote_path(text)}: a path cannot hold a NUL character")
    if not text.strip():
        raise PathError(f"cannot use {what} {text!r}: the path is only spaces; give a file or folder name")
    folder = _existing_folder(os.path.dirname(text) or ".")
    try:
        size = len(os.fsencode(text))
    except UnicodeError:  # a lone surrogate, from a str that did not come from the file system
        raise PathError(f"cannot use {what} {quote_path(text)}: it holds characters that no file name here can "
                        "hold") from None
    longest = _limit(folder, "PC_PATH_MAX", 4096) - 1  # one byte for the C string's end
    if size > longest:
        raise PathError(f"cannot use {what} {quote_path(text)}: the path is {size} bytes long, more than the "
                        f"{longest} this system allows; give a shorter one")
    name_max = _limit(folder, "PC_NAME_MAX", 255)
    names = [part for part in text.replace(os.sep, "/").split("/") if part]
    for number, part in enumerate(names):
        size = len(os.fsencode(part)) + (extra if number == len(names) - 1 else 0)
        if size > name_max:
            note = (f" (with the {extra} bytes that filterviz adds to name its temporary file while writing)"
                    if extra and number == len(names) - 1 else "")
            raise PathError(f"cannot use {what} {quote_path(text)}: the name {quote_path(part, 40)} is {size} bytes "
                            f"long{note}, more than the {name_max} that this file system allows; give a shorter name")
    return text


def _folder_problem(folder: str) -> str | None:
    """Why files cannot be written in ``folder``, or, where it is missing, why it cannot be made
    (a file on the way, a folder above that is not writable); None if nothing stands in the way."""
    if os.path.isdir(folder):
        return None if os.access(folder, os.W_OK | os.X_OK) else f"folder {quote_path(folder)} is not writable"
    existing = _existing_folder(folder)
    first_missing = os.path.join(existing, os.path.relpath(os.path.abspath(folder), existing).split(os.sep)[0])
    if not os.path.isabs(folder):  # named as the user named the path
        existing, first_missing = os.path.relpath(existing), os.path.relpath(first_missing)
    if os.path.lexists(first_missing):
        kind = "a file" if os.path.isfile(first_missing) else "something else"
        return f"{quote_path(first_missing)} is {kind}, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder {quote_path(existing)} is not writable"
    return None


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, before any work, if an image cannot be written at ``path``: a path no file can have,
    a folder, a type Pillow cannot write, a folder that is missing, a file, or not writable."""
    text = check_path(path, "output", extra=TEMP_NAME_EXTRA)
    target = Path(text)
    if os.path.isdir(text):
        raise OutputError(f"cannot write {quote_path(text)}: it is a folder; give a file name such as {target / 'out.png'}")
    suffix = target.suffix.lower()
    if suffix not in writable_types():
        if not suffix:
            why = "a file name without a type suffix"
        elif suffix in Image.registered_extensions():
            why = f"Pillow reads {suffix} files here but cannot write a color picture as one"
        else:
            why = f"unknown image type {suffix!r}"
        raise OutputError(f"cannot write {quote_path(text)}: {why}; use .png (or another type that Pillow writes: "
                          f"{', '.join(_offered_types())})")
    folder = os.path.dirname(text) or "."
    problem = _folder_problem(folder)
    if problem is None and not os.path.isdir(folder):
        problem = f"folder {quote_path(folder)} does not exist; create it first"
    if problem:
        raise OutputError(f"cannot write {quote_path(text)}: {problem}")
    return target


def check_folder_writable(path: str | os.PathLike[str], what: str) -> Path:
    """Fail early, before any work, if files cannot be written into folder ``path`` (made, with the
    folders above it, where missing): a path no folder can have, a file, a file on the way, or a
    folder that is not writable. ``what`` names what goes there: "cannot write {what} into ..."."""
    text = check_path(path, "folder", extra=TEMP_NAME_EXTRA)
    if os.path.lexists(text) and not os.path.isdir(text):
        raise OutputError(f"cannot write {what} into {quote_path(text)}: it is a file; give a folder")
    problem = _folder_problem(text)
    if problem:
        raise OutputError(f"cannot write {what} into {quote_path(text)}: {problem}")
    return Path(text)


def check_image_size(path: str | os.PathLike[str], width: int, height: int, hint: str) -> None:
    """Refuse, before any work, a picture too large to write or to open again: more pixels than
    Pillow opens (it refuses larger files as decompression bombs), or wider than its type holds.
    ``hint`` says how to make it smaller."""
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2 ** 28
    kind = writable_types().get(Path(os.fsdecode(path)).suffix.lower(), "PNG")
    side = _MAX_SIDE.get(kind, 2 ** 31 - 1)
    if width * height > limit:
        raise OutputError(f"cannot write {quote_path(path)}: the picture would be {width}x{height} px "
                          f"({_bytes_text(3 * width * height)} of pixels), more than the {limit} px that Pillow "
                          f"opens; {hint}")
    if max(width, height) > side:
        raise OutputError(f"cannot write {quote_path(path)}: the picture would be {width}x{height} px, and {kind} "
                          f"holds at most {side} px a side; {hint}, or write .png")


def _bytes_text(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"  # not reached


def _picture(image: np.ndarray, what: str) -> np.ndarray:
    """An image that Pillow writes: (H, W, 3) RGB or (H, W) gray ((H, W, 1) becomes (H, W)); other
    channel counts are refused (``show_channels`` chooses the ones to show)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return image
    raise OutputError(f"cannot write {what}: a picture is (H, W, 3) RGB or (H, W) gray, not {image.shape}; choose "
                      "the channels to show (--show-channels, filterviz.show_channels)")


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) RGB or (H, W) gray uint8 image as PNG file bytes (the same image always gives the
    same bytes)."""
    stream = io.BytesIO()
    Image.fromarray(_picture(image, "a PNG")).save(stream, format="PNG")
    return stream.getvalue()


_TEMP_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _open_temp(target: Path) -> tuple[int, Path]:
    """A new temporary file next to ``target``, open for writing. Created with mode 0666, from which
    the system takes away the umask (and applies a folder's default ACL), as for any new file; mkstemp's
    0600 is meant for secrets, and a fixed chmod would ignore the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = target.parent / f".{target.name}.{''.join(secrets.choice(_TEMP_CHARACTERS) for _ in range(8))}.part"
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target))


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then a rename, so an
    interrupted run never leaves a half-written file. Text is written as UTF-8. The file gets the
    mode of any new file (0666 less the umask)."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, temp = _open_temp(target)
    except OSError as exc:
        raise OutputError(f"cannot write {quote_path(target)}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(payload)
        os.replace(temp, target)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {quote_path(target)}: {exc.strerror or exc}") from None
        raise
    return target


def save_image(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an (H, W, 3) RGB or (H, W) gray uint8 image atomically (see ``write_atomic``), in the format
    its suffix names."""
    target = check_writable(path)
    image = _picture(image, quote_path(target))
    check_image_size(target, image.shape[1], image.shape[0], "make it smaller")
    stream = io.BytesIO()
    try:
        Image.fromarray(image).save(stream, format=writable_types()[target.suffix.lower()])
    except (OSError, ValueError) as exc:  # a limit of the format that the checks above do not know
        raise OutputError(f"cannot write {quote_path(target)}: {first_line(exc)}; write .png") from None
    return write_atomic(target, stream.getvalue())


def array_file(path: str | os.PathLike[str]) -> Path:
    """Where the pixels of a picture written to ``path`` go: the same name with ``.npy``."""
    return Path(path).with_suffix(".npy")


def save_array(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``array`` as a ``.npy`` file (``np.save``'s format, no pickles) atomically."""
    target = Path(check_path(path, "output", extra=TEMP_NAME_EXTRA))
    stream = io.BytesIO()
    np.save(stream, np.asarray(array), allow_pickle=False)
    return write_atomic(target, stream.getvalue())
