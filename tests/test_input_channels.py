"""Inputs that are not RGB: gray (1 channel) and multiband (5 channels) models, end to end.

Each test builds its tiny model here. The references are plain computations written out in the test
(the book's loop, the model's own forward pass on the start and final images, Pillow's gray
conversion), never filterviz's own code path.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import filterviz
from conftest import Bands, save_bands
from filterviz import InputSpec, render, render_filters
from filterviz.cli import main
from filterviz.errors import FilterVizError
from filterviz.image import make_grid
from filterviz.liveness import flat_on_probe, packaged_photos, probe_images
from filterviz.models.spec import input_geometry
from filterviz.objectives import channel
from filterviz.params import (FourierImage, MacoImage, _packaged_spectrum, classic_start, load_spectrum,
                              spectrum_for_channels)


def spec_of(channels: int) -> InputSpec:
    """A spec with a different mean and std on every channel, as a trained model's are."""
    return InputSpec(mean=tuple(100.0 + 10 * c for c in range(channels)),
                     std=tuple(50.0 + 5 * c for c in range(channels)), default_size=16)


def bands_model(channels: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> filterviz.LoadedModel:
    torch.manual_seed(seed)
    return filterviz.load_model(Bands(channels).to(dtype), spec=spec_of(channels), name=f"bands{channels}",
                                device="cpu")


def own_score(model: filterviz.LoadedModel, pixels: np.ndarray | torch.Tensor, upto: int, k: int) -> float:
    """Mean of channel ``k`` of ``features[:upto+1]`` on one image (H, W, C) or (1, C, H, W), by the
    model's own forward pass with the spec's arithmetic written out."""
    x = torch.as_tensor(pixels, dtype=torch.float64)
    x = x.permute(2, 0, 1)[None] if x.ndim == 3 else x
    mean = torch.tensor(model.spec.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(model.spec.std, dtype=torch.float64).view(1, -1, 1, 1)
    with torch.no_grad():
        return float(model.module.features[: upto + 1]((x - mean) / std)[0, k].mean())


@pytest.fixture
def traced(tmp_path):
    """TorchScript files of 1- and 5-channel models (float32), as a user would give them on the command line."""
    return lambda channels: str(save_bands(tmp_path / f"bands{channels}.pt", channels))


def run(capsys, *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


# -- the spec and the model's channel count ---------------------------------------------------------------------


def test_spec_channel_count_presets_and_refusals():
    assert InputSpec().channels == 3 and InputSpec().mean == (0.0, 0.0, 0.0)
    assert repr(InputSpec()) == ("InputSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order='RGB', "
                                 "layout='NCHW', default_size=224, fixed_size=None, min_size=None)")  # as before
    assert InputSpec(channels=1).mean == (0.0,) and InputSpec(channels=1).std == (1.0,)
    assert InputSpec(mean=(33.0,), std=(78.0,)).channels == 1  # the count the values give
    assert InputSpec(channels=5, mean=127.5, std=127.5).mean == (127.5,) * 5  # one number: every channel
    assert InputSpec.preset("tf", channels=5) == InputSpec(channels=5, mean=127.5, std=127.5)
    assert InputSpec.preset("unit", channels=1).std == (255.0,)
    assert InputSpec.preset("unit", channels=1).describe().startswith("1 channel (grayscale), (pixels - [0]) / [255]")
    assert InputSpec.preset("imagenet").describe() == filterviz.InputSpec.preset("imagenet", channels=3).describe()
    for make, message in [
        (lambda: InputSpec.preset("imagenet", channels=1), r"preprocessing 'imagenet' .* is for 3 channels, and the "
                                                           r"model takes 1"),
        (lambda: InputSpec.preset("caffe", channels=5), r"preprocessing 'caffe' \(BGR"),
        (lambda: InputSpec(channels=5, mean=(1.0, 2.0, 3.0)), r"5 channels but 3 mean values"),
        (lambda: InputSpec(mean=(1.0, 2.0), std=(1.0, 2.0, 3.0)), r"2 channels but 3 std values"),
        (lambda: InputSpec(channels=1, channel_order="BGR"), r"BGR reverses the 3 channels"),
        (lambda: InputSpec(channels=0), r"1 or more channels"),
    ]:
        with pytest.raises(FilterVizError, match=message) as caught:
            make()
        assert "\n" not in str(caught.value)


def test_a_spec_never_broadcasts_to_another_channel_count():
    spec = InputSpec(mean=(120.0,), std=(60.0,))
    with pytest.raises(FilterVizError, match=r"takes images of 1 channel \(grayscale\) \(N, 1, H, W\), not of shape "
                                             r"\(2, 3, 4, 4\)"):
        spec.to_model_input(torch.zeros(2, 3, 4, 4))
    with pytest.raises(FilterVizError, match=r"takes images of RGB \(N, 3, H, W\)"):
        InputSpec().to_model_input(torch.zeros(2, 1, 4, 4))


def test_input_geometry_finds_the_channel_axis_of_a_model_file():
    assert input_geometry((1, 3, 224, 224), "NHWC") == {"layout": "NCHW", "channels": 3, "default_size": 224,
                                                         "fixed_size": (224, 224)}
    assert input_geometry((None, 28, 28, 1), "NCHW")["layout"] == "NHWC"
    assert input_geometry((None, 28, 28, 1), "NCHW")["channels"] == 1
    assert input_geometry((None, 1, 28, 28), "NHWC") == {"layout": "NCHW", "channels": 1, "default_size": 28,
                                                          "fixed_size": (28, 28)}
    assert input_geometry((None, 5, None, None), "NHWC") == {"layout": "NCHW", "channels": 5}
    assert input_geometry((None, None, None, None), "NHWC") == {"layout": "NHWC"}


def test_a_model_file_declares_its_channels(tmp_path):
    pytest.importorskip("onnx2torch")
    path = save_bands(tmp_path / "bands.onnx", 5)
    model = filterviz.load_model(path, device="cpu")
    assert (model.spec.channels, model.spec.layout, model.spec.fixed_size) == (5, "NCHW", (16, 16))
    assert filterviz.load_model(path, device="cpu", preprocess="tf").spec.mean == (127.5,) * 5
    with pytest.raises(FilterVizError, match=r"the input spec is for RGB \(3 channels\), and the model file's input "
                                             r"has 5; give a spec of 5 channels"):
        filterviz.load_model(path, device="cpu", spec=InputSpec(std=255.0))


def test_the_first_convolution_says_the_channels_and_a_mismatch_is_one_line():
    for channels in (1, 5):
        model = filterviz.load_model(Bands(channels), preprocess="unit", device="cpu")
        assert model.spec == InputSpec.preset("unit", channels=channels)
        assert filterviz.load_model(Bands(channels), spec=spec_of(channels), device="cpu").spec.channels == channels
        with pytest.raises(FilterVizError, match=rf"the input spec is for RGB \(3 channels\), and Bands takes "
                                                 rf"{channels} \(its first convolution 'features.0' takes "
                                                 rf"{channels}\)"):
            filterviz.load_model(Bands(channels), spec=InputSpec(std=255.0), device="cpu")
        with pytest.raises(FilterVizError, match=rf"--channels 3 \(channels=3\) does not fit Bands: its first "
                                                 rf"convolution 'features.0' takes {channels}; use --channels "
                                                 rf"{channels}"):
            filterviz.load_model(Bands(channels), preprocess="unit", channels=3, device="cpu")
        with pytest.raises(FilterVizError, match=r"preprocessing 'imagenet' .* is for 3 channels"):
            filterviz.load_model(Bands(channels), preprocess="imagenet", device="cpu")


def test_an_rgb_model_whose_first_made_convolution_is_not_its_first_keeps_3_channels():
    class Late(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Conv2d(8, 4, 1)  # made first, runs second
            self.stem = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(x))

    model = filterviz.load_model(Late(), spec=InputSpec(default_size=16), device="cpu")
    assert model.spec == InputSpec(default_size=16)
    assert filterviz.load_model(Late(), preprocess="raw", device="cpu").spec.channels == 3


# -- the images, in the model's channels -------------------------------------------------------------------------


def book_loop_reference(model: filterviz.LoadedModel, upto: int, k: int, start: np.ndarray, steps: int) -> np.ndarray:
    """The book's loop written out plainly for any channel count: normalize, run features[:upto+1], mean of
    channel k, RMS-normalized gradient step of 1, ``steps`` times; one image (H, W, C)."""
    x = torch.as_tensor(start[None].copy())
    mean = torch.tensor(model.spec.mean, dtype=x.dtype)
    std = torch.tensor(model.spec.std, dtype=x.dtype)
    for _ in range(steps):
        x.requires_grad_(True)
        loss = model.module.features[: upto + 1](((x - mean) / std).permute(0, 3, 1, 2))[:, k].mean()
        (grads,) = torch.autograd.grad(loss, x)
        grads = grads / (torch.sqrt(torch.mean(torch.square(grads))) + 1e-5)
        x = (x + grads * 1.0).detach()
    return x[0].numpy()


@pytest.mark.parametrize("channels", [1, 5])
def test_book_recipe_equals_the_plain_loop(channels):
    model = bands_model(channels)
    start = classic_start(16, [3], seed=7, channels=channels)
    assert start.shape == (1, 16, 16, channels) and 128 <= start.min() and start.max() <= 148  # the book's gray noise
    expected = book_loop_reference(model, 3, 3, start[0], steps=40)
    result = render_filters(model, "features.3", [3], start=start)
    assert result.pixels.shape == (1, 16, 16, channels)
    assert np.abs(result.pixels[0] - expected).max() < 1e-9
    assert not np.allclose(expected, start[0])  # the loop did move the image
    seeded = render_filters(model, "features.3", [3], seed=7, steps=0, size=16)  # a seeded render starts there
    assert np.array_equal(seeded.pixels, start)


@pytest.mark.parametrize("channels", [1, 5])
@pytest.mark.parametrize("recipe", ["lucid", "maco"])
def test_fourier_and_maco_raise_the_unit(channels, recipe):
    model = bands_model(channels)
    filters = [1, 4]
    options = {"view_size": 32} if recipe == "maco" else {}
    result = render_filters(model, "features.2", filters, recipe=recipe, size=32, steps=32, seed=0, **options)
    assert result.pixels.shape == (2, 32, 32, channels) and result.images.shape == (2, 32, 32, channels)
    for i, k in enumerate(filters):
        image = (FourierImage(32, [k], 0, channels=channels) if recipe == "lucid"
                 else MacoImage(32, [k], 0, channels=channels))()  # what the render started from
        start, final = own_score(model, image, 2, k), own_score(model, result.pixels[i], 2, k)
        assert result.start_score[i] == pytest.approx(start, rel=1e-6)
        assert result.score[i] == pytest.approx(final, rel=1e-6)
        assert final > start + 0.005, (k, start, final)  # it rose (by 0.008 to 0.4 here)
    if channels == 5:  # channel by channel: the channels differ
        assert np.abs(result.pixels[0, ..., 0] - result.pixels[0, ..., 4]).max() > 1


def test_other_channel_counts_have_no_color_decorrelation_and_an_averaged_spectrum():
    assert FourierImage(8, [0], 0, channels=3).decorrelate and not FourierImage(8, [0], 0, channels=1).decorrelate
    packaged = _packaged_spectrum()
    gray = spectrum_for_channels(packaged, 1)
    assert gray.shape == (1, *packaged.shape[1:]) and np.allclose(gray[0], packaged.mean(axis=0))
    assert np.array_equal(spectrum_for_channels(packaged, 5), np.repeat(gray, 5, axis=0))
    assert spectrum_for_channels(packaged, 3) is packaged
    image = MacoImage(16, [0], 0, channels=5)
    assert image.magnitude.shape == (5, 16, 9) and image().shape == (1, 5, 16, 16)


def test_a_spectrum_file_for_other_channels(tmp_path):
    model = bands_model(5)
    own = tmp_path / "five.npy"
    np.save(own, np.repeat(_packaged_spectrum()[:1], 5, axis=0))
    result = render(model, ["channel:features.2:1"], "maco", spectrum=str(own), size=32, steps=2, view_size=32, seed=0)
    assert result.pixels.shape == (1, 32, 32, 5)
    four = tmp_path / "four.npy"
    np.save(four, np.ones((4, 8, 5)))
    assert load_spectrum(four).shape == (4, 8, 5)
    with pytest.raises(FilterVizError, match=r"--spectrum has 4 channels, and the model takes 5: give --spectrum a "
                                             r"\.npy of shape \(5, H, W//2\+1\)"):
        render(model, ["channel:features.2:1"], "maco", spectrum=str(four), size=32, steps=2, view_size=32)
    with pytest.raises(FilterVizError, match=r"has 4 channels, and the model takes 3"):
        render(filterviz.load_model(Bands(3), preprocess="raw", device="cpu"), ["channel:features.2:1"], "maco",
               spectrum=str(four), size=32, steps=2, view_size=32)


def test_a_parameterization_made_for_rgb_is_refused_for_other_channels():
    class RGBOnly(filterviz.Parameterization):
        name = "rgbonly"

        def create(self, size, keys, seed, start=None):
            return filterviz.params.PixelImage(classic_start(size, keys, seed))

    rgb = filterviz.load_model(Bands(3), preprocess="raw", device="cpu")
    assert render(rgb, ["channel:features.2:1"], "classic", parameterization=RGBOnly(), size=16, steps=1).pixels.shape \
        == (1, 16, 16, 3)  # called as it always was
    with pytest.raises(FilterVizError, match=r"parameterization rgbonly makes RGB images .* the model takes 1 "
                                             r"channel;"):
        render(bands_model(1), ["channel:features.2:1"], "classic", parameterization=RGBOnly(), size=16, steps=1)


# -- the probe: dead units are measured, not guessed ------------------------------------------------------------


def test_probe_in_the_model_channels():
    rgb = probe_images(16)
    gray = probe_images(16, channels=1)
    five = probe_images(16, channels=5)
    assert gray.shape == (15, 16, 16, 1) and five.shape == (15, 16, 16, 5)
    photos = len(packaged_photos())
    for index, photo in enumerate(packaged_photos()):
        luma = np.asarray(Image.fromarray(photo).convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float64)
        assert np.array_equal(gray[index, ..., 0], luma)
        assert np.array_equal(five[index, ..., :3], rgb[index])  # RGB, then the gray in the other bands
        assert np.array_equal(five[index, ..., 3], luma) and np.array_equal(five[index, ..., 4], luma)
    noise = five[photos:]
    assert all(noise[i, ..., 3].std() > 50 for i in range(4))  # strong noise in every band
    assert np.abs(noise[0, ..., 3] - noise[0, ..., 4]).mean() > 30  # drawn in each band on its own


@pytest.mark.parametrize("channels", [1, 5])
def test_a_dead_unit_is_measured_dead(channels):
    model = bands_model(channels)
    conv = model.module.features[2]
    with torch.no_grad():  # filter 5 is off on every input; filter 0 is left as it is
        conv.weight[5] = 0
        conv.bias[5] = -1
    assert list(flat_on_probe(model, [channel("features.3", 5), channel("features.3", 0)], 16)) == [True, False]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = render_filters(model, "features.3", [5], size=16, steps=2, seed=0)
    assert result.stuck[0] and result.dead[0]
    assert any("filter 5 of features.3 of" in str(w.message) and "is dead" in str(w.message) for w in caught)


# -- output files ------------------------------------------------------------------------------------------------


def test_one_channel_render_is_a_gray_png(capsys, tmp_path, traced):
    path = traced(1)
    code, err = run(capsys, "render", path, "features.2", "1", "--size", "16", "--steps", "3", "--seed", "0", "-o",
                    tmp_path / "f.png")
    assert code == 0, err
    picture = Image.open(tmp_path / "f.png")
    assert picture.mode == "L" and np.asarray(picture).shape == (16, 16)
    same = render_filters(filterviz.load_model(path, device="cpu"), "features.2", [1], size=16, steps=3, seed=0)
    assert same.images.shape == (1, 16, 16, 1)
    assert np.array_equal(np.asarray(picture), same.images[0, ..., 0])
    assert not (tmp_path / "f.npy").exists()  # the picture holds the one channel
    code, err = run(capsys, "grid", path, "features.2", "--filters", "0-2", "--size", "16", "--steps", "2",
                    "--seed", "0", "-o", tmp_path / "g.png")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "g.png")).shape == (16, 3 * 16 + 2 * 5)


def test_gray_grids_cross_out_in_white_on_black():
    grid = make_grid([np.full((8, 8), 100, np.uint8)] * 2, crossed=[False, True])
    assert grid.shape == (8, 21) and grid[0, 0] == 100
    tile = grid[:, 13:]
    assert tile[0, 0] == 255 and tile[7, 7] == 255 and tile[1, 0] == 0  # the X, with black edges


def test_five_channel_render_is_three_chosen_channels_and_a_npy(capsys, tmp_path, traced):
    path = traced(5)
    same = render_filters(filterviz.load_model(path, device="cpu"), "features.2", [1], size=16, steps=3, seed=0)
    code, err = run(capsys, "render", path, "features.2", "1", "--size", "16", "--steps", "3", "--seed", "0",
                    "--show-channels", "3,2,1", "-o", tmp_path / "f.png")
    assert code == 0, err
    assert "every channel in" in err and str(tmp_path / "f.npy") in err
    picture = np.asarray(Image.open(tmp_path / "f.png"))
    assert picture.shape == (16, 16, 3) and np.array_equal(picture, same.images[0][..., [3, 2, 1]])
    pixels = np.load(tmp_path / "f.npy")
    assert pixels.shape == (16, 16, 5) and pixels.dtype == np.float64 and np.array_equal(pixels, same.pixels[0])
    code, err = run(capsys, "render", path, "features.2", "1", "--size", "16", "--steps", "3", "--seed", "0",
                    "-o", tmp_path / "first.png")  # by default: the first three
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "first.png")), same.images[0][..., :3])
    assert np.array_equal(np.load(tmp_path / "first.npy"), same.pixels[0])
    code, err = run(capsys, "grid", path, "features.2", "--filters", "0-2", "--size", "16", "--steps", "3",
                    "--seed", "0", "--show-channels", "4", "-o", tmp_path / "g.png")
    assert code == 0, err
    grid = render_filters(filterviz.load_model(path, device="cpu"), "features.2", [0, 1, 2], size=16, steps=3, seed=0)
    assert np.array_equal(np.load(tmp_path / "g.npy"), grid.pixels)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png"))[:, :16], grid.images[0, ..., 4])


