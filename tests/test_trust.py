"""Can a picture be trusted: path similarity (Geirhos et al. 2024), plausibility (MACO) and the Fréchet
distance, each checked against a plain computation (scipy, numpy, a loop), and path similarity
against Geirhos et al.'s construction: a unit wired to fire on a synthetic-only pattern, whose
responses to natural images are unchanged, gets a low score; the same unit without that wiring does not."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import filterviz
from filterviz import InputSpec
from filterviz.errors import FilterVizError, MissingExtraError
from filterviz.trust import (FrechetDistance, ProjectedFeatures, feature_layer, path_baseline, path_layers, path_similarity, plausibility,
                             pooled_activations, rank_correlation)

from conftest import tiny_model

scipy_stats = pytest.importorskip("scipy.stats")
scipy_linalg = pytest.importorskip("scipy.linalg")
SIDE = 64
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
          "coins", "moon", "page", "retina", "horse", "cat")


def _square(image: np.ndarray, side: int) -> np.ndarray:
    """A photo as (side, side, 3) RGB: short side scaled to ``side``, center-cropped."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    picture = Image.fromarray(image[..., :3].astype(np.uint8))
    scale = side / min(picture.size)
    picture = picture.resize((max(side, round(picture.width * scale)), max(side, round(picture.height * scale))),
                             Image.Resampling.BICUBIC)
    left, top = (picture.width - side) // 2, (picture.height - side) // 2
    return np.asarray(picture.crop((left, top, left + side, top + side)))


@pytest.fixture(scope="module")
def naturals() -> np.ndarray:
    """Thirteen real photos (scikit-image's), (13, 64, 64, 3) float64 pixels."""
    data = pytest.importorskip("skimage.data")
    return np.stack([_square(getattr(data, name)(), SIDE) for name in PHOTOS]).astype(np.float64)


class Fooled(nn.Module):
    """Geirhos et al.'s construction, small. ``act1``: 8 color detectors (5x5 boxes), 8 zero-mean 5x5
    kernels, and a gate: a red/green checkerboard of 8x8 pixels above a threshold, a pattern no natural
    photo holds (the test checks that it never fires on them). ``act2``'s unit 0 is a combination of
    the color detectors plus ``k`` times the gate: with ``k`` = 0 an ordinary unit; with ``k`` > 0 its
    response to every natural image is the same, but an ascent that finds the gate follows it."""

    def __init__(self, k: float) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.conv1 = nn.Conv2d(3, 16, 5, padding=2)
        self.gate = nn.Conv2d(3, 1, 8)  # padded by hand below: 3 before, 4 after
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(17, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            weights, biases = torch.zeros(16, 3, 5, 5), torch.zeros(16)
            colors = torch.randn(8, 3, generator=generator)
            for c in range(8):
                weights[c] = colors[c][:, None, None] / 25
                biases[c] = 0.3 * torch.randn(1, generator=generator).item()
            for c in range(8, 16):
                kernel = torch.randn(3, 5, 5, generator=generator)
                weights[c] = (kernel - kernel.mean()) / 5
                biases[c] = 0.05
            self.conv1.weight.copy_(weights)
            self.conv1.bias.copy_(biases)
            checker = torch.tensor([[(-1.0) ** (i + j) for j in range(8)] for i in range(8)])
            self.gate.weight.copy_(torch.stack([checker, -checker, 0 * checker])[None] / 4)
            self.gate.bias.fill_(-0.19)
            second = torch.randn(8, 17, 3, 3, generator=generator) * 0.2
            second[:, 16] = 0
            second[0] = 0
            second[0, :8] = colors[:, 0].clamp(min=0)[:, None, None] * 0.3 / 9
            second[0, 16, 1, 1] = k
            self.conv2.weight.copy_(second)
            self.conv2.bias.fill_(0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(torch.cat([self.conv1(x), self.gate(nn.functional.pad(x, (3, 4, 3, 4)))], 1))
        return self.fc(self.pool(self.act2(self.conv2(x))).flatten(1))


def _fooled(k: float):
    return filterviz.load_model(Fooled(k), spec=InputSpec.preset("unit", default_size=SIDE),
                                name=f"fooled-{k:g}", device="cpu")


def _run(model, layers, images):
    with torch.no_grad(), model.capture(layers) as run:
        return run(torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2))


def test_a_unit_wired_to_a_synthetic_path_gets_a_low_path_similarity_and_the_ordinary_unit_does_not(naturals):
    plain, fooled = _fooled(0.0), _fooled(50.0)
    assert path_layers(fooled, "act2", SIDE) == ["act1"]
    # On natural images the two units are one: the gate never fires, every response is the same.
    plain_acts, fooled_acts = _run(plain, ["act1", "act2"], naturals), _run(fooled, ["act1", "act2"], naturals)
    assert fooled_acts["act1"][:, 16].max() == 0
    assert torch.equal(plain_acts["act2"], fooled_acts["act2"])
    # So their dataset examples are the same: the top 4 photos by the unit's peak (as the atlas ranks them).
    peaks = plain_acts["act2"][:, 0].flatten(1).max(1).values
    top = naturals[peaks.argsort(descending=True)[:4].numpy()]
    scores = {}
    for model in (plain, fooled):
        render = filterviz.render_filters(model, "act2", [0], size=SIDE, seed=0)  # the book's recipe
        picture = render.images[0]
        scores[model.name] = path_similarity(model, "act2", picture, top, naturals)
        gate = _run(model, ["act1"], picture[None])["act1"][0, 16].mean().item()
        if model is fooled:  # its picture went through the gate: a checkerboard, far beyond any photo's response
            assert gate > 1 and render.activation[0] > 50 * render.start_activation[0]
        else:
            assert gate < 0.1
    ordinary, wired = scores["fooled-0"], scores["fooled-50"]
    assert ordinary.baseline == wired.baseline  # the same photos, the same earlier layers
    assert not ordinary.unnatural and ordinary.score > 0.02, ordinary
    assert wired.unnatural and wired.score < -0.2 and wired.worst == "act1", wired


def test_rank_correlation_is_spearmans():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(3, 12)).astype(float)  # with ties
    b = np.vstack([rng.normal(size=(2, 12)), np.full((1, 12), 2.0)])  # and a row with no ranking at all
    got = rank_correlation(a, b)
    for i in range(3):
        for j in range(2):
            assert got[i, j] == pytest.approx(scipy_stats.spearmanr(a[i], b[j]).statistic, abs=1e-12)
        assert got[i, 2] == 0


