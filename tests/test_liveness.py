"""Dead, stuck and escaping units; copies that differ by a diversity term."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import filterviz
from filterviz import FilterVizWarning
from filterviz.ascent import plan_batches, render, render_filters
from filterviz.cli import main
from filterviz.liveness import flat_on_probe, probe_count, probe_images
from filterviz.params import classic_start
from filterviz.objectives import channel, diversity, gram
from filterviz.redirect import _Redirected, redirected

from conftest import tiny_model


def _switched_off(model, threshold: float):
    """Filter 0 of features.1 fires only on inputs far from mid-gray: off on every gray start image."""
    conv = model.module.features[0]
    with torch.no_grad():
        conv.weight[0] = 0
        conv.weight[0, 2, 1, 1] = 1.0  # red at the centre, as the model sees it (BGR): (red - 100) / 50
        conv.bias[0] = -threshold
    return model


def _collect(function, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, FilterVizWarning)]


def test_probe_images_are_fixed_photos_and_noise():
    first, second = probe_images(24), probe_images(24)
    assert first.shape == (probe_count(), 24, 24, 3) and np.array_equal(first, second)
    assert first.min() >= 0 and first.max() <= 255
    assert first[:11].std(axis=(1, 2, 3)).min() > 3  # real photos and textures, not flat


def test_a_unit_off_on_the_start_but_responding_to_photos_is_stuck_not_dead():
    model = _switched_off(tiny_model(), threshold=1.5)  # red above 175 switches it on; the start is ~138
    result, said = _collect(render_filters, model, "features.1", [0, 1], size=16, steps=5, seed=0)
    assert result.stuck.tolist() == [True, False]
    assert result.dead.tolist() == [False, False]  # photos switch it on
    assert len(said) == 1 and "filter 0 of features.1 of tiny is stuck at its start image" in said[0]
    assert "--escape-steps 16" in said[0]


def test_escape_steps_free_a_stuck_unit():
    model = _switched_off(tiny_model(), threshold=1.2)  # red above 160: within 16 of the book's steps
    result, said = _collect(render_filters, model, "features.1", [0], size=16, steps=30, seed=0, escape_steps=16)
    assert not said and not result.stuck[0]
    assert result.activation[0] > 0 == result.start_activation[0]


@pytest.mark.parametrize("recipe", ["lucid", "maco"])
def test_modern_recipes_escape_a_flat_start(recipe):
    model = _switched_off(tiny_model(), threshold=1.5)
    result, said = _collect(render_filters, model, "features.1", [0], recipe=recipe, size=24, steps=40, seed=0,
                            view_size=None)
    assert not said and not result.stuck[0] and result.activation[0] > 0


def test_escape_leaves_images_with_a_gradient_unchanged():
    model = _switched_off(tiny_model(), threshold=1.5)
    plain = render_filters(model, "features.1", [1, 2, 3], size=16, steps=8, seed=0, recipe="lucid", escape_steps=0)
    both = render_filters(model, "features.1", [0, 1, 2, 3], size=16, steps=8, seed=0, recipe="lucid")
    assert np.array_equal(plain.pixels, both.pixels[1:])  # byte for byte
    for module in model.module.modules():  # every module's own forward is back
        assert "forward" not in module.__dict__


def test_a_unit_that_never_responds_is_dead():
    model = tiny_model()
    conv = model.module.features[2]
    with torch.no_grad():  # filter 4 can never fire: zero weights, negative bias
        conv.weight[4] = 0
        conv.bias[4] = -1
    result, said = _collect(render_filters, model, "features.3", [3, 4], size=16, steps=5, seed=0, recipe="lucid")
    assert result.stuck.tolist() == [False, True] and result.dead.tolist() == [False, True]
    assert said == [f"filter 4 of features.3 of tiny is dead: it takes the same value on all {probe_count()} "
                    "probe images (natural photos and strong noise), so no picture can show it"]
    assert flat_on_probe(model, [channel("features.3", 4), channel("features.3", 3)], 16).tolist() == [True, False]


def test_redirected_gradient_against_its_definition():
    x = torch.tensor([[-2.0, -1.0, 0.5, 3.0], [-1.0, -0.5, -3.0, -0.1]], dtype=torch.float64, requires_grad=True)
    grad = torch.tensor([[1.0, -1.0, 2.0, 1.0], [1.0, -1.0, 2.0, 3.0]], dtype=torch.float64)
    (out,) = torch.autograd.grad(_Redirected.apply(x, "relu", 0.0, float("inf")), x, grad)
    # Row 0 has an ordinary gradient (x > 0 at two places): it is kept as it is.
    assert out[0].tolist() == [0.0, 0.0, 2.0, 1.0]
    # Row 1 is switched off everywhere: gradients that would switch it on pass, the others stop.
    assert out[1].tolist() == [1.0, 0.0, 2.0, 3.0]
    (six,) = torch.autograd.grad(_Redirected.apply(x, "hardtanh", 0.0, 6.0), x, grad)
    assert six.tolist() == out.tolist()


def test_redirection_is_only_inside_its_context():
    module = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(inplace=True), nn.ReLU6(), nn.Hardswish(), nn.GELU())
    with redirected(module) as state:
        assert state.modules == 3
    assert all("forward" not in m.__dict__ for m in module.modules())


def _gram_similarity(judge, images: np.ndarray, layer: str) -> float:
    """Mean cosine similarity of the copies' Gram matrices at ``layer`` of another model."""
    pixels = torch.as_tensor(images, dtype=judge.dtype).permute(0, 3, 1, 2)
    with torch.no_grad():
        grams = gram(judge.activations(pixels, layer))
    unit = torch.nn.functional.normalize(grams, dim=1)
    similarity = unit @ unit.T
    count = len(images)
    return float((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1)))


