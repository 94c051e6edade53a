"""What ``auto`` precision chooses, that it keeps quality, and that the book's own commands stay fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import filterviz
from filterviz import device
from filterviz.cli import main
from filterviz.device import autocast_dtype, choose_precision, resolve_precision

from conftest import tiny_model

CPU = torch.device("cpu")
EMBEDDED = "efficientnet-lite0"


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bf16_everywhere(monkeypatch):
    """bf16 arithmetic on any CPU: torch's CPU autocast computes it there too, only more slowly."""
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)


def test_auto_on_a_cpu_without_bf16_is_fp32(monkeypatch, cache_home):
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(device, "measure_cpu_bf16_speedup", lambda: pytest.fail("no measurement without bf16"))
    assert choose_precision("auto", CPU).precision == "fp32"
    assert autocast_dtype("auto", CPU) is None


def test_auto_on_an_amx_cpu_is_bf16_without_measuring(monkeypatch, cache_home):
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(device, "measure_cpu_bf16_speedup", lambda: pytest.fail("AMX decides without measuring"))
    choice = choose_precision("auto", CPU)
    assert (choice.precision, choice.reason) == ("bf16", "this CPU has AMX")
    assert autocast_dtype("auto", CPU) is torch.bfloat16
    assert not cache_home.exists()


@pytest.mark.parametrize("speedup, expected", [(2.0, "bf16"), (1.1, "fp32"), (0.6, "fp32")])
def test_auto_with_avx512_bf16_alone_is_measured_once_and_cached(monkeypatch, cache_home, speedup, expected):
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: False)
    calls = []
    monkeypatch.setattr(device, "measure_cpu_bf16_speedup", lambda: calls.append(1) or speedup)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("auto", CPU) == expected  # the second answer comes from the cache
    assert calls == [1]
    cached = json.loads((cache_home / "filterviz" / "precision.json").read_text())
    assert list(cached.values()) == [speedup] and torch.__version__ in next(iter(cached))


def test_a_damaged_precision_cache_is_measured_again(monkeypatch, cache_home):
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(device, "measure_cpu_bf16_speedup", lambda: 3.0)
    (cache_home / "filterviz").mkdir(parents=True)
    (cache_home / "filterviz" / "precision.json").write_text("{not json")
    assert resolve_precision("auto", CPU) == "bf16"


def test_measured_speedup_is_a_ratio_of_real_timings():
    speedup = device.measure_cpu_bf16_speedup(repeats=1) if device.cpu_supports_bf16() else 1.0
    assert 0.05 < speedup < 50


def test_asked_precisions_are_kept_and_bad_ones_refused():
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(filterviz.FilterVizError, match="unknown precision 'int8'"):
        resolve_precision("int8", CPU)


def test_bf16_keeps_95_percent_of_the_fp32_activation(bf16_everywhere):
    """Deep and shallow layers of the real embedded model, classic and lucid recipes: what ``auto`` may
    choose must keep at least 95 % of the activation fp32 reaches (each measured in fp32)."""
    model = filterviz.load_model(EMBEDDED, device="cpu")
    for layer, recipe, filters in (("blocks.5.depthwise.act", "classic", [2, 5, 9, 17]),
                                   ("blocks.9.depthwise.act", "lucid", [0, 3])):
        options = dict(size=64, steps=20, seed=0, recipe=recipe)
        fp32 = filterviz.render_filters(model, layer, filters, precision="fp32", **options)
        bf16 = filterviz.render_filters(model, layer, filters, precision="bf16", **options)
        assert bf16.precision == "bf16" and fp32.precision == "fp32"
        assert (fp32.activation > fp32.start_activation).all()
        assert bf16.activation.sum() >= 0.95 * fp32.activation.sum(), (layer, bf16.activation, fp32.activation)
        assert not np.array_equal(bf16.pixels, fp32.pixels)  # it did run in bf16


