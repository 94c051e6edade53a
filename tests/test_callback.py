"""render(callback=...): watching a render changes nothing, shows each image as it is at that step, and can
cancel it."""

from __future__ import annotations

import numpy as np
import pytest

from filterviz.ascent import render
from filterviz.errors import FilterVizError, RenderCancelled

OBJECTIVES = [f"channel:features.2:{k}" for k in range(5)]


def _watched(model, recipe: str, every: int, **options):
    calls: list[tuple[int, np.ndarray, np.ndarray]] = []
    result = render(model, OBJECTIVES, recipe, seed=3, batch_size=2, callback=lambda s, i, v: calls.append((s, i, v)),
                    callback_every=every, **options)
    return result, calls


@pytest.mark.parametrize("recipe", ["classic", "lucid", "maco"])
def test_watching_changes_nothing_and_ends_on_the_result(tiny, recipe):
    plain = render(tiny, OBJECTIVES, recipe, seed=3, batch_size=2, steps=5, size=24)
    watched, calls = _watched(tiny, recipe, 2, steps=5, size=24)
    assert np.array_equal(plain.pixels, watched.pixels)
    # three batches (2, 2, 1) of 5 steps, told at steps 2, 4 and the last of each: 15 steps in all
    assert [step for step, _, _ in calls] == [2, 4, 5, 7, 9, 10, 12, 14, 15]
    step, images, scores = calls[-1]
    assert images.dtype == np.uint8 and np.array_equal(images, watched.images)
    # before a batch starts its images are mid-gray and its scores NaN; a finished batch keeps its final picture
    _, first_images, first_scores = calls[0]
    assert np.all(first_images[2:] == 128) and np.isnan(first_scores[2:]).all() and not np.isnan(first_scores[:2]).any()
    _, later_images, _ = calls[3]  # the second batch's first call
    assert np.array_equal(later_images[:2], watched.images[:2])


def test_each_call_shows_the_image_after_that_step(tiny):
    # classic's step is the same at every step, so k steps of a long render are a render of k steps
    _, calls = _watched(tiny, "classic", 1, steps=4, size=24)
    for steps in (1, 3):
        shorter = render(tiny, OBJECTIVES, "classic", seed=3, batch_size=2, steps=steps, size=24)
        assert np.array_equal(calls[steps - 1][1][:2], shorter.images[:2])
    # the score told at a batch's first step is that of its start image (classic has no transforms)
    start = render(tiny, OBJECTIVES, "classic", seed=3, batch_size=2, steps=1, size=24).start_score
    np.testing.assert_allclose(calls[0][2][:2], start[:2], rtol=1e-12)


def test_returning_false_cancels(tiny):
    seen = []

    def stop_at_two(step, images, scores):
        seen.append(step)
        return step < 2

    with pytest.raises(RenderCancelled, match="step 2"):
        render(tiny, OBJECTIVES, "classic", seed=0, steps=6, size=24, callback=stop_at_two)
    assert seen == [1, 2]


def test_callback_every_must_be_positive(tiny):
    with pytest.raises(FilterVizError, match="at least 1"):
        render(tiny, OBJECTIVES, "classic", steps=2, size=24, callback=lambda *a: None, callback_every=0)
