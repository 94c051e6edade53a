"""Renders that start from a photo: caricature and closeness terms against hand computations, the start
photo read as the atlas reads its photos, MACO from a photo's phase, side-by-side pictures, and the
command line's --start and --side-by-side (with their bad input: one line, exit 2, nothing written)."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import filterviz
from filterviz.cli import main
from filterviz.errors import FilterVizError, FilterVizWarning
from filterviz.image import SIDE_BY_SIDE_MARGIN, side_by_side
from filterviz.objectives import (IMAGE, Caricature, Close, Rows, batch_scores, caricature, channel, close,
                                  parse_objective, start_layer)
from filterviz.params import MacoParameterization, rgb_to_decorrelated
from filterviz.starts import load_photo, start_images

from conftest import save_bands, tiny_model

A = "features.3"


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> str:
    """A real photo (scikit-image's cat), not square, as a JPEG."""
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photo") / "cat.jpg"
    image = Image.fromarray(skimage_data.chelsea())
    image.thumbnail((60, 40))
    image.save(path)
    return str(path)


# -- the terms, against plain loops ----------------------------------------------------------------

def test_caricature_and_close_match_a_plain_computation():
    image, photo = randn(6, 4, 3, 3), randn(6, 4, 3, 3, seed=1).abs()  # 2 images x 3 views
    pixels, start_pixels = randn(2, 3, 5, 5) * 40 + 128, randn(2, 3, 5, 5, seed=2) * 40 + 128
    data = {A: image, start_layer(A): photo, IMAGE: pixels, start_layer(IMAGE): start_pixels}
    objectives = [caricature(A), caricature(A, 0.5) - 2 * close(A) + close("pixels")]
    scores = batch_scores(objectives, data, views=3)
    for index, objective in enumerate(objectives):
        expected = 0.0
        for weight, term in objective.terms:
            values = []
            for view in range(3 * index, 3 * index + 3):
                a, p = image[view].flatten().numpy(), photo[view].flatten().numpy()
                if isinstance(term, Caricature):
                    cosine = a @ p / np.sqrt((a @ a) * (p @ p))
                    values.append(a @ p / (p @ p) * max(cosine, 0.1) ** term.power)
                elif term.layer == A:
                    values.append(-((a - p) ** 2).sum() / (p @ p))
            if term.layer == IMAGE:
                values = [-(((pixels[index] - start_pixels[index]) / 255).numpy() ** 2).mean()]
            expected += weight * np.mean(values)
        assert float(scores[index]) == pytest.approx(expected, rel=1e-12)
    # at the photo itself: a caricature of 1, closeness 0
    same = {A: photo, start_layer(A): photo, IMAGE: pixels, start_layer(IMAGE): pixels}
    assert batch_scores([caricature(A)], same, 6).tolist() == pytest.approx([1.0])
    assert batch_scores([close(A) + close("pixels")], same, 6).tolist() == [0.0]


def test_text_syntax_and_names():
    assert parse_objective("caricature:blocks.5") == caricature("blocks.5")
    assert parse_objective("caricature:blocks.5:0.5").terms[0][1] == Caricature("blocks.5", 0.5)
    assert parse_objective("close:pixels").terms[0][1] == Close(IMAGE)
    objective = parse_objective("channel:blocks.9:40 + 0.5*close:blocks.2 - caricature:blocks.5:4")
    assert objective.name == "channel(blocks.9,40) + 0.5*close(blocks.2) - caricature(blocks.5,4)"
    assert objective.start_layers == {"blocks.2", "blocks.5"}
    with pytest.raises(FilterVizError, match="close needs a layer: close:LAYER"):
        parse_objective("close")
    with pytest.raises(FilterVizError, match="compares the image with the photo it starts from"):
        batch_scores([caricature(A)], {A: randn(1, 2, 2, 2)}, 1)  # scored without the start's data


# -- renders from a photo --------------------------------------------------------------------------

def test_caricature_starts_at_the_photo_and_exaggerates_it(photo_file):
    """Step 0 is the photo itself; after the run the caricature rose (the layer sees more of what it sees
    in the photo), measured again here on the final pixels, and its direction stayed the photo's."""
    model = tiny_model()
    photo = load_photo(photo_file, 16)
    still = filterviz.render(model, [f"caricature:{A}"], start=photo_file, size=16, steps=0)
    assert np.array_equal(still.pixels[0], photo) and np.array_equal(still.start[0], photo)
    assert still.start_score[0] == pytest.approx(1.0)
    result = filterviz.render(model, [f"caricature:{A}"], start=photo_file, size=16, steps=10)
    with torch.no_grad():
        a, p = (model.activations(torch.as_tensor(x[None]).permute(0, 3, 1, 2), A).flatten().numpy()
                for x in (result.pixels[0], photo))
    cosine = a @ p / np.sqrt((a @ a) * (p @ p))
    assert result.score[0] == pytest.approx(a @ p / (p @ p) * cosine ** 2, rel=1e-9)
    assert result.score[0] > 1.05 and a @ p / (p @ p) > 1.05 and cosine > 0.9


def test_fourier_starts_at_the_photo_and_maco_at_its_phase(photo_file):
    model = tiny_model()
    photo = load_photo(photo_file, 16)
    fourier = filterviz.render(model, [f"caricature:{A}"], "lucid", start=photo_file, size=16, steps=0)
    assert np.abs(fourier.pixels[0] - photo.clip(0.5, 254.5)).max() < 1e-6
    # MACO keeps its magnitude: its first image has the photo's phase where forward makes it
    image = MacoParameterization().create(16, [0], 0, photo[None])
    wanted = torch.angle(torch.fft.rfft2(rgb_to_decorrelated(
        torch.logit(torch.as_tensor(photo[None]).permute(0, 3, 1, 2).clamp(0.5, 254.5) / 255))))
    got = torch.angle(torch.fft.rfft2(image.forward_decorrelated().detach()))
    difference = torch.remainder(got - wanted + np.pi, 2 * np.pi) - np.pi
    difference[..., 0, 0] = 0  # the mean: MACO standardizes the image
    assert difference.abs().max() < 1e-6
    first = image().detach().permute(0, 2, 3, 1).numpy()[0]
    noise = MacoParameterization().create(16, [0], 0, None)().detach().permute(0, 2, 3, 1).numpy()[0]
    assert np.corrcoef(first.ravel(), photo.ravel())[0, 1] > 0.6 > abs(np.corrcoef(noise.ravel(), photo.ravel())[0, 1])
    maco = filterviz.render(model, [f"caricature:{A}"], "maco", start=photo_file, size=16, view_size=16, steps=10,
                            seed=0)
    assert maco.score[0] > maco.start_score[0]  # below 1 at the start: the cosine can rise


def test_the_photo_is_seen_through_the_same_transforms():
    """close:LAYER alone from the photo: each step's view of the image and of the photo are the same
    (twin random draws), so the score stays 0 and the image never moves. Drawn apart, they would differ."""
    model = tiny_model()
    photo = np.random.default_rng(0).uniform(30, 220, (16, 16, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FilterVizWarning)
        result = filterviz.render(model, [f"close:{A}"], start=photo, steps=4, jitter=3, flip=True,
                                  scales=(0.9, 1.1), seed=0)
    assert np.array_equal(result.pixels[0], photo) and result.stuck[0] and not result.dead[0]
    assert "stuck" in str(caught[0].message)
    accent = filterviz.render(model, [channel(A, 1) + 3 * close(A)], start=photo, steps=4, jitter=3, seed=0)
    assert not np.array_equal(accent.pixels[0], photo) and accent.score[0] > accent.start_score[0]


def test_start_as_file_array_or_arrays_is_the_same(photo_file):
    model = tiny_model()
    photo = load_photo(photo_file, 16)
    # the photo's middle square, as Pillow makes it by hand
    with Image.open(photo_file) as opened:
        image = opened.convert("RGB")
    scale = 16 / min(image.size)
    resized = image.resize((max(16, round(image.width * scale)), 16), Image.Resampling.BICUBIC)
    left = (resized.width - 16) // 2
    assert np.array_equal(photo, np.asarray(resized.crop((left, 0, left + 16, 16)), dtype=np.float64))
    objectives = [channel(A, 1), caricature(A)]
    by_file = filterviz.render(model, objectives, start=photo_file, size=16, steps=3)
    by_array = filterviz.render(model, objectives, start=photo, steps=3)
    by_arrays = filterviz.render(model, objectives, start=np.stack([photo, photo]), steps=3)
    assert np.array_equal(by_file.pixels, by_array.pixels) and np.array_equal(by_file.pixels, by_arrays.pixels)
    filters = filterviz.render_filters(model, A, [1, 2], start=photo_file, size=16, steps=3)
    assert np.array_equal(filters.pixels[0], by_file.pixels[0])
    gray = start_images(photo_file, 1, 16, 1)[0]
    assert gray.shape == (16, 16, 1) and np.array_equal(gray[..., 0], np.asarray(
        Image.fromarray(photo.astype(np.uint8)).convert("L"), dtype=np.float64))


@pytest.mark.parametrize("start, options, message", [
    (None, {}, r"caricature\(features.3\) compares the image with the photo it starts from; give one: --start"),
    ("missing.jpg", {}, r"start photo 'missing.jpg' does not exist; give a readable .jpg or .png photo"),
    (np.zeros((16, 12, 3)), {}, r"start images must be square, not 16x12"),
    (np.zeros((16, 16, 1)), {}, r"start must have shape \(1, H, W, 3\)"),
    (np.full((16, 16, 3), np.nan), {}, r"NaN or infinite"),
    (np.ones((16, 16, 3)), {"size": 32}, r"the start images are 16 px and the size asked is 32"),
    ("list", {}, r"start must be a photo file or an array"),
], ids=["no start", "missing", "not square", "channels", "nan", "size", "type"])
def test_bad_starts_are_refused_in_one_line(start, options, message):
    with pytest.raises(FilterVizError, match=message):
        filterviz.render(tiny_model(), [f"caricature:{A}"], start=[1] if isinstance(start, str) and start == "list" else start, steps=1,
                         **options)


def test_a_photo_that_gives_zeros_at_the_layer_is_refused():
    model = tiny_model()
    with torch.no_grad():  # a layer whose ReLU is off everywhere for this photo
        model.module.features[5].bias.fill_(-1e6)
    with pytest.raises(FilterVizError, match="gives nothing but zeros at features.6"):
        filterviz.render(model, ["caricature:features.6"], start=np.full((16, 16, 3), 128.0), steps=1)


# -- side by side ----------------------------------------------------------------------------------

def test_side_by_side_puts_the_photo_left_of_the_result():
    left, right = np.full((4, 3, 3), 200, np.uint8), np.full((6, 2, 3), 50, np.uint8)
    picture = side_by_side(left, right, margin=2)
    assert picture.shape == (6, 7, 3)
    assert (picture[:4, :3] == 200).all() and (picture[4:, :3] == 0).all() and (picture[:, 3:5] == 0).all()
    assert (picture[:, 5:] == 50).all()
    model = tiny_model()
    photo = np.random.default_rng(1).uniform(0, 255, (16, 16, 3))
    result = filterviz.render(model, [channel(A, 1) + close("pixels")], start=photo, steps=2)
    pairs = result.side_by_side()
    assert pairs.shape == (1, 16, 32 + SIDE_BY_SIDE_MARGIN, 3)
    assert np.array_equal(pairs[0, :, :16], np.clip(np.rint(photo), 0, 255).astype(np.uint8))
    assert np.array_equal(pairs[0, :, 16 + SIDE_BY_SIDE_MARGIN:], result.images[0])
    with pytest.raises(FilterVizError, match="started from noise"):
        filterviz.render(model, [channel(A, 1)], steps=1, size=16).side_by_side()


# -- the command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    return str(save_bands(tmp_path_factory.mktemp("model") / "bands.pt", 3))


def test_cli_render_and_grid_write_the_photo_beside_the_result(tmp_path, capsys, photo_file, model_file):
    out = tmp_path / "caricature.png"
    assert main(["render", model_file, "--objective", "caricature:features.3", "--start", photo_file,
                 "--side-by-side", "--size", "16", "--steps", "3", "--seed", "0", "-o", str(out), "-q"]) == 0
    model = filterviz.load_model(model_file, device="cpu")
    expected = filterviz.render(model, ["caricature:features.3"], start=photo_file, size=16, steps=3, seed=0)
    assert np.array_equal(np.asarray(Image.open(out)), expected.side_by_side()[0])
    grid = tmp_path / "grid.png"
    assert main(["grid", model_file, "features.3", "--filters", "0-2", "--start", photo_file, "--side-by-side",
                 "--size", "16", "--steps", "2", "-o", str(grid), "-q"]) == 0
    picture = np.asarray(Image.open(grid))
    assert picture.shape == (16, 16 + SIDE_BY_SIDE_MARGIN + 3 * 16 + 2 * 5, 3)
    assert np.array_equal(picture[:, :16], load_photo(photo_file, 16).astype(np.uint8))


@pytest.mark.parametrize("argv, message", [
    (["render", "{model}", "--objective", "caricature:features.3", "-o", "x.png"],
     r"caricature\(features.3\) compares the image with the photo it starts from; give one: --start PHOTO"),
    (["render", "{model}", "features.3", "0", "--side-by-side", "-o", "x.png"],
     r"--side-by-side shows the start photo beside the result; add --start PHOTO"),
    (["grid", "{model}", "features.3", "--side-by-side", "-o", "x.png"], r"--side-by-side shows the start photo"),
    (["render", "{model}", "features.3", "0", "--start", "missing.jpg", "-o", "x.png"],
     r"start photo 'missing.jpg' does not exist"),
    (["grid", "{model}", "features.3", "--start", "notes.jpg", "-o", "x.png"],
     r"cannot read image 'notes.jpg' \(.*\); give a readable .jpg or .png photo"),
    (["render", "{model}", "features.3", "0", "--start", ".", "-o", "x.png"], r"start photo '.' is a folder"),
    (["render", "{bands}", "features.3", "0", "--start", "{photo}", "-o", "x.png"],
     r"a start photo holds RGB \(or gray\) values, and the model takes 5 channels"),
], ids=["caricature without start", "side by side without start", "grid side by side", "missing photo",
        "not an image", "folder", "five bands"])
def test_cli_bad_start_is_one_line_exit_2_and_nothing_written(argv, message, tmp_path, capsys, monkeypatch,
                                                              photo_file, model_file):
    bands = str(save_bands(tmp_path / "bands5.pt", 5))
    (tmp_path / "notes.jpg").write_text("not a picture")
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    argv = [a.replace("{model}", model_file).replace("{bands}", bands).replace("{photo}", photo_file) for a in argv]
    code = main([*argv, "--size", "16", "--steps", "1", "-q"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert sorted(os.listdir(tmp_path)) == before
