"""Image output: the book's deprocessing, grids, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from filterviz import deprocess_image, make_grid, save_image
from filterviz.errors import OutputError


def test_deprocess_hand_computed():
    x = np.array([[[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]]])  # mean 25, std sqrt(1750 / 6) = 17.0783
    # (v - 25) / (17.0783 + 1e-5) * 0.1 + 0.5, times 255, truncated as astype('uint8') does:
    # 90.17, 105.10, 120.03, 134.97, 149.90, 164.83
    expected = np.array([[[90, 105, 120], [134, 149, 164]]], dtype=np.uint8)
    out = deprocess_image(x)
    assert out.dtype == np.uint8
    assert np.array_equal(out, expected)
    assert x[0, 0, 1] == 10.0  # the input is not modified


def test_deprocess_clips_outliers():
    x = np.zeros((1, 10, 3))
    x[0, 0, 0] = 1000.0  # an outlier many standard deviations out
    out = deprocess_image(x)
    assert out[0, 0, 0] == 255
    assert out[0, 5, 1] == int(255 * (0.5 - 0.1 * (1000 / 30) / (1000 / 30 * np.sqrt(29) + 1e-5)))


def test_grid_layout():
    tiles = [np.full((4, 3, 3), value, np.uint8) for value in (10, 20, 30)]
    grid = make_grid(tiles, per_row=2, margin=5)
    assert grid.shape == (4 + 5 + 4, 3 + 5 + 3, 3)
    assert (grid[0:4, 0:3] == 10).all() and (grid[0:4, 8:11] == 20).all() and (grid[9:13, 0:3] == 30).all()
    assert (grid[4:9] == 0).all() and (grid[:, 3:8] == 0).all() and (grid[9:13, 8:11] == 0).all()


def test_book_grid_size():
    tiles = np.full((64, 64, 64, 3), 128, np.uint8)
    assert make_grid(tiles).shape == (8 * 64 + 7 * 5, 8 * 64 + 7 * 5, 3)


def test_crossed_tile_is_marked():
    tiles = [np.full((9, 9, 3), 128, np.uint8)] * 2
    grid = make_grid(tiles, per_row=2, margin=1, crossed=[False, True])
    assert (grid[:, :9] == 128).all()
    assert tuple(grid[4, 10 + 4]) == (255, 0, 0) and tuple(grid[0, 10]) == (255, 0, 0)


def test_save_image_roundtrip_and_no_temp_files(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = save_image(image, tmp_path / "a.png")
    assert np.array_equal(np.array(Image.open(path)), image)
    assert os.listdir(tmp_path) == ["a.png"]


@pytest.mark.parametrize("name", ["missing/a.png", "a.unknownext", "."])
def test_save_image_refuses_bad_paths(tmp_path, name):
    with pytest.raises(OutputError, match="cannot write"):
        save_image(np.zeros((2, 2, 3), np.uint8), tmp_path / name)
    assert not (tmp_path / "missing").exists() and os.listdir(tmp_path) == []


def test_stretch_maps_percentiles_to_the_full_range():
    from filterviz.image import stretch_image

    x = np.linspace(50, 150, 101 * 3).reshape(101, 3, 1)
    out = stretch_image(x)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    expected = np.clip(np.rint((x - np.percentile(x, 1)) / (np.percentile(x, 99) - np.percentile(x, 1)) * 255), 0, 255)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o002, 0o664), (0o022, 0o644)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    from filterviz.image import write_atomic

    previous = os.umask(umask)
    try:
        save_image(np.zeros((2, 2, 3), np.uint8), tmp_path / "a.png")
        write_atomic(tmp_path / "b.txt", "text")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == mode
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.txt"]  # no temporary file left


@pytest.mark.parametrize(("name", "message"), [
    ("a.psd", r"Pillow reads .psd files here but cannot write a color picture as one; use .png \(or another type "
              r"that Pillow writes: .jpg, .webp, "),
    ("a.xbm", r"cannot write a color picture as one"),
    ("a.txt", r"unknown image type '.txt'"),
    ("a", r"a file name without a type suffix"),
    ("n" * 241 + ".png", r"is 260 bytes long \(with the 15 bytes"),
    ("file.txt/a.png", r"'.*file.txt' is a file, not a folder"),
])
def test_check_writable_says_what_is_wrong(tmp_path, name, message):
    from filterviz.image import check_writable

    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match=message):
        check_writable(tmp_path / name)
    check_writable(tmp_path / ("n" * 236 + ".png"))  # the longest name that works, with the temporary file's


def test_writable_types_are_those_pillow_saves_in_color():
    from filterviz.image import writable_types

    types = writable_types()
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".bmp", ".gif"} <= set(types)
    assert not {".psd", ".xbm", ".txt", ""} & set(types)


def test_check_folder_writable(tmp_path):
    from filterviz.image import check_folder_writable

    (tmp_path / "file.txt").write_text("x")
    assert check_folder_writable(tmp_path / "new" / "deeper", "figures") == tmp_path / "new" / "deeper"
    with pytest.raises(OutputError, match="cannot write figures into .*file.txt': it is a file; give a folder"):
        check_folder_writable(tmp_path / "file.txt", "figures")
    with pytest.raises(OutputError, match="file.txt' is a file, not a folder"):
        check_folder_writable(tmp_path / "file.txt" / "sub", "figures")
    assert os.listdir(tmp_path) == ["file.txt"]  # checks make no folder


def test_too_large_a_picture_is_refused():
    from filterviz.image import check_image_size

    with pytest.raises(OutputError, match=r"the picture would be 20000x20000 px \(1.1 GiB of pixels\), more than "
                                          r"the 178956970 px that Pillow opens; smaller"):
        check_image_size("a.png", 20000, 20000, "smaller")
    with pytest.raises(OutputError, match=r"WEBP holds at most 16383 px a side; smaller, or write .png"):
        check_image_size("a.webp", 16384, 8, "smaller")
    check_image_size("a.png", 16384, 8, "smaller")