@pytest.mark.parametrize(("channels", "args", "expected"), [
    (1, ["--channels", "3"], r"--channels 3 \(channels=3\) does not fit bands1.pt: its first convolution "
                             r"'features.0' takes 1; use --channels 1, or leave it out"),
    (5, ["--channels", "1"], r"does not fit bands5.pt: its first convolution 'features.0' takes 5"),
    (1, ["--preprocess", "imagenet"], r"preprocessing 'imagenet' \(RGB, .*\) is for 3 channels, and the model takes 1"),
    (5, ["--show-channels", "4,5,0"], r"--show-channels 4,5,0: the image has 5 channels, 0-4; channel 5 is not"),
    (5, ["--show-channels", "0,1"], r"--show-channels takes 1 channel \(shown as gray\) or 3"),
    (5, ["--recipe", "maco", "--spectrum", "four.npy"], r"--spectrum has 4 channels, and the model takes 5"),
])
def test_a_channel_mismatch_is_one_line_exit_2_and_no_file(capsys, tmp_path, traced, channels, args, expected):
    path = traced(channels)
    np.save(tmp_path / "four.npy", np.ones((4, 8, 5)))
    args = [str(tmp_path / a) if a.endswith(".npy") else a for a in args]
    before = sorted(os.listdir(tmp_path))
    code, err = run(capsys, "render", path, "features.2", "1", "--size", "16", "--steps", "2", *args,
                    "-o", tmp_path / "f.png")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(expected, err), err
    assert sorted(os.listdir(tmp_path)) == before


