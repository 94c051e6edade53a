"""Objectives against hand-computed values, their algebra, and the text syntax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import filterviz
from filterviz.errors import FilterVizError
from filterviz.layers import OUTPUT
from filterviz.objectives import (
    IMAGE, Objective, Rows, batch_scores, blur, channel, class_logit, class_logprob, direction, diversity, l1, l2,
    layer, neuron, parse_objective, tv,
)

A = "features.3"


def activations(seed: int = 0, shape=(3, 4, 5, 6)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def one(objective: Objective, data: dict, index: int = 0, views: int = 1) -> float:
    return float(batch_scores([objective] * (len(next(iter(data.values()))) // views), data, views)[index])


def test_unit_objectives_match_hand_computed_values():
    x = activations()
    data = {A: x}
    assert one(channel(A, 2), data, 1) == pytest.approx(float(x[1, 2].mean()))
    assert one(neuron(A, 3), data, 2) == pytest.approx(float(x[2, 3, 2, 3]))  # 5x6 map: center (2, 3)
    assert one(neuron(A, 3, 0, 5), data, 0) == pytest.approx(float(x[0, 3, 0, 5]))
    assert one(layer(A), data, 1) == pytest.approx(float((x[1] ** 2).mean()))
    vector = [1.0, -2.0, 0.5, 3.0]
    unit = torch.tensor(vector, dtype=torch.float64) / torch.tensor(vector, dtype=torch.float64).norm()
    expected = sum(float(unit[c]) * x[0, c] for c in range(4)).mean()
    assert one(direction(A, vector), data, 0) == pytest.approx(float(expected))


def test_class_objectives_read_the_logits():
    logits = activations(shape=(2, 10))
    data = {OUTPUT: logits}
    assert one(class_logit(7), data, 1) == pytest.approx(float(logits[1, 7]))
    assert one(class_logprob(7), data, 1) == pytest.approx(float(F.log_softmax(logits[1], 0)[7]))
    with pytest.raises(FilterVizError, match="class 12 is out of range: the model has 10 classes, 0-9"):
        one(class_logit(12), data)


def test_views_are_averaged_per_image():
    x = activations(shape=(6, 4, 3, 3))  # 2 images x 3 views
    scores = batch_scores([channel(A, 1), channel(A, 2)], {A: x}, views=3)
    assert float(scores[0]) == pytest.approx(float(x[0:3, 1].mean()))
    assert float(scores[1]) == pytest.approx(float(x[3:6, 2].mean()))


def test_diversity_compares_gram_matrices_of_copies():
    x = activations(shape=(3, 4, 5, 5))
    objective = diversity(A)
    scores = batch_scores([objective] * 3, {A: x}, views=1)

    def gram(image):
        flat = image.reshape(4, -1)
        return (flat @ flat.T / flat.shape[1]).flatten()

    grams = [gram(x[i]) for i in range(3)]
    for i in range(3):
        others = [F.cosine_similarity(grams[i], grams[j], dim=0) for j in range(3) if j != i]
        assert float(scores[i]) == pytest.approx(-float(sum(others) / 2))
    # An image alone, or with other objectives, has nothing to differ from.
    mixed = batch_scores([objective, channel(A, 0), channel(A, 1)], {A: x}, views=1)
    assert float(mixed[0]) == 0.0


def test_regularizers_on_the_image():
    image = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 255
    data = {IMAGE: image}
    x = image[1] / 255
    tv_expected = (x[:, 1:, :] - x[:, :-1, :]).abs().mean() + (x[:, :, 1:] - x[:, :, :-1]).abs().mean()
    assert one(tv(), data, 1) == pytest.approx(float(tv_expected))
    assert one(l1(), data, 1) == pytest.approx(float((x - 0.5).abs().mean()))
    assert one(l2(), data, 1) == pytest.approx(float(((x - 0.5) ** 2).mean()))
    padded = F.pad(x[None], (1, 1, 1, 1), mode="replicate")[0]
    kernel = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float64) / 16
    blurred = torch.stack([sum(kernel[i, j] * padded[c, i:i + 6, j:j + 7] for i in range(3) for j in range(3))
                           for c in range(3)])
    assert one(blur(), data, 1) == pytest.approx(float(((x - blurred) ** 2).mean()))


def test_algebra_names_and_weights():
    a, b = channel("block4_conv1", 17), channel("block4_conv1", 5)
    combined = a - 0.3 * b
    assert combined.name == "channel(block4_conv1,17) - 0.3*channel(block4_conv1,5)"
    assert combined.slug == "channel_block4_conv1_17_-0.3x_channel_block4_conv1_5"
    assert (a + a).name == "2*channel(block4_conv1,17)"  # equal terms merge
    assert (-a).name == "-channel(block4_conv1,17)"
    assert (a - a).terms == ()
    x = activations(shape=(1, 18, 2, 2))
    data = {"block4_conv1": x}
    assert one(combined, data) == pytest.approx(float(x[0, 17].mean() - 0.3 * x[0, 5].mean()))
    assert one(0.5 * (a + b), data) == pytest.approx(float(0.5 * (x[0, 17].mean() + x[0, 5].mean())))


def test_sums_of_many_terms_never_recurse():
    many = sum(channel("l", i % 50) * (i + 1) for i in range(600))
    assert len(many.terms) == 50
    huge = Objective.sum(neuron("l", i) for i in range(20000))
    assert len(huge.terms) == 20000 and huge.layers == {"l"}
    x = activations(shape=(1, 50, 2, 2))
    expected = sum((i + 1) * float(x[0, i % 50].mean()) for i in range(600))
    assert one(many, {"l": x}) == pytest.approx(expected)


def test_parse_objective_text():
    assert parse_objective("channel:block4_conv1:17 - 0.3*channel:block4_conv1:5") == (
        channel("block4_conv1", 17) - 0.3 * channel("block4_conv1", 5))
    assert parse_objective("class:207") == class_logit(207)
    assert parse_objective("logprob:207 + 2*layer:blocks.3") == class_logprob(207) + 2 * layer("blocks.3")
    assert parse_objective("neuron:features.3:2:1:4") == neuron("features.3", 2, 1, 4)
    assert parse_objective("neuron:layer1.0.relu#2:2") == neuron("layer1.0.relu#2", 2)
    assert parse_objective("-channel:a:1 - 0.05*tv") == -channel("a", 1) - 0.05 * tv()
    assert parse_objective("channel:onnx/block-1/Relu:3") == channel("onnx/block-1/Relu", 3)


def test_direction_from_a_file(tmp_path):
    path = tmp_path / "direction.npy"
    np.save(path, np.array([0.0, 1.0, 0.0]))
    assert parse_objective(f"direction:{A}:{path}") == direction(A, [0.0, 1.0, 0.0])


@pytest.mark.parametrize(("text", "message"), [
    ("channel:block4_conv1", "channel needs a layer and an index"),
    ("channel:block4_conv1:x", "a channel index must be an integer, not 'x'"),
    ("class:dog", "a class index must be an integer, not 'dog'"),
    ("fourier:3", "cannot read objective"),
    ("channel:a:1 + banana", r"a channel index must be an integer, not '1 \+ banana'"),
])
def test_bad_objective_text_says_what_is_accepted(text, message):
    with pytest.raises(FilterVizError, match=message):
        parse_objective(text)


def test_objectives_in_a_render_match_the_activations(tiny):
    render = filterviz.render(tiny, ["channel:features.3:2", "neuron:features.3:4", "layer:features.1"],
                              steps=0, size=8, seed=0)
    start = torch.as_tensor(render.pixels).permute(0, 3, 1, 2)
    with torch.no_grad(), tiny.capture(["features.3", "features.1"]) as run:
        data = run(start)
    assert render.start_score[0] == pytest.approx(float(data["features.3"][0, 2].mean()))
    assert render.start_score[1] == pytest.approx(float(data["features.3"][1, 4, 4, 4]))
    assert render.start_score[2] == pytest.approx(float((data["features.1"][2] ** 2).mean()))


def test_rows_peers_default_to_none():
    assert Rows(slice(0, 1), 0).peers == ()
    # As a term reads them: rows without peers score as rows whose peers are given as none, and a
    # diversity term with no peers has nothing to differ from (0), where with peers it is the hand value.
    x = activations(shape=(2, 4, 5, 5))
    objective = channel(A, 1) + 2 * diversity(A)
    alone = objective.score({A: x}, Rows(slice(0, 1), 0))
    assert float(alone) == float(objective.score({A: x}, Rows(slice(0, 1), 0, ()))) == pytest.approx(float(x[0, 1].mean()))
    paired = objective.score({A: x}, Rows(slice(0, 1), 0, (slice(0, 1), slice(1, 2))))
    flat = x.reshape(2, 4, -1)
    grams = (flat @ flat.transpose(1, 2) / 25).reshape(2, -1)
    similarity = F.cosine_similarity(grams[0], grams[1], dim=0)
    assert float(paired) == pytest.approx(float(x[0, 1].mean() - 2 * similarity))
