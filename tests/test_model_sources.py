"""Model sources are registered parts: filterviz's own, one added by a call, one from an entry point."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import filterviz
from filterviz.models import sources as sources_module

from conftest import TINY_SPEC, TinyNet


class TinySource(filterviz.PrefixSource):
    """Models named ``tiny:SEED``: the test's TinyNet with that seed."""

    prefix = "tiny:"
    usage = "tiny:SEED"
    description = "the tests' TinyNet"

    def load(self, model: str, request: filterviz.LoadRequest) -> filterviz.LoadedModel:
        torch.manual_seed(int(self.strip(model)))
        return filterviz.LoadedModel(model.strip(), TinyNet(), request.spec or TINY_SPEC, source="tiny")


@pytest.fixture
def clean_registry(monkeypatch):
    """The registry as filterviz has it, restored after the test."""
    monkeypatch.setattr(sources_module, "_added", [])
    monkeypatch.setattr(sources_module, "_entry_points_read", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])


def test_builtin_sources_are_asked_in_order():
    names = [type(s).__name__ for s in filterviz.model_sources()]
    assert names[:2] == ["EmbeddedSource", "TorchvisionSource"] and "OnnxFileSource" in names
    assert filterviz.known_models()[0] == filterviz.DEFAULT_MODEL and "vgg16" in filterviz.known_models()


def test_a_registered_source_loads_lists_and_renders(clean_registry, capsys, tmp_path):
    filterviz.register_source(TinySource())
    model = filterviz.load_model("tiny:3", device="cpu")
    torch.manual_seed(3)
    reference = TinyNet()
    assert all(torch.equal(a, b) for a, b in zip(model.module.state_dict().values(), reference.state_dict().values()))
    result = filterviz.render_filters(model, "features.1", [0], size=16, steps=2, seed=0)
    assert result.model == "tiny:3"
    # The render is that of the same network wrapped directly (load_model of the module, with the spec).
    torch.manual_seed(3)
    direct = filterviz.load_model(TinyNet(), spec=TINY_SPEC, device="cpu")
    assert np.array_equal(result.pixels, filterviz.render_filters(direct, "features.1", [0], size=16, steps=2,
                                                                  seed=0).pixels)
    from filterviz.cli import main

    assert main(["models"]) == 0
    assert "tiny:SEED" in capsys.readouterr().out
    for seed in ("1", "3"):
        assert main(["render", f"tiny:{seed}", "features.1", "0", "--size", "16", "--steps", "2", "--seed", "0", "-q",
                     "-o", str(tmp_path / f"f{seed}.png")]) == 0
    # The command line's file for tiny:3 holds the API's picture; tiny:1, another network, another one.
    assert np.array_equal(np.array(Image.open(tmp_path / "f3.png")), result.images[0])
    assert not np.array_equal(np.array(Image.open(tmp_path / "f1.png")), result.images[0])


def test_a_source_from_an_entry_point(clean_registry, monkeypatch):
    plugin = types.ModuleType("filterviz_tiny_plugin")
    plugin.TinySource = TinySource
    monkeypatch.setitem(sys.modules, "filterviz_tiny_plugin", plugin)
    point = importlib.metadata.EntryPoint("tiny", "filterviz_tiny_plugin:TinySource", "filterviz.sources")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [point] if group == "filterviz.sources" else [])
    assert filterviz.load_model("tiny:0", device="cpu").name == "tiny:0"


def test_a_broken_plugin_is_one_line(clean_registry, monkeypatch):
    point = importlib.metadata.EntryPoint("broken", "no_such_module_here:Source", "filterviz.sources")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [point])
    with pytest.raises(filterviz.FilterVizError, match="the model source plugin 'broken'"):
        filterviz.load_model("tiny:0", device="cpu")


def test_only_sources_can_be_registered():
    with pytest.raises(filterviz.FilterVizError, match="must be a filterviz.ModelSource"):
        filterviz.register_source(object())