# -- the atlas ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 5])
def test_atlas_end_to_end(capsys, tmp_path, traced, photos, channels):
    path = traced(channels)
    out = tmp_path / "atlas"
    images = ["--images", photos, "--top-k", "2"] if channels == 1 else []
    code, err = run(capsys, "atlas", path, "--layers", "features.2,features.5", "--filters", "0-1", "--size", "16",
                    "--steps", "2", "--seed", "0", "-q", *images, "-o", out)
    assert code == 0, err
    assert (out / "index.html").is_file()
    pictures = sorted((out / "img").rglob("*.png"))
    assert len(pictures) == 4
    model = filterviz.load_model(path, device="cpu")
    expected = render_filters(model, "features.2", [0, 1], size=16, steps=2, seed=0, batch_size=2)
    for index in (0, 1):
        picture = out / "img" / "features.2" / f"{index}.png"  # the layer's name is its folder's
        shown = np.asarray(Image.open(picture))
        assert Image.open(picture).mode == ("L" if channels == 1 else "RGB")
        wanted = expected.images[index, ..., 0] if channels == 1 else expected.images[index, ..., :3]
        assert np.array_equal(shown, wanted)
    if channels == 1:  # dataset examples: the photos as gray, as the model saw them
        crops = sorted((out / "examples").rglob("*.png"))
        assert crops and all(Image.open(crop).mode == "L" for crop in crops)
        copies = sorted((out / "examples").rglob("*.jpg"))
        assert copies and all(Image.open(copy).mode == "L" for copy in copies)
    else:  # photos hold no true values of other bands: refused before anything is written
        code, err = run(capsys, "atlas", path, "--filters", "0-1", "--size", "16", "--steps", "2", "--images", photos,
                        "-o", tmp_path / "with-images")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "the model takes 5 channels, which RGB or gray photos do not hold; leave --images out" in err
        assert not (tmp_path / "with-images").exists()
