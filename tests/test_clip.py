"""CLIP image towers through open_clip, and the ``text:`` objective: a tiny CLIP config with random
weights, checked against open_clip's own image and text encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import filterviz
from filterviz.cli import main
from filterviz.errors import FilterVizError

open_clip = pytest.importorskip("open_clip")

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "filterviz-tiny-clip.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return filterviz.load_model("open_clip:filterviz-tiny-clip", weights="random", device="cpu")


def _similarity(model, picture: np.ndarray, text: str) -> float:
    """open_clip's own cosine similarity of a picture's and a text's embeddings."""
    clip = model.clip
    preprocess = open_clip.image_transform(32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                           std=open_clip.OPENAI_DATASET_STD)
    with torch.no_grad():
        image = clip.encode_image(preprocess(Image.fromarray(picture))[None].to(torch.float32))
        words = clip.encode_text(open_clip.get_tokenizer("filterviz-tiny-clip")([text]))
    return torch.nn.functional.cosine_similarity(image, words).item()


def test_a_text_objective_raises_open_clips_own_similarity(tiny_clip):
    text = "a photo of a dog"
    result = filterviz.render(tiny_clip, [f'text:"{text}"'], "classic", steps=15, seed=0, deprocess="none")
    start = filterviz.render(tiny_clip, [f"text:{text}"], "classic", steps=0, seed=0, deprocess="none")
    before, after = _similarity(tiny_clip, start.images[0], text), _similarity(tiny_clip, result.images[0], text)
    assert after > before
    assert (result.start_score[0], result.score[0]) == pytest.approx((before, after), abs=0.02)
    assert result.objectives[0].name == "text('a photo of a dog')"


def test_text_needs_a_clip_model_and_the_source_says_what_is_missing(tiny_clip, tmp_path, capsys):
    with pytest.raises(FilterVizError, match="needs a CLIP model"):
        filterviz.render(filterviz.load_model("efficientnet-lite0"), ["text:a dog"], size=32, steps=1)
    assert main(["render", "efficientnet-lite0", "--objective", "text:a dog", "-o", str(tmp_path / "x.png")]) == 2
    assert "needs a CLIP model" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    out = str(tmp_path / "y.png")
    assert main(["render", "open_clip:ViT-B-32", "--objective", "text:a dog", "-o", out]) == 2  # no weights named
    assert "open_clip:ViT-B-32/openai" in capsys.readouterr().err
    assert main(["render", "open_clip:ViT-B-32/openai", "--objective", "text:a dog", "-o", out]) == 2
    err = capsys.readouterr().err  # not cached, and no network here: one line
    assert len(err.strip().splitlines()) == 1 and "Hugging Face cache" in err and not (tmp_path / "y.png").exists()
    assert main(["layers", "open_clip:NoSuchNet"]) == 2
    assert "unknown open_clip model" in capsys.readouterr().err


def test_the_image_towers_layers_are_tokens_with_their_class_token(tiny_clip):
    """open_clip's transformer runs on (N, 1+16, 32) tokens: its MLP has 128 hidden units per token."""
    assert tiny_clip.layer_info("transformer.resblocks.1.mlp.c_fc", 32).output == "tokens 1+4x4, 128"
    assert tiny_clip.layer_info("conv1", 32).output == "nchw 4x4, 32"