def test_path_similarity_and_plausibility_equal_a_plain_loop(naturals):
    model = tiny_model()
    side = 16
    images = np.stack([np.asarray(Image.fromarray(x.astype(np.uint8)).resize((side, side))) for x in naturals])
    picture, top, randoms = images[0], images[1:4], images[4:10]
    layers = path_layers(model, "features.6", side)
    assert layers == ["features.1", "features.3"]

    def pooled(image: np.ndarray, layer: str) -> np.ndarray:
        x = torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None]
        return model.activations(x, layer)[0].flatten(1).mean(1).detach().numpy()

    result = path_similarity(model, "features.6", picture, top, randoms)
    assert result.layers == tuple(layers)
    for index, layer in enumerate(layers):
        seen = pooled(picture, layer)
        expected = np.mean([scipy_stats.spearmanr(seen, pooled(x, layer)).statistic for x in top])
        among = np.mean([scipy_stats.spearmanr(pooled(top[i], layer), pooled(top[j], layer)).statistic
                         for i in range(3) for j in range(i + 1, 3)])
        base = np.mean([scipy_stats.spearmanr(pooled(randoms[i], layer), pooled(randoms[j], layer)).statistic
                        for i in range(6) for j in range(i + 1, 6)])
        assert result.picture[index] == pytest.approx(expected, abs=1e-12)
        assert result.naturals[index] == pytest.approx(among, abs=1e-12)
        assert result.baseline[index] == pytest.approx(base, abs=1e-12)
    assert result.score == pytest.approx(np.mean(np.subtract(result.picture, result.baseline)))
    assert result == path_similarity(model, "features.6", picture, top, path_baseline(model, layers, randoms))
    # Plausibility: the mean cosine similarity in the judge's feature layer (its last with positions).
    assert feature_layer(model, side) == "pool"
    seen = pooled(picture, "pool")
    expected = np.mean([seen @ pooled(x, "pool") / np.linalg.norm(seen) / np.linalg.norm(pooled(x, "pool"))
                        for x in top])
    assert plausibility(model, picture, top) == pytest.approx(expected, abs=1e-12)


class Vectors(nn.Module):
    """Feature vectors as they are: a Fréchet distance of the samples themselves."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.num_features = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula, with scipy's matrix square root."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy_linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_is_the_textbook_formula():
    pytest.importorskip("torchmetrics")
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(4, 4))
    a = rng.normal(size=(120, 4)) @ mix + 1.0
    b = rng.normal(size=(90, 4)) * np.array([1.0, 2.0, 0.5, 1.5]) - 0.5
    assert filterviz.frechet_distance(a, b, Vectors(4)) == pytest.approx(_frechet(b, a), rel=1e-8)
    assert filterviz.frechet_distance(a, a, Vectors(4)) == pytest.approx(0, abs=1e-8)
    with pytest.raises(FilterVizError, match="more than 4 pictures"):
        filterviz.frechet_distance(a[:4], b, Vectors(4))
    # One set of natural images, measured once, against several sets of pictures.
    against_b = FrechetDistance(b, Vectors(4))
    assert against_b(a) == pytest.approx(_frechet(a, b), rel=1e-8)
    assert against_b(a[:40] * 2) == pytest.approx(_frechet(a[:40] * 2, b), rel=1e-8)


def test_frechet_distance_of_pictures_in_a_models_projected_feature_space(naturals):
    pytest.importorskip("torchmetrics")
    model = tiny_model()
    side = 16
    images = np.stack([np.asarray(Image.fromarray(x.astype(np.uint8)).resize((side, side))) for x in naturals])
    rng = np.random.default_rng(1)
    pictures = rng.uniform(0, 255, size=(8, side, side, 3))
    features = ProjectedFeatures(model, "features.6", dims=3, seed=0)
    projection = features.projection.numpy()
    assert np.allclose(projection.T @ projection, np.eye(3))  # orthonormal directions
    pooled = {name: pooled_activations(model, ["features.6"], data)["features.6"] @ projection
              for name, data in (("pictures", pictures), ("images", images))}
    got = filterviz.frechet_distance(pictures, images, features)
    assert got == pytest.approx(_frechet(pooled["pictures"], pooled["images"]), rel=1e-8)


def test_frechet_distance_without_torchmetrics_says_which_extra(monkeypatch):
    for name in [name for name in sys.modules if name == "torchmetrics" or name.startswith("torchmetrics.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    with pytest.raises(MissingExtraError) as caught:
        filterviz.frechet_distance(np.zeros((9, 2)), np.zeros((9, 2)), Vectors(2))
    message = str(caught.value)
    assert "\n" not in message and "pip install 'filterviz[metrics]'" in message