def test_diversity_makes_copies_differ_on_an_independent_model():
    model = tiny_model()
    judge = tiny_model(seed=7)  # another network: what the copies look like, not what they optimized
    plain = channel("features.3", 2)
    with_diversity = plain + 20.0 * diversity("features.3")
    kwargs = dict(recipe="lucid", size=24, steps=30, seed=0, batch_size=1)  # a batch of one: copies still meet
    alone = render(model, [plain] * 3, **kwargs)
    varied = render(model, [with_diversity] * 3, **kwargs)
    before = _gram_similarity(judge, alone.pixels, "features.3")
    after = _gram_similarity(judge, varied.pixels, "features.3")
    assert after < before - 0.05, (before, after)


@pytest.mark.parametrize(("recipe", "options"), [("classic", dict(size=16, steps=20)),
                                                  ("lucid", dict(size=24, steps=30))])
def test_copies_with_a_diversity_term_differ_more_in_style(recipe, options):
    # Several copies of one objective in the list, the objective built with the algebra and the
    # README's weight of 3: the copies' Gram matrices at the layer (measured here, on the rendered
    # pixels) must be further apart than those of copies rendered without the term, from the same starts.
    model = tiny_model()
    layer = "features.3"
    plain = channel(layer, 2)
    diverse = channel(layer, 2) + 3 * diversity(layer)
    alone = render(model, [plain] * 3, recipe, seed=0, **options)
    varied = render(model, [diverse] * 3, recipe, seed=0, **options)
    before = _gram_similarity(model, alone.pixels, layer)
    after = _gram_similarity(model, varied.pixels, layer)
    assert before > 0.99 and after < before - 0.03, (before, after)
    # The score reported for each copy is the channel's mean plus 3 times minus the mean cosine
    # similarity of its Gram matrix to the other copies', computed here from the final pixels.
    pixels = torch.as_tensor(varied.pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
        activations = model.activations(pixels, layer)
    unit = torch.nn.functional.normalize(gram(activations), dim=1)
    similarity = unit @ unit.T
    for i in range(3):
        others = float((similarity[i].sum() - similarity[i, i]) / 2)
        expected = float(activations[i, 2].mean()) - 3 * others
        assert varied.score[i] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # Without the term, the same call with one objective per copy gives each copy's plain channel mean.
    assert alone.score == pytest.approx([float(a[2].mean()) for a in
                                         model.activations(torch.as_tensor(alone.pixels).permute(0, 3, 1, 2),
                                                           layer).detach()])


def test_copies_that_read_each_other_share_a_batch():
    a, b = channel("l", 0) + diversity("l"), channel("l", 1)
    assert plan_batches([a, b, a, b, a], 2) == [[0, 2, 4], [1, 3]]
    assert plan_batches([b, b, b], 2) == [[0, 1], [2]]  # without diversity: plain batches in order


def test_cli_prints_api_warnings_as_lines(capsys, tmp_path):
    model = tiny_model()
    conv = model.module.features[2]
    with torch.no_grad():
        conv.weight[4] = 0
        conv.bias[4] = -1
    file = tmp_path / "tiny.pt"
    torch.jit.trace(model.module.float(), torch.zeros(1, 3, 16, 16)).save(str(file))
    code = main(["render", str(file), "features.3", "4", "--size", "16", "--steps", "3", "--seed", "0", "-q",
                 "-o", str(tmp_path / "f.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    assert len(err) == 1 and err[0].startswith("filterviz: warning: filter 4 of features.3 of ") and "is dead" in err[0]
    # The dead filter's picture is its start image (filter 4's seeded noise in float32), deprocessed.
    start = classic_start(16, [4], seed=0)[0].astype(np.float32).astype(np.float64)
    assert np.array_equal(np.array(Image.open(tmp_path / "f.png")), filterviz.deprocess_image(start))


def test_atlas_marks_dead_and_stuck_filters_apart(tmp_path):
    from filterviz.atlas import build_atlas
    from filterviz.atlas.manifest import Manifest

    model = _switched_off(tiny_model(), threshold=1.5)
    conv = model.module.features[0]
    with torch.no_grad():  # filter 1 can never fire
        conv.weight[1] = 0
        conv.bias[1] = -1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = build_atlas(model, tmp_path, layers=["features.1"], size=16, steps=3)
    assert not [w for w in caught if issubclass(w.category, FilterVizWarning)]  # counted, not warned per filter
    assert (summary.dead, summary.stuck) == (1, 1) and "1 dead, 1 stuck at their start image" in str(summary)
    manifest = Manifest(tmp_path / "manifest.sqlite")
    units = manifest.units()
    manifest.connection.close()
    states = {k: (unit.dead, unit.stuck) for (_, k), unit in units.items()}
    assert states[0] == (False, True) and states[1] == (True, True) and states[2] == (False, False)
    page = (tmp_path / "layers").glob("*.html").__next__().read_text()
    assert "0 (stuck)" in page and "1 (dead)" in page


def test_copies_that_must_meet_are_counted_per_objective():
    from filterviz.plan import plan_render

    a = channel("features.3", 0) + diversity("features.3")
    b = channel("features.3", 1) + diversity("features.3")
    plan = plan_render(tiny_model(), [a, a, b, b, b], size=16, steps=1)
    assert plan.together == 3  # the three copies of b, not all five images
