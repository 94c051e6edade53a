"""Parameterizations, transforms and recipes: checked against reference computations."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

import filterviz
from filterviz.errors import FilterVizError
from filterviz.params import (
    COLOR_CORRELATION, FourierImage, MacoImage, PixelImage, _packaged_spectrum, decorrelated_to_rgb, estimate_spectrum,
    rgb_to_decorrelated,
)
from filterviz.recipes import RECIPES, Recipe, get_recipe
from filterviz.transforms import Jitter, Noise, Pad, RandomCrop, RandomFlip, RandomRotate, RandomScale

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
from make_spectrum import CROPS, PHOTOS, SIZE  # noqa: E402  (the script that wrote the packaged spectrum)


def generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def smooth_image(count: int = 2, size: int = 16) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    base = torch.stack([torch.sin(x / 3), torch.cos(y / 4), torch.sin((x + y) / 5)]) * 100 + 128
    return base.expand(count, 3, size, size).clone()


# -- parameterizations -------------------------------------------------------------------------------------------


def test_fourier_image_is_real_and_reproduces_a_given_image():
    image = FourierImage((12, 10), keys=[0, 1], seed=0)
    out = image()
    assert out.dtype == torch.float64 and not out.is_complex() and out.shape == (2, 3, 12, 10)
    assert 0 < out.min() and out.max() < 255
    target = torch.as_tensor(skimage.data.astronaut()[100:112, 200:210], dtype=torch.float64)
    target = target.permute(2, 0, 1)[None].expand(2, 3, 12, 10).clamp(1, 254)
    image.set_image(target)
    torch.testing.assert_close(image(), target, rtol=0, atol=1e-9)


def test_fourier_start_is_low_contrast_gray_and_seeded():
    a, b = FourierImage(16, [3, 4], seed=7)(), FourierImage(16, [4], seed=7)()
    torch.testing.assert_close(a[1:], b)  # image 4 is the same alone or in a batch
    assert abs(float(a.mean()) - 127.5) < 2 and float(a.std()) < 5


def test_color_decorrelation_round_trip():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(rgb_to_decorrelated(decorrelated_to_rgb(x)), x)
    assert np.linalg.norm(COLOR_CORRELATION, axis=0).max() == pytest.approx(1.0)


def test_maco_keeps_the_magnitude_and_changes_only_the_phase():
    image = MacoImage(32, keys=[0], seed=0)
    phase = image.phase.detach().clone()
    image.phase.data += torch.randn_like(phase)  # any phase
    x = image.forward_decorrelated()[0]
    spectrum = torch.fft.rfft2(x).abs()
    ratio = spectrum[:, :, 1:-1] / image.magnitude[:, :, 1:-1]  # DC moves with the mean; Nyquist is real-only
    ratio = ratio[ratio.isfinite()]
    assert float(ratio.std() / ratio.mean()) < 1e-6
    assert [name for name, _ in image.named_parameters()] == ["phase"]


def test_packaged_spectrum_is_estimated_from_scikit_image_photos():
    images = [getattr(skimage.data, name)() for name in PHOTOS]
    np.testing.assert_allclose(_packaged_spectrum(), estimate_spectrum(images, size=SIZE, crops=CROPS, seed=0),
                               rtol=1e-5)
    spectrum = _packaged_spectrum()
    assert spectrum[:, 1, 0].mean() > 5 * spectrum[:, 20, 20].mean()  # natural photos: energy falls with frequency


def test_pixel_image_is_the_book_start():
    image = PixelImage.noise(8, keys=[5], seed=3)
    np.testing.assert_array_equal(image().permute(0, 2, 3, 1).detach().numpy(),
                                  filterviz.params.classic_start(8, [5], seed=3))


# -- transforms --------------------------------------------------------------------------------------------------


def test_jitter_is_a_random_crop():
    x = smooth_image()
    out = Jitter(3)(x, generators(2))
    for row, generator in zip(range(2), generators(2)):
        dy, dx = (int(v) for v in torch.randint(4, (2,), generator=generator))
        torch.testing.assert_close(out[row], x[row, :, dy:dy + 13, dx:dx + 13])


def test_rotation_by_90_degrees_equals_rot90():
    x = smooth_image()
    out = RandomRotate([90.0])(x, generators(2))
    torch.testing.assert_close(out, torch.rot90(x, k=1, dims=(2, 3)), rtol=0, atol=1e-9)


def test_scale_2_equals_upsampling_the_central_half():
    x = smooth_image(size=16)
    out = RandomScale([2.0])(x, generators(2))
    expected = F.interpolate(x[:, :, 4:12, 4:12], scale_factor=2, mode="bilinear", align_corners=False)
    # Same sample positions; only the outermost ring differs (the crop clamps at its edge, the zoom does not).
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=0, atol=1e-9)


def test_crop_of_the_whole_image_is_the_image_and_pad_flip_noise():
    x = smooth_image()
    torch.testing.assert_close(RandomCrop((1.0, 1.0), spread=0.0)(x, generators(2)), x, rtol=0, atol=1e-9)
    torch.testing.assert_close(Pad(2)(x, generators(2)), F.pad(x, (2, 2, 2, 2), value=127.5))
    flipped = RandomFlip()(x, generators(2))
    for row, generator in enumerate(generators(2)):
        expected = x[row].flip(-1) if torch.rand((), generator=generator) < 0.5 else x[row]
        torch.testing.assert_close(flipped[row], expected)
    noisy = Noise(2.0)(x, generators(2))
    assert 1.8 < float((noisy - x).std()) < 2.2


def test_transforms_are_seeded_per_row():
    recipe = RECIPES["lucid"]
    x = smooth_image(count=3, size=32)
    a = recipe.transforms()(x, generators(3))
    b = recipe.transforms()(x[1:2], generators(3)[1:2])
    torch.testing.assert_close(a[1:2], b)


# -- recipes -----------------------------------------------------------------------------------------------------


def test_recipes_are_plain_data_with_checked_overrides():
    lucid = RECIPES["lucid"]
    assert (lucid.parameterization, lucid.optimizer, lucid.learning_rate, lucid.decorrelate) == (
        "fourier", "adam", 0.05, True)
    assert lucid.replace(steps=3).steps == 3 and lucid.steps == 64
    assert get_recipe("lucid", steps=None, jitter=2).jitter == 2
    assert "optimizer = 'adam'" in lucid.describe()
    with pytest.raises(FilterVizError, match="unknown recipe field"):
        lucid.replace(stepz=3)
    with pytest.raises(FilterVizError, match="crop must be 0 < low <= high <= 1"):
        Recipe(crop=(0.9, 0.1))
    with pytest.raises(FilterVizError,
                       match="unknown recipe 'deepdream'; use one of classic, lucid, maco, lucid-original$"):
        get_recipe("deepdream")


def test_lucid_original_keeps_lucids_original_settings():
    # Every field of lucid as it was at commit e991e0a (Lucid's own settings), written out: lucid-original
    # stays so whatever lucid's defaults become.
    original = {
        "parameterization": "fourier", "decorrelate": True, "init_std": 0.01, "spectrum": None, "size": 128,
        "steps": 512, "optimizer": "adam", "learning_rate": 0.05, "escape_steps": 16, "views": 1, "pad": 12,
        "jitter": 8, "scales": (0.9, 0.92, 0.94, 0.96, 0.98, 1.0, 1.02, 1.04, 1.06, 1.08, 1.1),
        "angles": (-10.0, -9.0, -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0,
                   7.0, 8.0, 9.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        "crop": None, "flip": False, "final_jitter": 4, "noise": 0.0, "view_size": None, "extra_transforms": (),
        "tv": 0.0, "l1": 0.0, "l2": 0.0, "blur": 0.0, "deprocess": "none",
    }
    assert asdict(RECIPES["lucid-original"]) == {"name": "lucid-original", **original}
    assert get_recipe("lucid-original") == Recipe(name="lucid-original", **original)


def test_preset_values_take_effect_in_a_render(tiny):
    # What the presets say, as a render does it: lucid takes 64 Adam steps at 0.05, maco NAdam steps at
    # 1.0, classic no optimizer at all (the book's normalized step); sizes 224, 160 and 150 px.
    taken: list[tuple[str, float]] = []
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: taken.append((type(optimizer).__name__, optimizer.param_groups[0]["lr"])))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64 steps of tiny tensors: threads only wait on each other, more so on a busy machine
    try:
        filterviz.render(tiny, ["channel:features.3:1"], "lucid", size=8, seed=0)
        assert taken == [("Adam", 0.05)] * 64
        taken.clear()
        filterviz.render(tiny, ["channel:features.3:1"], "maco", size=16, steps=2, seed=0)
        assert taken == [("NAdam", 1.0)] * 2
        taken.clear()
        filterviz.render(tiny, ["channel:features.3:1"], "classic", size=16, steps=2, seed=0)
        assert taken == []
    finally:
        hook.remove()
        torch.set_num_threads(threads)
    for name, side in (("lucid", 224), ("maco", 160), ("classic", 150), ("lucid-original", 128)):
        assert filterviz.render(tiny, ["channel:features.3:1"], name, steps=0, seed=0).pixels.shape == (1, side, side, 3)


def test_same_seed_same_bytes_and_batching_does_not_matter(tiny):
    objectives = ["channel:features.3:1", "channel:features.3:2", "class:3"]
    first = filterviz.render(tiny, objectives, "lucid", steps=3, size=12, seed=5)
    again = filterviz.render(tiny, objectives, "lucid", steps=3, size=12, seed=5)
    assert first.images.tobytes() == again.images.tobytes()
    alone = filterviz.render(tiny, objectives[1:2], "lucid", steps=3, size=12, seed=5, keys=[1])
    np.testing.assert_allclose(alone.pixels[0], first.pixels[1], rtol=0, atol=1e-6)  # batched convs round apart
    other = filterviz.render(tiny, objectives, "lucid", steps=3, size=12, seed=6)
    assert other.images.tobytes() != first.images.tobytes()


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_raises_its_objective_on_the_embedded_model(embedded, name):
    objectives = ["channel:blocks.5.depthwise.act:5", "class:207"]
    result = filterviz.render(embedded, objectives, name, steps=12, size=128, seed=0, views=1)
    assert (result.score > result.start_score).all(), (result.start_score, result.score)
    assert result.images.shape == (2, 128, 128, 3) and result.images.dtype == np.uint8
    if name == "maco":
        assert result.importance.shape == (2, 128, 128) and (result.importance > 0).mean() > 0.5


@pytest.mark.parametrize("architecture", ["vgg11", "resnet18"])
def test_presets_run_unchanged_on_vgg_and_resnet_like_models(architecture):
    # No preset field depends on the model: the same presets raise a mid-layer channel of each.
    torch.manual_seed(0)
    model = filterviz.load_model(architecture, weights="random", device="cpu")
    layer = "features.12" if architecture == "vgg11" else "layer2.0.relu#2"
    start = torch.as_tensor(filterviz.params.classic_start(64, [0], seed=0), dtype=torch.float32)
    with torch.no_grad():
        response = model.activations(start.permute(0, 3, 1, 2), layer).mean(dim=(0, 2, 3))
    channels = response.argsort(descending=True)[:2].tolist()  # random weights leave some channels dead
    for name in RECIPES:
        result = filterviz.render(model, [f"channel:{layer}:{c}" for c in channels], name, steps=6, size=64,
                                  seed=0, views=1)
        assert (result.score > result.start_score).all(), (name, result.start_score, result.score)


@pytest.mark.parametrize("padding", ["reflection", "border", "zeros"])
def test_gather_sampling_equals_grid_sample(padding):
    from filterviz.transforms import gather_sample

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 11, generator=generator, dtype=torch.float64)
    grid = torch.rand(2, 7, 8, 2, generator=generator, dtype=torch.float64) * 3 - 1.5  # well outside too
    expected = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    assert torch.allclose(gather_sample(x, grid, padding), expected, atol=1e-12)


@pytest.mark.parametrize("size", [5, 13, 24])
def test_matrix_resize_equals_interpolate(size):
    from filterviz.transforms import matrix_resize

    x = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for antialias in (False, True):
        expected = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                   antialias=antialias)
        assert torch.allclose(matrix_resize(x, size, antialias), expected, atol=1e-12)


def test_recipes_show_only_the_fields_they_use():
    from filterviz.recipes import RECIPES

    shown = {name: {line.split(" = ")[0] for line in recipe.describe().splitlines()} for name, recipe in RECIPES.items()}
    assert not shown["classic"] & {"decorrelate", "init_std", "spectrum"}
    assert {"decorrelate", "init_std"} <= shown["lucid"] and "spectrum" not in shown["lucid"]
    assert "spectrum" in shown["maco"] and not shown["maco"] & {"decorrelate", "init_std"}
    assert {"steps", "escape_steps", "learning_rate"} <= shown["classic"]