def test_the_book_stays_fp32_whatever_auto_chooses(monkeypatch):
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)  # auto would choose bf16 here
    model, layer = tiny_model(dtype=torch.float32), "features.3"
    pattern = filterviz.generate_pattern(model, layer, 1, size=32, steps=3, seed=0)
    fp32 = filterviz.render_filters(model, layer, [1], size=32, steps=3, seed=0, precision="fp32")
    auto = filterviz.render_filters(model, layer, [1], size=32, steps=3, seed=0)
    assert np.array_equal(pattern, fp32.images[0])
    assert auto.precision == "bf16" and not np.array_equal(auto.pixels, fp32.pixels)


def test_the_same_command_writes_the_same_bytes_and_says_its_precision(capsys, tmp_path):
    outputs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        assert main(["grid", EMBEDDED, "blocks.1.depthwise.act", "--filters", "0-3", "--size", "32", "--steps", "3",
                     "--seed", "0", "-o", str(out)]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    chosen = resolve_precision("auto", CPU)
    err = capsys.readouterr().err
    assert (f"; in {chosen})" in err) == (chosen != "fp32"), err
    explicit = tmp_path / "explicit.png"
    assert main(["grid", EMBEDDED, "blocks.1.depthwise.act", "--filters", "0-3", "--size", "32", "--steps", "3",
                 "--seed", "0", "--precision", chosen, "-o", str(explicit), "-q"]) == 0
    assert explicit.read_bytes() == outputs[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_resampling_a_reduced_precision_image_keeps_exact_coordinates(dtype):
    """Under autocast an image may arrive in bf16: its sampling grid and pixel indices must not. (In
    bf16 a flat index near 236 * 200 is off by hundreds: wrong pixels, or a gather out of bounds.)"""
    from torch.nn import functional as F

    from filterviz.transforms import affine, gather_sample, matrix_resize

    torch.manual_seed(0)
    x = torch.rand(2, 3, 236, 236)
    matrices = torch.tensor([[[0.98, 0.1, 0.03], [-0.1, 0.98, -0.02]]]).repeat(2, 1, 1)
    exact = affine(x, matrices)
    assert (affine(x.to(dtype), matrices).float() - exact).abs().max() < 0.01
    grid = F.affine_grid(matrices.to(dtype), [2, 3, 236, 236], align_corners=False)
    gathered = gather_sample(x.to(dtype), grid)  # the deterministic path a CUDA atlas takes
    sampled = F.grid_sample(x, grid.float(), mode="bilinear", padding_mode="reflection", align_corners=False)
    assert (gathered.float() - sampled).abs().max() < 0.01
    assert (matrix_resize(x.to(dtype), 100, True).float() - matrix_resize(x, 100, True)).abs().max() < 0.01
    if dtype is torch.bfloat16:  # under autocast too, as a render runs them
        with torch.autocast("cpu", dtype=dtype):
            assert (affine(x.to(dtype), matrices).float() - exact).abs().max() < 0.01


def test_a_model_not_in_float32_runs_and_says_its_own_type(monkeypatch, cache_home):
    # autocast leaves float64 weights as they are: auto must say fp64, and bf16 (which would do nothing) is refused
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    model = tiny_model()  # float64 weights
    assert resolve_precision("auto", model.device, model.dtype) == "fp64"
    assert autocast_dtype("auto", model.device, model.dtype) is None
    result = filterviz.render(model, ["channel:features.2:1"], "classic", seed=0, steps=2, size=16)
    assert result.precision == "fp64"
    plain = filterviz.render(model, ["channel:features.2:1"], "classic", seed=0, steps=2, size=16, precision="fp32")
    assert np.array_equal(result.pixels, plain.pixels)
    with pytest.raises(filterviz.FilterVizError, match="weights are fp64; use --precision auto"):
        filterviz.render(model, ["channel:features.2:1"], "classic", steps=1, size=16, precision="bf16")
    assert resolve_precision("auto", model.device) == "bf16"  # a float32 model on this CPU
